//! From a validated import source to the mover's `PopulateRequest`: credentials from the
//! Secret, CA certificates from the ConfigMap, read by the populator and passed in the
//! request (the mover never reads the API).
//!
//! The objects are read through [`NamespaceObjects`]: the API server in the controller,
//! memory in the tests.

use std::future::Future;

use cdi_proto::v1 as pb;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret};
use kube::api::Api;

use super::build;
use crate::api::names::{importer, secret_keys};
use crate::plan::{ContentType, GcsImport, Header, HttpImport, ImportPlan, ImportSource, RegistryImport, S3Import};

/// Why a request could not be built (nothing retried until the objects change).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("Secret {namespace}/{name} {problem}")]
    Secret { namespace: String, name: String, problem: String },
    #[error("ConfigMap {namespace}/{name} {problem}")]
    ConfigMap { namespace: String, name: String, problem: String },
    #[error("import source type {variant} is not supported by this populator yet")]
    Unsupported { variant: &'static str },
    /// The mover that would read a clone's source cannot be found (retried).
    #[error("{0}")]
    Mover(String),
    #[error("cannot read {what}: {source}")]
    Api {
        what: String,
        #[source]
        source: Box<kube::Error>,
    },
}

/// The mover's target and the import's own fields, filled in by the reconciler.
#[derive(Debug, Clone)]
pub struct Destination {
    pub task_id: String,
    pub target: pb::Target,
    pub requested_size: u64,
    pub filesystem_overhead: Option<f64>,
    /// Whether to preallocate when the source does not say (CDIConfig's default).
    pub default_preallocation: bool,
    /// Where the mover appends the task's log (the holder pod prints it).
    pub log: Option<pb::TaskLog>,
}

impl Destination {
    /// The volume of `pvc` (or of its prime) as mounted by the holder pod `holder_uid`,
    /// and the holder's log volume.
    pub fn holder_volume(
        pvc: &PersistentVolumeClaim,
        task_id: &str,
        holder_uid: &str,
        pv_name: &str,
        overhead: f64,
        default_preallocation: bool,
    ) -> Destination {
        let mode = if build::is_block(pvc) { pb::VolumeMode::Block } else { pb::VolumeMode::Filesystem };
        let pod_volume = |volume_name: &str, pv_name: &str, mode: pb::VolumeMode| pb::PodVolume {
            pod_uid: holder_uid.to_string(),
            volume_name: volume_name.to_string(),
            pv_name: pv_name.to_string(),
            mode: mode as i32,
        };
        Destination {
            task_id: task_id.to_string(),
            target: pb::Target {
                kind: Some(pb::target::Kind::PodVolume(pod_volume(build::HOLDER_VOLUME, pv_name, mode))),
            },
            requested_size: build::requested_bytes(pvc).unwrap_or(0),
            filesystem_overhead: (mode == pb::VolumeMode::Filesystem).then_some(overhead),
            default_preallocation,
            log: Some(pb::TaskLog {
                volume: Some(pod_volume(importer::LOG_VOLUME, "", pb::VolumeMode::Filesystem)),
                file_name: importer::LOG_FILE.to_string(),
            }),
        }
    }
}

/// The Secrets and ConfigMaps of the namespace a source lives in.
pub trait NamespaceObjects: Sync {
    /// The namespace, for messages.
    fn namespace(&self) -> &str;
    /// The Secret `name`; `None` when it does not exist.
    fn secret(&self, name: &str) -> impl Future<Output = Result<Option<Secret>, SourceError>> + Send;
    /// The ConfigMap `name`; `None` when it does not exist.
    fn config_map(&self, name: &str) -> impl Future<Output = Result<Option<ConfigMap>, SourceError>> + Send;
}

/// [`NamespaceObjects`] read from the API server.
#[derive(Clone)]
pub struct ApiObjects {
    client: kube::Client,
    namespace: String,
}

impl std::fmt::Debug for ApiObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiObjects").field("namespace", &self.namespace).finish()
    }
}

impl ApiObjects {
    pub fn new(client: kube::Client, namespace: &str) -> ApiObjects {
        ApiObjects { client, namespace: namespace.to_string() }
    }
}

impl NamespaceObjects for ApiObjects {
    fn namespace(&self) -> &str {
        &self.namespace
    }

    async fn secret(&self, name: &str) -> Result<Option<Secret>, SourceError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        api.get_opt(name).await.map_err(|source| SourceError::Api {
            what: format!("Secret {}/{name}", self.namespace),
            source: Box::new(source),
        })
    }

    async fn config_map(&self, name: &str) -> Result<Option<ConfigMap>, SourceError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        api.get_opt(name).await.map_err(|source| SourceError::Api {
            what: format!("ConfigMap {}/{name}", self.namespace),
            source: Box::new(source),
        })
    }
}

/// What CDIConfig says of every import.
#[derive(Debug, Clone, Default)]
pub struct ImportSettings {
    /// `spec.insecureRegistries`.
    pub insecure_registries: Vec<String>,
    /// `status.importProxy`, with its CA bundle read: for the sources that go over the network.
    pub proxy: Option<pb::ImportProxy>,
}

/// CDIConfig's `importProxy` as the mover takes it, with every PEM of the ConfigMap its
/// `trustedCAProxy` names in the populator's namespace (`own`).
pub async fn import_proxy(
    config: Option<&crate::api::ImportProxy>,
    own: &impl NamespaceObjects,
) -> Result<Option<pb::ImportProxy>, SourceError> {
    let Some(c) = config else { return Ok(None) };
    let ca_pem = match c.trusted_ca_proxy.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
        Some(name) => ca_pem(own, name).await?,
        None => Vec::new(),
    };
    let text = |v: &Option<String>| v.as_deref().unwrap_or_default().trim().to_string();
    Ok(Some(pb::ImportProxy {
        http_proxy: text(&c.http_proxy),
        https_proxy: text(&c.https_proxy),
        no_proxy: text(&c.no_proxy),
        ca_pem,
    }))
}

/// Builds the request for an import of a supported kind.
pub async fn populate_request(
    objects: &impl NamespaceObjects,
    plan: &ImportPlan,
    dest: Destination,
    settings: &ImportSettings,
) -> Result<pb::PopulateRequest, SourceError> {
    let insecure_registries = &settings.insecure_registries;
    let (source, checksum) = match &plan.source {
        ImportSource::Http(http) => {
            let checksum = http.checksum.as_ref().map(|c| c.to_string()).unwrap_or_default();
            (pb::source::Kind::Http(http_source(objects, http).await?), checksum)
        }
        // Checksums are CDI's for http only.
        ImportSource::Registry(registry) => {
            (pb::source::Kind::Registry(registry_source(objects, registry, insecure_registries).await?), String::new())
        }
        ImportSource::S3(s3) => (pb::source::Kind::S3(s3_source(objects, s3).await?), String::new()),
        ImportSource::Gcs(gcs) => (pb::source::Kind::Gcs(gcs_source(objects, gcs).await?), String::new()),
        ImportSource::Blank => (pb::source::Kind::Blank(pb::BlankSource {}), String::new()),
        // The mover refuses a checksum for an upload.
        ImportSource::Upload => (pb::source::Kind::Upload(pb::UploadSource {}), String::new()),
        // The reconcilers report these before building a request; refused, not panicked on.
        ImportSource::Unsupported(variant) => return Err(SourceError::Unsupported { variant }),
        // Only with the source's mover known: see [`clone_request`].
        ImportSource::Clone(_) => return Err(SourceError::Unsupported { variant: "clone" }),
    };
    let mut request = request(plan, dest, source, checksum);
    if over_network(plan) {
        request.import_proxy = settings.proxy.clone();
    }
    Ok(request)
}

/// Whether the plan's source is fetched over the network (and so through an import proxy).
pub fn over_network(plan: &ImportPlan) -> bool {
    matches!(
        plan.source,
        ImportSource::Http(_) | ImportSource::Registry(_) | ImportSource::S3(_) | ImportSource::Gcs(_)
    )
}

/// The request of a host-assisted clone: the target's mover reads `volume` from the mover
/// that holds it.
pub fn clone_request(plan: &ImportPlan, dest: Destination, volume: pb::VolumeSource) -> pb::PopulateRequest {
    request(plan, dest, pb::source::Kind::Volume(volume), String::new())
}

fn request(plan: &ImportPlan, dest: Destination, source: pb::source::Kind, checksum: String) -> pb::PopulateRequest {
    pb::PopulateRequest {
        task_id: dest.task_id,
        source: Some(pb::Source { kind: Some(source) }),
        target: Some(dest.target),
        content_type: content_type(plan.content_type) as i32,
        preallocate: plan.preallocate(dest.default_preallocation),
        requested_size: dest.requested_size,
        filesystem_overhead: dest.filesystem_overhead,
        checksum,
        log: dest.log,
        import_proxy: None,
    }
}

/// Whether a request is an upload's: the mover waits for bytes from the upload proxy.
pub fn is_upload(request: &pb::PopulateRequest) -> bool {
    matches!(request.source.as_ref().and_then(|s| s.kind.as_ref()), Some(pb::source::Kind::Upload(_)))
}

/// What the event says when a registry source asks for `pullMethod: node`, which cdi-rs
/// serves as a pod pull; `None` for every other source.
pub fn node_pull_fallback(plan: &ImportPlan) -> Option<&'static str> {
    match &plan.source {
        ImportSource::Registry(r) if r.pull_method == crate::plan::PullMethod::Node => {
            Some(crate::plan::NODE_PULL_FALLBACK)
        }
        _ => None,
    }
}

fn content_type(content_type: ContentType) -> pb::ContentType {
    match content_type {
        ContentType::Archive => pb::ContentType::Archive,
        ContentType::Kubevirt => pb::ContentType::Kubevirt,
    }
}

/// The HTTP source with what its Secrets and ConfigMap hold.
async fn http_source(objects: &impl NamespaceObjects, http: &HttpImport) -> Result<pb::HttpSource, SourceError> {
    let mut source =
        pb::HttpSource { url: http.url.clone(), insecure_skip_verify: http.insecure_skip_verify, ..Default::default() };
    if let Some(name) = &http.secret_ref {
        let (username, password) = key_pair(objects, name, "user", "password").await?;
        source.basic_auth = Some(pb::BasicAuth { username, password });
    }
    if let Some(name) = &http.cert_config_map {
        source.ca_pem = ca_pem(objects, name).await?;
    }
    let mut headers: Vec<Header> = http.extra_headers.clone();
    for name in &http.secret_extra_headers {
        let secret = secret(objects, name).await?;
        // CDI reads one "Name: value" header from the Secret's secretHeader key.
        let bad = |problem: String| SourceError::Secret {
            namespace: objects.namespace().into(),
            name: name.clone(),
            problem,
        };
        let line = secret_value(&secret, secret_keys::SECRET_HEADER)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .ok_or_else(|| bad(format!("lacks the key {}", secret_keys::SECRET_HEADER)))?;
        headers.push(Header::parse(&line).map_err(|e| bad(format!("key {}: {e}", secret_keys::SECRET_HEADER)))?);
    }
    source.headers = headers.into_iter().map(|h| pb::Header { name: h.name, value: h.value }).collect();
    Ok(source)
}

/// The registry source: user and password from the Secret, every PEM of the ConfigMap, and
/// whether CDIConfig lists the registry as insecure.
async fn registry_source(
    objects: &impl NamespaceObjects,
    registry: &RegistryImport,
    insecure_registries: &[String],
) -> Result<pb::RegistrySource, SourceError> {
    let mut source = pb::RegistrySource {
        url: registry.url.clone(),
        insecure: registry.is_insecure(insecure_registries),
        architecture: registry.architecture.clone().unwrap_or_default(),
        ..Default::default()
    };
    if let Some(name) = &registry.secret_ref {
        let (username, password) = key_pair(objects, name, "registry user", "password").await?;
        source.credentials = Some(pb::BasicAuth { username, password });
    }
    if let Some(name) = &registry.cert_config_map {
        source.ca_pem = ca_pem(objects, name).await?;
    }
    Ok(source)
}

/// The S3 source: access keys from the Secret (none: anonymous), every PEM of the ConfigMap.
async fn s3_source(objects: &impl NamespaceObjects, s3: &S3Import) -> Result<pb::S3Source, SourceError> {
    let mut source = pb::S3Source { url: s3.url.clone(), ..Default::default() };
    if let Some(name) = &s3.secret_ref {
        (source.access_key_id, source.secret_key) = key_pair(objects, name, "access key id", "secret key").await?;
    }
    if let Some(name) = &s3.cert_config_map {
        source.ca_pem = ca_pem(objects, name).await?;
    }
    Ok(source)
}

/// The GCS source: the service-account key file from the Secret (none: anonymous). The
/// endpoint is left to the mover (its `STORAGE_EMULATOR_HOST`, else Google's).
async fn gcs_source(objects: &impl NamespaceObjects, gcs: &GcsImport) -> Result<pb::GcsSource, SourceError> {
    let mut source = pb::GcsSource { url: gcs.url.clone(), ..Default::default() };
    if let Some(name) = &gcs.secret_ref {
        let secret = secret(objects, name).await?;
        let key = secret_keys::GCS_CREDENTIALS;
        let bad = |problem: String| SourceError::Secret {
            namespace: objects.namespace().into(),
            name: name.clone(),
            problem,
        };
        let json = secret_value(&secret, key)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| bad(format!("lacks the key {key} (a service-account key file)")))?;
        // Caught here, named by its Secret, rather than as a mover failure; the content is
        // never quoted.
        if serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(json).is_err() {
            return Err(bad(format!("key {key} is not a JSON service-account key file")));
        }
        source.credentials_json = json.to_vec();
    }
    Ok(source)
}

/// The `accessKeyId` and `secretKey` of Secret `name` (CDI's keys for every source that
/// takes a user and a password); `user` and `password` say what they are for this source.
async fn key_pair(
    objects: &impl NamespaceObjects,
    name: &str,
    user: &str,
    password: &str,
) -> Result<(String, String), SourceError> {
    let secret = secret(objects, name).await?;
    let field = |key: &str| secret_value(&secret, key).map(|v| String::from_utf8_lossy(v).into_owned());
    match (field(secret_keys::ACCESS_KEY_ID), field(secret_keys::SECRET_KEY)) {
        (Some(id), Some(key)) => Ok((id, key)),
        _ => Err(SourceError::Secret {
            namespace: objects.namespace().into(),
            name: name.into(),
            problem: format!(
                "needs the keys {} ({user}) and {} ({password})",
                secret_keys::ACCESS_KEY_ID,
                secret_keys::SECRET_KEY
            ),
        }),
    }
}

/// A Secret's value: `data`, or `stringData` on an object the API server has not
/// normalised (as in tests).
fn secret_value<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| v.0.as_slice())
        .or_else(|| secret.string_data.as_ref().and_then(|d| d.get(key)).map(String::as_bytes))
}

/// Every PEM block of ConfigMap `name`: CDI mounts each key as a CA file.
async fn ca_pem(objects: &impl NamespaceObjects, name: &str) -> Result<Vec<u8>, SourceError> {
    let bad = |problem: &str| SourceError::ConfigMap {
        namespace: objects.namespace().into(),
        name: name.into(),
        problem: problem.into(),
    };
    let cm = objects.config_map(name).await?.ok_or_else(|| bad("does not exist"))?;
    let pem: String =
        cm.data.unwrap_or_default().into_values().filter(|v| v.contains("-----BEGIN")).collect::<Vec<_>>().join("\n");
    if pem.is_empty() {
        return Err(bad("holds no PEM certificate"));
    }
    Ok(pem.into_bytes())
}

async fn secret(objects: &impl NamespaceObjects, name: &str) -> Result<Secret, SourceError> {
    objects.secret(name).await?.ok_or_else(|| SourceError::Secret {
        namespace: objects.namespace().into(),
        name: name.into(),
        problem: "does not exist".into(),
    })
}

#[cfg(test)]
mod tests;

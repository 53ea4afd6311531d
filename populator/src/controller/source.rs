//! From a validated import source to the mover's `PopulateRequest`: credentials from the
//! Secret, CA certificates from the ConfigMap, read by the populator and passed in the
//! request (the mover never reads the API).

use cdi_proto::v1 as pb;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret};
use kube::api::Api;

use super::build;
use crate::api::names::{importer, secret_keys};
use crate::plan::{ContentType, Header, HttpImport, ImportPlan, ImportSource};

/// Why a request could not be built (nothing retried until the objects change).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("Secret {namespace}/{name} {problem}")]
    Secret { namespace: String, name: String, problem: String },
    #[error("ConfigMap {namespace}/{name} {problem}")]
    ConfigMap { namespace: String, name: String, problem: String },
    #[error("import source type {variant} is not supported by this populator yet")]
    Unsupported { variant: &'static str },
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

/// Builds the request for an import of a supported kind (http, blank).
pub async fn populate_request(
    client: &kube::Client,
    namespace: &str,
    plan: &ImportPlan,
    dest: Destination,
) -> Result<pb::PopulateRequest, SourceError> {
    let (source, checksum) = match &plan.source {
        ImportSource::Http(http) => {
            let checksum = http.checksum.as_ref().map(|c| c.to_string()).unwrap_or_default();
            (pb::source::Kind::Http(http_source(client, namespace, http).await?), checksum)
        }
        ImportSource::Blank => (pb::source::Kind::Blank(pb::BlankSource {}), String::new()),
        // The reconcilers report these before building a request; refused, not panicked on.
        ImportSource::Unsupported(variant) => return Err(SourceError::Unsupported { variant }),
    };
    Ok(pb::PopulateRequest {
        task_id: dest.task_id,
        source: Some(pb::Source { kind: Some(source) }),
        target: Some(dest.target),
        content_type: content_type(plan.content_type) as i32,
        preallocate: plan.preallocate(dest.default_preallocation),
        requested_size: dest.requested_size,
        filesystem_overhead: dest.filesystem_overhead,
        checksum,
        log: dest.log,
    })
}

fn content_type(content_type: ContentType) -> pb::ContentType {
    match content_type {
        ContentType::Archive => pb::ContentType::Archive,
        ContentType::Kubevirt => pb::ContentType::Kubevirt,
    }
}

/// The HTTP source with what its Secrets and ConfigMap hold.
async fn http_source(client: &kube::Client, namespace: &str, http: &HttpImport) -> Result<pb::HttpSource, SourceError> {
    let mut source =
        pb::HttpSource { url: http.url.clone(), insecure_skip_verify: http.insecure_skip_verify, ..Default::default() };
    if let Some(name) = &http.secret_ref {
        let secret = secret(client, namespace, name).await?;
        let field = |key: &str| {
            secret.data.as_ref().and_then(|d| d.get(key)).map(|v| String::from_utf8_lossy(&v.0).into_owned())
        };
        let bad = |problem: &str| SourceError::Secret {
            namespace: namespace.into(),
            name: name.clone(),
            problem: problem.into(),
        };
        match (field(secret_keys::ACCESS_KEY_ID), field(secret_keys::SECRET_KEY)) {
            (Some(username), Some(password)) => source.basic_auth = Some(pb::BasicAuth { username, password }),
            _ => {
                return Err(bad(&format!(
                    "needs the keys {} (user) and {} (password)",
                    secret_keys::ACCESS_KEY_ID,
                    secret_keys::SECRET_KEY
                )));
            }
        }
    }
    if let Some(name) = &http.cert_config_map {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let cm = api
            .get_opt(name)
            .await
            .map_err(|source| SourceError::Api {
                what: format!("ConfigMap {namespace}/{name}"),
                source: Box::new(source),
            })?
            .ok_or_else(|| SourceError::ConfigMap {
                namespace: namespace.into(),
                name: name.clone(),
                problem: "does not exist".into(),
            })?;
        // CDI mounts every key of the ConfigMap as a CA file: take all PEM blocks.
        let pem: String = cm
            .data
            .unwrap_or_default()
            .into_values()
            .filter(|v| v.contains("-----BEGIN"))
            .collect::<Vec<_>>()
            .join("\n");
        if pem.is_empty() {
            return Err(SourceError::ConfigMap {
                namespace: namespace.into(),
                name: name.clone(),
                problem: "holds no PEM certificate".into(),
            });
        }
        source.ca_pem = pem.into_bytes();
    }
    let mut headers: Vec<Header> = http.extra_headers.clone();
    for name in &http.secret_extra_headers {
        let secret = secret(client, namespace, name).await?;
        // CDI reads one "Name: value" header from the Secret's secretHeader key.
        let line = secret
            .data
            .as_ref()
            .and_then(|d| d.get(secret_keys::SECRET_HEADER))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned());
        let bad = |problem: String| SourceError::Secret { namespace: namespace.into(), name: name.clone(), problem };
        let line = line.ok_or_else(|| bad(format!("lacks the key {}", secret_keys::SECRET_HEADER)))?;
        headers.push(Header::parse(&line).map_err(|e| bad(format!("key {}: {e}", secret_keys::SECRET_HEADER)))?);
    }
    source.headers = headers.into_iter().map(|h| pb::Header { name: h.name, value: h.value }).collect();
    Ok(source)
}

async fn secret(client: &kube::Client, namespace: &str, name: &str) -> Result<Secret, SourceError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    api.get_opt(name)
        .await
        .map_err(|source| SourceError::Api { what: format!("Secret {namespace}/{name}"), source: Box::new(source) })?
        .ok_or_else(|| SourceError::Secret {
            namespace: namespace.into(),
            name: name.into(),
            problem: "does not exist".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DataVolumeBlankImage, ImportSourceType, VolumeImportSourceSpec};

    /// A client that never connects: a blank source reads no Secret or ConfigMap.
    fn offline_client() -> kube::Client {
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("a URL"));
        kube::Client::try_from(config).expect("a client")
    }

    #[tokio::test]
    async fn a_blank_source_becomes_the_movers_blank_source() {
        let spec = VolumeImportSourceSpec {
            source: Some(ImportSourceType { blank: Some(DataVolumeBlankImage {}), ..Default::default() }),
            preallocation: Some(true),
            ..Default::default()
        };
        let plan = ImportPlan::try_from(&spec).expect("a valid blank source");
        let dest = Destination {
            task_id: "prime-uid-0".into(),
            target: pb::Target::default(),
            requested_size: 64 << 20,
            filesystem_overhead: Some(0.06),
            default_preallocation: false,
            log: None,
        };
        let req = populate_request(&offline_client(), "ns", &plan, dest).await.expect("a request");
        assert_eq!(req.source.and_then(|s| s.kind), Some(pb::source::Kind::Blank(pb::BlankSource {})));
        assert_eq!(req.content_type, pb::ContentType::Kubevirt as i32);
        assert!(req.preallocate);
        assert!(req.checksum.is_empty());
        assert_eq!((req.requested_size, req.filesystem_overhead), (64 << 20, Some(0.06)));
    }
}

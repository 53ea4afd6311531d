//! [`RegistryImport`]: a checked `spec.source.registry` (a containerDisk image).

use super::{PlanError, non_empty, parse_url};
use crate::api::DataVolumeSourceRegistry;

const URL_FIELD: &str = "spec.source.registry.url";
const URL_FORMS: &str = "docker://HOST[:PORT]/REPOSITORY[:TAG|@DIGEST] or oci-archive:///PATH";

/// A container image whose disk is the one file under `/disk/`, checked. Secret and
/// ConfigMap names are in the source's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryImport {
    /// A `docker://` or `oci-archive://` URL, as written.
    pub url: String,
    /// Secret with `accessKeyId` (user) and `secretKey` (password).
    pub secret_ref: Option<String>,
    /// ConfigMap whose values are PEM CA certificates to trust for the registry.
    pub cert_config_map: Option<String>,
    /// Who pulls, as asked. cdi-rs always pulls through the mover; see [`PullMethod::Node`].
    pub pull_method: PullMethod,
    /// `platform.architecture`: which image of a multi-platform index. `None`: the node's.
    pub architecture: Option<String>,
}

/// `spec.source.registry.pullMethod`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PullMethod {
    /// The importer pulls (CDI's default): here, the node's mover.
    #[default]
    Pod,
    /// CDI has the kubelet pull the image into the node's image cache. cdi-rs has no way
    /// into that cache without a container runtime of its own: it falls back to the pod
    /// pull and says so in an event.
    Node,
}

/// What cdi-rs says (an event on the PVC, and on the DataVolume) when a registry source
/// asks for [`PullMethod::Node`].
pub const NODE_PULL_FALLBACK: &str = "pullMethod node is not available in cdi-rs: the node's mover pulls the image \
                                      itself (as for pullMethod pod), with the source's Secret and certConfigMap; \
                                      the node's image cache and pull secrets are not used";

impl RegistryImport {
    /// The registry's `host[:port]` for a `docker://` URL; `None` for an OCI archive.
    pub fn registry_host(&self) -> Option<String> {
        let url = url::Url::parse(&self.url).ok().filter(|u| u.scheme() == "docker")?;
        let host = url.host_str()?;
        Some(match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        })
    }

    /// Whether CDIConfig's `spec.insecureRegistries` lists this registry: an entry equal
    /// to its `host[:port]` (case-insensitive; a scheme or a trailing `/` written with
    /// the entry is ignored). An OCI archive is never a registry.
    pub fn is_insecure(&self, insecure_registries: &[String]) -> bool {
        let Some(host) = self.registry_host() else { return false };
        insecure_registries.iter().any(|entry| {
            let entry = entry.trim();
            let entry = ["docker://", "https://", "http://"]
                .iter()
                .find_map(|scheme| entry.strip_prefix(scheme))
                .unwrap_or(entry)
                .trim_end_matches('/');
            entry.eq_ignore_ascii_case(&host)
        })
    }
}

impl TryFrom<&DataVolumeSourceRegistry> for RegistryImport {
    type Error = PlanError;

    /// # Errors
    /// Both or neither of `url` and `imageStream`; an image stream (OpenShift); a URL that
    /// is not `docker://HOST/...` or `oci-archive:///PATH`; a `pullMethod` other than
    /// `pod`, `node` or unset.
    fn try_from(registry: &DataVolumeSourceRegistry) -> Result<Self, Self::Error> {
        let url = non_empty(registry.url.as_ref());
        let stream = non_empty(registry.image_stream.as_ref());
        let url = match (url, stream) {
            (Some(url), None) => url,
            (None, Some(_)) => return Err(PlanError::ImageStreamUnsupported),
            _ => return Err(PlanError::RegistryUrlOrImageStream),
        };
        check_url(&url)?;
        let pull_method = match registry.pull_method.as_deref().unwrap_or("") {
            "" | "pod" => PullMethod::Pod,
            "node" => PullMethod::Node,
            other => return Err(PlanError::InvalidPullMethod { value: other.to_owned() }),
        };
        Ok(RegistryImport {
            url,
            secret_ref: non_empty(registry.secret_ref.as_ref()),
            cert_config_map: non_empty(registry.cert_config_map.as_ref()),
            pull_method,
            architecture: registry.platform.as_ref().and_then(|p| non_empty(p.architecture.as_ref())),
        })
    }
}

fn check_url(text: &str) -> Result<(), PlanError> {
    let url = parse_url(URL_FIELD, text)?;
    let incomplete = |what| PlanError::IncompleteUrl { field: URL_FIELD, what, expected: URL_FORMS };
    match url.scheme() {
        "docker" => {
            if url.host_str().is_none_or(str::is_empty) {
                return Err(incomplete("a registry host"));
            }
            if url.path().trim_matches('/').is_empty() {
                return Err(incomplete("a repository"));
            }
            Ok(())
        }
        "oci-archive" if url.path().trim_matches('/').is_empty() => Err(incomplete("an archive path")),
        "oci-archive" => Ok(()),
        other => {
            Err(PlanError::UnsupportedUrlScheme { field: URL_FIELD, scheme: other.to_owned(), expected: URL_FORMS })
        }
    }
}

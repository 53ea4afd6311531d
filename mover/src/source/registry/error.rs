//! Why a container image could not be imported. Every message names the image as it may be
//! shown (no credentials ever reach these strings).

/// A registry or image problem; terminal unless [`RegistryError::is_retryable`] says otherwise.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("invalid platform {platform:?}: expected ARCH or OS/ARCH[/VARIANT], e.g. arm64 or linux/arm64")]
    InvalidPlatform { platform: String },
    #[error("{image}: the registry refused the credentials or requires some ({detail}); check the pull secret")]
    Unauthorized { image: String, detail: String },
    #[error("{image}: {what} not found in the registry ({detail})")]
    NotFound { image: String, what: &'static str, detail: String },
    #[error("{image}: no image for platform {wanted} in the image index; it has: {}", available.join(", "))]
    NoPlatform { image: String, wanted: String, available: Vec<String> },
    #[error("{image}: unsupported media type {media_type:?} ({role})")]
    UnsupportedMediaType { image: String, media_type: String, role: &'static str },
    #[error("{image}: unsupported digest {digest:?}; only sha256 and sha512 are verified")]
    UnsupportedDigest { image: String, digest: String },
    #[error(
        "{image}: layer {digest} does not match its digest or size (got {actual}); the image is corrupt or \
         was tampered with, nothing was kept"
    )]
    LayerMismatch { image: String, digest: String, actual: String },
    #[error("{image}: no regular file under /disk/ in the image's layers; a containerDisk holds its disk there")]
    NoDisk { image: String },
    #[error("{image}: more than one file under /disk/ ({}); a containerDisk holds exactly one", files.join(", "))]
    MoreThanOneDisk { image: String, files: Vec<String> },
    #[error("{image}: layer {digest} has an entry that leaves the image root ({entry:?})")]
    PathEscape { image: String, digest: String, entry: String },
    #[error("{image}: layer {digest} is not a valid (compressed) tar: {detail}")]
    BadLayer { image: String, digest: String, detail: String },
    #[error(
        "{image}: the image is a bootable container (label {label}); such images are not containerDisks and \
         cannot be imported"
    )]
    Bootable { image: String, label: String },
    #[error("{image}: the registry answered with something unusable: {detail}")]
    Invalid { image: String, detail: String },
    #[error("{image}: OCI archive: {detail}")]
    Archive { image: String, detail: String },
    #[error("{image}: HTTP {status} from the registry ({detail}); will retry")]
    Server { image: String, status: u16, detail: String },
    #[error("{image}: cannot reach the registry: {detail}")]
    Network { image: String, detail: String },
}

impl RegistryError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, RegistryError::Network { .. } | RegistryError::Server { .. })
    }

    pub fn reason(&self) -> crate::error::Reason {
        use crate::error::Reason;
        match self {
            RegistryError::Unauthorized { .. } => Reason::Unauthorized,
            RegistryError::NotFound { .. } | RegistryError::NoPlatform { .. } | RegistryError::NoDisk { .. } => {
                Reason::NotFound
            }
            RegistryError::Network { .. } | RegistryError::Server { .. } => Reason::SourceUnavailable,
            _ => Reason::SourceInvalid,
        }
    }
}

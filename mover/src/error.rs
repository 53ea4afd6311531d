//! The import's error type: one variant per layer, each layer with its own enum.
//!
//! Every error answers two questions for the caller: is it worth retrying
//! ([`ImportError::is_retryable`]), and which short reason code describes it
//! ([`ImportError::reason`]), so a controller can decide without parsing messages.

use crate::archive::ArchiveError;
use crate::decompress::DecompressError;
use crate::disk::TargetError;
use crate::format::FormatError;
use crate::source::SourceError;

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Decompress(#[from] DecompressError),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(
        "checksum mismatch: expected {algorithm}:{expected} but the source has {algorithm}:{actual}; \
         the image was discarded"
    )]
    ChecksumMismatch { algorithm: &'static str, expected: String, actual: String },
    #[error(
        "virtual image size {virtual_size} is larger than the reported available storage {available}; \
         a larger volume is required"
    )]
    TooLarge { virtual_size: u64, available: u64 },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("import cancelled")]
    Cancelled,
}

/// A short, stable reason code for an [`ImportError`] (for events, metrics and gRPC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The source said the object does not exist (HTTP 404/410, missing file).
    NotFound,
    /// The source refused our credentials (HTTP 401/403).
    Unauthorized,
    /// A transient failure talking to the source (network, 5xx, timeouts).
    SourceUnavailable,
    /// The source answered in a way we cannot use (bad URL, TLS setup, unexpected status).
    SourceInvalid,
    ChecksumMismatch,
    TooLarge,
    /// The image is malformed, truncated or hostile.
    InvalidImage,
    /// A format or feature we do not convert (encryption, backing files, differencing disks, ...).
    UnsupportedImage,
    /// The archive was refused (escapes, device nodes) or is malformed.
    InvalidArchive,
    /// Writing the target failed.
    TargetFailed,
    InvalidRequest,
    Cancelled,
}

impl Reason {
    pub const ALL: [Reason; 12] = [
        Reason::NotFound,
        Reason::Unauthorized,
        Reason::SourceUnavailable,
        Reason::SourceInvalid,
        Reason::ChecksumMismatch,
        Reason::TooLarge,
        Reason::InvalidImage,
        Reason::UnsupportedImage,
        Reason::InvalidArchive,
        Reason::TargetFailed,
        Reason::InvalidRequest,
        Reason::Cancelled,
    ];

    /// The CamelCase code: `Failed.reason` on the wire, log fields, metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotFound => "NotFound",
            Reason::Unauthorized => "Unauthorized",
            Reason::SourceUnavailable => "SourceUnavailable",
            Reason::SourceInvalid => "SourceInvalid",
            Reason::ChecksumMismatch => "ChecksumMismatch",
            Reason::TooLarge => "TooLarge",
            Reason::InvalidImage => "InvalidImage",
            Reason::UnsupportedImage => "UnsupportedImage",
            Reason::InvalidArchive => "InvalidArchive",
            Reason::TargetFailed => "TargetFailed",
            Reason::InvalidRequest => "InvalidRequest",
            Reason::Cancelled => "Cancelled",
        }
    }
}

impl ImportError {
    /// Whether trying the same import again later may succeed.
    ///
    /// Terminal errors (404, refused credentials, checksum mismatch, an image too large or
    /// corrupt) must not loop: retrying cannot change their outcome.
    pub fn is_retryable(&self) -> bool {
        match self {
            ImportError::Source(e) => e.is_retryable(),
            ImportError::Target(e) => e.is_retryable(),
            // A decoder error on a network stream may be a truncated transfer that the
            // transport failed to flag; it is still the content that is bad as far as we can
            // tell, so do not retry.
            ImportError::Decompress(_)
            | ImportError::Format(_)
            | ImportError::Archive(_)
            | ImportError::ChecksumMismatch { .. }
            | ImportError::TooLarge { .. }
            | ImportError::InvalidRequest(_)
            | ImportError::Cancelled => false,
        }
    }

    pub fn reason(&self) -> Reason {
        match self {
            ImportError::Source(e) => e.reason(),
            ImportError::Decompress(_) => Reason::InvalidImage,
            ImportError::Format(e) => e.reason(),
            ImportError::Target(_) => Reason::TargetFailed,
            ImportError::Archive(_) => Reason::InvalidArchive,
            ImportError::ChecksumMismatch { .. } => Reason::ChecksumMismatch,
            ImportError::TooLarge { .. } => Reason::TooLarge,
            ImportError::InvalidRequest(_) => Reason::InvalidRequest,
            ImportError::Cancelled => Reason::Cancelled,
        }
    }
}

pub use cdi_common::one_line;

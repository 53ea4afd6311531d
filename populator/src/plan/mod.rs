//! Validated, kube-free specs of our source kinds: what the controller acts on.
//!
//! Each kind converts once, with `TryFrom`, into a plan ([`ImportPlan`], [`UploadPlan`],
//! [`ClonePlan`]); a spec that cannot work fails with a [`PlanError`] naming the field and
//! what to do, meant for an event or condition message. The checks are those CDI's admission
//! webhook makes (we have no webhook), plus a few CDI leaves to the importer pod.
//!
//! A source variant the data path cannot handle yet (`imageio`, `vddk`) converts to
//! [`ImportSource::Unsupported`], never to something that silently does less.
//!
//! Messages never quote URLs or header values: either may carry credentials.

mod clone;
mod gcs;
mod http;
mod import;
mod registry;
mod s3;
mod upload;

pub use clone::{ClonePlan, CloneSource};
pub use gcs::GcsImport;
pub use http::{Checksum, ChecksumAlgorithm, ChecksumError, Header, HeaderError, HttpImport};
pub use import::{ImportPlan, ImportSource};
pub use registry::{NODE_PULL_FALLBACK, PullMethod, RegistryImport};
pub use s3::S3Import;
pub use upload::UploadPlan;

/// What the source holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ContentType {
    /// A VM disk image, converted to raw (CDI's default).
    #[default]
    Kubevirt,
    /// A tar archive, extracted into a filesystem volume. Not for block volumes (the
    /// controller knows the volume mode; it must refuse that pairing).
    Archive,
}

impl ContentType {
    /// CDI's spelling, as in `spec.contentType` and the `storage.contentType` annotation.
    pub fn as_str(self) -> &'static str {
        match self {
            ContentType::Kubevirt => "kubevirt",
            ContentType::Archive => "archive",
        }
    }

    /// Unset or `""` is `kubevirt`, as in CDI; the match is exact (CDI's is too).
    fn from_spec(value: Option<&str>) -> Result<Self, PlanError> {
        match value.unwrap_or("") {
            "" | "kubevirt" => Ok(ContentType::Kubevirt),
            "archive" => Ok(ContentType::Archive),
            other => Err(PlanError::InvalidContentType { value: other.to_owned() }),
        }
    }
}

impl std::fmt::Display for ContentType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a source object cannot be acted on. Terminal: it stays so until the spec changes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlanError {
    /// `spec.source` is unset or names no variant.
    #[error(
        "spec.source names no source: set exactly one of http, s3, gcs, registry, blank, \
         imageio, vddk"
    )]
    NoSource,
    /// `spec.source` names several variants.
    #[error("spec.source names several sources ({}): set exactly one", .found.join(", "))]
    MultipleSources {
        /// The variants set, in spec order.
        found: Vec<&'static str>,
    },
    /// `spec.contentType` is neither `kubevirt` nor `archive`.
    #[error("spec.contentType {value:?} is not one of \"kubevirt\", \"archive\"")]
    InvalidContentType {
        /// The value given.
        value: String,
    },
    /// `archive` with a source that only yields disk images.
    #[error("spec.contentType \"archive\" cannot be used with a {variant} source: use \"kubevirt\"")]
    ArchiveNotAllowed {
        /// The source variant.
        variant: &'static str,
    },
    /// A URL field is empty.
    #[error("{field} is empty: give the URL of the image")]
    MissingUrl {
        /// The field's path, e.g. `spec.source.http.url`.
        field: &'static str,
    },
    /// A URL field does not parse.
    #[error("{field} is not a valid absolute URL")]
    InvalidUrl {
        /// The field's path.
        field: &'static str,
        /// What the parser said (it does not quote the URL).
        #[source]
        cause: url::ParseError,
    },
    /// A URL has a scheme this source cannot fetch.
    #[error("{field} has scheme {scheme:?}: use {expected}")]
    UnsupportedUrlScheme {
        /// The field's path.
        field: &'static str,
        /// The scheme given.
        scheme: String,
        /// The forms this source takes, e.g. `http or https`.
        expected: &'static str,
    },
    /// A URL of the right scheme that does not name what the source needs (a registry
    /// host, a bucket and an object).
    #[error("{field} does not name {what}: use {expected}")]
    IncompleteUrl {
        /// The field's path.
        field: &'static str,
        /// What is missing, e.g. `an object key`.
        what: &'static str,
        /// The forms this source takes.
        expected: &'static str,
    },
    /// `registry.pullMethod` is neither `pod` nor `node`.
    #[error("spec.source.registry.pullMethod {value:?} is not one of \"pod\", \"node\"")]
    InvalidPullMethod {
        /// The value given.
        value: String,
    },
    /// A registry source naming an OpenShift image stream.
    #[error(
        "spec.source.registry.imageStream names an OpenShift image stream, which cdi-rs cannot resolve: give \
         spec.source.registry.url (docker://HOST/REPOSITORY:TAG) instead"
    )]
    ImageStreamUnsupported,
    /// A registry source with both or neither of `url` and `imageStream`.
    #[error("spec.source.registry needs exactly one of url and imageStream")]
    RegistryUrlOrImageStream,
    /// An `extraHeaders` entry is not a valid header line.
    #[error("spec.source.http.extraHeaders[{index}] is not a \"Name: value\" header line")]
    InvalidExtraHeader {
        /// Its position.
        index: usize,
        /// What is wrong with it.
        #[source]
        cause: HeaderError,
    },
    /// A `secretExtraHeaders` entry is not a Secret name.
    #[error("spec.source.http.secretExtraHeaders[{index}] is empty: give a Secret name")]
    EmptySecretExtraHeader {
        /// Its position.
        index: usize,
    },
    /// `checksum` is malformed.
    #[error("spec.source.http.checksum is not valid")]
    InvalidChecksum(#[source] ChecksumError),
    /// A clone source of a kind that cannot be cloned.
    #[error("spec.source.kind {kind:?} cannot be cloned: use PersistentVolumeClaim or VolumeSnapshot")]
    UnsupportedCloneSourceKind {
        /// The kind given.
        kind: String,
    },
    /// A clone source without a name.
    #[error("spec.source.name is empty: name the PersistentVolumeClaim or VolumeSnapshot to copy")]
    MissingCloneSourceName,
}

/// Parses the URL in `field`: empty and unparsable are refused without quoting it.
fn parse_url(field: &'static str, text: &str) -> Result<url::Url, PlanError> {
    if text.is_empty() {
        return Err(PlanError::MissingUrl { field });
    }
    url::Url::parse(text).map_err(|cause| PlanError::InvalidUrl { field, cause })
}

/// The URL form of an object store's object, for [`object_url`].
#[derive(Clone, Copy, Debug)]
enum BucketIn {
    /// `SCHEME://BUCKET/OBJECT` (`s3://`, `gs://`).
    Host,
    /// `http(s)://HOST/BUCKET/OBJECT` (path style).
    Path,
}

/// Checks that an object store's URL names a bucket and `an object` (the words used in the
/// refusal, e.g. "an object key"); `field` and `expected` name the field and its forms.
fn object_url(
    url: &url::Url,
    bucket_in: BucketIn,
    field: &'static str,
    expected: &'static str,
    an_object: &'static str,
) -> Result<(), PlanError> {
    let path = url.path().trim_start_matches('/');
    let (bucket, object) = match bucket_in {
        BucketIn::Host => (url.host_str().unwrap_or_default(), path),
        BucketIn::Path => path.split_once('/').unwrap_or((path, "")),
    };
    let incomplete = |what| PlanError::IncompleteUrl { field, what, expected };
    if bucket.trim_matches('/').is_empty() {
        return Err(incomplete("a bucket"));
    }
    if object.is_empty() {
        return Err(incomplete(an_object));
    }
    Ok(())
}

/// CDI's optional strings are Go strings where `""` means unset.
fn non_empty(value: Option<&String>) -> Option<String> {
    value.filter(|v| !v.is_empty()).cloned()
}

#[cfg(test)]
mod tests;

//! [`GcsImport`]: a checked `spec.source.gcs`.

use super::{BucketIn, PlanError, non_empty, object_url, parse_url};
use crate::api::DataVolumeSourceGcs;

const URL_FIELD: &str = "spec.source.gcs.url";
const URL_FORMS: &str = "gs://BUCKET/OBJECT or https://storage.cloud.google.com/BUCKET/OBJECT";
/// The one https host CDI takes for GCS objects.
const GCS_HOST: &str = "storage.cloud.google.com";

/// An object in Google Cloud Storage, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcsImport {
    /// `gs://BUCKET/OBJECT` or `https://storage.cloud.google.com/BUCKET/OBJECT`, as written.
    pub url: String,
    /// Secret with a service-account key under `credentials.json`; `None`: anonymous.
    pub secret_ref: Option<String>,
}

impl TryFrom<&DataVolumeSourceGcs> for GcsImport {
    type Error = PlanError;

    /// # Errors
    /// An empty or unparsable URL, another scheme or https host, or one without a bucket
    /// and an object.
    fn try_from(gcs: &DataVolumeSourceGcs) -> Result<Self, Self::Error> {
        let url = parse_url(URL_FIELD, &gcs.url)?;
        let bucket_in = match url.scheme() {
            "gs" => BucketIn::Host,
            "https" if url.host_str() == Some(GCS_HOST) => BucketIn::Path,
            "https" => {
                return Err(PlanError::IncompleteUrl {
                    field: URL_FIELD,
                    what: "storage.cloud.google.com as its host",
                    expected: URL_FORMS,
                });
            }
            other => {
                return Err(PlanError::UnsupportedUrlScheme {
                    field: URL_FIELD,
                    scheme: other.to_owned(),
                    expected: URL_FORMS,
                });
            }
        };
        object_url(&url, bucket_in, URL_FIELD, URL_FORMS, "an object")?;
        Ok(GcsImport { url: gcs.url.clone(), secret_ref: non_empty(gcs.secret_ref.as_ref()) })
    }
}

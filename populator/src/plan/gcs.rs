//! [`GcsImport`]: a checked `spec.source.gcs`.

use super::{PlanError, non_empty, parse_url};
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
        let incomplete = |what| PlanError::IncompleteUrl { field: URL_FIELD, what, expected: URL_FORMS };
        let (bucket, object) = match url.scheme() {
            "gs" => (url.host_str().unwrap_or_default(), url.path().trim_start_matches('/')),
            "https" if url.host_str() == Some(GCS_HOST) => {
                url.path().trim_start_matches('/').split_once('/').unwrap_or((url.path(), ""))
            }
            "https" => return Err(incomplete("storage.cloud.google.com as its host")),
            other => {
                return Err(PlanError::UnsupportedUrlScheme {
                    field: URL_FIELD,
                    scheme: other.to_owned(),
                    expected: URL_FORMS,
                });
            }
        };
        if bucket.trim_matches('/').is_empty() {
            return Err(incomplete("a bucket"));
        }
        if object.is_empty() {
            return Err(incomplete("an object"));
        }
        Ok(GcsImport { url: gcs.url.clone(), secret_ref: non_empty(gcs.secret_ref.as_ref()) })
    }
}

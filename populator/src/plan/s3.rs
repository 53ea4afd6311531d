//! [`S3Import`]: a checked `spec.source.s3`.

use super::{BucketIn, PlanError, non_empty, object_url, parse_url};
use crate::api::DataVolumeSourceS3;

const URL_FIELD: &str = "spec.source.s3.url";
const URL_FORMS: &str = "s3://BUCKET/KEY or http(s)://ENDPOINT/BUCKET/KEY";

/// An object in an S3-compatible store, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Import {
    /// `s3://BUCKET/KEY` (AWS) or `http(s)://ENDPOINT/BUCKET/KEY` (path style), as written.
    pub url: String,
    /// Secret with `accessKeyId` and `secretKey`; `None`: anonymous.
    pub secret_ref: Option<String>,
    /// ConfigMap whose values are PEM CA certificates to trust for the endpoint.
    pub cert_config_map: Option<String>,
}

impl TryFrom<&DataVolumeSourceS3> for S3Import {
    type Error = PlanError;

    /// # Errors
    /// An empty or unparsable URL, another scheme, or one without a bucket and a key.
    fn try_from(s3: &DataVolumeSourceS3) -> Result<Self, Self::Error> {
        let url = parse_url(URL_FIELD, &s3.url)?;
        // The bucket is the host of an s3:// URL, the first path segment of an endpoint's.
        let bucket_in = match url.scheme() {
            "s3" => BucketIn::Host,
            "http" | "https" => BucketIn::Path,
            other => {
                return Err(PlanError::UnsupportedUrlScheme {
                    field: URL_FIELD,
                    scheme: other.to_owned(),
                    expected: URL_FORMS,
                });
            }
        };
        object_url(&url, bucket_in, URL_FIELD, URL_FORMS, "an object key")?;
        Ok(S3Import {
            url: s3.url.clone(),
            secret_ref: non_empty(s3.secret_ref.as_ref()),
            cert_config_map: non_empty(s3.cert_config_map.as_ref()),
        })
    }
}

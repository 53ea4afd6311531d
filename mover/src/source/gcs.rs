//! Google Cloud Storage objects through the HTTP source: the JSON API's metadata request
//! (size, and a clear not-found or forbidden) then its media download, ranged and parallel.
//! Anonymous, or a service account's bearer token ([`super::google_auth`]). The API's base
//! URL is the request's, else `STORAGE_EMULATOR_HOST` (as Google's client libraries read
//! it: `host:port` or a URL), else Google's.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use futures_util::future::BoxFuture;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use tokio::runtime::Handle;

use super::google_auth::{self, ServiceAccount, Token};
use super::http::{self, HttpOptions, HttpSource, ObjectAccess, RequestAuth};
use super::sigv4::uri_encode;
use super::{Opened, SourceError, redact, redact_str};

pub const GOOGLE_ENDPOINT: &str = "https://storage.googleapis.com";
/// The host of GCS's authenticated browser URLs, which CDI accepts as GCS objects.
const BROWSER_HOST: &str = "storage.cloud.google.com";
pub const EMULATOR_ENV: &str = "STORAGE_EMULATOR_HOST";

/// A GCS object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcsLocation {
    pub bucket: String,
    /// The object name, decoded.
    pub object: String,
}

/// Whether an http(s) URL names a GCS object (CDI's `https://storage.cloud.google.com/…`).
pub fn is_gcs_url(url: &Url) -> bool {
    url.host_str().is_some_and(|h| h.eq_ignore_ascii_case(BROWSER_HOST))
}

impl GcsLocation {
    /// Parses `gs://BUCKET/OBJECT` or `https://storage.cloud.google.com/BUCKET/OBJECT`.
    pub fn parse(s: &str) -> Result<GcsLocation, SourceError> {
        let url = Url::parse(s).map_err(|e| SourceError::InvalidUrl { url: redact_str(s), reason: e.to_string() })?;
        let bad = |reason: &str| SourceError::InvalidUrl { url: redact(&url), reason: reason.to_string() };
        if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
            return Err(bad("a GCS URL carries no credentials or query: pass credentials.json separately"));
        }
        let path = match url.scheme() {
            "gs" => format!("{}{}", url.host_str().unwrap_or(""), url.path()),
            "http" | "https" if is_gcs_url(&url) => url.path().trim_start_matches('/').to_string(),
            _ => return Err(bad("expected gs://BUCKET/OBJECT or https://storage.cloud.google.com/BUCKET/OBJECT")),
        };
        let path = super::s3::percent_decode(&path);
        match path.split_once('/') {
            Some((bucket, object)) if !bucket.is_empty() && !object.is_empty() && !object.ends_with('/') => {
                Ok(GcsLocation { bucket: bucket.to_string(), object: object.to_string() })
            }
            _ => Err(bad("expected a bucket and an object name: gs://BUCKET/OBJECT")),
        }
    }

    pub fn name(&self) -> String {
        format!("gs://{}/{}", self.bucket, self.object)
    }

    /// The JSON API URL of the object's metadata (`media`: its bytes) under `endpoint`.
    fn api_url(&self, endpoint: &Url, media: bool) -> Url {
        let mut url = endpoint.clone();
        let base = endpoint.path().trim_end_matches('/');
        url.set_path(&format!(
            "{base}/storage/v1/b/{}/o/{}",
            uri_encode(&self.bucket, false),
            uri_encode(&self.object, false)
        ));
        url.set_query(Some(if media { "alt=media" } else { "fields=size" }));
        url
    }
}

/// How to reach GCS. The credentials are never printed.
#[derive(Clone, Default)]
pub struct GcsOptions {
    /// A service-account key file's contents; none: anonymous.
    pub credentials_json: Option<Vec<u8>>,
    /// The API's base URL; none: `STORAGE_EMULATOR_HOST`, else Google's.
    pub endpoint: Option<String>,
}

impl fmt::Debug for GcsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcsOptions")
            .field("credentials_json", &self.credentials_json.as_ref().map(|_| "<redacted>"))
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// The API base URL: `explicit`, else the emulator variable, else Google's. A bare
/// `host:port` means plain HTTP, as for Google's client libraries.
pub fn endpoint(explicit: Option<&str>, emulator: Option<&str>) -> Result<Url, SourceError> {
    let chosen = [explicit, emulator].into_iter().flatten().map(str::trim).find(|s| !s.is_empty());
    let text = match chosen {
        None => GOOGLE_ENDPOINT.to_string(),
        Some(s) if s.contains("://") => s.to_string(),
        Some(s) => format!("http://{s}"),
    };
    let url = Url::parse(&text)
        .map_err(|e| SourceError::InvalidUrl { url: redact_str(&text), reason: format!("GCS endpoint: {e}") })?;
    if !matches!(url.scheme(), "http" | "https") || url.query().is_some() || !url.username().is_empty() {
        return Err(SourceError::InvalidUrl {
            url: redact(&url),
            reason: "a GCS endpoint is an http(s) base URL".into(),
        });
    }
    Ok(url)
}

/// Checks a credentials.json before any request: a clear error names what is wrong.
pub fn check_credentials(json: &[u8]) -> Result<(), SourceError> {
    ServiceAccount::parse(json).map(|_| ())
}

/// Bearer tokens of a service account (refreshed when near expiry), or nothing; and GCS's
/// JSON errors read as messages.
#[derive(Debug)]
struct GcsAuth {
    account: Option<(ServiceAccount, reqwest::Client)>,
    token: tokio::sync::Mutex<Option<Token>>,
    name: String,
}

impl GcsAuth {
    async fn bearer(&self) -> Result<Option<String>, SourceError> {
        let Some((account, client)) = &self.account else { return Ok(None) };
        let mut token = self.token.lock().await;
        if token.as_ref().is_none_or(|t| Instant::now() >= t.refresh_at) {
            *token = Some(google_auth::fetch_token(client, account).await?);
        }
        Ok(token.as_ref().map(|t| t.value.clone()))
    }
}

impl RequestAuth for GcsAuth {
    fn authorize<'a>(&'a self, _method: &'a Method, _url: &'a Url) -> BoxFuture<'a, Result<HeaderMap, SourceError>> {
        Box::pin(async move {
            let mut headers = HeaderMap::new();
            if let Some(token) = self.bearer().await? {
                let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| SourceError::Token("the token endpoint sent a malformed access token".into()))?;
                value.set_sensitive(true);
                headers.insert(header::AUTHORIZATION, value);
            }
            Ok(headers)
        })
    }

    fn refusal(&self, status: StatusCode, body: &[u8]) -> Option<SourceError> {
        let detail = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(|m| m.chars().take(300).collect::<String>()))
            .map(|m| format!(" ({m})"))
            .unwrap_or_default();
        let anonymous = if self.account.is_none() {
            "; the request was anonymous: give a service-account credentials.json"
        } else {
            ""
        };
        let message = match status.as_u16() {
            404 => format!("no such bucket or object{detail}: check the URL"),
            401 | 403 => format!(
                "access refused, HTTP {}{detail}: check the service account's permissions{anonymous}",
                status.as_u16()
            ),
            s if super::is_retryable_status(s) => format!("the storage API failed, HTTP {s}{detail}; will retry"),
            s => format!("the storage API refused the request, HTTP {s}{detail}"),
        };
        Some(SourceError::Store {
            object: self.name.clone(),
            status: status.as_u16(),
            retryable: super::is_retryable_status(status.as_u16()),
            message,
        })
    }
}

#[derive(serde::Deserialize)]
struct Metadata {
    /// A decimal string in the JSON API.
    size: serde_json::Value,
}

/// Opens the object: metadata first (its size; errors before any target is touched), then
/// the media download through the HTTP source.
pub fn open(
    location: &GcsLocation,
    opts: &GcsOptions,
    http_opts: &HttpOptions,
    cancel: Option<Arc<AtomicBool>>,
    rt: Handle,
) -> Result<Opened, SourceError> {
    let env = std::env::var(EMULATOR_ENV).ok();
    let base = endpoint(opts.endpoint.as_deref(), env.as_deref())?;
    let http_opts = HttpOptions { credentials: None, headers: Vec::new(), ..http_opts.clone() };
    let client = http::build_client(&http_opts)?;
    let account = opts
        .credentials_json
        .as_deref()
        .filter(|j| !j.iter().all(u8::is_ascii_whitespace))
        .map(ServiceAccount::parse)
        .transpose()?
        .map(|a| (a, client.clone()));
    let name = location.name();
    let auth = Arc::new(GcsAuth { account, token: tokio::sync::Mutex::new(None), name: name.clone() });

    let meta_url = location.api_url(&base, false);
    let size = rt.block_on(async {
        let response =
            client.get(meta_url).headers(auth.authorize(&Method::GET, &base).await?).send().await.map_err(|e| {
                SourceError::Transfer {
                    url: name.clone(),
                    operation: "metadata request",
                    offset: 0,
                    source: e.without_url(),
                }
            })?;
        let status = response.status();
        let body = http::read_limited(response, http::ERROR_BODY_LIMIT).await;
        if !status.is_success() {
            return Err(auth.refusal(status, &body).unwrap_or_else(|| http::status_error(&name, status)));
        }
        let meta: Metadata = serde_json::from_slice(&body).map_err(|e| SourceError::Store {
            object: name.clone(),
            status: status.as_u16(),
            retryable: false,
            message: format!("the storage API's object metadata is not JSON with a size ({e})"),
        })?;
        match &meta.size {
            serde_json::Value::String(s) => s.parse::<u64>().ok(),
            v => v.as_u64(),
        }
        .ok_or_else(|| SourceError::Store {
            object: name.clone(),
            status: status.as_u16(),
            retryable: false,
            message: "the storage API's object metadata has no size".into(),
        })
    })?;
    let access = ObjectAccess { name: Some(name), auth: Some(auth), len: (size > 0).then_some(size) };
    HttpSource::open_with_client(client, location.api_url(&base, true), http_opts, access, cancel, rt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_bucket_and_object() {
        let l = GcsLocation::parse("gs://my-bucket/vm/disk%201.qcow2").unwrap();
        assert_eq!((l.bucket.as_str(), l.object.as_str()), ("my-bucket", "vm/disk 1.qcow2"));
        assert_eq!(l.name(), "gs://my-bucket/vm/disk 1.qcow2");
        let l = GcsLocation::parse("https://storage.cloud.google.com/b/o.img").unwrap();
        assert_eq!((l.bucket.as_str(), l.object.as_str()), ("b", "o.img"));
        let base = Url::parse("http://127.0.0.1:9023").unwrap();
        assert_eq!(
            GcsLocation::parse("gs://b/dir/x+y.img").unwrap().api_url(&base, true).as_str(),
            "http://127.0.0.1:9023/storage/v1/b/b/o/dir%2Fx%2By.img?alt=media"
        );
        for bad in ["gs://bucket", "gs://bucket/", "gs://b/dir/", "https://example.com/b/o", "gs://u:pw@b/o"] {
            let e = GcsLocation::parse(bad).unwrap_err().to_string();
            assert!(e.contains("expected") || e.contains("no credentials"), "{bad}: {e}");
            assert!(!e.contains("pw"), "{e}");
        }
    }

    #[test]
    fn endpoint_follows_the_request_then_the_emulator_variable() {
        assert_eq!(endpoint(None, None).unwrap().as_str(), "https://storage.googleapis.com/");
        assert_eq!(endpoint(None, Some("127.0.0.1:9023")).unwrap().as_str(), "http://127.0.0.1:9023/");
        assert_eq!(endpoint(None, Some("https://gcs.local:8443/")).unwrap().as_str(), "https://gcs.local:8443/");
        assert_eq!(endpoint(Some("http://a:1"), Some("b:2")).unwrap().as_str(), "http://a:1/");
        assert_eq!(endpoint(Some(" "), Some("b:2")).unwrap().as_str(), "http://b:2/");
        assert!(endpoint(Some("ftp://x"), None).is_err());
    }

    #[test]
    fn options_do_not_print_credentials() {
        let o = GcsOptions { credentials_json: Some(b"{\"private_key\":\"SECRET\"}".to_vec()), endpoint: None };
        assert!(!format!("{o:?}").contains("SECRET"));
    }
}

//! S3 objects (AWS or any S3-compatible server) through the HTTP source: path-style URLs,
//! each request signed with SigV4 ([`super::sigv4`]) when keys are given, anonymous
//! otherwise. The HTTP source brings ranges, parallel connections and resumption; this
//! module adds the addressing, the signatures, and S3's error codes read as messages that
//! name the bucket and key (never the keys).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use futures_util::future::BoxFuture;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use tokio::runtime::Handle;

use super::http::{HttpOptions, HttpSource, ObjectAccess, RequestAuth};
use super::sigv4::{self, AmzTime, S3Keys};
use super::{Opened, SourceError, redact};

/// Region of `s3://` URLs when the environment names none (AWS's default).
const DEFAULT_REGION: &str = "us-east-1";

/// Where an S3 object is, and the region its requests are signed for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// `scheme://host[:port]` of the S3 API.
    pub endpoint: Url,
    pub bucket: String,
    /// The object key, decoded.
    pub key: String,
    pub region: String,
    /// How the object is named in messages.
    pub name: String,
}

impl S3Location {
    /// Parses `s3://BUCKET/KEY` (AWS; the region from `AWS_REGION`/`AWS_DEFAULT_REGION`,
    /// else us-east-1) or `http(s)://ENDPOINT/BUCKET/KEY` (path style; the region derived
    /// from the host as CDI does, see [`region_of_host`]).
    pub fn parse(s: &str) -> Result<S3Location, SourceError> {
        let url =
            Url::parse(s).map_err(|e| SourceError::InvalidUrl { url: super::redact_str(s), reason: e.to_string() })?;
        let bad = |reason: &str| SourceError::InvalidUrl { url: redact(&url), reason: reason.to_string() };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("an S3 URL carries no credentials: pass the access key id and secret key separately"));
        }
        if url.query().is_some() {
            return Err(bad("an S3 URL takes no query string; a presigned URL is imported as a plain http(s) source"));
        }
        let (endpoint, region, path) = match url.scheme() {
            "s3" => {
                let bucket = url.host_str().ok_or_else(|| bad("expected s3://BUCKET/KEY"))?;
                let region = ["AWS_REGION", "AWS_DEFAULT_REGION"]
                    .iter()
                    .find_map(|v| std::env::var(v).ok().filter(|r| !r.trim().is_empty()))
                    .unwrap_or_else(|| DEFAULT_REGION.to_string());
                let endpoint = Url::parse(&format!("https://s3.{region}.amazonaws.com/"))
                    .map_err(|_| bad("AWS_REGION is not a valid region name"))?;
                (endpoint, region, format!("{bucket}{}", url.path()))
            }
            "http" | "https" => {
                let host = url.host_str().ok_or_else(|| bad("the endpoint has no host"))?;
                let region = region_of_host(host);
                let mut endpoint = url.clone();
                endpoint.set_path("/");
                endpoint.set_fragment(None);
                (endpoint, region, url.path().to_string())
            }
            other => return Err(bad(&format!("scheme {other:?} is not s3://, http:// or https://"))),
        };
        let path = percent_decode(path.trim_start_matches('/'));
        let (bucket, key) = path.split_once('/').unwrap_or((&path, ""));
        if bucket.is_empty() || key.is_empty() || key.ends_with('/') {
            return Err(bad("expected a bucket and an object key: s3://BUCKET/KEY or http(s)://ENDPOINT/BUCKET/KEY"));
        }
        let name = if url.scheme() == "s3" { format!("s3://{bucket}/{key}") } else { redact(&url) };
        Ok(S3Location { endpoint, bucket: bucket.to_string(), key: key.to_string(), region, name })
    }

    /// The object's path-style URL.
    pub fn object_url(&self) -> Url {
        let mut url = self.endpoint.clone();
        // Encoded here the SigV4 way, so the path signed is the path sent.
        url.set_path(&format!("/{}/{}", sigv4::uri_encode(&self.bucket, false), sigv4::uri_encode(&self.key, true)));
        url
    }
}

/// The signing region for an endpoint host, as CDI derives it: `s3.REGION.amazonaws.com`
/// gives REGION; any other host its first DNS label (servers that ignore the region, as
/// most S3-compatible ones do, accept it). AWS's global and dash-style hosts are read too.
pub fn region_of_host(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    if let Some(inner) = host.strip_suffix(".amazonaws.com") {
        let labels: Vec<&str> = inner.split('.').collect();
        // [bucket.]s3[.dualstack|.s3-accelerate...].REGION  or  [bucket.]s3-REGION
        if let Some(i) = labels.iter().rposition(|l| *l == "s3" || l.starts_with("s3-")) {
            let rest = &labels[i + 1..];
            if let Some(region) = rest.iter().rev().find(|l| **l != "dualstack") {
                return region.to_string();
            }
            if let Some(region) = labels[i].strip_prefix("s3-").filter(|r| *r != "external-1") {
                return region.to_string();
            }
            return DEFAULT_REGION.to_string();
        }
    }
    host.split('.').next().unwrap_or(&host).to_string()
}

pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |j: usize| bytes.get(j).and_then(|c| (*c as char).to_digit(16));
        if let (b'%', Some(h), Some(l)) = (bytes[i], hex(i + 1), hex(i + 2)) {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Signs requests (when keys are given) and reads S3's XML errors.
#[derive(Debug)]
struct S3Auth {
    keys: Option<S3Keys>,
    location: S3Location,
}

impl RequestAuth for S3Auth {
    fn authorize<'a>(&'a self, method: &'a Method, url: &'a Url) -> BoxFuture<'a, Result<HeaderMap, SourceError>> {
        Box::pin(async move {
            let mut headers = HeaderMap::new();
            let Some(keys) = &self.keys else { return Ok(headers) };
            let host = match url.port() {
                Some(port) => format!("{}:{port}", url.host_str().unwrap_or("")),
                None => url.host_str().unwrap_or("").to_string(),
            };
            let time = AmzTime::now();
            let req = sigv4::Request {
                method: method.as_str(),
                path: url.path(),
                query: url.query(),
                headers: &[("host", &host), ("x-amz-content-sha256", sigv4::EMPTY_SHA256), ("x-amz-date", &time.stamp)],
                payload_sha256: sigv4::EMPTY_SHA256,
            };
            let (signed, signature) = sigv4::sign(keys, &self.location.region, &time, &req);
            let value = sigv4::authorization(keys, &self.location.region, &time, &signed, &signature);
            let header = |v: &str| {
                HeaderValue::from_str(v).map_err(|_| {
                    SourceError::InvalidOption(
                        "the S3 access key id contains characters not allowed in a header".into(),
                    )
                })
            };
            let mut authorization = header(&value)?;
            authorization.set_sensitive(true);
            headers.insert("x-amz-date", header(&time.stamp)?);
            headers.insert("x-amz-content-sha256", HeaderValue::from_static(sigv4::EMPTY_SHA256));
            headers.insert(reqwest::header::AUTHORIZATION, authorization);
            Ok(headers)
        })
    }

    fn refusal(&self, status: StatusCode, body: &[u8]) -> Option<SourceError> {
        let body = String::from_utf8_lossy(body);
        // Only known fields are read: S3's error bodies also echo the access key id and the
        // string to sign, which must not reach a message.
        let code = xml_field(&body, "Code").filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric()));
        let (bucket, key) = (&self.location.bucket, &self.location.key);
        let anonymous = if self.keys.is_none() { "; the request was anonymous: give the access keys" } else { "" };
        let message = match code.as_deref() {
            Some("NoSuchKey") => format!("the bucket {bucket:?} has no object {key:?} (NoSuchKey): check the URL"),
            Some("NoSuchBucket") => format!(
                "there is no bucket {bucket:?} at {} (NoSuchBucket): check the URL",
                redact(&self.location.endpoint)
            ),
            Some("InvalidAccessKeyId") => "the server does not know the access key id (InvalidAccessKeyId): check the \
                                           credentials (accessKeyId)"
                .to_string(),
            Some("SignatureDoesNotMatch") => "the secret key does not match the access key id \
                                              (SignatureDoesNotMatch): check the credentials (secretKey)"
                .to_string(),
            Some("AccessDenied") => format!(
                "access to object {key:?} in bucket {bucket:?} is denied (AccessDenied): check the credentials and \
                 the bucket's policy{anonymous}"
            ),
            Some("RequestTimeTooSkewed") => "this node's clock differs from the server's by too much \
                                             (RequestTimeTooSkewed): fix the node's time"
                .to_string(),
            Some(c @ ("AuthorizationHeaderMalformed" | "PermanentRedirect" | "IncorrectEndpoint")) => {
                let hint = xml_field(&body, "Region")
                    .filter(|r| r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
                    .map(|r| format!(": the bucket is in region {r}; name its endpoint, https://s3.{r}.amazonaws.com/{bucket}/KEY"))
                    .unwrap_or_else(|| ": name the bucket's regional endpoint, https://s3.REGION.amazonaws.com/BUCKET/KEY".into());
                format!("the bucket {bucket:?} is served by another endpoint or region ({c}){hint}")
            }
            Some(c) if status.is_server_error() || c == "SlowDown" => {
                format!("the S3 server failed ({c}, HTTP {}); will retry", status.as_u16())
            }
            Some(c) => {
                format!("the S3 server refused object {key:?} in bucket {bucket:?} ({c}, HTTP {})", status.as_u16())
            }
            None => return None,
        };
        Some(SourceError::Store {
            object: self.location.name.clone(),
            status: status.as_u16(),
            retryable: super::is_retryable_status(status.as_u16()) || code.as_deref() == Some("SlowDown"),
            message,
        })
    }
}

/// The text of the first `<field>…</field>`, trimmed.
fn xml_field(body: &str, field: &str) -> Option<String> {
    let start = body.find(&format!("<{field}>"))? + field.len() + 2;
    let end = body[start..].find(&format!("</{field}>"))? + start;
    Some(body[start..end].trim().to_string())
}

/// Opens the object at `location`, signed with `keys` (anonymous without).
pub fn open(
    location: &S3Location,
    keys: Option<&S3Keys>,
    http: &HttpOptions,
    cancel: Option<Arc<AtomicBool>>,
    rt: Handle,
) -> Result<Opened, SourceError> {
    let keys = keys.filter(|k| !k.access_key_id.is_empty() || !k.secret_key.is_empty()).cloned();
    if keys.as_ref().is_some_and(|k| k.access_key_id.is_empty() || k.secret_key.is_empty()) {
        return Err(SourceError::InvalidOption(format!(
            "{}: S3 credentials need both an access key id and a secret key",
            location.name
        )));
    }
    let auth = Arc::new(S3Auth { keys, location: location.clone() });
    // Basic auth and extra headers are HTTP-source options; S3 signs its own requests.
    let opts = HttpOptions { credentials: None, headers: Vec::new(), ..http.clone() };
    let access = ObjectAccess { name: Some(location.name.clone()), auth: Some(auth), len: None };
    HttpSource::open_object(location.object_url(), opts, access, cancel, rt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_follow_cdi_and_aws_host_forms() {
        assert_eq!(region_of_host("s3.eu-west-3.amazonaws.com"), "eu-west-3");
        assert_eq!(region_of_host("s3.dualstack.ap-south-1.amazonaws.com"), "ap-south-1");
        assert_eq!(region_of_host("bucket.s3.us-west-2.amazonaws.com"), "us-west-2");
        assert_eq!(region_of_host("s3-us-west-1.amazonaws.com"), "us-west-1");
        assert_eq!(region_of_host("s3.amazonaws.com"), "us-east-1");
        assert_eq!(region_of_host("s3-external-1.amazonaws.com"), "us-east-1");
        // Anything else: the first label, as CDI does.
        assert_eq!(region_of_host("minio.storage.example.com"), "minio");
        assert_eq!(region_of_host("127.0.0.1"), "127");
        assert_eq!(region_of_host("rgw"), "rgw");
    }

    #[test]
    fn path_style_urls_name_endpoint_bucket_and_key() {
        let l = S3Location::parse("http://127.0.0.1:9000/images/dir/my%20disk.qcow2").unwrap();
        assert_eq!(l.endpoint.as_str(), "http://127.0.0.1:9000/");
        assert_eq!((l.bucket.as_str(), l.key.as_str(), l.region.as_str()), ("images", "dir/my disk.qcow2", "127"));
        assert_eq!(l.object_url().as_str(), "http://127.0.0.1:9000/images/dir/my%20disk.qcow2");
        let l = S3Location::parse("https://s3.eu-central-1.amazonaws.com/b/k.img").unwrap();
        assert_eq!((l.bucket.as_str(), l.key.as_str(), l.region.as_str()), ("b", "k.img", "eu-central-1"));
        assert_eq!(l.name, "https://s3.eu-central-1.amazonaws.com/b/k.img");
    }

    #[test]
    fn s3_urls_go_to_aws() {
        let l = S3Location::parse("s3://my-bucket/vm/disk+1.img").unwrap();
        assert_eq!((l.bucket.as_str(), l.key.as_str()), ("my-bucket", "vm/disk+1.img"));
        assert_eq!(l.endpoint.host_str(), Some(format!("s3.{}.amazonaws.com", l.region).as_str()));
        assert_eq!(l.object_url().path(), "/my-bucket/vm/disk%2B1.img");
        assert_eq!(l.name, "s3://my-bucket/vm/disk+1.img");
    }

    #[test]
    fn bad_urls_say_what_is_wrong_without_secrets() {
        for (url, needle) in [
            ("s3://bucket", "bucket and an object key"),
            ("s3://bucket/", "bucket and an object key"),
            ("http://h:9000/bucket", "bucket and an object key"),
            ("http://h/b/dir/", "bucket and an object key"),
            ("http://AKIA:s3cr3t@h/b/k", "no credentials"),
            ("https://h/b/k?X-Amz-Signature=s3cr3t", "presigned"),
            ("ftp://h/b/k", "ftp"),
        ] {
            let e = S3Location::parse(url).unwrap_err().to_string();
            assert!(e.contains(needle), "{url}: {e}");
            assert!(!e.contains("s3cr3t"), "{e}");
        }
    }

    fn auth(keys: bool) -> S3Auth {
        S3Auth {
            keys: keys.then(|| S3Keys { access_key_id: "AKIDLEAK".into(), secret_key: "SECRETLEAK".into() }),
            location: S3Location::parse("http://127.0.0.1:9000/images/disk.qcow2").unwrap(),
        }
    }

    #[test]
    fn error_codes_become_specific_messages_without_keys() {
        let xml = |code: &str| {
            format!(
                "<?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>m</Message>\
                 <AWSAccessKeyId>AKIDLEAK</AWSAccessKeyId><StringToSign>SECRETLEAK</StringToSign></Error>"
            )
        };
        let refuse = |status: u16, code: &str| {
            auth(true).refusal(StatusCode::from_u16(status).unwrap(), xml(code).as_bytes()).unwrap()
        };
        let e = refuse(404, "NoSuchKey");
        assert!(e.to_string().contains("\"images\" has no object \"disk.qcow2\""), "{e}");
        assert_eq!(e.reason(), crate::error::Reason::NotFound);
        assert!(!e.is_retryable());
        let e = refuse(403, "SignatureDoesNotMatch");
        assert!(e.to_string().contains("secret key does not match"), "{e}");
        assert_eq!(e.reason(), crate::error::Reason::Unauthorized);
        assert!(refuse(403, "InvalidAccessKeyId").to_string().contains("access key id"));
        assert!(refuse(404, "NoSuchBucket").to_string().contains("no bucket \"images\""));
        assert!(refuse(503, "SlowDown").is_retryable());
        assert!(refuse(500, "InternalError").is_retryable());
        for e in [refuse(403, "SignatureDoesNotMatch"), refuse(403, "Weird"), refuse(500, "InternalError")] {
            let text = e.to_string();
            assert!(!text.contains("LEAK"), "{text}");
        }
        assert!(
            auth(false)
                .refusal(StatusCode::FORBIDDEN, xml("AccessDenied").as_bytes())
                .unwrap()
                .to_string()
                .contains("anonymous")
        );
        assert!(auth(true).refusal(StatusCode::NOT_FOUND, b"not xml").is_none());
        let moved = "<Error><Code>PermanentRedirect</Code><Region>eu-west-1</Region></Error>";
        let e = auth(true).refusal(StatusCode::MOVED_PERMANENTLY, moved.as_bytes()).unwrap().to_string();
        assert!(e.contains("region eu-west-1") && e.contains("https://s3.eu-west-1.amazonaws.com/images/KEY"), "{e}");
    }

    #[test]
    fn requests_are_signed_only_with_keys() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let url = auth(true).location.object_url();
        let signed = rt.block_on(auth(true).authorize(&Method::GET, &url)).unwrap();
        let value = signed["authorization"].to_str().unwrap();
        assert!(value.starts_with("AWS4-HMAC-SHA256 Credential=AKIDLEAK/") && value.contains("/127/s3/aws4_request"));
        assert!(signed["authorization"].is_sensitive());
        assert!(!value.contains("SECRETLEAK"));
        assert!(rt.block_on(auth(false).authorize(&Method::GET, &url)).unwrap().is_empty());
    }
}

//! AWS Signature Version 4 for S3 requests, on ring's SHA-256 and HMAC (already linked for
//! TLS). Every request is signed in its headers when it is sent, so HEAD and ranged GETs
//! of the HTTP source each carry their own fresh signature.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use cdi_common::checksum::to_hex as hex;
use cdi_common::utc::UtcTime;
use ring::{digest, hmac};

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const SERVICE: &str = "s3";
/// SHA-256 of the empty body: the payload hash of GET and HEAD.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// An access key pair. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Keys {
    pub access_key_id: String,
    pub secret_key: String,
}

impl fmt::Debug for S3Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("S3Keys(<redacted>)")
    }
}

/// A request time as SigV4 writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmzTime {
    /// `YYYYMMDDTHHMMSSZ`
    pub stamp: String,
    /// `YYYYMMDD`
    pub date: String,
}

impl AmzTime {
    pub fn now() -> AmzTime {
        AmzTime::from_unix(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
    }

    pub fn from_unix(secs: u64) -> AmzTime {
        let t = UtcTime::from_unix(secs);
        let date = format!("{:04}{:02}{:02}", t.year, t.month, t.day);
        let stamp = format!("{date}T{:02}{:02}{:02}Z", t.hour, t.minute, t.second);
        AmzTime { stamp, date }
    }
}

/// What a signature covers.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The path as sent, already URI-encoded (S3 does not encode it twice).
    pub path: &'a str,
    /// The raw query string, if any.
    pub query: Option<&'a str>,
    /// Headers to sign: (name, value); names in any case.
    pub headers: &'a [(&'a str, &'a str)],
    pub payload_sha256: &'a str,
}

/// Signs `req` for `region` at `time`: `(signed header names, hex signature)`.
pub fn sign(keys: &S3Keys, region: &str, time: &AmzTime, req: &Request<'_>) -> (String, String) {
    let mut headers: Vec<(String, String)> =
        req.headers.iter().map(|(n, v)| (n.to_ascii_lowercase(), collapse_spaces(v.trim()))).collect();
    headers.sort();
    let signed_headers = headers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(";");
    let canonical_headers: String = headers.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let canonical = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{}",
        req.method,
        if req.path.is_empty() { "/" } else { req.path },
        canonical_query(req.query.unwrap_or("")),
        req.payload_sha256
    );
    let scope = scope(&time.date, region);
    let to_sign = format!(
        "{ALGORITHM}\n{}\n{scope}\n{}",
        time.stamp,
        hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
    );
    let mut key = hmac_sha256(format!("AWS4{}", keys.secret_key).as_bytes(), time.date.as_bytes());
    for part in [region, SERVICE, "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    (signed_headers, hex(&hmac_sha256(&key, to_sign.as_bytes())))
}

/// The `Authorization` header value for a signature made by [`sign`].
pub fn authorization(keys: &S3Keys, region: &str, time: &AmzTime, signed_headers: &str, signature: &str) -> String {
    format!(
        "{ALGORITHM} Credential={}/{}, SignedHeaders={signed_headers}, Signature={signature}",
        keys.access_key_id,
        scope(&time.date, region)
    )
}

/// The query parameters of a presigned URL, before `X-Amz-Signature` (see the tests).
pub fn presign_query(keys: &S3Keys, region: &str, time: &AmzTime, expires_secs: u64) -> String {
    let credential = format!("{}/{}", keys.access_key_id, scope(&time.date, region));
    format!(
        "X-Amz-Algorithm={ALGORITHM}&X-Amz-Credential={}&X-Amz-Date={}&X-Amz-Expires={expires_secs}&X-Amz-SignedHeaders=host",
        uri_encode(&credential, false),
        time.stamp
    )
}

fn scope(date: &str, region: &str) -> String {
    format!("{date}/{region}/{SERVICE}/aws4_request")
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data).as_ref().to_vec()
}

fn collapse_spaces(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// SigV4's URI encoding: everything but `A-Za-z0-9-._~` (and `/` when `keep_slash`) as %XX.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Query parameters decoded, re-encoded the SigV4 way, sorted by name then value.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (uri_encode(&percent_decode(k), false), uri_encode(&percent_decode(v), false))
        })
        .collect();
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex_at = |j: usize| bytes.get(j).and_then(|c| (*c as char).to_digit(16));
        match (bytes[i], hex_at(i + 1), hex_at(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example credentials of AWS's S3 SigV4 documentation.
    fn example_keys() -> S3Keys {
        S3Keys {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
        }
    }

    fn example_time() -> AmzTime {
        AmzTime { stamp: "20130524T000000Z".into(), date: "20130524".into() }
    }

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(AmzTime::from_unix(1_369_353_600), example_time());
        assert_eq!(AmzTime::from_unix(0).stamp, "19700101T000000Z");
        // 2024-02-29T23:59:59Z: a leap day.
        assert_eq!(AmzTime::from_unix(1_709_251_199).stamp, "20240229T235959Z");
        assert_eq!(AmzTime::from_unix(1_709_251_200).date, "20240301");
    }

    /// AWS's "GET Object" example (Authorization header, with a signed Range header).
    #[test]
    fn aws_example_get_object_header_signature() {
        let req = Request {
            method: "GET",
            path: "/test.txt",
            query: None,
            headers: &[
                ("Host", "examplebucket.s3.amazonaws.com"),
                ("Range", "bytes=0-9"),
                ("x-amz-content-sha256", EMPTY_SHA256),
                ("x-amz-date", "20130524T000000Z"),
            ],
            payload_sha256: EMPTY_SHA256,
        };
        let (signed, signature) = sign(&example_keys(), "us-east-1", &example_time(), &req);
        assert_eq!(signed, "host;range;x-amz-content-sha256;x-amz-date");
        assert_eq!(signature, "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
        let header = authorization(&example_keys(), "us-east-1", &example_time(), &signed, &signature);
        assert_eq!(
            header,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    /// AWS's presigned URL example (query-string authentication, 86400 s).
    #[test]
    fn aws_example_presigned_url() {
        let query = presign_query(&example_keys(), "us-east-1", &example_time(), 86_400);
        let req = Request {
            method: "GET",
            path: "/test.txt",
            query: Some(&query),
            headers: &[("host", "examplebucket.s3.amazonaws.com")],
            payload_sha256: "UNSIGNED-PAYLOAD",
        };
        let (_, signature) = sign(&example_keys(), "us-east-1", &example_time(), &req);
        assert_eq!(signature, "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404");
    }

    #[test]
    fn queries_are_sorted_and_reencoded() {
        assert_eq!(canonical_query("b=2&a=x%2Fy&a=1&c"), "a=1&a=x%2Fy&b=2&c=");
        assert_eq!(canonical_query("k=a+b"), "k=a%20b");
        assert_eq!(uri_encode("dir/a b+c~.img", true), "dir/a%20b%2Bc~.img");
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
    }

    #[test]
    fn keys_are_not_printed() {
        assert!(!format!("{:?}", example_keys()).contains("EXAMPLE"));
    }
}

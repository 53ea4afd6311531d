//! [`HttpImport`]: a checked `spec.source.http`, and the header and checksum formats it
//! uses.

use std::fmt;

use super::{PlanError, non_empty};
use crate::api::DataVolumeSourceHttp;

const URL_FIELD: &str = "spec.source.http.url";

/// An HTTP(S) download, checked. Secret and ConfigMap names are in the source's namespace;
/// the controller reads them and hands the contents to the mover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpImport {
    /// An absolute `http://` or `https://` URL, as written in the spec (not normalised, so
    /// the `storage.import.endpoint` annotation shows what the user wrote).
    pub url: String,
    /// Secret with `accessKeyId`/`secretKey`: basic auth.
    pub secret_ref: Option<String>,
    /// ConfigMap whose values are PEM CA certificates to trust.
    pub cert_config_map: Option<String>,
    /// Extra request headers, parsed.
    pub extra_headers: Vec<Header>,
    /// Secrets each holding one header line under `secretHeader` (parse it with
    /// [`Header::parse`]).
    pub secret_extra_headers: Vec<String>,
    /// Expected digest of the downloaded bytes.
    pub checksum: Option<Checksum>,
    /// Skip TLS certificate verification.
    pub insecure_skip_verify: bool,
}

impl TryFrom<&DataVolumeSourceHttp> for HttpImport {
    type Error = PlanError;

    /// # Errors
    /// An empty, unparsable or non-http(s) `url`; an `extraHeaders` entry that is not a
    /// header line; an empty `secretExtraHeaders` entry; a malformed `checksum`.
    fn try_from(http: &DataVolumeSourceHttp) -> Result<Self, Self::Error> {
        check_url(&http.url)?;
        // CDI drops malformed header lines silently; we refuse them, so a typo is seen.
        let extra_headers = http
            .extra_headers
            .iter()
            .enumerate()
            .map(|(index, line)| Header::parse(line).map_err(|cause| PlanError::InvalidExtraHeader { index, cause }))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(index) = http.secret_extra_headers.iter().position(String::is_empty) {
            return Err(PlanError::EmptySecretExtraHeader { index });
        }
        let checksum = match http.checksum.as_deref() {
            None | Some("") => None,
            Some(text) => Some(Checksum::parse(text).map_err(PlanError::InvalidChecksum)?),
        };
        Ok(HttpImport {
            url: http.url.clone(),
            secret_ref: non_empty(http.secret_ref.as_ref()),
            cert_config_map: non_empty(http.cert_config_map.as_ref()),
            extra_headers,
            secret_extra_headers: http.secret_extra_headers.clone(),
            checksum,
            insecure_skip_verify: http.insecure_skip_verify.unwrap_or(false),
        })
    }
}

fn check_url(text: &str) -> Result<(), PlanError> {
    if text.is_empty() {
        return Err(PlanError::MissingUrl { field: URL_FIELD });
    }
    let url = url::Url::parse(text).map_err(|cause| PlanError::InvalidUrl { field: URL_FIELD, cause })?;
    match url.scheme() {
        // The url crate refuses http(s) URLs without a host, so these have one.
        "http" | "https" => Ok(()),
        other => Err(PlanError::UnsupportedUrlScheme { field: URL_FIELD, scheme: other.to_owned() }),
    }
}

/// One request header. `Debug` hides the value: secret headers carry credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    /// The field name, as written.
    pub name: String,
    /// The value, without surrounding whitespace.
    pub value: String,
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Header").field("name", &self.name).field("value", &"<redacted>").finish()
    }
}

/// Why a header line is refused. Never quotes the value.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    /// No `:` separates name and value.
    #[error("no ':' between name and value")]
    MissingColon,
    /// Nothing before the `:`.
    #[error("the name is empty")]
    EmptyName,
    /// The name has characters HTTP does not allow in a field name.
    #[error("the name has characters not allowed in a header name")]
    InvalidName,
    /// The value has a control character (CR and LF would split the request).
    #[error("the value has a control character")]
    InvalidValue,
}

impl Header {
    /// Parses `"Name: value"` (CDI's format for `extraHeaders` and for the `secretHeader`
    /// key of a secret header). Whitespace around the value is dropped.
    ///
    /// # Errors
    /// No colon, an empty or non-token name, a control character in the value.
    pub fn parse(line: &str) -> Result<Header, HeaderError> {
        let (name, value) = line.split_once(':').ok_or(HeaderError::MissingColon)?;
        let name = name.trim();
        if name.is_empty() {
            return Err(HeaderError::EmptyName);
        }
        if !name.bytes().all(is_token_byte) {
            return Err(HeaderError::InvalidName);
        }
        let value = value.trim_matches([' ', '\t']);
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(HeaderError::InvalidValue);
        }
        Ok(Header { name: name.to_owned(), value: value.to_owned() })
    }
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A digest algorithm CDI accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChecksumAlgorithm {
    /// MD5, 32 hex digits.
    Md5,
    /// SHA-1, 40 hex digits.
    Sha1,
    /// SHA-256, 64 hex digits.
    Sha256,
    /// SHA-512, 128 hex digits.
    Sha512,
}

impl ChecksumAlgorithm {
    /// Lower-case name, as in `md5:...`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChecksumAlgorithm::Md5 => "md5",
            ChecksumAlgorithm::Sha1 => "sha1",
            ChecksumAlgorithm::Sha256 => "sha256",
            ChecksumAlgorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            ChecksumAlgorithm::Md5 => 32,
            ChecksumAlgorithm::Sha1 => 40,
            ChecksumAlgorithm::Sha256 => 64,
            ChecksumAlgorithm::Sha512 => 128,
        }
    }
}

/// An expected digest. `Display` gives `algorithm:hex` in lower case, the form the mover's
/// `PopulateRequest.checksum` takes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Checksum {
    /// The algorithm.
    pub algorithm: ChecksumAlgorithm,
    /// The digest, lower-case hex of the right length.
    pub hex: String,
}

/// Why a checksum is refused.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChecksumError {
    /// No `:` between algorithm and digest.
    #[error("expected \"algorithm:hex\", e.g. \"sha256:9f86d0...\"")]
    MissingColon,
    /// Not md5, sha1, sha256 or sha512.
    #[error("algorithm {0:?} is not one of md5, sha1, sha256, sha512")]
    UnknownAlgorithm(String),
    /// The digest has the wrong number of hex digits for the algorithm.
    #[error("a {algorithm} digest has {expected} hex digits, not {found}")]
    WrongLength {
        /// The algorithm's name.
        algorithm: &'static str,
        /// Digits expected.
        expected: usize,
        /// Digits given.
        found: usize,
    },
    /// The digest has a character that is not a hex digit.
    #[error("the digest is not hexadecimal")]
    NotHex,
}

impl Checksum {
    /// Parses `algorithm:hex` as CDI does: whitespace around either part is ignored, case
    /// does not matter.
    ///
    /// # Errors
    /// See [`ChecksumError`].
    pub fn parse(text: &str) -> Result<Checksum, ChecksumError> {
        let (algorithm, hex) = text.split_once(':').ok_or(ChecksumError::MissingColon)?;
        let algorithm = match algorithm.trim().to_ascii_lowercase().as_str() {
            "md5" => ChecksumAlgorithm::Md5,
            "sha1" => ChecksumAlgorithm::Sha1,
            "sha256" => ChecksumAlgorithm::Sha256,
            "sha512" => ChecksumAlgorithm::Sha512,
            other => return Err(ChecksumError::UnknownAlgorithm(other.to_owned())),
        };
        let hex = hex.trim().to_ascii_lowercase();
        // Digits first: a length count of non-ASCII text would be misleading.
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ChecksumError::NotHex);
        }
        if hex.len() != algorithm.hex_len() {
            return Err(ChecksumError::WrongLength {
                algorithm: algorithm.as_str(),
                expected: algorithm.hex_len(),
                found: hex.len(),
            });
        }
        Ok(Checksum { algorithm, hex })
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

//! [`HttpImport`]: a checked `spec.source.http`, and the header format it uses.

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
            Some(text) => Some(text.parse::<Checksum>().map_err(PlanError::InvalidChecksum)?),
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
        other => Err(PlanError::UnsupportedUrlScheme {
            field: URL_FIELD,
            scheme: other.to_owned(),
            expected: "http or https",
        }),
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

/// Checksum specs are `cdi-common`'s, shared with the mover that verifies them.
pub use cdi_common::checksum::{Algorithm as ChecksumAlgorithm, Checksum, ChecksumError};

//! Google service-account credentials: the OAuth2 JWT bearer flow (RFC 7523). An RS256 JWT
//! signed with the key's PKCS#8 private key (ring) is exchanged at the key's `token_uri`
//! for an access token, which is refreshed before it expires.

use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};

use super::SourceError;

/// Read-only access to object data and metadata.
pub const SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_only";
const JWT_LIFETIME_SECS: u64 = 3600;
/// A token this close to expiry is replaced before use.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// The fields of a service-account key file (`credentials.json`) that the flow needs.
pub struct ServiceAccount {
    pub client_email: String,
    pub token_uri: String,
    key_id: String,
    key: RsaKeyPair,
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount").field("client_email", &self.client_email).finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    private_key: Option<String>,
    private_key_id: Option<String>,
    token_uri: Option<String>,
}

impl ServiceAccount {
    pub fn parse(json: &[u8]) -> Result<ServiceAccount, SourceError> {
        let bad = |why: String| SourceError::InvalidOption(format!("GCS credentials.json: {why}"));
        // serde_json's error names a position, never the text, so no key material leaks.
        let file: KeyFile = serde_json::from_slice(json).map_err(|e| bad(format!("not valid JSON ({e})")))?;
        if let Some(kind) = file.kind.as_deref().filter(|k| *k != "service_account") {
            return Err(bad(format!(
                "type {kind:?} is not supported: give a service-account key (type service_account)"
            )));
        }
        let need = |v: Option<String>, field: &str| {
            v.filter(|s| !s.is_empty()).ok_or_else(|| bad(format!("{field} is missing")))
        };
        let client_email = need(file.client_email, "client_email")?;
        let pem = need(file.private_key, "private_key")?;
        let token_uri =
            file.token_uri.filter(|s| !s.is_empty()).unwrap_or_else(|| "https://oauth2.googleapis.com/token".into());
        if !(token_uri.starts_with("https://") || token_uri.starts_with("http://")) {
            return Err(bad("token_uri must be an http(s) URL".into()));
        }
        let der = pem_body(&pem, "PRIVATE KEY")
            .ok_or_else(|| bad("private_key is not a PKCS#8 PEM (BEGIN PRIVATE KEY)".into()))?;
        let key =
            RsaKeyPair::from_pkcs8(&der).map_err(|e| bad(format!("private_key is not a usable RSA key ({e})")))?;
        Ok(ServiceAccount { client_email, token_uri, key_id: file.private_key_id.unwrap_or_default(), key })
    }

    /// The signed JWT to exchange for a token, issued at `now` (seconds since the epoch).
    pub fn assertion(&self, now: u64) -> Result<String, SourceError> {
        let mut header = serde_json::json!({ "alg": "RS256", "typ": "JWT" });
        if !self.key_id.is_empty() {
            header["kid"] = self.key_id.clone().into();
        }
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + JWT_LIFETIME_SECS,
        });
        let signing_input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut signature = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), signing_input.as_bytes(), &mut signature)
            .map_err(|_| SourceError::Token("cannot sign the service-account JWT".into()))?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

/// The base64 body of the first `-----BEGIN {label}-----` block.
fn pem_body(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = pem[start..].find(&end)? + start;
    let b64: String = pem[start..stop].chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD.decode(b64).ok()
}

/// An access token and when to replace it. Never printed.
#[derive(Clone)]
pub struct Token {
    pub value: String,
    pub refresh_at: Instant,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
}

/// Exchanges a fresh assertion for an access token at the account's `token_uri`.
pub async fn fetch_token(client: &reqwest::Client, account: &ServiceAccount) -> Result<Token, SourceError> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let body = format!(
        "grant_type={}&assertion={}",
        super::sigv4::uri_encode("urn:ietf:params:oauth:grant-type:jwt-bearer", false),
        account.assertion(now)?
    );
    let uri = super::redact_str(&account.token_uri);
    let who = &account.client_email;
    let response = client
        .post(&account.token_uri)
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .map_err(|e| {
            SourceError::TokenRetryable(format!("cannot reach the token endpoint {uri}: {}", e.without_url()))
        })?;
    let status = response.status();
    let text = super::http::read_limited(response, 64 << 10).await;
    if !status.is_success() {
        // OAuth errors are codes and descriptions (invalid_grant: Invalid JWT Signature...).
        let detail = serde_json::from_slice::<serde_json::Value>(&text)
            .ok()
            .map(|v| {
                [v["error"].as_str(), v["error_description"].as_str()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(": ")
            })
            .filter(|d| !d.is_empty())
            .map(|d| format!(" ({})", d.chars().take(200).collect::<String>()))
            .unwrap_or_default();
        let message = format!(
            "the token endpoint {uri} refused the service account {who}: HTTP {}{detail}; check the credentials.json",
            status.as_u16()
        );
        return Err(if super::is_retryable_status(status.as_u16()) {
            SourceError::TokenRetryable(message)
        } else {
            SourceError::Token(message)
        });
    }
    let token: TokenResponse = serde_json::from_slice(&text)
        .map_err(|e| SourceError::Token(format!("the token endpoint {uri} sent no access token ({e})")))?;
    let lifetime = Duration::from_secs(token.expires_in.unwrap_or(JWT_LIFETIME_SECS));
    Ok(Token { value: token.access_token, refresh_at: Instant::now() + lifetime.saturating_sub(REFRESH_MARGIN) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_key_files_say_which_field_without_echoing_keys() {
        let e = ServiceAccount::parse(b"{\"type\":\"authorized_user\",\"refresh_token\":\"SECRET\"}").unwrap_err();
        assert!(e.to_string().contains("authorized_user") && !e.to_string().contains("SECRET"), "{e}");
        let e = ServiceAccount::parse(b"{\"type\":\"service_account\",\"client_email\":\"a@b\"}").unwrap_err();
        assert!(e.to_string().contains("private_key is missing"), "{e}");
        let e = ServiceAccount::parse(
            b"{\"client_email\":\"a@b\",\"private_key\":\"-----BEGIN PRIVATE KEY-----\\nU0VDUkVU\\n-----END PRIVATE KEY-----\\n\"}",
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a usable RSA key") && !e.to_string().contains("U0VDUkVU"), "{e}");
        let e = ServiceAccount::parse(b"{ \"private_key\": \"SECRET").unwrap_err();
        assert!(e.to_string().contains("not valid JSON") && !e.to_string().contains("SECRET"), "{e}");
    }

    #[test]
    fn pem_bodies_decode() {
        assert_eq!(
            pem_body("x\n-----BEGIN PRIVATE KEY-----\nAAEC\nAw==\n-----END PRIVATE KEY-----\n", "PRIVATE KEY").unwrap(),
            [0, 1, 2, 3]
        );
        assert!(
            pem_body("-----BEGIN RSA PRIVATE KEY-----\nAAEC\n-----END RSA PRIVATE KEY-----", "PRIVATE KEY").is_none()
        );
    }
}

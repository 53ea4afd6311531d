//! Upload tokens: what `UploadTokenRequest` hands out and the upload proxy checks.
//!
//! A token is a compact JWT signed ES256 (ECDSA P-256, SHA-256) by the control plane's key,
//! bound to one operation on one claim: `operation: Upload`, the claim's `name` and
//! `namespace`, and `resource` persistentvolumeclaims, as CDI's tokens carry. It lives five
//! minutes (CDI's lifetime) and is checked with ten seconds of leeway for clock skew. Only
//! the control plane holds the private key; the proxy verifies with the public one.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

/// CDI's issuer name, kept so a token reads the same.
pub const ISSUER: &str = "cdi-apiserver";
/// How long a token is good for.
pub const LIFETIME_SECS: i64 = 5 * 60;
/// Clock skew tolerated on `nbf` and `exp`.
pub const LEEWAY_SECS: i64 = 10;
/// The operation an upload token allows.
pub const OPERATION_UPLOAD: &str = "Upload";

/// The resource a token is about: always `persistentvolumeclaims` in core/v1 here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResource {
    pub group: String,
    pub version: String,
    pub resource: String,
}

impl TokenResource {
    pub fn pvcs() -> TokenResource {
        TokenResource { group: String::new(), version: "v1".into(), resource: "persistentvolumeclaims".into() }
    }
}

/// A token's claims.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub operation: String,
    /// The claim's name.
    pub name: String,
    pub namespace: String,
    pub resource: TokenResource,
}

impl Claims {
    /// An upload token for `namespace/name`, issued at `now` (Unix seconds).
    pub fn upload(namespace: &str, name: &str, now: i64) -> Claims {
        Claims {
            iss: ISSUER.into(),
            iat: now,
            nbf: now,
            exp: now + LIFETIME_SECS,
            operation: OPERATION_UPLOAD.into(),
            name: name.into(),
            namespace: namespace.into(),
            resource: TokenResource::pvcs(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is not a JWT (three base64url parts separated by dots)")]
    Malformed,
    #[error("the token is not signed with ES256")]
    Algorithm,
    #[error("the token's signature does not verify: it was not issued by this cluster's cdi-rs")]
    Signature,
    #[error("the token expired {0} s ago; request a new one (UploadTokenRequest)")]
    Expired(i64),
    #[error("the token is not valid before {0} (Unix time)")]
    NotYetValid(i64),
    #[error("the token was not issued for an upload")]
    Operation,
    #[error("the signing key is unusable: {0}")]
    Key(String),
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    typ: String,
}

/// The control plane's private key (PKCS#8 DER of a P-256 key).
pub struct SigningKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    /// A fresh key, as PKCS#8 DER (what the key Secret stores).
    ///
    /// # Errors
    /// Only if the system random source fails.
    pub fn generate_pkcs8() -> Result<Vec<u8>, TokenError> {
        let rng = SystemRandom::new();
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map(|d| d.as_ref().to_vec())
            .map_err(|_| TokenError::Key("cannot generate a P-256 key".into()))
    }

    /// # Errors
    /// A key that is not PKCS#8 P-256.
    pub fn from_pkcs8(der: &[u8]) -> Result<SigningKey, TokenError> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| TokenError::Key(format!("not a PKCS#8 P-256 key: {e}")))?;
        Ok(SigningKey { pair, rng })
    }

    /// The matching public key: an uncompressed SEC1 point (65 bytes).
    pub fn public_key(&self) -> VerifyingKey {
        VerifyingKey(self.pair.public_key().as_ref().to_vec())
    }

    /// Signs `claims` into a compact JWT.
    ///
    /// # Errors
    /// Only if the random source fails.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let header = Header { alg: "ES256".into(), typ: "JWT".into() };
        let encode = |v: &[u8]| B64.encode(v);
        let signing_input = format!("{}.{}", encode(&to_json(&header)), encode(&to_json(claims)));
        let sig = self
            .pair
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| TokenError::Key("signing failed".into()))?;
        Ok(format!("{signing_input}.{}", encode(sig.as_ref())))
    }
}

/// The public half, which is all the proxy needs (kept as the uncompressed SEC1 point).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyingKey(pub Vec<u8>);

impl VerifyingKey {
    /// Checks signature, algorithm, time window (at `now`, Unix seconds) and operation, and
    /// returns the claims. Which claim the token names is for the caller to compare.
    ///
    /// # Errors
    /// See [`TokenError`].
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed);
        };
        let decode = |p: &str| B64.decode(p).map_err(|_| TokenError::Malformed);
        let header: Header = serde_json::from_slice(&decode(h)?).map_err(|_| TokenError::Malformed)?;
        if header.alg != "ES256" {
            return Err(TokenError::Algorithm);
        }
        let signed = &token[..h.len() + 1 + c.len()];
        UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &self.0)
            .verify(signed.as_bytes(), &decode(s)?)
            .map_err(|_| TokenError::Signature)?;
        let claims: Claims = serde_json::from_slice(&decode(c)?).map_err(|_| TokenError::Malformed)?;
        if now > claims.exp + LEEWAY_SECS {
            return Err(TokenError::Expired(now - claims.exp));
        }
        if now + LEEWAY_SECS < claims.nbf {
            return Err(TokenError::NotYetValid(claims.nbf));
        }
        if claims.operation != OPERATION_UPLOAD || claims.resource != TokenResource::pvcs() {
            return Err(TokenError::Operation);
        }
        Ok(claims)
    }
}

/// Header and claims are plain structs of strings and integers: serialising cannot fail.
fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap()
    }

    #[test]
    fn a_token_verifies_with_the_public_key_and_names_its_claim() {
        let k = key();
        let token = k.sign(&Claims::upload("ns", "disk", 1000)).unwrap();
        let claims = k.public_key().verify(&token, 1100).unwrap();
        assert_eq!((claims.namespace.as_str(), claims.name.as_str()), ("ns", "disk"));
        assert_eq!(claims.exp - claims.iat, LIFETIME_SECS);
    }

    #[test]
    fn expired_forged_and_foreign_tokens_are_refused() {
        let k = key();
        let token = k.sign(&Claims::upload("ns", "disk", 1000)).unwrap();
        assert_eq!(k.public_key().verify(&token, 1000 + LIFETIME_SECS + LEEWAY_SECS + 1), Err(TokenError::Expired(11)));
        assert!(k.public_key().verify(&token, 1000 + LIFETIME_SECS + LEEWAY_SECS).is_ok(), "leeway");
        assert_eq!(key().public_key().verify(&token, 1000), Err(TokenError::Signature), "another cluster's key");
        // Claims edited after signing.
        let parts: Vec<&str> = token.split('.').collect();
        let forged = Claims { name: "other".into(), ..Claims::upload("ns", "disk", 1000) };
        let forged = format!("{}.{}.{}", parts[0], B64.encode(serde_json::to_vec(&forged).unwrap()), parts[2]);
        assert_eq!(k.public_key().verify(&forged, 1000), Err(TokenError::Signature));
        assert_eq!(k.public_key().verify("a.b", 1000), Err(TokenError::Malformed));
        assert_eq!(k.public_key().verify("not a token", 1000), Err(TokenError::Malformed));
    }

    #[test]
    fn tokens_for_other_algorithms_or_operations_are_refused() {
        let k = key();
        let none = format!("{}.{}.", B64.encode(br#"{"alg":"none","typ":"JWT"}"#), B64.encode(b"{}"));
        assert_eq!(k.public_key().verify(&none, 0), Err(TokenError::Algorithm));
        let clone = Claims { operation: "Clone".into(), ..Claims::upload("ns", "disk", 1000) };
        assert_eq!(k.public_key().verify(&k.sign(&clone).unwrap(), 1000), Err(TokenError::Operation));
    }
}

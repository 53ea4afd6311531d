//! Service-account tokens: JWTs signed by the cluster (HMAC-SHA256 with a per-cluster key),
//! bound to the account's uid (and optionally a pod's or secret's), with expiry and
//! audiences; and the `TokenRequest` subresource that issues them.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::{Authority, ISSUER, UserInfo, service_account_groups};
use crate::api::error::ApiError;
use crate::api::store::Store;
use crate::api::util::meta_str;

/// `expirationSeconds` when a TokenRequest gives none (Kubernetes' default).
pub const DEFAULT_EXPIRATION: i64 = 3600;
/// The shortest token Kubernetes issues.
const MIN_EXPIRATION: i64 = 600;
/// The longest (`2^32` seconds).
const MAX_EXPIRATION: i64 = 1 << 32;

/// What a token is bound to besides its service account.
#[derive(Debug, Clone)]
struct BoundObject {
    kind: String,
    name: String,
    uid: String,
}

fn now_secs() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn rfc3339(secs: i64) -> String {
    jiff::Timestamp::from_second(secs).map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()).unwrap_or_default()
}

impl Authority {
    /// A token for `namespace/name` with the API server's audience, valid for `expiration`;
    /// what the kubelet mounts into pods.
    ///
    /// # Errors
    /// 404 when the service account does not exist.
    pub fn issue_service_account_token(
        &self,
        store: &Store,
        namespace: &str,
        name: &str,
        expiration: Duration,
    ) -> Result<String, ApiError> {
        let secs = i64::try_from(expiration.as_secs()).unwrap_or(MAX_EXPIRATION);
        self.issue(store, namespace, name, &[ISSUER.to_string()], secs, None).map(|(t, _)| t)
    }

    /// Signs a token; returns it and its expiry (seconds since the epoch).
    fn issue(
        &self,
        store: &Store,
        namespace: &str,
        name: &str,
        audiences: &[String],
        expiration: i64,
        bound: Option<BoundObject>,
    ) -> Result<(String, i64), ApiError> {
        let sa_rt = store.rt("", "serviceaccounts");
        let sa = store.get(&sa_rt, namespace, name)?;
        let now = now_secs();
        let exp = now + expiration;
        let mut k8s = json!({
            "namespace": namespace,
            "serviceaccount": {"name": name, "uid": meta_str(&sa, "uid")},
        });
        if let Some(b) = &bound {
            k8s[b.kind.to_lowercase()] = json!({"name": b.name, "uid": b.uid});
        }
        let claims = json!({
            "iss": ISSUER,
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "aud": audiences,
            "iat": now,
            "nbf": now,
            "exp": exp,
            "jti": uuid::Uuid::new_v4().to_string(),
            "kubernetes.io": k8s,
        });
        let header = json!({"alg": "HS256", "typ": "JWT"});
        let signed =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let sig = ring::hmac::sign(&self.signing_key, signed.as_bytes());
        Ok((format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())), exp))
    }

    /// Checks a service-account token: signature, issuer, time, audience (one of
    /// `audiences`), and that the account (and bound object) still exist with the uids the
    /// token names. Returns the identity and the audiences it is good for.
    pub fn verify_service_account_token(
        &self,
        store: &Store,
        token: &str,
        audiences: &[String],
    ) -> Result<(UserInfo, Vec<String>), String> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err("not a JWT".into());
        };
        let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| "bad signature encoding")?;
        ring::hmac::verify(&self.signing_key, format!("{h}.{p}").as_bytes(), &sig).map_err(|_| "invalid signature")?;
        let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).map_err(|_| "bad claims encoding")?)
            .map_err(|_| "claims are not JSON")?;
        if claims["iss"] != ISSUER {
            return Err("wrong issuer".into());
        }
        let now = now_secs();
        if claims["exp"].as_i64().is_none_or(|e| e <= now) {
            return Err("token has expired".into());
        }
        if claims["nbf"].as_i64().is_some_and(|n| n > now + 60) {
            return Err("token is not valid yet".into());
        }
        let token_aud: Vec<&str> = match &claims["aud"] {
            Value::String(a) => vec![a.as_str()],
            Value::Array(l) => l.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let good: Vec<String> = audiences.iter().filter(|a| token_aud.contains(&a.as_str())).cloned().collect();
        if good.is_empty() {
            return Err("token audiences is invalid for the target audiences".into());
        }
        let k8s = &claims["kubernetes.io"];
        let ns = k8s["namespace"].as_str().unwrap_or_default();
        let name = k8s["serviceaccount"]["name"].as_str().unwrap_or_default();
        let uid = k8s["serviceaccount"]["uid"].as_str().unwrap_or_default();
        let sa = store
            .get(&store.rt("", "serviceaccounts"), ns, name)
            .map_err(|_| format!("service account {ns}/{name} has been deleted"))?;
        if meta_str(&sa, "uid") != uid {
            return Err(format!("service account {ns}/{name} was recreated (uid {uid} is gone)"));
        }
        let mut user = UserInfo {
            name: format!("system:serviceaccount:{ns}:{name}"),
            uid: uid.to_string(),
            groups: service_account_groups(ns),
            ..Default::default()
        };
        for (kind, plural) in [("pod", "pods"), ("secret", "secrets")] {
            let b = &k8s[kind];
            if b.is_null() {
                continue;
            }
            let (bname, buid) = (b["name"].as_str().unwrap_or_default(), b["uid"].as_str().unwrap_or_default());
            let o = store
                .get(&store.rt("", plural), ns, bname)
                .map_err(|_| format!("the {kind} {ns}/{bname} the token is bound to is gone"))?;
            if meta_str(&o, "uid") != buid {
                return Err(format!("the {kind} {ns}/{bname} the token is bound to was recreated"));
            }
            if kind == "pod" {
                user.extra.insert("authentication.kubernetes.io/pod-name".into(), vec![bname.into()]);
                user.extra.insert("authentication.kubernetes.io/pod-uid".into(), vec![buid.into()]);
            }
        }
        if let Some(jti) = claims["jti"].as_str() {
            user.extra.insert("authentication.kubernetes.io/credential-id".into(), vec![format!("JTI={jti}")]);
        }
        Ok((user, good))
    }

    /// `POST /api/v1/namespaces/<ns>/serviceaccounts/<name>/token`: a `TokenRequest` in, the
    /// same with `status.token` out.
    ///
    /// # Errors
    /// 404 for an unknown service account or bound object, 422 for a bad spec, 409 when the
    /// bound object's uid does not match.
    pub fn token_request(&self, store: &Store, namespace: &str, name: &str, body: Value) -> Result<Value, ApiError> {
        let tr_rt = crate::api::registry::ResourceType {
            group: "authentication.k8s.io".into(),
            version: "v1".into(),
            kind: "TokenRequest".into(),
            plural: "tokenrequests".into(),
            singular: "tokenrequest".into(),
            namespaced: true,
            short_names: vec![],
            categories: vec![],
            status: false,
            binding: false,
            custom: false,
            printer_columns: vec![],
            storage: String::new(),
        };
        let spec = &body["spec"];
        let expiration = match &spec["expirationSeconds"] {
            Value::Null => DEFAULT_EXPIRATION,
            v => v.as_i64().ok_or_else(|| {
                ApiError::invalid(
                    &tr_rt,
                    name,
                    format!("spec.expirationSeconds: Invalid value: {v}: must be an integer"),
                )
            })?,
        };
        if expiration < MIN_EXPIRATION {
            return Err(ApiError::invalid(
                &tr_rt,
                name,
                format!(
                    "spec.expirationSeconds: Invalid value: {expiration}: may not specify a duration less than 10 minutes"
                ),
            ));
        }
        if expiration > MAX_EXPIRATION {
            return Err(ApiError::invalid(
                &tr_rt,
                name,
                format!(
                    "spec.expirationSeconds: Invalid value: {expiration}: may not specify a duration larger than 2^32 seconds"
                ),
            ));
        }
        let mut audiences: Vec<String> = spec["audiences"]
            .as_array()
            .map(|l| l.iter().filter_map(|a| a.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        if audiences.is_empty() {
            audiences.push(ISSUER.into());
        }
        let bound = match &spec["boundObjectRef"] {
            Value::Null => None,
            r => {
                let kind = r["kind"].as_str().unwrap_or_default();
                let plural = match kind {
                    "Pod" => "pods",
                    "Secret" => "secrets",
                    other => {
                        return Err(ApiError::invalid(
                            &tr_rt,
                            name,
                            format!(
                                "spec.boundObjectRef.kind: Unsupported value: \"{other}\": supported values: \"Pod\", \"Secret\""
                            ),
                        ));
                    }
                };
                let bname = r["name"].as_str().unwrap_or_default();
                let o = store.get(&store.rt("", plural), namespace, bname)?;
                let uid = meta_str(&o, "uid");
                if let Some(want) = r["uid"].as_str().filter(|u| !u.is_empty())
                    && want != uid
                {
                    return Err(ApiError::conflict(
                        &store.rt("", plural),
                        bname,
                        &format!(
                            "the UID in the bound object reference ({want}) does not match the UID in record ({uid})"
                        ),
                    ));
                }
                Some(BoundObject { kind: kind.to_string(), name: bname.to_string(), uid: uid.to_string() })
            }
        };
        let (token, exp) = self.issue(store, namespace, name, &audiences, expiration, bound)?;
        let mut spec_out = json!({"audiences": audiences, "expirationSeconds": expiration});
        if !spec["boundObjectRef"].is_null() {
            spec_out["boundObjectRef"] = spec["boundObjectRef"].clone();
        }
        Ok(json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": rfc3339(now_secs())},
            "spec": spec_out,
            "status": {"token": token, "expirationTimestamp": rfc3339(exp)},
        }))
    }
}

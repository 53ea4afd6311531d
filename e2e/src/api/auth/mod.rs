//! Who may do what: HTTPS with the cluster's own CA, authentication (the admin's bearer
//! token, service-account tokens, anonymous, impersonation), the RBAC authorizer, and the
//! review APIs (`TokenRequest`, `TokenReview`, `SubjectAccessReview` and kin).
//!
//! All of it sits in one axum middleware in front of the API server's dispatch
//! ([`middleware`]); the in-process controllers write the store directly and are not subject
//! to it, as Kubernetes' own controllers are trusted.

pub mod authn;
pub mod rbac;
pub mod reviews;
pub mod tls;
pub mod tokens;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::ApiError;
use super::protobuf;
use super::store::{Store, WriteOptions};
use super::util::meta_str;

pub use tls::ClusterTls;

/// The groups Kubernetes gives every authenticated and every anonymous request.
pub const AUTHENTICATED: &str = "system:authenticated";
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
pub const ANONYMOUS: &str = "system:anonymous";
/// Members are allowed everything, before RBAC is asked.
pub const MASTERS: &str = "system:masters";
/// The admin identity the kubeconfig carries.
pub const ADMIN_USER: &str = "kubernetes-admin";
/// The service-account token issuer, and the audience the API server accepts by default.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// An authenticated identity (`user.Info`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    pub fn anonymous() -> UserInfo {
        UserInfo { name: ANONYMOUS.into(), groups: vec![UNAUTHENTICATED.into()], ..Default::default() }
    }

    pub fn admin() -> UserInfo {
        UserInfo { name: ADMIN_USER.into(), groups: vec![MASTERS.into(), AUTHENTICATED.into()], ..Default::default() }
    }

    /// `UserInfo` as the authentication.k8s.io types write it.
    pub fn to_json(&self) -> Value {
        let mut u = json!({"username": self.name, "groups": self.groups});
        if !self.uid.is_empty() {
            u["uid"] = json!(self.uid);
        }
        if !self.extra.is_empty() {
            u["extra"] = json!(self.extra);
        }
        u
    }
}

/// `system:serviceaccount:<ns>:<name>` → (ns, name).
pub fn service_account_of(user: &str) -> Option<(&str, &str)> {
    let rest = user.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains(':')).then_some((ns, name))
}

/// The groups of a service account's identity.
pub fn service_account_groups(ns: &str) -> Vec<String> {
    vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{ns}"), AUTHENTICATED.into()]
}

/// The cluster's credentials: its CA and serving certificate, the key that signs
/// service-account tokens, and the admin's token.
pub struct Authority {
    tls: ClusterTls,
    signing_key: ring::hmac::Key,
    admin_token: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys stay out of logs.
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    /// Fresh credentials for one cluster.
    ///
    /// # Errors
    /// When the system's random source or certificate generation fails.
    pub fn generate() -> anyhow::Result<Authority> {
        use ring::rand::SecureRandom as _;
        let rng = ring::rand::SystemRandom::new();
        let signing_key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .map_err(|_| anyhow::anyhow!("no random bytes for the token key"))?;
        let mut admin = [0u8; 32];
        rng.fill(&mut admin).map_err(|_| anyhow::anyhow!("no random bytes for the admin token"))?;
        let admin_token = admin.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Authority { tls: ClusterTls::generate()?, signing_key, admin_token })
    }

    pub fn tls(&self) -> &ClusterTls {
        &self.tls
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.tls.ca_pem
    }

    /// The bearer token of `kubernetes-admin` (group `system:masters`).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }
}

/// What the middleware needs.
#[derive(Debug, Clone)]
pub struct AuthState {
    pub authority: Arc<Authority>,
    pub store: Arc<Store>,
    /// Proxies aggregated APIs (APIServices) with the caller's identity.
    pub aggregator: Arc<super::aggregator::Aggregator>,
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], serde_json::to_vec(v).unwrap_or_default()).into_response()
}

fn error_response(e: &ApiError) -> Response {
    json_response(StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &e.status_body())
}

/// The request path of every API request: authenticate, apply impersonation, authorize,
/// then either answer a review / TokenRequest here or hand the request on to dispatch.
pub async fn middleware(State(st): State<AuthState>, req: Request, next: Next) -> Response {
    match check(&st, req, next).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(code = e.code, message = %e.message, "request refused");
            error_response(&e)
        }
    }
}

async fn check(st: &AuthState, mut req: Request, next: Next) -> Result<Response, ApiError> {
    let real = authn::authenticate(&st.authority, &st.store, req.headers())?;
    let user = authn::impersonate(&st.store, real, req.headers())?;
    let path = req.uri().path().to_string();
    let attrs = rbac::Attributes::from_request(user, req.method(), &path, req.uri().query().unwrap_or(""));
    let decision = rbac::authorize(&st.store, &attrs);
    if !decision.allowed {
        return Err(rbac::forbidden(&attrs, &decision.reason));
    }
    if let Some(kind) = reviews::Endpoint::of(&attrs) {
        if req.method() != Method::POST {
            return Err(ApiError::method_not_allowed());
        }
        let content_type =
            req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let body = axum::body::to_bytes(req.into_body(), 4 << 20)
            .await
            .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        let body: Value = if protobuf::is_protobuf(&content_type) {
            protobuf::decode_as(&body, kind.api_version(), kind.kind())?
        } else {
            serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))?
        };
        let out = reviews::serve(&st.authority, &st.store, &attrs, kind, body)?;
        return Ok(json_response(StatusCode::CREATED, &out));
    }
    // Admission webhooks are told who asked.
    req.extensions_mut().insert(attrs.user.clone());
    st.aggregator.handle(&attrs.user, req, next).await
}

/// Kubernetes' serviceaccount controller: every namespace that is not going away has a
/// `default` ServiceAccount.
///
/// # Errors
/// When a create fails for another reason than a race with a namespace's deletion.
pub fn ensure_default_service_accounts(store: &Store) -> anyhow::Result<()> {
    let sa = store.rt("", "serviceaccounts");
    let opts = WriteOptions { field_manager: "kube-controller-manager".into(), ..Default::default() };
    for ns in store.all(&store.rt("", "namespaces")) {
        let name = meta_str(&ns, "name");
        if !ns["metadata"]["deletionTimestamp"].is_null() || store.get(&sa, name, "default").is_ok() {
            continue;
        }
        match store.create(&sa, name, json!({"metadata": {"name": "default"}}), &opts) {
            Ok(_) => {}
            // The namespace started terminating meanwhile, or someone else created it.
            Err(e) if e.code == 409 || e.code == 403 || e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

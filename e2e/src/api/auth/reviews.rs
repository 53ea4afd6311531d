//! The create-only, never-stored review APIs: `TokenReview` and `SelfSubjectReview`
//! (authentication.k8s.io/v1), `SubjectAccessReview`, `SelfSubjectAccessReview`,
//! `LocalSubjectAccessReview` and `SelfSubjectRulesReview` (authorization.k8s.io/v1), and the
//! `serviceaccounts/<name>/token` subresource (`TokenRequest`). Each answers the object it
//! was given with `status` filled in.

use serde_json::{Value, json};

use super::authn::authenticate_token;
use super::rbac::{self, Attributes};
use super::{Authority, ISSUER, UserInfo};
use crate::api::error::ApiError;
use crate::api::store::Store;

/// Which review a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    TokenReview,
    SelfSubjectReview,
    SubjectAccessReview,
    SelfSubjectAccessReview,
    LocalSubjectAccessReview,
    SelfSubjectRulesReview,
    TokenRequest,
}

impl Endpoint {
    pub fn of(a: &Attributes) -> Option<Endpoint> {
        if !a.resource_request || a.api_version != "v1" {
            return None;
        }
        let cluster = a.namespace.is_empty() && a.name.is_empty();
        Some(match (a.api_group.as_str(), a.resource.as_str(), a.subresource.as_str()) {
            ("authentication.k8s.io", "tokenreviews", "") if cluster => Endpoint::TokenReview,
            ("authentication.k8s.io", "selfsubjectreviews", "") if cluster => Endpoint::SelfSubjectReview,
            ("authorization.k8s.io", "subjectaccessreviews", "") if cluster => Endpoint::SubjectAccessReview,
            ("authorization.k8s.io", "selfsubjectaccessreviews", "") if cluster => Endpoint::SelfSubjectAccessReview,
            ("authorization.k8s.io", "selfsubjectrulesreviews", "") if cluster => Endpoint::SelfSubjectRulesReview,
            ("authorization.k8s.io", "localsubjectaccessreviews", "")
                if !a.namespace.is_empty() && a.name.is_empty() =>
            {
                Endpoint::LocalSubjectAccessReview
            }
            ("", "serviceaccounts", "token") if !a.namespace.is_empty() && !a.name.is_empty() => Endpoint::TokenRequest,
            _ => return None,
        })
    }

    /// The apiVersion of the object posted (TokenRequest is authentication.k8s.io's, though
    /// served under core v1 `serviceaccounts`).
    pub fn api_version(self) -> &'static str {
        match self {
            Endpoint::TokenReview | Endpoint::SelfSubjectReview | Endpoint::TokenRequest => "authentication.k8s.io/v1",
            _ => "authorization.k8s.io/v1",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Endpoint::TokenReview => "TokenReview",
            Endpoint::SelfSubjectReview => "SelfSubjectReview",
            Endpoint::SubjectAccessReview => "SubjectAccessReview",
            Endpoint::SelfSubjectAccessReview => "SelfSubjectAccessReview",
            Endpoint::LocalSubjectAccessReview => "LocalSubjectAccessReview",
            Endpoint::SelfSubjectRulesReview => "SelfSubjectRulesReview",
            Endpoint::TokenRequest => "TokenRequest",
        }
    }
}

fn invalid(kind: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError { code: 422, reason: "Invalid", message: format!("{kind} is invalid: {message}"), details: None }
}

/// Answers a review posted by `asker` (its attributes say who and where).
///
/// # Errors
/// 422 for a spec that does not say what to review; TokenRequest's own errors.
pub fn serve(
    authority: &Authority,
    store: &Store,
    asker: &Attributes,
    endpoint: Endpoint,
    body: Value,
) -> Result<Value, ApiError> {
    let kind = endpoint.kind();
    let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    let status = match endpoint {
        Endpoint::TokenReview => {
            let token = spec["token"].as_str().unwrap_or_default();
            let mut audiences: Vec<String> = str_list(&spec["audiences"]);
            let defaulted = audiences.is_empty();
            if defaulted {
                audiences.push(ISSUER.into());
            }
            match authenticate_token(authority, store, token, &audiences) {
                Ok((user, good)) => json!({"authenticated": true, "user": user.to_json(), "audiences": good}),
                Err(why) => {
                    json!({"authenticated": false, "user": {}, "error": format!("[invalid bearer token, {why}]")})
                }
            }
        }
        Endpoint::SelfSubjectReview => json!({"userInfo": asker.user.to_json()}),
        Endpoint::SubjectAccessReview | Endpoint::LocalSubjectAccessReview => {
            let user = UserInfo {
                name: spec["user"].as_str().unwrap_or_default().into(),
                uid: spec["uid"].as_str().unwrap_or_default().into(),
                groups: str_list(&spec["groups"]),
                ..Default::default()
            };
            if user.name.is_empty() && user.groups.is_empty() {
                return Err(invalid(
                    kind,
                    "spec.user: Invalid value: \"\": at least one of user or group must be specified",
                ));
            }
            if endpoint == Endpoint::LocalSubjectAccessReview
                && spec["resourceAttributes"]["namespace"].as_str().unwrap_or_default() != asker.namespace
            {
                return Err(ApiError::bad_request(format!(
                    "spec.resourceAttributes.namespace must match namespace: {}",
                    asker.namespace
                )));
            }
            access_status(kind, store, user, &spec)?
        }
        Endpoint::SelfSubjectAccessReview => access_status(kind, store, asker.user.clone(), &spec)?,
        Endpoint::SelfSubjectRulesReview => {
            let ns = spec["namespace"].as_str().unwrap_or_default();
            let rules = rbac::rules_for(store, &asker.user, ns);
            let (res, non): (Vec<Value>, Vec<Value>) = rules.into_iter().partition(|r| r["nonResourceURLs"].is_null());
            let res: Vec<Value> = res
                .into_iter()
                .map(|r| {
                    let mut o = json!({"verbs": r["verbs"], "apiGroups": r["apiGroups"], "resources": r["resources"]});
                    if !r["resourceNames"].is_null() {
                        o["resourceNames"] = r["resourceNames"].clone();
                    }
                    o
                })
                .collect();
            let non: Vec<Value> = non
                .into_iter()
                .map(|r| json!({"verbs": r["verbs"], "nonResourceURLs": r["nonResourceURLs"]}))
                .collect();
            json!({"resourceRules": res, "nonResourceRules": non, "incomplete": false})
        }
        Endpoint::TokenRequest => return authority.token_request(store, &asker.namespace, &asker.name, body),
    };
    let mut meta = body.get("metadata").cloned().filter(Value::is_object).unwrap_or_else(|| json!({}));
    meta["creationTimestamp"] = Value::Null;
    if endpoint == Endpoint::LocalSubjectAccessReview {
        meta["namespace"] = json!(asker.namespace);
    }
    // TokenReview's token is a credential: Kubernetes does not echo it.
    let mut spec = spec;
    if endpoint == Endpoint::TokenReview
        && let Some(s) = spec.as_object_mut()
    {
        s.remove("token");
    }
    Ok(json!({"kind": kind, "apiVersion": endpoint.api_version(), "metadata": meta, "spec": spec, "status": status}))
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_array().map(|l| l.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

/// `status` of an access review for `user`: what RBAC says about the spec's resource or
/// non-resource attributes.
fn access_status(kind: &str, store: &Store, user: UserInfo, spec: &Value) -> Result<Value, ApiError> {
    let ra = &spec["resourceAttributes"];
    let nra = &spec["nonResourceAttributes"];
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    let attrs = match (ra.is_object(), nra.is_object()) {
        (true, false) => Attributes {
            user,
            verb: s(ra, "verb"),
            resource_request: true,
            namespace: s(ra, "namespace"),
            api_group: s(ra, "group"),
            api_version: s(ra, "version"),
            resource: s(ra, "resource"),
            subresource: s(ra, "subresource"),
            name: s(ra, "name"),
            path: String::new(),
        },
        (false, true) => Attributes { user, verb: s(nra, "verb"), path: s(nra, "path"), ..Default::default() },
        (true, true) => {
            return Err(invalid(
                kind,
                "spec.nonResourceAttributes: Invalid value: \"null\": cannot be specified in combination with resourceAttributes",
            ));
        }
        (false, false) => {
            return Err(invalid(
                kind,
                "spec.resourceAttributes: Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
            ));
        }
    };
    let d = rbac::authorize(store, &attrs);
    let mut status = json!({"allowed": d.allowed});
    if !d.reason.is_empty() {
        status["reason"] = json!(d.reason);
    }
    Ok(status)
}

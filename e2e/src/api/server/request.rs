//! What a request asks for, read off its path, query and headers: the resource it targets,
//! selectors, and the options of a write (field manager, force, dry run) or a delete.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, header};
use serde_json::{Value, json};

use super::ApiState;
use crate::api::auth::UserInfo;
use crate::api::error::ApiError;
use crate::api::registry::{Registry, ResourceType};
use crate::api::selectors::{FieldSelector, LabelSelector};
use crate::api::store::{DeleteOptions, Propagation, Query, Sub, WriteOptions};

/// A parsed resource path.
#[derive(Debug)]
pub(super) struct Target {
    pub rt: ResourceType,
    pub namespace: String,
    pub name: Option<String>,
    pub sub: Option<String>,
    /// The deprecated `/watch/` path prefix.
    pub legacy_watch: bool,
}

/// Everything a verb needs to answer a request on a resource.
pub(super) struct Request<'a> {
    pub st: &'a ApiState,
    pub target: Target,
    pub q: &'a HashMap<String, String>,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
    /// The client asked for a Table (`kubectl get`).
    pub table: bool,
    /// Which part of the object a write addresses.
    pub sub: Sub,
    pub wopts: WriteOptions,
    /// Who asks (for admission webhooks).
    pub user: &'a UserInfo,
}

impl Request<'_> {
    pub fn rt(&self) -> &ResourceType {
        &self.target.rt
    }

    pub fn ns(&self) -> &str {
        &self.target.namespace
    }

    pub fn body_json(&self) -> Result<Value, ApiError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))
    }

    /// `includeObject` of a Table request.
    pub fn include_object(&self) -> &str {
        self.q.get("includeObject").map(String::as_str).unwrap_or("Metadata")
    }

    /// The label and field selectors of the query, within the target's namespace.
    pub fn query(&self) -> Result<Query, ApiError> {
        parse_query(self.q, self.ns())
    }
}

pub(super) fn parse_target(reg: &Registry, segs: &[&str]) -> Result<Target, ApiError> {
    let (group, version, rest) = match segs {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::path_not_found()),
    };
    let (legacy_watch, rest) = match rest {
        ["watch", r @ ..] => (true, r),
        r => (false, r),
    };
    let find = |plural: &str| reg.find(group, version, plural).cloned().ok_or_else(ApiError::path_not_found);
    let ns_scoped = |ns: &str, plural: &str, name: Option<&str>, sub: Option<&str>| -> Result<Target, ApiError> {
        let rt = find(plural)?;
        if !rt.namespaced {
            return Err(ApiError::path_not_found());
        }
        Ok(Target {
            rt,
            namespace: ns.to_string(),
            name: name.map(str::to_string),
            sub: sub.map(str::to_string),
            legacy_watch,
        })
    };
    let cluster = |plural: &str, name: Option<&str>, sub: Option<&str>| -> Result<Target, ApiError> {
        let rt = find(plural)?;
        Ok(Target {
            rt,
            namespace: String::new(),
            name: name.map(str::to_string),
            sub: sub.map(str::to_string),
            legacy_watch,
        })
    };
    match rest {
        ["namespaces", ns, plural] if group.is_empty() && matches!(*plural, "status" | "finalize") => {
            cluster("namespaces", Some(ns), Some(plural))
        }
        ["namespaces", ns, plural] => ns_scoped(ns, plural, None, None),
        ["namespaces", ns, plural, name] => ns_scoped(ns, plural, Some(name), None),
        ["namespaces", ns, plural, name, sub] => ns_scoped(ns, plural, Some(name), Some(sub)),
        [plural] => cluster(plural, None, None),
        [plural, name] => cluster(plural, Some(name), None),
        [plural, name, sub] => cluster(plural, Some(name), Some(sub)),
        _ => Err(ApiError::path_not_found()),
    }
}

/// Whether a read is a watch: the `/watch/` prefix or `?watch=true`.
pub(super) fn is_watch(target: &Target, q: &HashMap<String, String>) -> bool {
    target.legacy_watch || q.get("watch").is_some_and(|w| w == "true" || w == "1")
}

/// The part of the object the subresource addresses; subresources this type does not
/// serve (or not for this method) are 404.
pub(super) fn subresource(target: &Target, method: &Method) -> Result<Sub, ApiError> {
    let rt = &target.rt;
    match target.sub.as_deref() {
        None => Ok(Sub::Main),
        Some("status") if rt.status => Ok(Sub::Status),
        Some("binding") if rt.binding => Ok(Sub::Main),
        Some("log") if rt.binding && method == Method::GET => Ok(Sub::Main),
        Some(_) => Err(ApiError::path_not_found()),
    }
}

/// The identity and options of a write: the field manager comes from the query or else
/// the client's User-Agent product.
pub(super) fn write_options(
    method: &Method,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<WriteOptions, ApiError> {
    // Reads ignore dryRun, as Kubernetes does.
    let dry_run = method != Method::GET && dry_run(q.get("dryRun").map(String::as_str))?;
    let manager = q.get("fieldManager").cloned().unwrap_or_else(|| {
        let ua = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("unknown");
        ua.split('/').next().unwrap_or("unknown").to_string()
    });
    Ok(WriteOptions {
        field_manager: manager,
        force: q.get("force").is_some_and(|f| f == "true"),
        dry_run,
        ..Default::default()
    })
}

/// Whether the client named a field manager itself (apply requires it).
pub(super) fn explicit_manager(q: &HashMap<String, String>) -> bool {
    q.get("fieldManager").is_some_and(|m| !m.is_empty())
}

pub(super) fn parse_query(q: &HashMap<String, String>, ns: &str) -> Result<Query, ApiError> {
    Ok(Query {
        namespace: (!ns.is_empty()).then(|| ns.to_string()),
        labels: LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?,
        fields: FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))?,
    })
}

pub(super) fn delete_options(q: &HashMap<String, String>, body: &Bytes) -> Result<DeleteOptions, ApiError> {
    let b: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("DeleteOptions is not JSON: {e}")))?
    };
    // The body's dryRun (a list) or the query's; "All" is the only value Kubernetes defines.
    let listed = b["dryRun"].as_array().and_then(|l| l.first()).and_then(Value::as_str);
    let dry_run = dry_run(listed.or(q.get("dryRun").map(String::as_str)))?;
    let policy = b["propagationPolicy"].as_str().map(str::to_string).or_else(|| q.get("propagationPolicy").cloned());
    let propagation = match policy.as_deref() {
        None | Some("") => None,
        Some("Orphan") => Some(Propagation::Orphan),
        Some("Background") => Some(Propagation::Background),
        Some("Foreground") => Some(Propagation::Foreground),
        Some(other) => return Err(ApiError::bad_request(format!("unknown propagationPolicy {other}"))),
    };
    // The deprecated orphanDependents flag maps onto the policy.
    let propagation = match b["orphanDependents"].as_bool() {
        Some(true) => Some(Propagation::Orphan),
        _ => propagation,
    };
    Ok(DeleteOptions {
        propagation,
        grace_seconds: b["gracePeriodSeconds"]
            .as_i64()
            .or_else(|| q.get("gracePeriodSeconds").and_then(|g| g.parse().ok())),
        uid: b["preconditions"]["uid"].as_str().map(str::to_string),
        resource_version: b["preconditions"]["resourceVersion"].as_str().map(str::to_string),
        dry_run,
    })
}

/// The `dryRun` parameter: absent or empty is a real write, `All` a dry run.
pub(super) fn dry_run(value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => {
            Err(ApiError::bad_request(format!("dryRun: Unsupported value: \"{other}\": supported values: \"All\"")))
        }
    }
}

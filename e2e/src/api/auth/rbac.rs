//! The RBAC authorizer over Role / ClusterRole / RoleBinding / ClusterRoleBinding, the
//! request attributes it decides on (derived from path and method as Kubernetes does), the
//! 403 it answers, and the default roles every cluster starts with.

use axum::http::Method;
use serde_json::{Value, json};

use super::{AUTHENTICATED, MASTERS, UNAUTHENTICATED, UserInfo, service_account_of};
use crate::api::error::ApiError;
use crate::api::store::{Store, WriteOptions};
use crate::api::util::meta_str;

pub const GROUP: &str = "rbac.authorization.k8s.io";

/// What is being asked (`authorizer.Attributes`).
#[derive(Debug, Clone, Default)]
pub struct Attributes {
    pub user: UserInfo,
    pub verb: String,
    /// A request for an API resource; otherwise a non-resource URL (`path`).
    pub resource_request: bool,
    pub path: String,
    pub namespace: String,
    pub api_group: String,
    pub api_version: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
}

impl Attributes {
    /// A resource request, as reviews and impersonation checks build them.
    pub fn resource(
        user: &UserInfo,
        verb: &str,
        group: &str,
        resource: &str,
        subresource: &str,
        namespace: &str,
        name: &str,
    ) -> Attributes {
        Attributes {
            user: user.clone(),
            verb: verb.into(),
            resource_request: true,
            namespace: namespace.into(),
            api_group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    /// The attributes of an HTTP request, the way Kubernetes' request-info parser derives
    /// them: `/api/v1/...` and `/apis/<g>/<v>/...` with at least a resource are resource
    /// requests (GET on a collection is `list`, `?watch` or a `/watch/` path `watch`, DELETE
    /// on a collection `deletecollection`), everything else (discovery, `/version`, …) is a
    /// non-resource request with the method as verb.
    pub fn from_request(user: UserInfo, method: &Method, path: &str, query: &str) -> Attributes {
        let mut a = Attributes { user, path: path.to_string(), ..Default::default() };
        let non_resource = |mut a: Attributes| {
            a.verb = method.as_str().to_lowercase();
            a
        };
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (group, version, mut rest) = match segs.as_slice() {
            ["api", v, rest @ ..] if !rest.is_empty() => ("", *v, rest),
            ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
            _ => return non_resource(a),
        };
        a.resource_request = true;
        a.api_group = group.into();
        a.api_version = version.into();
        a.verb = match *method {
            Method::POST => "create",
            Method::GET | Method::HEAD => "get",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "",
        }
        .into();
        if let ["watch", r @ ..] = rest {
            a.verb = "watch".into();
            rest = r;
        }
        if let ["namespaces", ns, r @ ..] = rest {
            a.namespace = (*ns).into();
            // `namespaces/<ns>` itself, and its status/finalize, are the namespace object.
            if !r.is_empty() && !matches!(r[0], "status" | "finalize") {
                rest = r;
            }
        }
        match rest {
            [res] => a.resource = (*res).into(),
            [res, name] => (a.resource, a.name) = ((*res).into(), (*name).into()),
            [res, name, sub, ..] => {
                (a.resource, a.name, a.subresource) = ((*res).into(), (*name).into(), (*sub).into())
            }
            [] => {}
        }
        if a.name.is_empty() {
            let watching = query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .any(|(k, v)| k == "watch" && matches!(v, "1" | "true" | "True" | "t"));
            a.verb = match a.verb.as_str() {
                "get" if watching => "watch",
                "get" => "list",
                "delete" => "deletecollection",
                v => v,
            }
            .into();
        }
        a
    }
}

/// An authorizer's answer.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    pub allowed: bool,
    /// Why (for reviews' `status.reason`).
    pub reason: String,
}

/// The 403 Kubernetes answers a denied request with.
pub fn forbidden(a: &Attributes, reason: &str) -> ApiError {
    let who = &a.user.name;
    let mut msg = if a.resource_request {
        let resource =
            if a.subresource.is_empty() { a.resource.clone() } else { format!("{}/{}", a.resource, a.subresource) };
        if a.namespace.is_empty() {
            format!(
                "User \"{who}\" cannot {} resource \"{resource}\" in API group \"{}\" at the cluster scope",
                a.verb, a.api_group
            )
        } else {
            format!(
                "User \"{who}\" cannot {} resource \"{resource}\" in API group \"{}\" in the namespace \"{}\"",
                a.verb, a.api_group, a.namespace
            )
        }
    } else {
        format!("User \"{who}\" cannot {} path \"{}\"", a.verb, a.path)
    };
    if !reason.is_empty() {
        msg = format!("{msg}: {reason}");
    }
    let qualified = if a.api_group.is_empty() { a.resource.clone() } else { format!("{}.{}", a.resource, a.api_group) };
    let message = match (qualified.is_empty(), a.name.is_empty()) {
        (true, _) => format!("forbidden: {msg}"),
        (false, true) => format!("{qualified} is forbidden: {msg}"),
        (false, false) => format!("{qualified} \"{}\" is forbidden: {msg}", a.name),
    };
    let mut e = ApiError::forbidden(message);
    // Empty fields are left out, as Kubernetes' JSON omits them.
    let details: serde_json::Map<String, Value> = [("name", &a.name), ("group", &a.api_group), ("kind", &a.resource)]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    e.details = Some(Value::Object(details));
    e
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array().map(|l| l.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

/// Does one PolicyRule allow the request?
pub fn rule_allows(a: &Attributes, rule: &Value) -> bool {
    let verbs = strs(&rule["verbs"]);
    if !verbs.iter().any(|v| *v == "*" || *v == a.verb) {
        return false;
    }
    if !a.resource_request {
        return strs(&rule["nonResourceURLs"]).iter().any(|u| {
            *u == "*" || *u == a.path || u.strip_suffix('*').is_some_and(|prefix| a.path.starts_with(prefix))
        });
    }
    if !strs(&rule["apiGroups"]).iter().any(|g| *g == "*" || *g == a.api_group) {
        return false;
    }
    let combined =
        if a.subresource.is_empty() { a.resource.clone() } else { format!("{}/{}", a.resource, a.subresource) };
    let resource_ok = strs(&rule["resources"]).iter().any(|r| {
        *r == "*"
            || *r == combined
            || (!a.subresource.is_empty() && r.strip_prefix("*/").is_some_and(|s| s == a.subresource))
    });
    if !resource_ok {
        return false;
    }
    let names = strs(&rule["resourceNames"]);
    names.is_empty() || (!a.name.is_empty() && names.contains(&a.name.as_str()))
}

/// The subject of a binding that names this user, described as Kubernetes' reasons do.
fn matching_subject(user: &UserInfo, binding: &Value) -> Option<String> {
    let binding_ns = meta_str(binding, "namespace");
    binding["subjects"].as_array()?.iter().find_map(|s| {
        let name = s["name"].as_str().unwrap_or_default();
        let hit = match s["kind"].as_str().unwrap_or_default() {
            "User" => user.name == name,
            "Group" => user.groups.iter().any(|g| g == name),
            "ServiceAccount" => {
                let ns = s["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or(binding_ns);
                service_account_of(&user.name) == Some((ns, name))
            }
            _ => false,
        };
        hit.then(|| match s["kind"].as_str() {
            Some("ServiceAccount") => {
                format!("ServiceAccount \"{}/{name}\"", s["namespace"].as_str().unwrap_or(binding_ns))
            }
            Some(kind) => format!("{kind} \"{name}\""),
            None => String::new(),
        })
    })
}

/// Every (binding description, role rules) that applies to `user` in `namespace` (cluster
/// bindings always; role bindings of that namespace).
fn applicable(store: &Store, user: &UserInfo, namespace: &str) -> Vec<(String, Vec<Value>)> {
    let rt = |plural| store.rt(GROUP, plural);
    let role_rules = |kind: &str, ns: &str, name: &str| -> (String, Vec<Value>) {
        let found = match kind {
            "ClusterRole" => store.get(&rt("clusterroles"), "", name).ok(),
            "Role" => store.get(&rt("roles"), ns, name).ok(),
            _ => None,
        };
        let rules = found.and_then(|r| r["rules"].as_array().cloned()).unwrap_or_default();
        (format!("{kind} \"{name}\""), rules)
    };
    let mut out = Vec::new();
    for b in store.all(&rt("clusterrolebindings")) {
        if let Some(subject) = matching_subject(user, &b) {
            let (role, rules) = role_rules("ClusterRole", "", b["roleRef"]["name"].as_str().unwrap_or_default());
            out.push((format!("ClusterRoleBinding \"{}\" of {role} to {subject}", meta_str(&b, "name")), rules));
        }
    }
    if !namespace.is_empty() {
        let rbs = store.all_where(&rt("rolebindings"), |b| meta_str(b, "namespace") == namespace);
        for b in rbs {
            if let Some(subject) = matching_subject(user, &b) {
                let kind = b["roleRef"]["kind"].as_str().unwrap_or_default();
                let (role, rules) = role_rules(kind, namespace, b["roleRef"]["name"].as_str().unwrap_or_default());
                out.push((
                    format!("RoleBinding \"{}/{namespace}\" of {role} to {subject}", meta_str(&b, "name")),
                    rules,
                ));
            }
        }
    }
    out
}

/// Decides a request: `system:masters` may do everything; otherwise some rule of a role
/// bound to the user, one of its groups or its service account must allow it.
pub fn authorize(store: &Store, a: &Attributes) -> Decision {
    if a.user.groups.iter().any(|g| g == MASTERS) {
        return Decision { allowed: true, reason: String::new() };
    }
    for (binding, rules) in applicable(store, &a.user, &a.namespace) {
        if rules.iter().any(|r| rule_allows(a, r)) {
            return Decision { allowed: true, reason: format!("RBAC: allowed by {binding}") };
        }
    }
    Decision::default()
}

/// The rules that apply to `user` in `namespace` (SelfSubjectRulesReview).
pub fn rules_for(store: &Store, user: &UserInfo, namespace: &str) -> Vec<Value> {
    let mut rules: Vec<Value> = applicable(store, user, namespace).into_iter().flat_map(|(_, r)| r).collect();
    if user.groups.iter().any(|g| g == MASTERS) && rules.is_empty() {
        rules.push(json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}));
        rules.push(json!({"nonResourceURLs": ["*"], "verbs": ["*"]}));
    }
    rules
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn urls(urls: &[&str], verbs: &[&str]) -> Value {
    json!({"nonResourceURLs": urls, "verbs": verbs})
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

/// `view`: read everything in a namespace but secrets and RBAC.
fn view_rules() -> Vec<Value> {
    vec![
        rule(
            &[""],
            &[
                "configmaps",
                "endpoints",
                "events",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "pods",
                "pods/log",
                "pods/status",
                "services",
                "services/status",
                "serviceaccounts",
                "namespaces",
                "namespaces/status",
            ],
            READ,
        ),
        rule(
            &["apps"],
            &["daemonsets", "daemonsets/status", "deployments", "deployments/status", "replicasets", "statefulsets"],
            READ,
        ),
        rule(&["events.k8s.io"], &["events"], READ),
        rule(&["coordination.k8s.io"], &["leases"], READ),
    ]
}

/// `edit`: `view` plus writing workloads, claims, config and secrets.
fn edit_rules() -> Vec<Value> {
    let mut r = view_rules();
    r.push(rule(
        &[""],
        &["configmaps", "events", "persistentvolumeclaims", "pods", "secrets", "services", "serviceaccounts"],
        WRITE,
    ));
    r.push(rule(&[""], &["secrets"], READ));
    r.push(rule(&[""], &["serviceaccounts/token"], &["create"]));
    r.push(rule(&["apps"], &["daemonsets", "deployments", "replicasets", "statefulsets"], WRITE));
    r.push(rule(&["coordination.k8s.io"], &["leases"], WRITE));
    r
}

/// `admin`: `edit` plus the namespace's RBAC and access reviews.
fn admin_rules() -> Vec<Value> {
    let mut r = edit_rules();
    r.push(rule(&[GROUP], &["roles", "rolebindings"], &["*"]));
    r.push(rule(&["authorization.k8s.io"], &["localsubjectaccessreviews"], &["create"]));
    r
}

/// The default ClusterRoles and ClusterRoleBindings of a Kubernetes cluster that matter
/// here.
///
/// # Errors
/// When the store refuses one (it is new and empty, so it should not).
pub fn seed_defaults(store: &Store) -> anyhow::Result<()> {
    let opts = WriteOptions { field_manager: "kube-apiserver".into(), ..Default::default() };
    let meta = |name: &str| {
        json!({"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
               "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}})
    };
    let roles: Vec<(&str, Vec<Value>)> = vec![
        ("cluster-admin", vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])]),
        (
            "system:discovery",
            vec![urls(
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
                &["get"],
            )],
        ),
        (
            "system:basic-user",
            vec![
                rule(&["authentication.k8s.io"], &["selfsubjectreviews"], &["create"]),
                rule(&["authorization.k8s.io"], &["selfsubjectaccessreviews", "selfsubjectrulesreviews"], &["create"]),
            ],
        ),
        (
            "system:public-info-viewer",
            vec![urls(&["/healthz", "/livez", "/readyz", "/version", "/version/"], &["get"])],
        ),
        ("admin", admin_rules()),
        ("edit", edit_rules()),
        ("view", view_rules()),
    ];
    let cr = store.rt(GROUP, "clusterroles");
    for (name, rules) in roles {
        store.create(&cr, "", json!({"metadata": meta(name), "rules": rules}), &opts)?;
    }
    let group = |g: &str| json!({"apiGroup": GROUP, "kind": "Group", "name": g});
    let bindings = [
        ("cluster-admin", vec![group(MASTERS)]),
        ("system:discovery", vec![group(AUTHENTICATED)]),
        ("system:basic-user", vec![group(AUTHENTICATED)]),
        ("system:public-info-viewer", vec![group(AUTHENTICATED), group(UNAUTHENTICATED)]),
    ];
    let crb = store.rt(GROUP, "clusterrolebindings");
    for (name, subjects) in bindings {
        store.create(
            &crb,
            "",
            json!({"metadata": meta(name), "subjects": subjects,
                   "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": name}}),
            &opts,
        )?;
    }
    Ok(())
}

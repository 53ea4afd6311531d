//! Dynamic admission: the webhooks of `MutatingWebhookConfiguration`s and
//! `ValidatingWebhookConfiguration`s, called on writes from API clients as kube-apiserver
//! calls them.
//!
//! A write first runs as a dry run (defaults and the kind's own rules, on a scratch copy of
//! the store), which gives the object the webhooks see; no lock is held while they are
//! called. Mutating webhooks run in name order and their JSON patches apply in turn; the
//! validating ones then see the result (all called at once, the first denial in name order
//! answers). The write itself follows: the mutated object when a webhook changed it (an
//! update at the version the webhooks saw: after a concurrent write it all runs again, as
//! Kubernetes retries, unless the request named a resourceVersion), else the request as it
//! came (so a write between the webhooks' answer and the store's is not re-admitted).
//!
//! Not modelled: `matchPolicy: Equivalent` is treated as `Exact` (every resource is served
//! at one version here); `reinvocationPolicy: IfNeeded` never reinvokes; `matchConditions`
//! are ignored; the request is always an `admission.k8s.io/v1` review; `CONNECT` never
//! happens (no exec/attach/port-forward); a webhook without `caBundle` trusts nothing (no
//! system roots); `pods/binding` and the in-process controllers' writes skip admission.

pub mod client;
mod config;

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

pub use config::WebhookConfiguration;

use super::auth::UserInfo;
use super::error::ApiError;
use super::registry::ResourceType;
use super::store::{DeleteOptions, PatchType, Store, Sub, WriteOptions};
use super::util::{meta_str, new_uid};
use crate::controllers::workloads::selector_matches;

const GROUP: &str = "admissionregistration.k8s.io";

/// The admission operation of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
        }
    }
}

/// What a webhook is told about a request besides the objects.
#[derive(Debug)]
pub struct Attributes<'a> {
    pub rt: &'a ResourceType,
    pub namespace: &'a str,
    pub name: &'a str,
    pub sub: Option<&'a str>,
    pub operation: Operation,
    pub user: &'a UserInfo,
    pub dry_run: bool,
    /// `CreateOptions`, `UpdateOptions`, `PatchOptions` or `DeleteOptions`.
    pub options: Value,
}

/// Whether a write goes through webhooks at all: not to the webhook configurations
/// themselves (as in Kubernetes, so a broken webhook can always be removed), and only when
/// some webhook has a rule for this resource and operation. Checked before anything else,
/// since admission starts with a dry run of the write (a webhook's selectors need the
/// object as it would be stored), which a busy store should not pay for writes no webhook
/// wants to see.
fn active(store: &Store, rt: &ResourceType, sub: Sub, ops: &[Operation]) -> bool {
    let sub = sub_name(sub);
    let wants = |w: &Value| {
        w["rules"].as_array().into_iter().flatten().any(|r| ops.iter().any(|op| rule_matches(r, rt, sub, *op)))
    };
    rt.group != GROUP && [true, false].into_iter().any(|mutating| webhooks(store, mutating).iter().any(wants))
}

/// The webhooks of every configuration of one type, configurations in name order.
fn webhooks(store: &Store, mutating: bool) -> Vec<Value> {
    let plural = if mutating { "mutatingwebhookconfigurations" } else { "validatingwebhookconfigurations" };
    // Built-in kinds, always registered.
    let mut configs = store.all(&store.rt(GROUP, plural));
    configs.sort_by(|a, b| meta_str(a, "name").cmp(meta_str(b, "name")));
    configs.iter().flat_map(|c| c["webhooks"].as_array().cloned().unwrap_or_default()).collect()
}

fn write_options(kind: &str, opts: &WriteOptions) -> Value {
    let mut o = json!({"kind": kind, "apiVersion": "meta.k8s.io/v1"});
    if !opts.field_manager.is_empty() {
        o["fieldManager"] = json!(opts.field_manager);
    }
    if opts.dry_run {
        o["dryRun"] = json!(["All"]);
    }
    if opts.force {
        o["force"] = json!(true);
    }
    o
}

fn dry(opts: &WriteOptions) -> WriteOptions {
    WriteOptions { dry_run: true, ..opts.clone() }
}

fn sub_name(sub: Sub) -> Option<&'static str> {
    match sub {
        Sub::Main => None,
        Sub::Status => Some("status"),
    }
}

/// Updates `name` to the webhooks' result, at the version they saw.
fn update_to(
    store: &Store,
    rt: &ResourceType,
    (ns, name): (&str, &str),
    mut obj: Value,
    old: &Value,
    sub: Sub,
    opts: &WriteOptions,
) -> Result<Value, ApiError> {
    obj["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
    store.update(rt, ns, name, obj, sub, opts)
}

/// POST on a collection, through admission.
pub async fn create(
    store: &Store,
    rt: &ResourceType,
    ns: &str,
    body: Value,
    opts: &WriteOptions,
    user: &UserInfo,
) -> Result<Value, ApiError> {
    if !active(store, rt, Sub::Main, &[Operation::Create]) {
        return store.create(rt, ns, body, opts);
    }
    let object = store.create(rt, ns, body.clone(), &dry(opts))?;
    let name = meta_str(&object, "name").to_string();
    let a = Attributes {
        rt,
        namespace: ns,
        name: &name,
        sub: None,
        operation: Operation::Create,
        user,
        dry_run: opts.dry_run,
        options: write_options("CreateOptions", opts),
    };
    match admit(store, &a, Some(object), None).await? {
        Some(mutated) => store.create(rt, ns, mutated, opts),
        None => store.create(rt, ns, body, opts),
    }
}

/// PUT on an object or its status, through admission.
#[allow(clippy::too_many_arguments)]
pub async fn update(
    store: &Store,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    body: Value,
    sub: Sub,
    opts: &WriteOptions,
    user: &UserInfo,
) -> Result<Value, ApiError> {
    if !active(store, rt, sub, &[Operation::Update]) {
        return store.update(rt, ns, name, body, sub, opts);
    }
    let a = Attributes {
        rt,
        namespace: ns,
        name,
        sub: sub_name(sub),
        operation: Operation::Update,
        user,
        dry_run: opts.dry_run,
        options: write_options("UpdateOptions", opts),
    };
    let pinned = !meta_str(&body, "resourceVersion").is_empty();
    let mut attempts = 0;
    loop {
        let old = store.get(rt, ns, name)?;
        let object = store.update(rt, ns, name, body.clone(), sub, &dry(opts))?;
        let out = match admit(store, &a, Some(object), Some(&old)).await? {
            Some(mutated) => update_to(store, rt, (ns, name), mutated, &old, sub, opts),
            None => return store.update(rt, ns, name, body, sub, opts),
        };
        attempts += 1;
        if !retry(&out, pinned, attempts) {
            return out;
        }
    }
}

/// Whether a write of the webhooks' result that lost a race is tried again: only when the
/// request did not name a resourceVersion itself, a few times (Kubernetes retries such
/// updates and patches the same way).
fn retry(out: &Result<Value, ApiError>, pinned: bool, attempts: u32) -> bool {
    const ATTEMPTS: u32 = 5;
    matches!(out, Err(e) if e.code == 409 && e.reason == "Conflict") && !pinned && attempts < ATTEMPTS
}

/// PATCH on an object or its status (an apply may create it), through admission.
#[allow(clippy::too_many_arguments)]
pub async fn patch(
    store: &Store,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    ty: PatchType,
    body: &Value,
    sub: Sub,
    opts: &WriteOptions,
    user: &UserInfo,
) -> Result<Value, ApiError> {
    // An apply to a missing object is a create.
    if !active(store, rt, sub, &[Operation::Update, Operation::Create]) {
        return store.patch(rt, ns, name, ty, body, sub, opts);
    }
    let pinned = !meta_str(body, "resourceVersion").is_empty();
    let mut attempts = 0;
    loop {
        let old = store.get(rt, ns, name).ok();
        let object = store.patch(rt, ns, name, ty, body, sub, &dry(opts))?;
        let a = Attributes {
            rt,
            namespace: ns,
            name,
            sub: sub_name(sub),
            operation: if old.is_some() { Operation::Update } else { Operation::Create },
            user,
            dry_run: opts.dry_run,
            options: write_options("PatchOptions", opts),
        };
        // An apply's result already carries its managed fields.
        let keep = WriteOptions { keep_managed_fields: ty == PatchType::Apply, ..opts.clone() };
        let out = match (admit(store, &a, Some(object), old.as_ref()).await?, old) {
            (Some(mutated), None) => return store.create(rt, ns, mutated, &keep),
            (Some(mutated), Some(old)) => update_to(store, rt, (ns, name), mutated, &old, sub, &keep),
            (None, _) => return store.patch(rt, ns, name, ty, body, sub, opts),
        };
        attempts += 1;
        if !retry(&out, pinned, attempts) {
            return out;
        }
    }
}

/// DELETE on an object, through admission (webhooks see it as `oldObject`).
pub async fn delete(
    store: &Store,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    opts: &DeleteOptions,
    user: &UserInfo,
) -> Result<Value, ApiError> {
    if active(store, rt, Sub::Main, &[Operation::Delete]) {
        let old = store.get(rt, ns, name)?;
        let mut options = json!({"kind": "DeleteOptions", "apiVersion": "meta.k8s.io/v1"});
        if opts.dry_run {
            options["dryRun"] = json!(["All"]);
        }
        if let Some(g) = opts.grace_seconds {
            options["gracePeriodSeconds"] = json!(g);
        }
        let a = Attributes {
            rt,
            namespace: ns,
            name,
            sub: None,
            operation: Operation::Delete,
            user,
            dry_run: opts.dry_run,
            options,
        };
        admit(store, &a, None, Some(&old)).await?;
    }
    store.delete(rt, ns, name, opts)
}

/// Runs the matching webhooks on a request: mutating ones in order, then the validating
/// ones. `Some(object)` when a mutating webhook changed the object.
///
/// # Errors
/// A denial (the webhook's status), a failed call under `failurePolicy: Fail` (500), or a
/// dry run reaching a webhook that may have side effects (400).
pub async fn admit(
    store: &Store,
    a: &Attributes<'_>,
    object: Option<Value>,
    old: Option<&Value>,
) -> Result<Option<Value>, ApiError> {
    let ns_labels = namespace_labels(store, a, object.as_ref(), old);
    let mut object = object;
    let mut mutated = false;
    for w in webhooks(store, true) {
        if !matches(&w, a, object.as_ref(), old, &ns_labels) {
            continue;
        }
        let Some(resp) = call_hook(store, &w, a, object.as_ref(), old).await? else { continue };
        if resp["allowed"] != true {
            return Err(denied(&w, &resp["status"]));
        }
        if let (Some(obj), Some(patch)) = (object.as_mut(), resp["patch"].as_str()) {
            apply_patch(&w, obj, resp["patchType"].as_str().unwrap_or_default(), patch)?;
            mutated = true;
        }
    }
    let validating: Vec<Value> =
        webhooks(store, false).into_iter().filter(|w| matches(w, a, object.as_ref(), old, &ns_labels)).collect();
    let answers =
        futures_util::future::join_all(validating.iter().map(|w| call_hook(store, w, a, object.as_ref(), old))).await;
    for (w, answer) in validating.iter().zip(answers) {
        if let Some(resp) = answer?
            && resp["allowed"] != true
        {
            return Err(denied(w, &resp["status"]));
        }
    }
    Ok(object.filter(|_| mutated))
}

/// The labels `namespaceSelector` is matched against: a Namespace's own, else those of the
/// request's namespace (none for cluster-scoped objects, which every selector admits).
fn namespace_labels(store: &Store, a: &Attributes<'_>, object: Option<&Value>, old: Option<&Value>) -> Option<Value> {
    if a.rt.group.is_empty() && a.rt.plural == "namespaces" {
        return Some(object.or(old).map_or(json!({}), |o| labels(Some(o))));
    }
    if !a.rt.namespaced {
        return None;
    }
    let ns = store.get(&store.rt("", "namespaces"), "", a.namespace).ok();
    Some(labels(ns.as_ref()))
}

fn labels(obj: Option<&Value>) -> Value {
    obj.map(|o| o["metadata"]["labels"].clone()).filter(Value::is_object).unwrap_or_else(|| json!({}))
}

/// A `metav1.LabelSelector` where a missing one means "everything".
fn selects(selector: &Value, labels: &Value) -> bool {
    selector.is_null() || selector_matches(selector, labels)
}

/// Whether webhook `w` wants this request: its rules, then its selectors.
fn matches(w: &Value, a: &Attributes<'_>, object: Option<&Value>, old: Option<&Value>, ns: &Option<Value>) -> bool {
    let rules = w["rules"].as_array().into_iter().flatten();
    if !rules.into_iter().any(|r| rule_matches(r, a.rt, a.sub, a.operation)) {
        return false;
    }
    if let Some(ns_labels) = ns
        && !selects(&w["namespaceSelector"], ns_labels)
    {
        return false;
    }
    // The object selector admits the request when the new or the old object matches.
    let sel = &w["objectSelector"];
    [object, old].into_iter().flatten().any(|o| selects(sel, &labels(Some(o))))
}

fn rule_matches(r: &Value, rt: &ResourceType, sub: Option<&str>, operation: Operation) -> bool {
    let has = |field: &str, want: &str| r[field].as_array().into_iter().flatten().any(|v| v == "*" || v == want);
    let resource_ok = r["resources"].as_array().into_iter().flatten().filter_map(Value::as_str).any(|res| {
        let (res, rule_sub) = match res.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (res, None),
        };
        let res_ok = res == "*" || res == rt.plural;
        let sub_ok = match (rule_sub, sub) {
            (None, None) => true,
            (Some("*"), _) => true,
            (Some(s), Some(want)) => s == want,
            _ => false,
        };
        res_ok && sub_ok
    });
    let scope_ok = match r["scope"].as_str().unwrap_or("*") {
        "Cluster" => !rt.namespaced,
        "Namespaced" => rt.namespaced,
        _ => true,
    };
    has("operations", operation.as_str())
        && has("apiGroups", &rt.group)
        && has("apiVersions", &rt.version)
        && resource_ok
        && scope_ok
}

/// The `AdmissionReview` sent to a webhook.
fn review(a: &Attributes<'_>, uid: &str, object: Option<&Value>, old: Option<&Value>) -> Value {
    let kind = json!({"group": a.rt.group, "version": a.rt.version, "kind": a.rt.kind});
    let resource = json!({"group": a.rt.group, "version": a.rt.version, "resource": a.rt.plural});
    let mut req = json!({
        "uid": uid, "kind": kind, "resource": resource, "requestKind": kind, "requestResource": resource,
        "name": a.name, "operation": a.operation.as_str(), "userInfo": a.user.to_json(),
        "object": object, "oldObject": old, "dryRun": a.dry_run, "options": a.options,
    });
    if let Some(sub) = a.sub {
        req["subResource"] = json!(sub);
        req["requestSubResource"] = json!(sub);
    }
    if !a.namespace.is_empty() && a.rt.namespaced {
        req["namespace"] = json!(a.namespace);
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req})
}

/// Calls one webhook. `Ok(None)` when the call failed and the webhook's failure policy is
/// `Ignore`.
async fn call_hook(
    store: &Store,
    w: &Value,
    a: &Attributes<'_>,
    object: Option<&Value>,
    old: Option<&Value>,
) -> Result<Option<Value>, ApiError> {
    let name = w["name"].as_str().unwrap_or_default();
    if a.dry_run && !matches!(w["sideEffects"].as_str(), Some("None" | "NoneOnDryRun")) {
        return Err(ApiError::bad_request(format!("admission webhook \"{name}\" does not support dry run")));
    }
    let uid = new_uid();
    let review = review(a, &uid, object, old);
    let timeout = Duration::from_secs(w["timeoutSeconds"].as_u64().unwrap_or(10).clamp(1, 30));
    let answer = async {
        let ep = client::endpoint(store, &w["clientConfig"]).await?;
        let ca = w["clientConfig"]["caBundle"].as_str().unwrap_or_default();
        let resp = client::call(&ep, ca, &review, timeout).await?;
        if resp["apiVersion"] != "admission.k8s.io/v1" || resp["kind"] != "AdmissionReview" {
            return Err(format!(
                "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got {}, Kind={}",
                resp["apiVersion"].as_str().unwrap_or_default(),
                resp["kind"].as_str().unwrap_or_default()
            ));
        }
        let got = resp["response"]["uid"].as_str().unwrap_or_default();
        if got != uid {
            return Err(format!("expected response.uid=\"{uid}\", got \"{got}\""));
        }
        Ok(resp["response"].clone())
    }
    .await;
    match answer {
        Ok(r) => Ok(Some(r)),
        Err(e) if w["failurePolicy"] == "Ignore" => {
            tracing::warn!(webhook = name, error = %e, "failed calling webhook; failurePolicy Ignore lets the request on");
            Ok(None)
        }
        Err(e) => Err(ApiError::internal(format!(
            "Internal error occurred: failed calling webhook \"{name}\": failed to call webhook: {e}"
        ))),
    }
}

fn apply_patch(w: &Value, obj: &mut Value, patch_type: &str, patch: &str) -> Result<(), ApiError> {
    let name = w["name"].as_str().unwrap_or_default();
    let fail =
        |why: String| ApiError::internal(format!("Internal error occurred: admission webhook \"{name}\": {why}"));
    if patch_type != "JSONPatch" {
        return Err(fail(format!("unsupported patch type \"{patch_type}\"")));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch.as_bytes())
        .map_err(|e| fail(format!("the patch is not base64: {e}")))?;
    let p: json_patch::Patch =
        serde_json::from_slice(&bytes).map_err(|e| fail(format!("the patch is not a JSON patch: {e}")))?;
    json_patch::patch(obj, &p).map_err(|e| fail(format!("applying the patch: {e}")))
}

/// The error a denial answers: the webhook's status, its message prefixed with who denied.
fn denied(w: &Value, status: &Value) -> ApiError {
    let name = w["name"].as_str().unwrap_or_default();
    let by = format!("admission webhook \"{name}\" denied the request");
    let reason = status["reason"].as_str().unwrap_or_default();
    let message = match (status["message"].as_str().filter(|m| !m.is_empty()), reason) {
        (Some(m), _) => format!("{by}: {m}"),
        (None, r) if !r.is_empty() => format!("{by}: {r}"),
        _ => format!("{by} without explanation"),
    };
    let code = status["code"].as_u64().and_then(|c| u16::try_from(c).ok()).filter(|c| *c >= 400).unwrap_or(400);
    ApiError { code, reason: known_reason(reason), message, details: status.get("details").cloned() }
}

/// `metav1.StatusReason`s carried over as they are; any other reason is dropped.
fn known_reason(reason: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "Unauthorized",
        "Forbidden",
        "NotFound",
        "AlreadyExists",
        "Conflict",
        "Gone",
        "Invalid",
        "ServerTimeout",
        "Timeout",
        "TooManyRequests",
        "BadRequest",
        "MethodNotAllowed",
        "NotAcceptable",
        "RequestEntityTooLarge",
        "UnsupportedMediaType",
        "InternalError",
        "Expired",
        "ServiceUnavailable",
    ];
    KNOWN.iter().find(|k| **k == reason).copied().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm_rt() -> ResourceType {
        Store::new(10).rt("", "configmaps")
    }

    fn attrs<'a>(rt: &'a ResourceType, user: &'a UserInfo, op: Operation, sub: Option<&'a str>) -> Attributes<'a> {
        Attributes { rt, namespace: "default", name: "x", sub, operation: op, user, dry_run: false, options: json!({}) }
    }

    #[test]
    fn rules_match_resources_subresources_operations_and_scope() {
        let (rt, user) = (cm_rt(), UserInfo::admin());
        let rule = |ops: Value, res: Value, scope: &str| json!({"operations": ops, "apiGroups": [""], "apiVersions": ["*"], "resources": res, "scope": scope});
        let m = |r: &Value, a: &Attributes<'_>| rule_matches(r, a.rt, a.sub, a.operation);
        let create = attrs(&rt, &user, Operation::Create, None);
        let status = attrs(&rt, &user, Operation::Update, Some("status"));
        assert!(m(&rule(json!(["CREATE"]), json!(["configmaps"]), "*"), &create));
        assert!(!m(&rule(json!(["UPDATE"]), json!(["configmaps"]), "*"), &create));
        assert!(m(&rule(json!(["*"]), json!(["*"]), "Namespaced"), &create));
        assert!(!m(&rule(json!(["*"]), json!(["*"]), "Cluster"), &create));
        assert!(!m(&rule(json!(["*"]), json!(["*"]), "*"), &status), "* leaves subresources out");
        assert!(m(&rule(json!(["*"]), json!(["*/*"]), "*"), &status));
        assert!(m(&rule(json!(["*"]), json!(["configmaps/status"]), "*"), &status));
        assert!(!m(&rule(json!(["*"]), json!(["pods/status"]), "*"), &status));
    }

    #[test]
    fn only_writes_some_webhook_has_a_rule_for_go_through_admission() {
        let store = Store::new(10);
        let cm = store.rt("", "configmaps");
        let secrets = store.rt("", "secrets");
        let vwc = store.rt(GROUP, "validatingwebhookconfigurations");
        assert!(!active(&store, &cm, Sub::Main, &[Operation::Create]), "no webhooks at all");
        let config = json!({"metadata": {"name": "v"}, "webhooks": [{"name": "cm.example.com", "sideEffects": "None",
            "admissionReviewVersions": ["v1"], "clientConfig": {"url": "https://127.0.0.1:1/"},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"]}]}]});
        store.create(&vwc, "", config, &WriteOptions::default()).unwrap();
        assert!(active(&store, &cm, Sub::Main, &[Operation::Create]));
        assert!(!active(&store, &cm, Sub::Main, &[Operation::Update]));
        assert!(active(&store, &cm, Sub::Main, &[Operation::Update, Operation::Create]), "an apply may create");
        assert!(!active(&store, &cm, Sub::Status, &[Operation::Create]));
        assert!(!active(&store, &secrets, Sub::Main, &[Operation::Create]));
        assert!(!active(&store, &vwc, Sub::Main, &[Operation::Create]), "never the configurations themselves");
    }

    #[test]
    fn selectors_pick_by_namespace_labels_and_by_the_new_or_old_objects_labels() {
        let (rt, user) = (cm_rt(), UserInfo::admin());
        let a = attrs(&rt, &user, Operation::Update, None);
        let w = json!({"rules": [{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"]}],
            "namespaceSelector": {"matchLabels": {"env": "prod"}},
            "objectSelector": {"matchExpressions": [{"key": "watched", "operator": "Exists"}]}});
        let (watched, plain) = (json!({"metadata": {"labels": {"watched": ""}}}), json!({"metadata": {}}));
        let prod = Some(json!({"env": "prod"}));
        assert!(matches(&w, &a, Some(&watched), None, &prod));
        assert!(!matches(&w, &a, Some(&watched), None, &Some(json!({"env": "dev"}))));
        assert!(matches(&w, &a, Some(&watched), None, &None), "no namespace to select (cluster-scoped)");
        assert!(!matches(&w, &a, Some(&plain), None, &prod));
        assert!(matches(&w, &a, Some(&plain), Some(&watched), &prod), "the old object's labels count too");
    }

    #[test]
    fn a_denial_carries_the_webhooks_status_as_kubernetes_words_it() {
        let w = json!({"name": "deny.example.com"});
        let e = denied(&w, &json!({"code": 403, "message": "no", "reason": "Forbidden"}));
        assert_eq!((e.code, e.reason), (403, "Forbidden"));
        assert_eq!(e.message, "admission webhook \"deny.example.com\" denied the request: no");
        let e = denied(&w, &Value::Null);
        assert_eq!(
            (e.code, e.message.as_str()),
            (400, "admission webhook \"deny.example.com\" denied the request without explanation")
        );
    }
}

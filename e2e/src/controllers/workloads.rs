//! What the workload controllers (ReplicaSet, Deployment, DaemonSet) share: label selectors
//! as objects, pod-template hashes, pod readiness and availability, controller owner
//! references, and pods stamped from a template.

use serde_json::{Value, json};
use sha2::Digest as _;

use super::is_deleting;
use super::scheduler::expr_matches;
use crate::api::util::meta_str;

/// Whether `labels` satisfy a `metav1.LabelSelector` object (matchLabels and matchExpressions
/// ANDed). An empty selector matches everything, as in Kubernetes; a missing one nothing.
pub fn selector_matches(selector: &Value, labels: &Value) -> bool {
    if selector.is_null() {
        return false;
    }
    let by_label =
        selector["matchLabels"].as_object().into_iter().flatten().all(|(k, v)| labels.get(k).is_some_and(|l| l == v));
    let by_expr = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| expr_matches(e, labels.get(e["key"].as_str().unwrap_or_default())));
    by_label && by_expr
}

/// A short, stable name for a pod template (the `pod-template-hash` and
/// `controller-revision-hash` labels): ten characters of Kubernetes' name alphabet.
pub fn template_hash(template: &Value) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    // serde_json's maps are sorted, so equal templates serialize (and hash) equally.
    let digest = sha2::Sha256::digest(serde_json::to_vec(template).unwrap_or_default());
    digest[..10].iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

/// Whether `obj`'s controller (the owner reference with `controller: true`) has `uid`.
pub fn controlled_by(obj: &Value, uid: &str) -> bool {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|refs| refs.iter().any(|r| r["controller"] == true && r["uid"] == uid))
}

/// The owner reference a controller puts on what it makes.
pub fn controller_ref(owner: &Value, api_version: &str, kind: &str) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "name": meta_str(owner, "name"), "uid": meta_str(owner, "uid"),
           "controller": true, "blockOwnerDeletion": true})
}

/// A pod counted by its controller: not being deleted and not finished.
pub fn is_active(pod: &Value) -> bool {
    !is_deleting(pod) && !matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}

pub fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// Ready for at least `min_ready_seconds`.
pub fn is_available(pod: &Value, min_ready_seconds: i64) -> bool {
    if !is_ready(pod) {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    let since = pod["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["lastTransitionTime"].as_str())
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    since.is_some_and(|t| (jiff::Timestamp::now() - t).get_seconds() >= min_ready_seconds)
}

/// A pod of `template` owned by `owner`, named `<prefix>-<random>` by the API server.
pub fn pod_from_template(template: &Value, namespace: &str, prefix: &str, owner_ref: Value, labels: &Value) -> Value {
    let mut meta = template["metadata"].clone();
    if !meta.is_object() {
        meta = json!({});
    }
    meta["generateName"] = json!(format!("{prefix}-"));
    meta["namespace"] = json!(namespace);
    meta["labels"] = labels.clone();
    meta["ownerReferences"] = json!([owner_ref]);
    for k in ["name", "uid", "resourceVersion", "creationTimestamp"] {
        if let Some(m) = meta.as_object_mut() {
            m.remove(k);
        }
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"].clone()})
}

/// `template.metadata.labels` plus one more label.
pub fn labels_with(template: &Value, key: &str, value: &str) -> Value {
    let mut labels = template["metadata"]["labels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    labels[key] = json!(value);
    labels
}

/// An int-or-percent field (`maxSurge: 25%`, `maxUnavailable: 1`) against `total`, rounded
/// up or down as Kubernetes does for that field.
pub fn int_or_percent(v: &Value, total: i64, default: &str, round_up: bool) -> i64 {
    let s = match v {
        Value::Number(n) => return n.as_i64().unwrap_or(0),
        Value::String(s) => s.as_str(),
        _ => default,
    };
    match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
        Some(p) if round_up => (p * total + 99) / 100,
        Some(p) => p * total / 100,
        None => s.parse().unwrap_or(0),
    }
}

/// Sets a condition the way Deployments and DaemonSets carry them (`lastUpdateTime` moves
/// whenever reason or message do, `lastTransitionTime` only when the status flips).
pub fn set_workload_condition(status: &mut Value, ty: &str, value: &str, reason: &str, message: &str) {
    let t = crate::api::util::now();
    let mut conds = status["conditions"].as_array().cloned().unwrap_or_default();
    let fresh = json!({"type": ty, "status": value, "reason": reason, "message": message,
                       "lastUpdateTime": t, "lastTransitionTime": t});
    match conds.iter_mut().find(|c| c["type"] == ty) {
        Some(c) if c["status"] == value && c["reason"] == reason && c["message"] == message => {}
        Some(c) if c["status"] == value => {
            c["reason"] = json!(reason);
            c["message"] = json!(message);
            c["lastUpdateTime"] = json!(t);
        }
        Some(c) => *c = fresh,
        None => conds.push(fresh),
    }
    status["conditions"] = Value::Array(conds);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_match_labels_and_expressions() {
        let labels = json!({"app": "a", "tier": "web"});
        assert!(selector_matches(&json!({"matchLabels": {"app": "a"}}), &labels));
        assert!(!selector_matches(&json!({"matchLabels": {"app": "b"}}), &labels));
        let expr = json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "db"]},
                                               {"key": "zone", "operator": "DoesNotExist"}]});
        assert!(selector_matches(&expr, &labels));
        assert!(selector_matches(&json!({}), &labels));
        assert!(!selector_matches(&Value::Null, &labels));
    }

    #[test]
    fn surge_rounds_up_and_unavailable_down() {
        assert_eq!(int_or_percent(&Value::Null, 1, "25%", true), 1);
        assert_eq!(int_or_percent(&Value::Null, 1, "25%", false), 0);
        assert_eq!(int_or_percent(&json!("50%"), 3, "25%", false), 1);
        assert_eq!(int_or_percent(&json!(2), 3, "25%", false), 2);
    }

    #[test]
    fn equal_templates_hash_equally_and_changes_show() {
        let a = json!({"spec": {"containers": [{"name": "c", "image": "x"}]}, "metadata": {"labels": {"a": "1"}}});
        let b = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"containers": [{"image": "x", "name": "c"}]}});
        assert_eq!(template_hash(&a), template_hash(&b));
        let mut c = a.clone();
        c["spec"]["containers"][0]["image"] = json!("y");
        assert_ne!(template_hash(&a), template_hash(&c));
        assert_eq!(template_hash(&a).len(), 10);
    }
}

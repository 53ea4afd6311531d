//! The kube-scheduler stand-in: binds pending pods to a node, honouring nodeName, node
//! selectors, required node affinity on hostname or labels, and the node affinity of the
//! PVs a pod uses. For a claim of a WaitForFirstConsumer class it first writes
//! `volume.kubernetes.io/selected-node` on the claim and binds the pod only once the claim is
//! bound, as the VolumeBinding plugin's PreBind step does.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{is_deleting, merge, record_event};
use crate::api::store::{Store, Sub, set_condition};
use crate::api::util::{meta_str, str_at};

pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
const NAME: &str = "default-scheduler";

enum Plan {
    Bind(String),
    /// Claims were (or are) annotated with the chosen node; wait for them to bind.
    WaitForVolumes,
    Unschedulable(String),
}

/// Whether `node` satisfies a NodeSelectorTerm list (terms are ORed, expressions ANDed).
pub fn node_matches_terms(node: &Value, terms: &Value) -> bool {
    let Some(terms) = terms.as_array() else { return true };
    terms.iter().any(|t| {
        let labels = &node["metadata"]["labels"];
        let exprs = t["matchExpressions"].as_array().cloned().unwrap_or_default();
        let fields = t["matchFields"].as_array().cloned().unwrap_or_default();
        exprs.iter().all(|e| expr_matches(e, labels.get(e["key"].as_str().unwrap_or_default())))
            && fields.iter().all(|e| {
                let v = if e["key"] == "metadata.name" { Some(&node["metadata"]["name"]) } else { None };
                expr_matches(e, v)
            })
    })
}

/// One `matchExpressions` entry (In, NotIn, Exists, DoesNotExist) against a label's value.
pub(crate) fn expr_matches(e: &Value, value: Option<&Value>) -> bool {
    let values: Vec<&str> =
        e["values"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let v = value.and_then(Value::as_str);
    match e["operator"].as_str().unwrap_or_default() {
        "In" => v.is_some_and(|v| values.contains(&v)),
        "NotIn" => v.is_none_or(|v| !values.contains(&v)),
        "Exists" => v.is_some(),
        "DoesNotExist" => v.is_none(),
        _ => false,
    }
}

fn pv_allows(pv: &Value, node: &Value) -> bool {
    let terms = &pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"];
    terms.is_null() || node_matches_terms(node, terms)
}

fn plan(
    pod: &Value,
    nodes: &[Arc<Value>],
    pods: &[Arc<Value>],
    pvcs: &[Arc<Value>],
    pvs: &[Arc<Value>],
    classes: &[Arc<Value>],
) -> Plan {
    let ns = meta_str(pod, "namespace");
    let mut candidates: Vec<&Value> =
        nodes
            .iter()
            .map(|n| &**n)
            .filter(|n| n["spec"]["unschedulable"] != true)
            .filter(|n| {
                n["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
            })
            .filter(|n| {
                pod["spec"]["nodeSelector"]
                    .as_object()
                    .is_none_or(|sel| sel.iter().all(|(k, v)| n["metadata"]["labels"][k] == *v))
            })
            .filter(|n| {
                let terms = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                    ["nodeSelectorTerms"];
                terms.is_null() || node_matches_terms(n, terms)
            })
            .collect();
    let mut delayed = Vec::new();
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let Some(claim_name) = v["persistentVolumeClaim"]["claimName"].as_str() else { continue };
        let Some(claim) = pvcs.iter().find(|c| meta_str(c, "namespace") == ns && meta_str(c, "name") == claim_name)
        else {
            return Plan::Unschedulable(format!("persistentvolumeclaim \"{claim_name}\" not found"));
        };
        if is_deleting(claim) {
            return Plan::Unschedulable(format!("persistentvolumeclaim \"{claim_name}\" is being deleted"));
        }
        let volume = str_at(claim, "spec.volumeName");
        if !volume.is_empty() && str_at(claim, "status.phase") == "Bound" {
            if let Some(pv) = pvs.iter().find(|p| meta_str(p, "name") == volume) {
                candidates.retain(|n| pv_allows(pv, n));
            }
            continue;
        }
        let class = str_at(claim, "spec.storageClassName");
        let wffc =
            classes.iter().any(|c| meta_str(c, "name") == class && c["volumeBindingMode"] == "WaitForFirstConsumer");
        if !wffc {
            return Plan::Unschedulable("pod has unbound immediate PersistentVolumeClaims".into());
        }
        let selected = claim["metadata"]["annotations"][SELECTED_NODE].as_str().unwrap_or_default();
        if !selected.is_empty() {
            candidates.retain(|n| meta_str(n, "name") == selected);
        }
        delayed.push(claim);
    }
    let load = |n: &Value| {
        pods.iter()
            .filter(|p| str_at(p, "spec.nodeName") == meta_str(n, "name"))
            .filter(|p| !matches!(str_at(p, "status.phase"), "Succeeded" | "Failed"))
            .count()
    };
    let Some(node) = candidates.iter().min_by_key(|n| (load(n), meta_str(n, "name").to_string())) else {
        return Plan::Unschedulable(format!(
            "0/{} nodes are available: no node satisfies the pod's node selector, affinity and volume node affinity.",
            nodes.len()
        ));
    };
    if delayed.is_empty() { Plan::Bind(meta_str(node, "name").to_string()) } else { Plan::WaitForVolumes }
}

/// One pass over the pending pods.
pub fn sweep(store: &Arc<Store>) -> anyhow::Result<()> {
    let pods = store.all(&store.rt("", "pods"));
    let pending: Vec<&Value> = pods
        .iter()
        .map(|p| &**p)
        .filter(|p| str_at(p, "spec.nodeName").is_empty() && !is_deleting(p))
        .filter(|p| str_at(p, "spec.schedulerName") == NAME && str_at(p, "status.phase") == "Pending")
        .collect();
    if pending.is_empty() {
        return Ok(());
    }
    let nodes = store.all(&store.rt("", "nodes"));
    let pvcs = store.all(&store.rt("", "persistentvolumeclaims"));
    let pvs = store.all(&store.rt("", "persistentvolumes"));
    let classes = store.all(&store.rt("storage.k8s.io", "storageclasses"));
    for pod in pending {
        match plan(pod, &nodes, &pods, &pvcs, &pvs, &classes) {
            Plan::Bind(node) => {
                let (ns, name) = (meta_str(pod, "namespace"), meta_str(pod, "name"));
                if store.bind_pod(ns, name, &node).is_ok() {
                    record_event(
                        store,
                        pod,
                        "Normal",
                        "Scheduled",
                        &format!("Successfully assigned {ns}/{name} to {node}"),
                        NAME,
                    );
                }
            }
            Plan::WaitForVolumes => annotate_delayed(store, pod, &nodes, &pods, &pvcs)?,
            Plan::Unschedulable(msg) => {
                let mut p = pod.clone();
                set_condition(&mut p, "PodScheduled", "False", "Unschedulable", &msg);
                if p["status"] != pod["status"] {
                    merge(
                        store,
                        ("", "pods"),
                        pod,
                        Sub::Status,
                        json!({"status": {"conditions": p["status"]["conditions"]}}),
                        NAME,
                    )?;
                    record_event(store, pod, "Warning", "FailedScheduling", &msg, NAME);
                }
            }
        }
    }
    Ok(())
}

/// Picks the node for a pod whose WaitForFirstConsumer claims are unbound and writes it on
/// each claim that has none yet.
fn annotate_delayed(
    store: &Store,
    pod: &Value,
    nodes: &[Arc<Value>],
    pods: &[Arc<Value>],
    pvcs: &[Arc<Value>],
) -> anyhow::Result<()> {
    let ns = meta_str(pod, "namespace");
    let claims: Vec<&Value> = pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["persistentVolumeClaim"]["claimName"].as_str())
        .filter_map(|n| pvcs.iter().map(|c| &**c).find(|c| meta_str(c, "namespace") == ns && meta_str(c, "name") == n))
        .filter(|c| str_at(c, "status.phase") != "Bound")
        .collect();
    // A node already chosen for one claim is the node for all of them.
    let chosen = claims
        .iter()
        .find_map(|c| c["metadata"]["annotations"][SELECTED_NODE].as_str().map(str::to_string))
        .or_else(|| {
            // Same choice as plan(): the least loaded eligible node.
            let eligible: Vec<&Value> = nodes.iter().map(|n| &**n).filter(|n| {
                let terms = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
                (terms.is_null() || node_matches_terms(n, terms))
                    && pod["spec"]["nodeSelector"].as_object().is_none_or(|sel| sel.iter().all(|(k, v)| n["metadata"]["labels"][k] == *v))
            }).collect();
            eligible
                .iter()
                .min_by_key(|n| {
                    (pods.iter().filter(|p| str_at(p, "spec.nodeName") == meta_str(n, "name")).count(), meta_str(n, "name").to_string())
                })
                .map(|n| meta_str(n, "name").to_string())
        });
    let Some(node) = chosen else { return Ok(()) };
    for c in claims {
        if c["metadata"]["annotations"][SELECTED_NODE].is_null() {
            merge(
                store,
                ("", "persistentvolumeclaims"),
                c,
                Sub::Main,
                json!({"metadata": {"annotations": {SELECTED_NODE: node}}}),
                NAME,
            )?;
        }
    }
    Ok(())
}

//! The DaemonSet controller: one pod of the template on every node the template fits
//! (nodeSelector, required node affinity, taints it tolerates), pinned there by node affinity
//! on the node's name as Kubernetes does; a template change rolls node by node within
//! `maxUnavailable` (or waits for pods to be deleted, for `OnDelete`). The status carries
//! what `kubectl rollout status daemonset` reads.

use std::sync::Arc;

use serde_json::{Value, json};

use super::scheduler::node_matches_terms;
use super::workloads::{
    controlled_by, controller_ref, int_or_percent, is_active, is_available, is_ready, labels_with, pod_from_template,
    template_hash,
};
use super::{is_deleting, merge, opts, record_event};
use crate::api::store::{DeleteOptions, Store, Sub};
use crate::api::util::{meta_str, str_at};

const NAME: &str = "daemonset-controller";
const HASH_LABEL: &str = "controller-revision-hash";

pub fn sweep(store: &Store) -> anyhow::Result<()> {
    let sets = store.all(&store.rt("apps", "daemonsets"));
    if sets.is_empty() {
        return Ok(());
    }
    let nodes = store.all(&store.rt("", "nodes"));
    let pods = store.all(&store.rt("", "pods"));
    for ds in sets.iter().filter(|ds| !is_deleting(ds)) {
        let uid = meta_str(ds, "uid");
        let ns = meta_str(ds, "namespace");
        let mine: Vec<&Value> = pods
            .iter()
            .map(|p| &**p)
            .filter(|p| meta_str(p, "namespace") == ns && controlled_by(p, uid) && is_active(p))
            .collect();
        if let Err(e) = reconcile(store, ds, &nodes, &mine) {
            tracing::debug!(daemonset = meta_str(ds, "name"), error = %e, "daemonset not converged yet");
        }
    }
    Ok(())
}

/// Whether the template's pods belong on `node`.
fn fits(template: &Value, node: &Value) -> bool {
    let spec = &template["spec"];
    let by_selector = spec["nodeSelector"]
        .as_object()
        .is_none_or(|sel| sel.iter().all(|(k, v)| node["metadata"]["labels"].get(k) == Some(v)));
    let terms =
        &spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
    let by_affinity = terms.is_null() || node_matches_terms(node, terms);
    let tolerated = node["spec"]["taints"].as_array().into_iter().flatten().all(|taint| {
        taint["effect"] == "PreferNoSchedule"
            || spec["tolerations"].as_array().into_iter().flatten().any(|t| {
                let key_ok = t["operator"] == "Exists" && t["key"].is_null() || t["key"] == taint["key"];
                let value_ok = t["operator"] == "Exists" || t["value"] == taint["value"];
                let effect_ok = t["effect"].is_null() || t["effect"] == taint["effect"];
                key_ok && value_ok && effect_ok
            })
    });
    by_selector && by_affinity && tolerated
}

/// The node a daemon pod is meant for: its node name once bound, else its node affinity.
fn node_of(pod: &Value) -> String {
    let bound = str_at(pod, "spec.nodeName");
    if !bound.is_empty() {
        return bound.to_string();
    }
    pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
        ["matchFields"][0]["values"][0]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn reconcile(store: &Store, ds: &Value, nodes: &[Arc<Value>], pods: &[&Value]) -> anyhow::Result<()> {
    let ns = meta_str(ds, "namespace");
    let template = &ds["spec"]["template"];
    let hash = template_hash(template);
    let pods_rt = store.rt("", "pods");
    let min_ready = ds["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
    let eligible: Vec<&Value> = nodes.iter().map(|n| &**n).filter(|n| fits(template, n)).collect();
    let eligible_names: Vec<&str> = eligible.iter().map(|n| meta_str(n, "name")).collect();
    let delete = |p: &Value| -> anyhow::Result<()> {
        store.delete(&pods_rt, ns, meta_str(p, "name"), &DeleteOptions::default())?;
        record_event(store, ds, "Normal", "SuccessfulDelete", &format!("Deleted pod: {}", meta_str(p, "name")), NAME);
        Ok(())
    };

    // Pods on nodes they no longer fit, and duplicates on one node, go.
    let mut kept: Vec<&Value> = Vec::new();
    for p in pods {
        let node = node_of(p);
        if !eligible_names.contains(&node.as_str()) || kept.iter().any(|k| node_of(k) == node) {
            delete(p)?;
        } else {
            kept.push(p);
        }
    }
    // Nodes without a pod get one.
    for node in &eligible_names {
        if kept.iter().any(|p| node_of(p) == *node) {
            continue;
        }
        let mut pod = pod_from_template(
            template,
            ns,
            meta_str(ds, "name"),
            controller_ref(ds, "apps/v1", "DaemonSet"),
            &labels_with(template, HASH_LABEL, &hash),
        );
        pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = json!({"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]});
        match store.create(&pods_rt, ns, pod, &opts(NAME)) {
            Ok(p) => {
                let message = format!("Created pod: {}", meta_str(&p, "name"));
                record_event(store, ds, "Normal", "SuccessfulCreate", &message, NAME);
            }
            Err(e) => {
                record_event(store, ds, "Warning", "FailedCreate", &format!("Error creating: {}", e.message), NAME);
            }
        }
    }
    // Rolling update: outdated pods that are not available go at once; available ones only
    // while fewer than maxUnavailable nodes are without an available pod.
    if ds["spec"]["updateStrategy"]["type"].as_str().unwrap_or("RollingUpdate") == "RollingUpdate" {
        let desired = eligible.len() as i64;
        let max_unavailable =
            int_or_percent(&ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"], desired, "1", true).max(1);
        let mut unavailable = eligible_names
            .iter()
            .filter(|n| !kept.iter().any(|p| node_of(p) == **n && is_available(p, min_ready)))
            .count() as i64;
        for p in kept.iter().filter(|p| p["metadata"]["labels"][HASH_LABEL] != hash.as_str()) {
            if !is_available(p, min_ready) {
                delete(p)?;
            } else if unavailable < max_unavailable {
                delete(p)?;
                unavailable += 1;
            }
        }
    }
    write_status(store, ds, &eligible_names, &kept, &hash, min_ready)
}

fn write_status(
    store: &Store,
    ds: &Value,
    eligible: &[&str],
    pods: &[&Value],
    hash: &str,
    min_ready: i64,
) -> anyhow::Result<()> {
    let on_eligible: Vec<&&Value> = pods.iter().filter(|p| eligible.contains(&node_of(p).as_str())).collect();
    let available = on_eligible.iter().filter(|p| is_available(p, min_ready)).count();
    let status = json!({
        "desiredNumberScheduled": eligible.len(),
        "currentNumberScheduled": on_eligible.len(),
        "numberMisscheduled": pods.len() - on_eligible.len(),
        "numberReady": on_eligible.iter().filter(|p| is_ready(p)).count(),
        "numberAvailable": available,
        "numberUnavailable": eligible.len().saturating_sub(available),
        "updatedNumberScheduled": on_eligible.iter().filter(|p| p["metadata"]["labels"][HASH_LABEL] == hash).count(),
        "observedGeneration": ds["metadata"]["generation"],
    });
    if ds["status"] != status {
        merge(store, ("apps", "daemonsets"), ds, Sub::Status, json!({"status": status}), NAME)?;
    }
    Ok(())
}

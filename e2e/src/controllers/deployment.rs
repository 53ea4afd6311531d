//! The Deployment controller: one ReplicaSet per pod template (named after the template's
//! hash), rolled from old to new within `maxSurge`/`maxUnavailable` (or all at once for
//! `Recreate`), with the status and `Available`/`Progressing` conditions `kubectl rollout
//! status` and `kubectl wait --for=condition=Available` read.

use serde_json::{Value, json};

use super::workloads::{
    controlled_by, controller_ref, int_or_percent, labels_with, set_workload_condition, template_hash,
};
use super::{is_deleting, merge, opts, record_event};
use crate::api::store::{DeleteOptions, Store, Sub};
use crate::api::util::meta_str;

const NAME: &str = "deployment-controller";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
const HASH_LABEL: &str = "pod-template-hash";

pub fn sweep(store: &Store) -> anyhow::Result<()> {
    let deployments = store.all(&store.rt("apps", "deployments"));
    if deployments.is_empty() {
        return Ok(());
    }
    let sets = store.all(&store.rt("apps", "replicasets"));
    for d in deployments.iter().filter(|d| !is_deleting(d)) {
        let uid = meta_str(d, "uid");
        let ns = meta_str(d, "namespace");
        let mine: Vec<&Value> = sets
            .iter()
            .map(|rs| &**rs)
            .filter(|rs| meta_str(rs, "namespace") == ns && controlled_by(rs, uid))
            .collect();
        if let Err(e) = reconcile(store, d, &mine) {
            tracing::debug!(deployment = meta_str(d, "name"), error = %e, "deployment not converged yet");
        }
    }
    Ok(())
}

fn replicas(o: &Value) -> i64 {
    o["spec"]["replicas"].as_i64().unwrap_or(1).max(0)
}

fn status_of(rs: &Value, field: &str) -> i64 {
    rs["status"][field].as_i64().unwrap_or(0)
}

fn revision(rs: &Value) -> i64 {
    rs["metadata"]["annotations"][REVISION].as_str().and_then(|r| r.parse().ok()).unwrap_or(0)
}

fn reconcile(store: &Store, d: &Value, sets: &[&Value]) -> anyhow::Result<()> {
    let template = &d["spec"]["template"];
    let hash = template_hash(template);
    let new = sets.iter().find(|rs| rs["metadata"]["labels"][HASH_LABEL] == hash.as_str()).copied();
    let olds: Vec<&Value> =
        sets.iter().filter(|rs| rs["metadata"]["labels"][HASH_LABEL] != hash.as_str()).copied().collect();
    let want = replicas(d);
    let rolling = d["spec"]["strategy"]["type"].as_str().unwrap_or("RollingUpdate") == "RollingUpdate";
    let surge = int_or_percent(&d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], want, "25%", true);
    let mut unavailable = int_or_percent(&d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], want, "25%", false);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    let paused = d["spec"]["paused"] == true;
    let sets_rt = store.rt("apps", "replicasets");

    let mut status = d["status"].clone();
    if !status.is_object() {
        status = json!({});
    }
    let new = match new {
        Some(rs) => rs.clone(),
        None if paused => return write_status(store, d, None, &olds, unavailable, status),
        None => {
            let next_revision = sets.iter().map(|rs| revision(rs)).max().unwrap_or(0) + 1;
            // The first ReplicaSet starts at full size; a rollout's new one within the surge.
            let total: i64 = olds.iter().map(|rs| replicas(rs)).sum();
            let initial = if !rolling && total > 0 {
                0
            } else if olds.is_empty() {
                want
            } else {
                (want + surge - total).clamp(0, want)
            };
            let name = format!("{}-{hash}", meta_str(d, "name"));
            let labels = labels_with(template, HASH_LABEL, &hash);
            let mut selector = d["spec"]["selector"].clone();
            selector["matchLabels"][HASH_LABEL] = json!(hash);
            let mut rs_template = template.clone();
            rs_template["metadata"]["labels"] = labels.clone();
            let rs = json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": name, "namespace": meta_str(d, "namespace"), "labels": labels,
                    "annotations": {REVISION: next_revision.to_string(),
                        "deployment.kubernetes.io/desired-replicas": want.to_string(),
                        "deployment.kubernetes.io/max-replicas": (want + surge).to_string()},
                    "ownerReferences": [controller_ref(d, "apps/v1", "Deployment")]},
                "spec": {"replicas": initial, "minReadySeconds": d["spec"]["minReadySeconds"].as_i64().unwrap_or(0),
                    "selector": selector, "template": rs_template},
            });
            let created = store
                .create(&sets_rt, meta_str(d, "namespace"), rs, &opts(NAME))
                .map_err(|e| anyhow::anyhow!("creating replica set {name}: {}", e.message))?;
            let message = format!("Scaled up replica set {name} from 0 to {initial}");
            record_event(store, d, "Normal", "ScalingReplicaSet", &message, NAME);
            set_workload_condition(
                &mut status,
                "Progressing",
                "True",
                "NewReplicaSetCreated",
                &format!("Created new replica set \"{name}\""),
            );
            // The Deployment's revision follows its newest ReplicaSet's.
            merge(
                store,
                ("apps", "deployments"),
                d,
                Sub::Main,
                json!({"metadata": {"annotations": {REVISION: next_revision.to_string()}}}),
                NAME,
            )?;
            created
        }
    };
    if !paused {
        scale(store, d, &new, &olds, want, surge, unavailable, rolling)?;
        clean_up_history(store, d, &olds)?;
    }
    // Status from what the ReplicaSets say now.
    let fresh = |rs: &Value| store.get(&sets_rt, meta_str(rs, "namespace"), meta_str(rs, "name")).ok();
    let new_now = fresh(&new);
    let olds_now: Vec<Value> = olds.iter().filter_map(|rs| fresh(rs)).collect();
    let olds_ref: Vec<&Value> = olds_now.iter().collect();
    write_status(store, d, new_now.as_ref(), &olds_ref, unavailable, status)
}

#[allow(clippy::too_many_arguments)]
fn scale(
    store: &Store,
    d: &Value,
    new: &Value,
    olds: &[&Value],
    want: i64,
    surge: i64,
    max_unavailable: i64,
    rolling: bool,
) -> anyhow::Result<()> {
    let set_replicas = |rs: &Value, n: i64| -> anyhow::Result<()> {
        if replicas(rs) != n {
            let message = format!(
                "Scaled {} replica set {} from {} to {n}",
                if n > replicas(rs) { "up" } else { "down" },
                meta_str(rs, "name"),
                replicas(rs)
            );
            merge(store, ("apps", "replicasets"), rs, Sub::Main, json!({"spec": {"replicas": n}}), NAME)?;
            record_event(store, d, "Normal", "ScalingReplicaSet", &message, NAME);
        }
        Ok(())
    };
    if !rolling {
        // Recreate: every old pod goes before any new one starts.
        for rs in olds {
            set_replicas(rs, 0)?;
        }
        let old_pods: i64 = olds.iter().map(|rs| status_of(rs, "replicas")).sum();
        if old_pods == 0 {
            set_replicas(new, want)?;
        }
        return Ok(());
    }
    if olds.is_empty() {
        return set_replicas(new, want);
    }
    // Up: the new set grows while every set's pods together stay within want + surge.
    let total: i64 = replicas(new) + olds.iter().map(|rs| replicas(rs)).sum::<i64>();
    let grown = (replicas(new) + (want + surge - total).max(0)).min(want);
    set_replicas(new, grown)?;
    // Down: old sets shrink while the available pods stay at want - maxUnavailable or more;
    // pods that are not available can go at no cost.
    let available: i64 =
        status_of(new, "availableReplicas") + olds.iter().map(|rs| status_of(rs, "availableReplicas")).sum::<i64>();
    let mut budget = (available - (want - max_unavailable)).max(0);
    for rs in olds {
        let unavailable_here = (replicas(rs) - status_of(rs, "availableReplicas")).max(0);
        let cut = (unavailable_here + budget).min(replicas(rs));
        budget -= (cut - unavailable_here).max(0);
        set_replicas(rs, replicas(rs) - cut)?;
    }
    Ok(())
}

/// Old ReplicaSets scaled to zero beyond `revisionHistoryLimit` (default 10) go, oldest first.
fn clean_up_history(store: &Store, d: &Value, olds: &[&Value]) -> anyhow::Result<()> {
    let limit = d["spec"]["revisionHistoryLimit"].as_i64().unwrap_or(10).max(0) as usize;
    let mut idle: Vec<&&Value> = olds.iter().filter(|rs| replicas(rs) == 0 && status_of(rs, "replicas") == 0).collect();
    if idle.len() <= limit {
        return Ok(());
    }
    idle.sort_by_key(|rs| revision(rs));
    for rs in idle.iter().take(idle.len() - limit) {
        store.delete(
            &store.rt("apps", "replicasets"),
            meta_str(rs, "namespace"),
            meta_str(rs, "name"),
            &DeleteOptions::default(),
        )?;
    }
    Ok(())
}

fn write_status(
    store: &Store,
    d: &Value,
    new: Option<&Value>,
    olds: &[&Value],
    max_unavailable: i64,
    mut status: Value,
) -> anyhow::Result<()> {
    let want = replicas(d);
    let all: Vec<&Value> = new.into_iter().chain(olds.iter().copied()).collect();
    let sum = |f: &str| all.iter().map(|rs| status_of(rs, f)).sum::<i64>();
    let updated = new.map(|rs| status_of(rs, "replicas")).unwrap_or(0);
    let available = sum("availableReplicas");
    let total = sum("replicas");
    status["observedGeneration"] = d["metadata"]["generation"].clone();
    status["replicas"] = json!(total);
    status["updatedReplicas"] = json!(updated);
    status["readyReplicas"] = json!(sum("readyReplicas"));
    status["availableReplicas"] = json!(available);
    status["unavailableReplicas"] = json!((total - available).max(0));
    if available >= want - max_unavailable {
        set_workload_condition(
            &mut status,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
        );
    } else {
        set_workload_condition(
            &mut status,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        );
    }
    if let Some(new) = new {
        let name = meta_str(new, "name");
        let complete = updated == want && total == updated && status_of(new, "availableReplicas") == want;
        if complete {
            let message = format!("ReplicaSet \"{name}\" has successfully progressed.");
            set_workload_condition(&mut status, "Progressing", "True", "NewReplicaSetAvailable", &message);
        } else if d["spec"]["paused"] == true {
            set_workload_condition(&mut status, "Progressing", "Unknown", "DeploymentPaused", "Deployment is paused");
        } else if past_deadline(d, &status) {
            let message = format!("ReplicaSet \"{name}\" has timed out progressing.");
            set_workload_condition(&mut status, "Progressing", "False", "ProgressDeadlineExceeded", &message);
        } else {
            let message = format!("ReplicaSet \"{name}\" is progressing.");
            set_workload_condition(&mut status, "Progressing", "True", "ReplicaSetUpdated", &message);
            // Progress (pods updated, available or gone) restarts the deadline.
            let moved =
                ["replicas", "updatedReplicas", "availableReplicas"].iter().any(|f| d["status"][f] != status[f]);
            if moved
                && let Some(c) =
                    status["conditions"].as_array_mut().and_then(|c| c.iter_mut().find(|c| c["type"] == "Progressing"))
            {
                c["lastUpdateTime"] = json!(crate::api::util::now());
            }
        }
    }
    if d["status"] != status {
        merge(store, ("apps", "deployments"), d, Sub::Status, json!({"status": status}), NAME)?;
    }
    Ok(())
}

/// No progress for `progressDeadlineSeconds` (default 600) since the condition last moved.
fn past_deadline(d: &Value, status: &Value) -> bool {
    let deadline = d["spec"]["progressDeadlineSeconds"].as_i64().unwrap_or(600);
    let since = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Progressing"))
        .and_then(|c| c["lastUpdateTime"].as_str())
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    since.is_some_and(|t| (jiff::Timestamp::now() - t).get_seconds() > deadline)
}

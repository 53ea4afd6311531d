//! The ReplicaSet controller: keeps `spec.replicas` active pods of the template, removing
//! surplus ones least-ready first, and reports how many are ready and available.
//!
//! It reads the store directly, so unlike client-go's controller it needs no "expectations"
//! to avoid creating a pod twice while its informer lags.

use serde_json::{Value, json};

use super::workloads::{controlled_by, controller_ref, is_active, is_available, is_ready, pod_from_template};
use super::{is_deleting, merge, opts, record_event};
use crate::api::store::{DeleteOptions, Store, Sub};
use crate::api::util::meta_str;

const NAME: &str = "replicaset-controller";

pub fn sweep(store: &Store) -> anyhow::Result<()> {
    let sets = store.all(&store.rt("apps", "replicasets"));
    if sets.is_empty() {
        return Ok(());
    }
    let pods = store.all(&store.rt("", "pods"));
    for rs in sets.iter().filter(|rs| !is_deleting(rs)) {
        let uid = meta_str(rs, "uid");
        let ns = meta_str(rs, "namespace");
        let mine: Vec<&Value> = pods
            .iter()
            .map(|p| &**p)
            .filter(|p| meta_str(p, "namespace") == ns && controlled_by(p, uid) && is_active(p))
            .collect();
        if let Err(e) = converge(store, rs, &mine) {
            tracing::debug!(rs = meta_str(rs, "name"), error = %e, "replicaset not converged yet");
        }
        write_status(store, rs, &mine)?;
    }
    Ok(())
}

fn converge(store: &Store, rs: &Value, pods: &[&Value]) -> anyhow::Result<()> {
    let want = rs["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
    let ns = meta_str(rs, "namespace");
    let pods_rt = store.rt("", "pods");
    if pods.len() < want {
        let template = &rs["spec"]["template"];
        let owner = controller_ref(rs, "apps/v1", "ReplicaSet");
        for _ in pods.len()..want {
            let pod =
                pod_from_template(template, ns, meta_str(rs, "name"), owner.clone(), &template["metadata"]["labels"]);
            match store.create(&pods_rt, ns, pod, &opts(NAME)) {
                Ok(p) => record_event(
                    store,
                    rs,
                    "Normal",
                    "SuccessfulCreate",
                    &format!("Created pod: {}", meta_str(&p, "name")),
                    NAME,
                ),
                Err(e) => {
                    record_event(store, rs, "Warning", "FailedCreate", &format!("Error creating: {}", e.message), NAME);
                    anyhow::bail!("creating a pod: {}", e.message);
                }
            }
        }
    } else if pods.len() > want {
        // Kubernetes' order: unscheduled before scheduled, pending before running, not
        // ready before ready, then the youngest.
        let mut doomed: Vec<&&Value> = pods.iter().collect();
        doomed.sort_by_key(|p| {
            (
                !p["spec"]["nodeName"].as_str().unwrap_or_default().is_empty(),
                p["status"]["phase"] == "Running",
                is_ready(p),
                std::cmp::Reverse(meta_str(p, "creationTimestamp").to_string()),
            )
        });
        for p in doomed.into_iter().take(pods.len() - want) {
            store.delete(&pods_rt, ns, meta_str(p, "name"), &DeleteOptions::default())?;
            record_event(
                store,
                rs,
                "Normal",
                "SuccessfulDelete",
                &format!("Deleted pod: {}", meta_str(p, "name")),
                NAME,
            );
        }
    }
    Ok(())
}

fn write_status(store: &Store, rs: &Value, pods: &[&Value]) -> anyhow::Result<()> {
    let min_ready = rs["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
    let labels_ok = |p: &&&Value| {
        rs["spec"]["template"]["metadata"]["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .all(|(k, v)| p["metadata"]["labels"].get(k) == Some(v))
    };
    let status = json!({
        "replicas": pods.len(),
        "fullyLabeledReplicas": pods.iter().filter(labels_ok).count(),
        "readyReplicas": pods.iter().filter(|p| is_ready(p)).count(),
        "availableReplicas": pods.iter().filter(|p| is_available(p, min_ready)).count(),
        "observedGeneration": rs["metadata"]["generation"],
    });
    if rs["status"] != status {
        merge(store, ("apps", "replicasets"), rs, Sub::Status, json!({"status": status}), NAME)?;
    }
    Ok(())
}

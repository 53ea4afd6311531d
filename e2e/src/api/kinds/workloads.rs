//! Deployments, ReplicaSets and DaemonSets: a selector that selects the template's pods, and
//! the replica count, rollout strategy and history limits Kubernetes fills in.

use serde_json::{Value, json};

use super::{Rules, default};
use crate::api::store::Objects;

#[derive(Debug)]
pub struct Deployment;
#[derive(Debug)]
pub struct ReplicaSet;
#[derive(Debug)]
pub struct DaemonSet;

impl Rules for Deployment {
    fn on_create(&self, obj: &mut Value, _objects: &mut Objects) -> Result<(), String> {
        defaults("apps/deployments", obj)
    }
}

impl Rules for ReplicaSet {
    fn on_create(&self, obj: &mut Value, _objects: &mut Objects) -> Result<(), String> {
        defaults("apps/replicasets", obj)
    }
}

impl Rules for DaemonSet {
    fn on_create(&self, obj: &mut Value, _objects: &mut Objects) -> Result<(), String> {
        defaults("apps/daemonsets", obj)
    }
}

/// The defaults and checks of the workload kinds: a selector that selects the template's
/// pods, the rollout strategy and history limits Kubernetes fills in.
fn defaults(storage: &str, obj: &mut Value) -> Result<(), String> {
    let spec = &mut obj["spec"];
    if !spec["selector"].is_object() {
        return Err("spec.selector: Required value".into());
    }
    let labels = &spec["template"]["metadata"]["labels"];
    let selects =
        spec["selector"]["matchLabels"].as_object().into_iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    if !selects {
        return Err(format!(
            "spec.template.metadata.labels: Invalid value: {labels}: `selector` does not match template `labels`"
        ));
    }
    match storage {
        "apps/deployments" => {
            default(spec, "replicas", json!(1));
            default(spec, "revisionHistoryLimit", json!(10));
            default(spec, "progressDeadlineSeconds", json!(600));
            default(spec, "strategy", json!({"type": "RollingUpdate"}));
            if spec["strategy"]["type"] == "RollingUpdate" {
                default(&mut spec["strategy"], "rollingUpdate", json!({"maxSurge": "25%", "maxUnavailable": "25%"}));
            }
        }
        "apps/daemonsets" => {
            default(spec, "revisionHistoryLimit", json!(10));
            default(spec, "updateStrategy", json!({"type": "RollingUpdate"}));
            if spec["updateStrategy"]["type"] == "RollingUpdate" {
                default(&mut spec["updateStrategy"], "rollingUpdate", json!({"maxUnavailable": 1, "maxSurge": 0}));
            }
        }
        _ => default(spec, "replicas", json!(1)),
    }
    Ok(())
}

//! Pods: defaults and required fields on create, a spec that is immutable but for images,
//! tolerations and deadlines, and graceful deletion — a pod bound to a node stays (with a
//! deletionTimestamp) until its kubelet has stopped the containers and confirms with a
//! zero-grace delete. Binding a pod to a node is `Store::bind_pod`.

use serde_json::{Value, json};

use super::{Deletion, Rules, default, without};
use crate::api::store::{DeleteOptions, Objects};

#[derive(Debug)]
pub struct Pod;

impl Rules for Pod {
    fn on_create(&self, obj: &mut Value, _objects: &mut Objects) -> Result<(), String> {
        let spec = &mut obj["spec"];
        let containers = spec["containers"].as_array_mut().filter(|c| !c.is_empty());
        let Some(containers) = containers else { return Err("spec.containers: Required value".into()) };
        for c in containers.iter_mut() {
            if c["name"].as_str().is_none_or(str::is_empty) {
                return Err("spec.containers[0].name: Required value".into());
            }
            if c["image"].as_str().is_none_or(str::is_empty) {
                return Err("spec.containers[0].image: Required value".into());
            }
            let latest = c["image"].as_str().is_some_and(|i| !i.contains(':') || i.ends_with(":latest"));
            default(c, "imagePullPolicy", json!(if latest { "Always" } else { "IfNotPresent" }));
            default(c, "terminationMessagePath", json!("/dev/termination-log"));
            default(c, "terminationMessagePolicy", json!("File"));
            default(c, "resources", json!({}));
        }
        default(spec, "restartPolicy", json!("Always"));
        default(spec, "schedulerName", json!("default-scheduler"));
        default(spec, "terminationGracePeriodSeconds", json!(30));
        default(spec, "dnsPolicy", json!("ClusterFirst"));
        default(spec, "securityContext", json!({}));
        default(spec, "enableServiceLinks", json!(true));
        default(spec, "serviceAccountName", json!("default"));
        obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
        Ok(())
    }

    fn on_update(&self, old: &Value, new: &mut Value) -> Result<(), String> {
        let mask = |spec: &Value| {
            let mut s = without(spec, &["activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds"]);
            for field in ["containers", "initContainers"] {
                if let Some(cs) = s[field].as_array_mut() {
                    for c in cs {
                        c["image"] = Value::Null;
                    }
                }
            }
            s
        };
        if mask(&old["spec"]) != mask(&new["spec"]) {
            return Err("spec: Forbidden: pod updates may not change fields other than \
                        `spec.containers[*].image`,`spec.initContainers[*].image`,\
                        `spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing \
                        tolerations),`spec.terminationGracePeriodSeconds`"
                .into());
        }
        Ok(())
    }

    /// A pod that never reached a node goes at once; one on a node gets the grace period
    /// asked for, else its spec's (30 s by default), for the kubelet to stop it.
    fn deletion(&self, obj: &Value, opts: &DeleteOptions) -> Deletion {
        let grace = if on_node(obj) {
            opts.grace_seconds.or_else(|| obj["spec"]["terminationGracePeriodSeconds"].as_i64()).unwrap_or(30)
        } else {
            0
        };
        Deletion { grace, always_held: false }
    }

    fn held_after_finalizers(&self, obj: &Value) -> bool {
        on_node(obj) && obj["metadata"]["deletionGracePeriodSeconds"].as_i64().unwrap_or(0) > 0
    }
}

fn on_node(pod: &Value) -> bool {
    !pod["spec"]["nodeName"].as_str().unwrap_or_default().is_empty()
}

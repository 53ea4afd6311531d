//! What the kubelet reports of a pod: `Pending` with waiting reasons while it cannot start,
//! then phase, IPs, conditions and container statuses (ready by probes, restarts,
//! CrashLoopBackOff, exit codes), written only when something changed.

use serde_json::{Value, json};

use super::probes::Prober;
use super::{Kubelet, NAME, PodRt};
use crate::api::store::Sub;
use crate::api::util::{meta_str, now};
use crate::controllers::merge;

impl Kubelet {
    pub(super) fn waiting(&self, pod: &Value, reason: &str, message: &str) -> anyhow::Result<()> {
        let statuses: Vec<Value> = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let mut w = json!({"reason": reason});
                if !message.is_empty() {
                    w["message"] = json!(message);
                }
                json!({"name": c["name"], "image": c["image"], "imageID": "", "ready": false, "started": false,
                       "restartCount": 0, "state": {"waiting": w}})
            })
            .collect();
        if pod["status"]["containerStatuses"] != json!(statuses) {
            let status =
                json!({"status": {"hostIP": self.addresses.node_ip(self.index), "containerStatuses": statuses}});
            merge(&self.store, ("", "pods"), pod, Sub::Status, status, NAME)?;
        }
        Ok(())
    }

    pub(super) fn write_status(&self, pod: &Value, rt: &PodRt) -> anyhow::Result<()> {
        let mut statuses = Vec::new();
        let mut all_done = true;
        let mut all_ok = true;
        for c in &rt.containers {
            let running = c.child.is_some() || (c.exited.is_none() && c.pgid.is_none());
            let state = match (&c.exited, running) {
                (_, true) => json!({"running": {"startedAt": c.started_at}}),
                (Some((code, at)), false) if c.restart_after.is_some() => {
                    json!({"waiting": {"reason": "CrashLoopBackOff",
                    "message": format!("back-off restarting failed container {} (last exit {code} at {at})", c.name)}})
                }
                (Some((code, at)), false) => json!({"terminated": {"exitCode": code,
                    "reason": if *code == 0 { "Completed" } else { "Error" }, "startedAt": c.started_at, "finishedAt": at}}),
                (None, false) => json!({"running": {"startedAt": c.started_at}}),
            };
            let done = state.get("terminated").is_some();
            all_done &= done;
            all_ok &= !done || state["terminated"]["exitCode"] == 0;
            statuses.push(json!({"name": c.name, "image": c.image, "imageID": format!("cdi-e2e://{}", c.image),
                "containerID": format!("cdi-e2e://{}-{}", meta_str(pod, "uid"), c.name),
                "ready": running && c.prober.as_ref().is_none_or(Prober::ready), "started": running, "restartCount": c.restarts, "state": state}));
        }
        let phase =
            if all_done && !rt.containers.is_empty() { if all_ok { "Succeeded" } else { "Failed" } } else { "Running" };
        let ready = if statuses.iter().all(|s| s["ready"] == true) { "True" } else { "False" };
        let old_conds = pod["status"]["conditions"].as_array().cloned().unwrap_or_default();
        let cond = |ty: &str, status: &str| {
            let since = old_conds
                .iter()
                .find(|c| c["type"] == ty && c["status"] == status)
                .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_string))
                .unwrap_or_else(now);
            json!({"type": ty, "status": status, "lastProbeTime": null, "lastTransitionTime": since})
        };
        let status = json!({
            "phase": phase,
            "hostIP": self.addresses.node_ip(self.index),
            "hostIPs": [{"ip": self.addresses.node_ip(self.index)}],
            "podIP": rt.ip,
            "podIPs": [{"ip": rt.ip}],
            "startTime": rt.started,
            "qosClass": pod["status"]["qosClass"],
            "conditions": [cond("PodReadyToStartContainers", "True"), cond("Initialized", "True"), cond("Ready", ready),
                           cond("ContainersReady", ready), cond("PodScheduled", "True")],
            "containerStatuses": statuses,
        });
        let mut desired = pod["status"].clone();
        for (k, v) in status.as_object().into_iter().flatten() {
            desired[k] = v.clone();
        }
        if desired != pod["status"] {
            merge(&self.store, ("", "pods"), pod, Sub::Status, json!({"status": status}), NAME)?;
        }
        Ok(())
    }
}

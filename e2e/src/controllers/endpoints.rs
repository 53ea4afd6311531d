//! The EndpointSlice controller: for every Service with a selector, slices named
//! `<service>-<suffix>` (label `kubernetes.io/service-name`, owned by the Service) listing the
//! pods the selector matches, each with its address and `ready`/`serving`/`terminating`
//! conditions, and the Service's ports resolved against the pods (a named `targetPort` is
//! looked up in each pod's container ports, so pods that resolve it differently land in
//! different slices, as in Kubernetes).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::workloads::{controller_ref, is_ready, selector_matches};
use super::{is_deleting, opts};
use crate::api::store::{DeleteOptions, Query, Store, Sub};
use crate::api::util::meta_str;

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGER: &str = "endpointslice-controller.k8s.io";

pub fn sweep(store: &Store) -> anyhow::Result<()> {
    let services = store.list(&store.rt("", "services"), &Query::default(), None, None)?.items;
    let pods = store.list(&store.rt("", "pods"), &Query::default(), None, None)?.items;
    let slice_rt = store.rt("discovery.k8s.io", "endpointslices");
    let slices = store.list(&slice_rt, &Query::default(), None, None)?.items;
    for svc in &services {
        let Some(selector) = svc["spec"]["selector"].as_object() else { continue };
        if is_deleting(svc) || svc["spec"]["type"] == "ExternalName" {
            continue;
        }
        let ns = meta_str(svc, "namespace");
        let name = meta_str(svc, "name");
        let selector = json!({"matchLabels": selector});
        // Endpoints grouped by the ports they resolve to: one slice per group.
        let mut groups: BTreeMap<String, (Value, Vec<Value>)> = BTreeMap::new();
        let mut matched: Vec<&Value> = pods
            .iter()
            .map(|p| &**p)
            .filter(|p| {
                meta_str(p, "namespace") == ns
                    && selector_matches(&selector, &p["metadata"]["labels"])
                    && p["status"]["podIP"].as_str().is_some_and(|ip| !ip.is_empty())
                    && !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
            })
            .collect();
        matched.sort_by_key(|p| meta_str(p, "name"));
        for pod in matched {
            let ports = resolve_ports(svc, pod);
            let ready = is_ready(pod) && !is_deleting(pod);
            let endpoint = json!({
                "addresses": [pod["status"]["podIP"]],
                "conditions": {"ready": ready, "serving": is_ready(pod), "terminating": is_deleting(pod)},
                "nodeName": pod["spec"]["nodeName"],
                "targetRef": {"kind": "Pod", "name": meta_str(pod, "name"), "namespace": ns, "uid": meta_str(pod, "uid")},
            });
            groups.entry(ports.to_string()).or_insert_with(|| (ports, Vec::new())).1.push(endpoint);
        }
        if groups.is_empty() {
            // Kubernetes keeps one empty slice for a Service that selects nothing.
            groups.insert(String::new(), (json!([]), Vec::new()));
        }
        let mut existing: Vec<&Value> = slices
            .iter()
            .map(|s| &**s)
            .filter(|s| {
                meta_str(s, "namespace") == ns && s["metadata"]["labels"][SERVICE_NAME_LABEL] == name && !is_deleting(s)
            })
            .collect();
        for (ports, endpoints) in groups.into_values() {
            let endpoints = Value::Array(endpoints);
            // The slice with these ports, else one with others (reused), else a new one.
            let pos = existing
                .iter()
                .position(|s| s["ports"] == ports || (ports == json!([]) && s["ports"].is_null()))
                .or_else(|| (!existing.is_empty()).then_some(0));
            match pos.map(|i| existing.remove(i)) {
                Some(s) => {
                    if s["endpoints"] != endpoints || s["ports"] != ports {
                        super::merge(
                            store,
                            ("discovery.k8s.io", "endpointslices"),
                            s,
                            Sub::Main,
                            json!({"endpoints": endpoints, "ports": ports}),
                            MANAGER,
                        )?;
                    }
                }
                None => {
                    let slice = json!({
                        "metadata": {
                            "generateName": format!("{name}-"),
                            "namespace": ns,
                            "labels": {SERVICE_NAME_LABEL: name, MANAGED_BY_LABEL: MANAGER},
                            "ownerReferences": [controller_ref(svc, "v1", "Service")],
                        },
                        "addressType": "IPv4",
                        "endpoints": endpoints,
                        "ports": ports,
                    });
                    store.create(&slice_rt, ns, slice, &opts(MANAGER))?;
                }
            }
        }
        for s in existing {
            // Slices of our own no group needs any more; a user's are left alone.
            if s["metadata"]["labels"][MANAGED_BY_LABEL] == MANAGER {
                store.delete(&slice_rt, ns, meta_str(s, "name"), &DeleteOptions::default())?;
            }
        }
    }
    Ok(())
}

/// The Service's ports as `pod` serves them: a named `targetPort` becomes the number of the
/// pod's container port of that name; a port the pod does not have is left out.
fn resolve_ports(svc: &Value, pod: &Value) -> Value {
    let ports = svc["spec"]["ports"].as_array().into_iter().flatten().filter_map(|p| {
        let target = match &p["targetPort"] {
            Value::String(named) => pod["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| c["ports"].as_array().into_iter().flatten())
                .find(|cp| cp["name"] == named.as_str())
                .and_then(|cp| cp["containerPort"].as_u64())?,
            Value::Number(n) => n.as_u64()?,
            _ => p["port"].as_u64()?,
        };
        Some(json!({"name": p["name"].as_str().unwrap_or_default(), "port": target, "protocol": p["protocol"]}))
    });
    Value::Array(ports.collect())
}

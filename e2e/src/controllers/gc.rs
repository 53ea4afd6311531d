//! kube-controller-manager's bookkeeping controllers: the garbage collector (ownerReferences,
//! background and foreground), the namespace controller, PVC and PV protection, and CRD
//! instance cleanup.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Value, json};

use super::{has_finalizer, is_deleting};
use crate::api::kinds::FOREGROUND;
use crate::api::kinds::crd::CRD_CLEANUP;
use crate::api::kinds::pv::PV_PROTECTION;
use crate::api::kinds::pvc::PVC_PROTECTION;
use crate::api::registry::ResourceType;
use crate::api::store::{DeleteOptions, Propagation, Store, Sub, WriteOptions};
use crate::api::util::{meta_str, str_at};

const MANAGER: &str = "kube-controller-manager";
/// The storage bucket core and events.k8s.io Events share.
const EVENTS: &str = "events";

/// One pass over the whole store.
pub fn sweep(store: &Arc<Store>) -> anyhow::Result<()> {
    // Events are the bulk of the store and own nothing, nor are they owned in practice;
    // they matter only when their namespace goes, and are looked up then.
    let all = store.snapshot_except(&[EVENTS]);
    let by_uid: HashMap<&str, &Value> = all.iter().map(|(_, o)| (meta_str(o, "uid"), &**o)).collect();
    let del = |rt: &ResourceType, o: &Value, p: Propagation| {
        let opts = DeleteOptions { propagation: Some(p), ..Default::default() };
        let _ = store.delete(rt, meta_str(o, "namespace"), meta_str(o, "name"), &opts);
    };

    // Dependents whose owners are gone, or are being deleted in the foreground.
    let mut blocked: HashSet<&str> = HashSet::new();
    for (rt, o) in &all {
        let Some(refs) = o["metadata"]["ownerReferences"].as_array().filter(|r| !r.is_empty()) else { continue };
        let alive: Vec<&Value> =
            refs.iter().filter(|r| by_uid.contains_key(r["uid"].as_str().unwrap_or_default())).collect();
        for r in refs {
            if r["blockOwnerDeletion"] == true {
                blocked.insert(r["uid"].as_str().unwrap_or_default());
            }
        }
        if is_deleting(o) {
            continue;
        }
        if alive.is_empty() {
            del(rt, o, Propagation::Background);
        } else if alive.len() < refs.len() {
            let mut new = (**o).clone();
            new["metadata"]["ownerReferences"] = json!(alive);
            let opts = WriteOptions { field_manager: MANAGER.into(), ..Default::default() };
            let _ = store.update(rt, meta_str(o, "namespace"), meta_str(o, "name"), new, Sub::Main, &opts);
        } else if alive.iter().any(|r| {
            let owner = by_uid[r["uid"].as_str().unwrap_or_default()];
            is_deleting(owner) && has_finalizer(owner, FOREGROUND)
        }) {
            del(rt, o, Propagation::Background);
        }
    }

    for (rt, o) in &all {
        if !is_deleting(o) {
            continue;
        }
        let uid = meta_str(o, "uid");
        if has_finalizer(o, FOREGROUND) && !blocked.contains(uid) {
            let _ = store.remove_finalizer(rt, o, FOREGROUND, MANAGER);
        }
        if rt.storage == "/namespaces" {
            let name = meta_str(o, "name");
            let events = store.rt("", "events");
            let namespaced_events: Vec<(ResourceType, Arc<Value>)> = store
                .all_where(&events, |e| meta_str(e, "namespace") == name)
                .into_iter()
                .map(|e| (events.clone(), e))
                .collect();
            let content: Vec<&(ResourceType, Arc<Value>)> = all
                .iter()
                .filter(|(t, x)| t.namespaced && meta_str(x, "namespace") == name)
                .chain(&namespaced_events)
                .collect();
            for (t, x) in &content {
                if !is_deleting(x) {
                    del(t, x, Propagation::Background);
                }
            }
            if content.is_empty() {
                // The namespace's own finalizer ("kubernetes") goes once it is empty; with it
                // the namespace itself.
                let mut new = (**o).clone();
                new["spec"]["finalizers"] = json!([]);
                let opts = WriteOptions { field_manager: MANAGER.into(), ..Default::default() };
                let _ = store.update(rt, "", name, new, Sub::Main, &opts);
            }
        }
        if rt.storage == "/persistentvolumeclaims" && has_finalizer(o, PVC_PROTECTION) {
            let ns = meta_str(o, "namespace");
            let name = meta_str(o, "name");
            let in_use = all.iter().any(|(t, p)| {
                t.storage == "/pods"
                    && meta_str(p, "namespace") == ns
                    && !matches!(str_at(p, "status.phase"), "Succeeded" | "Failed")
                    && p["spec"]["volumes"]
                        .as_array()
                        .is_some_and(|vs| vs.iter().any(|v| v["persistentVolumeClaim"]["claimName"] == name))
            });
            if !in_use {
                let _ = store.remove_finalizer(rt, o, PVC_PROTECTION, MANAGER);
            }
        }
        if rt.storage == "/persistentvolumes" && has_finalizer(o, PV_PROTECTION) && str_at(o, "status.phase") != "Bound"
        {
            let _ = store.remove_finalizer(rt, o, PV_PROTECTION, MANAGER);
        }
        if rt.is("apiextensions.k8s.io", "customresourcedefinitions") && has_finalizer(o, CRD_CLEANUP) {
            let storage = format!("{}/{}", str_at(o, "spec.group"), str_at(o, "spec.names.plural"));
            let instances: Vec<&(ResourceType, Arc<Value>)> =
                all.iter().filter(|(t, _)| t.storage == storage).collect();
            for (t, x) in &instances {
                if !is_deleting(x) {
                    del(t, x, Propagation::Background);
                }
            }
            if instances.is_empty() {
                let _ = store.remove_finalizer(rt, o, CRD_CLEANUP, MANAGER);
            }
        }
    }
    Ok(())
}

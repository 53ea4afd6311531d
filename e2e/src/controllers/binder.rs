//! The PersistentVolume controller stand-in: binds claims and volumes both ways, with the
//! rules the volume populator handshake depends on (see populator-facts §3.4):
//! - a PV pre-bound by `claimRef` (name, namespace, and uid when set) is bound to that claim
//!   even under WaitForFirstConsumer, checking only size and volumeMode;
//! - a claim whose PV is bound to another claim goes `Lost` (Warning `ClaimMisbound`);
//! - a claim whose PV disappeared goes `Lost` (Warning `ClaimLost`);
//! - a PV whose claim is gone is `Released`; one whose claim got bound elsewhere is released
//!   too if it was dynamically provisioned with `Delete`, or unbound if the controller bound it;
//! - unbound claims of a provisioner's class are annotated for that provisioner, and under
//!   WaitForFirstConsumer wait for `volume.kubernetes.io/selected-node`.

use std::sync::Arc;

use serde_json::{Value, json};

use super::scheduler::{SELECTED_NODE, node_matches_terms};
use super::{is_deleting, merge, record_event};
use crate::api::store::{Store, Sub};
use crate::api::util::{meta_str, quantity_bytes, str_at};

const NAME: &str = "persistentvolume-controller";
pub const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
pub const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
pub const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
const STORAGE_PROVISIONER_BETA: &str = "volume.beta.kubernetes.io/storage-provisioner";

const PVS: (&str, &str) = ("", "persistentvolumes");
const PVCS: (&str, &str) = ("", "persistentvolumeclaims");

fn set_pv_phase(store: &Store, pv: &Value, phase: &str) -> anyhow::Result<()> {
    if str_at(pv, "status.phase") != phase {
        let status = json!({"status": {"phase": phase, "lastPhaseTransitionTime": crate::api::util::now()}});
        merge(store, PVS, pv, Sub::Status, status, NAME)?;
    }
    Ok(())
}

fn request(claim: &Value) -> u64 {
    quantity_bytes(str_at(claim, "spec.resources.requests.storage")).unwrap_or(0)
}

fn capacity(pv: &Value) -> u64 {
    quantity_bytes(str_at(pv, "spec.capacity.storage")).unwrap_or(0)
}

fn volume_mode(o: &Value) -> &str {
    match str_at(o, "spec.volumeMode") {
        "" => "Filesystem",
        m => m,
    }
}

/// The checks a pre-bound PV must pass: enough capacity and the same volumeMode.
fn prebound_fits(pv: &Value, claim: &Value) -> Result<(), String> {
    if capacity(pv) < request(claim) {
        return Err(format!("Cannot bind to requested volume \"{}\": requested PV is too small", meta_str(pv, "name")));
    }
    if volume_mode(pv) != volume_mode(claim) {
        return Err(format!(
            "Cannot bind to requested volume \"{}\": requested volumeMode {} does not match volumeMode {} of the PV",
            meta_str(pv, "name"),
            volume_mode(claim),
            volume_mode(pv)
        ));
    }
    Ok(())
}

fn claim_ref_matches(pv: &Value, claim: &Value) -> bool {
    let r = &pv["spec"]["claimRef"];
    r["name"] == claim["metadata"]["name"]
        && r["namespace"] == claim["metadata"]["namespace"]
        && (r["uid"].as_str().is_none_or(str::is_empty) || r["uid"] == claim["metadata"]["uid"])
}

/// Binds both objects: PV claimRef and phase, then claim volumeName, annotations and status.
fn bind(store: &Store, pv: &Value, claim: &Value) -> anyhow::Result<()> {
    let chose = pv["spec"]["claimRef"]["name"].is_null();
    let needs_ref = chose || str_at(pv, "spec.claimRef.uid") != meta_str(claim, "uid");
    let pv = if needs_ref {
        let mut patch = json!({"spec": {"claimRef": {
            "kind": "PersistentVolumeClaim", "apiVersion": "v1",
            "namespace": meta_str(claim, "namespace"), "name": meta_str(claim, "name"),
            "uid": meta_str(claim, "uid"), "resourceVersion": meta_str(claim, "resourceVersion")}}});
        if chose {
            patch["metadata"] = json!({"annotations": {BOUND_BY_CONTROLLER: "yes"}});
        }
        merge(store, PVS, pv, Sub::Main, patch, NAME)?
    } else {
        pv.clone()
    };
    set_pv_phase(store, &pv, "Bound")?;
    let claim = if str_at(claim, "spec.volumeName").is_empty() {
        let patch = json!({"metadata": {"annotations": {BIND_COMPLETED: "yes", BOUND_BY_CONTROLLER: "yes"}},
                           "spec": {"volumeName": meta_str(&pv, "name")}});
        merge(store, PVCS, claim, Sub::Main, patch, NAME)?
    } else if claim["metadata"]["annotations"][BIND_COMPLETED].is_null() {
        merge(store, PVCS, claim, Sub::Main, json!({"metadata": {"annotations": {BIND_COMPLETED: "yes"}}}), NAME)?
    } else {
        claim.clone()
    };
    if str_at(&claim, "status.phase") != "Bound" {
        let status = json!({"status": {"phase": "Bound", "accessModes": pv["spec"]["accessModes"],
                                       "capacity": pv["spec"]["capacity"]}});
        merge(store, PVCS, &claim, Sub::Status, status, NAME)?;
    }
    Ok(())
}

/// One pass over all volumes and claims.
pub fn sweep(store: &Arc<Store>) -> anyhow::Result<()> {
    let pvcs = store.all(&store.rt(PVCS.0, PVCS.1));
    let pvs = store.all(&store.rt(PVS.0, PVS.1));
    let classes = store.all(&store.rt("storage.k8s.io", "storageclasses"));
    let nodes = store.all(&store.rt("", "nodes"));
    let find_claim =
        |ns: &str, name: &str| pvcs.iter().find(|c| meta_str(c, "namespace") == ns && meta_str(c, "name") == name);

    for pv in &pvs {
        if is_deleting(pv) {
            continue;
        }
        let r = &pv["spec"]["claimRef"];
        let Some(ref_name) = r["name"].as_str() else {
            set_pv_phase(store, pv, "Available")?;
            continue;
        };
        let ref_uid = r["uid"].as_str().unwrap_or_default();
        let claim = find_claim(r["namespace"].as_str().unwrap_or_default(), ref_name)
            .filter(|c| ref_uid.is_empty() || meta_str(c, "uid") == ref_uid);
        match claim {
            None if ref_uid.is_empty() => set_pv_phase(store, pv, "Available")?,
            None => set_pv_phase(store, pv, "Released")?,
            Some(c) => {
                let vn = str_at(c, "spec.volumeName");
                if vn.is_empty() {
                    // The claim side binds it (below).
                } else if vn == meta_str(pv, "name") {
                    bind(store, pv, c)?;
                } else if pv["metadata"]["annotations"][PROVISIONED_BY].is_string()
                    && str_at(pv, "spec.persistentVolumeReclaimPolicy") == "Delete"
                {
                    set_pv_phase(store, pv, "Released")?;
                } else if pv["metadata"]["annotations"][BOUND_BY_CONTROLLER].is_string() {
                    let pv = merge(store, PVS, pv, Sub::Main, json!({"spec": {"claimRef": null}}), NAME)?;
                    set_pv_phase(store, &pv, "Available")?;
                }
            }
        }
    }

    // Volumes as they are after the pass above.
    let pvs = store.all(&store.rt(PVS.0, PVS.1));
    for claim in pvcs.iter().filter(|c| !is_deleting(c)) {
        let vn = str_at(claim, "spec.volumeName");
        if !vn.is_empty() {
            match pvs.iter().find(|p| meta_str(p, "name") == vn) {
                None => {
                    if str_at(claim, "status.phase") == "Bound" {
                        merge(store, PVCS, claim, Sub::Status, json!({"status": {"phase": "Lost"}}), NAME)?;
                        record_event(
                            store,
                            claim,
                            "Warning",
                            "ClaimLost",
                            "Bound claim has lost its PersistentVolume. Data on the volume is lost!",
                            NAME,
                        );
                    }
                }
                Some(pv) if pv["spec"]["claimRef"]["name"].is_null() => bind(store, pv, claim)?,
                Some(pv) if claim_ref_matches(pv, claim) && !str_at(pv, "spec.claimRef.uid").is_empty() => {
                    bind(store, pv, claim)?
                }
                Some(_) => {
                    if str_at(claim, "status.phase") != "Lost" {
                        merge(store, PVCS, claim, Sub::Status, json!({"status": {"phase": "Lost"}}), NAME)?;
                        record_event(
                            store,
                            claim,
                            "Warning",
                            "ClaimMisbound",
                            "Two claims are bound to the same volume, this one is bound incorrectly",
                            NAME,
                        );
                    }
                }
            }
            continue;
        }
        if let Some(pv) = pvs.iter().find(|p| !is_deleting(p) && claim_ref_matches(p, claim)) {
            match prebound_fits(pv, claim) {
                Ok(()) => bind(store, pv, claim)?,
                Err(msg) => record_event(store, claim, "Warning", "VolumeMismatch", &msg, NAME),
            }
            continue;
        }
        let class_name = str_at(claim, "spec.storageClassName");
        let class = classes.iter().find(|c| meta_str(c, "name") == class_name);
        let wffc = class.is_some_and(|c| c["volumeBindingMode"] == "WaitForFirstConsumer");
        let selected = claim["metadata"]["annotations"][SELECTED_NODE].as_str().unwrap_or_default();
        if wffc && selected.is_empty() {
            record_event(
                store,
                claim,
                "Normal",
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding",
                NAME,
            );
            continue;
        }
        let node = nodes.iter().find(|n| meta_str(n, "name") == selected);
        let modes = |o: &Value, path: &str| -> Vec<String> {
            o["spec"][path]
                .as_array()
                .map(|a| a.iter().filter_map(|m| m.as_str().map(str::to_string)).collect())
                .unwrap_or_default()
        };
        let wanted = modes(claim, "accessModes");
        let candidate = pvs
            .iter()
            .filter(|p| {
                !is_deleting(p) && p["spec"]["claimRef"]["name"].is_null() && str_at(p, "status.phase") == "Available"
            })
            .filter(|p| str_at(p, "spec.storageClassName") == class_name && volume_mode(p) == volume_mode(claim))
            .filter(|p| capacity(p) >= request(claim))
            .filter(|p| wanted.iter().all(|m| modes(p, "accessModes").contains(m)))
            .filter(|p| {
                let terms = &p["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"];
                !wffc || terms.is_null() || node.is_some_and(|n| node_matches_terms(n, terms))
            })
            .min_by_key(|p| capacity(p));
        if let Some(pv) = candidate {
            bind(store, pv, claim)?;
            continue;
        }
        if let Some(provisioner) = class.and_then(|c| c["provisioner"].as_str()) {
            if claim["metadata"]["annotations"][STORAGE_PROVISIONER] != provisioner {
                let ann = json!({"metadata": {"annotations": {STORAGE_PROVISIONER: provisioner, STORAGE_PROVISIONER_BETA: provisioner}}});
                merge(store, PVCS, claim, Sub::Main, ann, NAME)?;
            }
            record_event(
                store,
                claim,
                "Normal",
                "ExternalProvisioning",
                &format!(
                    "Waiting for a volume to be created either by the external provisioner '{provisioner}' or manually by the \
                 system administrator. If volume creation is delayed, please verify that the provisioner is running and \
                 correctly registered."
                ),
                NAME,
            );
        }
    }
    Ok(())
}

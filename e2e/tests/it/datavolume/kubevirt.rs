//! A stand-in for KubeVirt's virt-controller ([`cdi_e2e::kubevirt`], written from
//! kubevirt-contract.md): it creates a VirtualMachine's DataVolumes from its
//! `dataVolumeTemplates` as virt-controller does (label `kubevirt.io/created-by`, annotation
//! `allowClaimAdoption`, a controller reference to the VM; "already exists" tolerated), then
//! judges them by what virt-controller reads: phase, and the Ready and Running conditions.

use cdi_e2e::kubevirt::{VM_CRD, create_from_template, vms};
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::runtime::conditions::is_deleted;
use kube::runtime::wait::await_condition;
use serde_json::json;

use super::{Env, condition, phase_of};
use crate::common::within;
use cdi_populator::api::{DataVolume, DataVolumePhase};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;

/// virt-controller's DataVolumeError: phase Failed, or Running False with reason Error or
/// ImagePullFailed.
fn data_volume_error(dv: &DataVolume) -> bool {
    let (status, reason) = condition(dv, "Running");
    phase_of(dv) == Some(DataVolumePhase::Failed)
        || (status == "False" && matches!(reason.as_str(), "Error" | "ImagePullFailed"))
}

/// virt-controller's "ready to start" for a VM's DataVolume.
fn vm_ready(dv: &DataVolume) -> bool {
    matches!(
        phase_of(dv),
        Some(DataVolumePhase::Succeeded | DataVolumePhase::WaitForFirstConsumer | DataVolumePhase::PendingPopulation)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_virt_controller_stand_in_gets_ready_failed_and_adopted_volumes_and_deleting_the_vm_cascades() {
    let env = Env::start(8).await;
    env.apply(VM_CRD).await;
    env.kubectl(&["wait", "--for=condition=established", "crd/virtualmachines.kubevirt.io", "--timeout=30s"], None)
        .await;

    // A claim that already holds a disk, made before the VM: the VM's template of that name
    // must take it over as it is.
    env.apply(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: vm-data}\nspec:\n  storageClassName: \
         local-immediate\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 64Mi}}\n",
    )
    .await;
    let claims: Api<PersistentVolumeClaim> = Api::default_namespaced(env.client());
    let bound = await_condition(claims.clone(), "vm-data", |p: Option<&PersistentVolumeClaim>| {
        p.and_then(|p| p.status.as_ref()?.phase.as_deref()) == Some("Bound")
    });
    within("the existing claim to bind", bound).await.unwrap();
    let existing = env.backing(&claims.get("vm-data").await.unwrap()).await;
    std::fs::write(existing.join("marker"), b"the user's data").unwrap();

    let storage = json!({"storageClassName": "local-immediate", "resources": {"requests": {"storage": "64Mi"}}});
    let vm = json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": "vm", "namespace": "default"},
        "spec": {"runStrategy": "Halted", "dataVolumeTemplates": [
            {"metadata": {"name": "vm-root"},
             "spec": {"source": {"http": {"url": env.server.url("disk.qcow2")}}, "storage": storage}},
            {"metadata": {"name": "vm-missing"},
             "spec": {"source": {"http": {"url": env.server.url("missing.qcow2")}}, "storage": storage}},
            {"metadata": {"name": "vm-data"},
             "spec": {"source": {"blank": {}}, "storage": storage}},
        ]},
    });
    let vms = vms(&env.client(), "default");
    let vm: DynamicObject = vms.create(&PostParams::default(), &serde_json::from_value(vm).unwrap()).await.unwrap();
    let dvs: Api<DataVolume> = Api::default_namespaced(env.client());
    for template in vm.data["spec"]["dataVolumeTemplates"].as_array().unwrap() {
        create_from_template(&dvs, &vm, template).await.unwrap();
    }

    let root =
        env.wait_dv("vm-root", "ready for the VM", |dv| vm_ready(dv) && condition(dv, "Ready").0 == "True").await;
    assert_eq!(phase_of(&root), Some(DataVolumePhase::Succeeded));
    super::qemu_same(&env.raw, &env.backing(&env.pvc("vm-root").await).await.join("disk.img"), None);

    let missing = env.wait_dv("vm-missing", "a DataVolumeError", data_volume_error).await;
    assert_eq!(phase_of(&missing), Some(DataVolumePhase::Failed));
    assert_eq!(condition(&missing, "Running"), ("False".into(), "Error".into()));
    assert_eq!(condition(&missing, "Ready").0, "False");

    let adopted = env.wait_dv("vm-data", "adopted", vm_ready).await;
    assert_eq!(phase_of(&adopted), Some(DataVolumePhase::Succeeded));
    let pvc = env.pvc("vm-data").await;
    let owner = pvc.metadata.owner_references.as_ref().unwrap().iter().find(|r| r.controller == Some(true)).unwrap();
    assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("DataVolume", adopted.metadata.uid.as_deref().unwrap()));
    assert!(pvc.spec.as_ref().unwrap().data_source_ref.is_none(), "an adopted claim is not re-populated");
    assert_eq!(std::fs::read(existing.join("marker")).unwrap(), b"the user's data");
    assert!(!existing.join("disk.img").exists(), "the blank template did not overwrite the claim");
    // The server counts the GETs it serves: vm-root's, once (404s are not counted).
    assert_eq!(env.server.knobs.gets(), 1, "vm-root downloaded once, the adopted claim not at all");

    // Deleting the VM takes the DataVolumes, their claims and their volumes with it.
    let mut volumes = Vec::new();
    for name in ["vm-root", "vm-data"] {
        volumes.push(env.pvc(name).await.spec.unwrap().volume_name.unwrap());
    }
    vms.delete("vm", &DeleteParams::default()).await.unwrap();
    for name in ["vm-root", "vm-missing", "vm-data"] {
        if let Some(uid) = dvs.get_opt(name).await.unwrap().and_then(|d| d.metadata.uid) {
            within(&format!("DataVolume {name} to go"), await_condition(dvs.clone(), name, is_deleted(&uid)))
                .await
                .unwrap();
        }
        if let Some(uid) = claims.get_opt(name).await.unwrap().and_then(|p| p.metadata.uid) {
            within(&format!("PVC {name} to go"), await_condition(claims.clone(), name, is_deleted(&uid)))
                .await
                .unwrap();
        }
    }
    let pvs: Api<k8s_openapi::api::core::v1::PersistentVolume> = Api::all(env.client());
    for pv in volumes {
        if let Some(uid) = pvs.get_opt(&pv).await.unwrap().and_then(|p| p.metadata.uid) {
            within(&format!("PV {pv} to go"), await_condition(pvs.clone(), &pv, is_deleted(&uid))).await.unwrap();
        }
    }
    env.stop().await;
}

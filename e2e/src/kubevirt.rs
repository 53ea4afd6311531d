//! A stand-in for KubeVirt's side of DataVolumes, written from kubevirt-contract.md: a
//! minimal VirtualMachine kind (the mini-cluster has no KubeVirt; an owner with the right
//! group and kind is all CDI looks at) and what virt-controller does with a VM's
//! `dataVolumeTemplates`. The demo shows it; the kubevirt e2e test checks it.

use anyhow::Context as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{conditions, wait::await_condition};
use serde_json::json;

use cdi_populator::api::DataVolume;
use cdi_populator::api::names::annotations::ALLOW_CLAIM_ADOPTION;

/// virt-controller's label on the DataVolumes it creates: the VM's UID.
pub const CREATED_BY: &str = "kubevirt.io/created-by";
pub const VM_CRD_NAME: &str = "virtualmachines.kubevirt.io";

/// The VirtualMachine CRD: group, kind and names as KubeVirt's, any content accepted.
pub const VM_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: virtualmachines.kubevirt.io
spec:
  group: kubevirt.io
  names: {kind: VirtualMachine, plural: virtualmachines, singular: virtualmachine, shortNames: [vm]}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;

/// Creates the VirtualMachine CRD (if it is not there yet) and waits until it is served.
pub async fn register_vm_crd(client: &kube::Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_saphyr::from_str(VM_CRD).context("the VirtualMachine CRD")?;
    match crds.create(&PostParams::default(), &crd).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e).context("creating the VirtualMachine CRD"),
    }
    let established = await_condition(crds, VM_CRD_NAME, conditions::is_crd_established());
    tokio::time::timeout(std::time::Duration::from_secs(30), established)
        .await
        .context("the VirtualMachine CRD was not established within 30 s")??;
    Ok(())
}

/// The VirtualMachines of a namespace (the CRD must be registered).
pub fn vms(client: &kube::Client, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachine");
    Api::namespaced_with(client.clone(), namespace, &ApiResource::from_gvk(&gvk))
}

/// What virt-controller does for one of a VM's `dataVolumeTemplates`: POST a DataVolume
/// carrying the template's metadata and spec plus its own label, annotation and controller
/// reference to the VM. "Already exists" is not an error (a template is created once).
pub async fn create_from_template(
    dvs: &Api<DataVolume>,
    vm: &DynamicObject,
    template: &serde_json::Value,
) -> anyhow::Result<()> {
    let vm_uid = vm.metadata.uid.clone().context("a VirtualMachine without a UID")?;
    let name = template["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let mut dv = json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
        "metadata": template["metadata"].clone(),
        "spec": template["spec"].clone(),
    });
    let meta = dv["metadata"].as_object_mut().with_context(|| format!("template {name} without metadata"))?;
    meta.entry("labels").or_insert_with(|| json!({}))[CREATED_BY] = json!(vm_uid);
    meta.entry("annotations").or_insert_with(|| json!({}))[ALLOW_CLAIM_ADOPTION] = json!("true");
    meta.insert(
        "ownerReferences".into(),
        json!([{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "name": vm.metadata.name,
                "uid": vm_uid, "controller": true, "blockOwnerDeletion": true}]),
    );
    let dv: DataVolume = serde_json::from_value(dv).with_context(|| format!("template {name} is no DataVolume"))?;
    match dvs.create(&PostParams::default(), &dv).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating the DataVolume of template {name}")),
    }
}

/// Creates a VM and then, as virt-controller would, the DataVolumes of its templates.
pub async fn create_vm(client: &kube::Client, vm: serde_json::Value) -> anyhow::Result<DynamicObject> {
    let namespace = vm["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
    let vm: DynamicObject = serde_json::from_value(vm).context("a VirtualMachine")?;
    let vm =
        vms(client, &namespace).create(&PostParams::default(), &vm).await.context("creating the VirtualMachine")?;
    let dvs: Api<DataVolume> = Api::namespaced(client.clone(), &namespace);
    let templates = vm.data["spec"]["dataVolumeTemplates"].as_array().cloned().unwrap_or_default();
    for template in &templates {
        create_from_template(&dvs, &vm, template).await?;
    }
    Ok(vm)
}

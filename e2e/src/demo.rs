//! `cdi-e2e demo`: the whole of cdi-rs on the embedded mini-cluster. It serves a generated
//! qcow2 over local HTTP, applies a VolumeImportSource and two PVCs (Filesystem and Block)
//! whose `dataSourceRef` names it, prints progress until both are Bound, shows them with
//! kubectl, compares what the volumes hold with the image. Then a VM-style owner (a stand-in
//! VirtualMachine, see [`crate::kubevirt`]) gets a DataVolume of the same image from its
//! `dataVolumeTemplates`: progress until Succeeded, `kubectl get dv`, the same check, and
//! deleting the VM takes the DataVolume, its PVC and its PV with it. Then it cleans up.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, bail};
use cdi_populator::api::{DataVolume, DataVolumePhase};
use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{conditions, wait::await_condition};
use serde_json::json;

use crate::cluster::CLASS_IMMEDIATE;
use crate::kubevirt;
use crate::system::{System, SystemConfig};
use crate::workload::{self, ImageServer, Mode, annotation, human, secs};

const NAMESPACE: &str = "default";
const SOURCE: &str = "sample-disk";
const VM: &str = "vm-demo";
const VM_DISK: &str = "vm-demo-rootdisk";

#[derive(Debug, Clone)]
pub struct DemoArgs {
    /// Working directory; a temporary one when `None`.
    pub dir: Option<PathBuf>,
    /// Virtual size of the generated disk.
    pub disk_size: u64,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let temp;
    let dir = match args.dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            d
        }
        None => {
            temp = tempfile::Builder::new().prefix("cdi-demo-").tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let size = args.disk_size;
    println!("== generating a sample VM disk: {} virtual, random and text extents with holes between", human(size));
    let (raw, qcow2) = workload::sample_disk(&dir, size)?;
    println!("   {} as qcow2 (made by qemu-img)", human(std::fs::metadata(&qcow2)?.len()));

    println!("== starting the mini-cluster (2 nodes), then installing cdi-rs: kubectl apply -k deploy/");
    println!("   (the populator Deployment and the mover DaemonSet, their service accounts and RBAC)");
    let started = Instant::now();
    let system = System::start(SystemConfig::new(dir.join("cluster"))?).await?;
    println!(
        "   rolled out and leader elected in {}; KUBECONFIG={}",
        secs(started.elapsed()),
        system.cluster.kubeconfig_path().display()
    );
    let outcome = workload::interruptible(populate_and_check(&system, &dir, &raw, size)).await;
    println!(
        "== cleaning up: the PVCs (and the VM if it is still there), then the populator, the movers and the cluster"
    );
    let cleaned = delete_targets(&system.client).await;
    system.shutdown().await;
    outcome?;
    cleaned?;
    println!("done: the three volumes held the image; nothing is left running");
    Ok(())
}

async fn populate_and_check(
    system: &System,
    dir: &std::path::Path,
    raw: &std::path::Path,
    size: u64,
) -> anyhow::Result<()> {
    let server = ImageServer::start(dir.join("www")).await?;
    let url = server.url("disk.qcow2");
    println!("== serving it at {url}");
    let client = &system.client;
    let gib = size.div_ceil(1 << 30);
    // A filesystem volume must hold disk.img plus CDI's 6 % overhead, and ext4 keeps some
    // for itself (journal, inode tables, 5 % reserved).
    let targets = [
        ("vm-disk-fs", Mode::Filesystem, format!("{}Mi", (gib << 10) * 125 / 100)),
        ("vm-disk-block", Mode::Block, format!("{gib}Gi")),
    ];
    println!("== kubectl apply: VolumeImportSource {SOURCE} and two PVCs with dataSourceRef to it");
    workload::create_http_source(client, NAMESPACE, SOURCE, &url).await?;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NAMESPACE);
    let created = Instant::now();
    for (name, mode, request) in &targets {
        pvcs.create(&PostParams::default(), &workload::target_pvc(name, CLASS_IMMEDIATE, *mode, request, SOURCE))
            .await
            .with_context(|| format!("creating PVC {name}"))?;
        println!("   {name:<14} {:<10} {request:>7}  class {CLASS_IMMEDIATE}", mode.as_str());
    }
    let names: Vec<&str> = targets.iter().map(|t| t.0).collect();
    let mut shown: BTreeMap<String, String> = BTreeMap::new();
    workload::until_bound(client, NAMESPACE, &names, |pvc| {
        let name = pvc.metadata.name.clone().unwrap_or_default();
        let phase = pvc.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_else(|| "Pending".into());
        let progress = annotation(pvc, "cdi.kubevirt.io/storage.populator.progress").unwrap_or("-");
        let state = format!("{phase:<8} {progress:>8}");
        if shown.get(&name) != Some(&state) {
            shown.insert(name.clone(), state);
            let line: Vec<String> = shown.iter().map(|(n, s)| format!("{n}: {s}")).collect();
            println!("   [{:>6}] {}", secs(created.elapsed()), line.join("   "));
        }
    })
    .await?;
    println!("   both Bound {} after creation", secs(created.elapsed()));

    println!("== kubectl get pvc");
    kubectl(system, &["get", "pvc", "-o", "wide"])?;
    println!("== the events of each PVC, in order");
    let events: Api<Event> = Api::namespaced(client.clone(), NAMESPACE);
    let mut all = events.list(&Default::default()).await?.items;
    // The mini-cluster's resourceVersion is one counter: it orders events finer than their
    // one-second timestamps.
    all.sort_by_key(|e| e.metadata.resource_version.as_deref().and_then(|v| v.parse::<u64>().ok()));
    for (name, _, _) in &targets {
        println!("   {name}");
        for e in all.iter().filter(|e| e.involved_object.name.as_deref() == Some(name)) {
            println!(
                "     {:<28} {}",
                e.reason.as_deref().unwrap_or_default(),
                e.message.as_deref().unwrap_or_default()
            );
        }
    }

    println!("== sha256 of the first {} (the virtual disk) and whether the rest is zeros", human(size));
    let (want, _) = workload::digest_prefix(raw, size)?;
    println!("   {:<14} {want}", "image");
    let mut mismatched = Vec::new();
    for (name, _, _) in &targets {
        let pvc = pvcs.get(name).await?;
        let data = workload::volume_data(client, &pvc).await?;
        let (got, rest_zero) = workload::digest_prefix(&data, size)?;
        let verdict = if got == want && rest_zero { "same" } else { "DIFFERENT" };
        println!("   {name:<14} {got}  {verdict} ({}, {})", data.display(), human(byte_len(&data).unwrap_or(0)));
        if verdict != "same" {
            mismatched.push(*name);
        }
    }
    if !mismatched.is_empty() {
        bail!("{} do not hold the image", mismatched.join(" and "));
    }
    datavolume_of_a_vm(system, &url, raw, size).await
}

/// A VM whose `dataVolumeTemplates` import the same image, as KubeVirt would create it.
async fn datavolume_of_a_vm(system: &System, url: &str, raw: &std::path::Path, size: u64) -> anyhow::Result<()> {
    let client = &system.client;
    let gib = size.div_ceil(1 << 30);
    let request = format!("{gib}Gi");
    println!("== a VM-style owner: the VirtualMachine CRD (kubevirt.io/v1, a stand-in: no KubeVirt here)");
    kubevirt::register_vm_crd(client).await?;
    println!("   VirtualMachine {VM} with a dataVolumeTemplate {VM_DISK}: http source {url}, storage {request} Block");
    let vm = json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": VM, "namespace": NAMESPACE},
        "spec": {"runStrategy": "Halted", "dataVolumeTemplates": [{
            "metadata": {"name": VM_DISK},
            "spec": workload::http_datavolume_spec(url, CLASS_IMMEDIATE, Mode::Block, &request),
        }]},
    });
    let created = Instant::now();
    kubevirt::create_vm(client, vm).await?;
    let dvs: Api<DataVolume> = Api::namespaced(client.clone(), NAMESPACE);
    let dv = dvs.get(VM_DISK).await?;
    let owner = dv.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true));
    println!(
        "   DataVolume {VM_DISK} created as virt-controller does: label {}={}, owner {}",
        kubevirt::CREATED_BY,
        dv.metadata.labels.as_ref().and_then(|l| l.get(kubevirt::CREATED_BY)).map_or("-", String::as_str),
        owner.map_or("-".to_string(), |o| format!("{} {}", o.kind, o.name))
    );
    let mut shown = String::new();
    workload::until_succeeded(client, NAMESPACE, &[VM_DISK], |dv| {
        let status = dv.status.as_ref();
        let progress = status.and_then(|s| s.progress.as_deref()).unwrap_or("-");
        let phase = workload::dv_phase(dv);
        let state = format!("{:<18} {progress:>8}", phase.as_str());
        // Not yet looked at by the controller: nothing to show.
        if phase != DataVolumePhase::Unset && state != shown {
            println!("   [{:>6}] {VM_DISK}: {state}", secs(created.elapsed()));
            shown = state;
        }
    })
    .await?;
    println!("   Succeeded {} after the VM was created", secs(created.elapsed()));
    println!("== kubectl get dv");
    kubectl(system, &["get", "dv"])?;

    println!("== sha256 of {VM_DISK}'s volume");
    let (want, _) = workload::digest_prefix(raw, size)?;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NAMESPACE);
    let claim = dvs.get(VM_DISK).await?.status.and_then(|s| s.claim_name).unwrap_or_else(|| VM_DISK.to_string());
    let pvc = pvcs.get(&claim).await?;
    let data = workload::volume_data(client, &pvc).await?;
    let (got, rest_zero) = workload::digest_prefix(&data, size)?;
    let same = got == want && rest_zero;
    println!("   {claim:<14} {got}  {} ({})", if same { "same" } else { "DIFFERENT" }, data.display());
    if !same {
        bail!("DataVolume {VM_DISK} does not hold the image");
    }

    println!("== kubectl delete vm {VM}: the garbage collector follows the owner references");
    let pv_name = pvc.spec.as_ref().and_then(|s| s.volume_name.clone()).context("a bound PVC")?;
    kubectl(system, &["delete", "vm", VM, "--wait=false"])?;
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let deleted = Instant::now();
    let uid = |m: &kube::api::ObjectMeta| m.uid.clone().unwrap_or_default();
    await_condition(dvs, VM_DISK, conditions::is_deleted(&uid(&dv.metadata))).await?;
    println!("   [{:>6}] DataVolume {VM_DISK} gone", secs(deleted.elapsed()));
    await_condition(pvcs, &claim, conditions::is_deleted(&uid(&pvc.metadata))).await?;
    println!("   [{:>6}] PVC {claim} gone", secs(deleted.elapsed()));
    let pv_uid = pvs.get_opt(&pv_name).await?.map(|pv| uid(&pv.metadata));
    if let Some(pv_uid) = pv_uid {
        await_condition(pvs, &pv_name, conditions::is_deleted(&pv_uid)).await?;
    }
    println!("   [{:>6}] PV {pv_name} gone (reclaim policy Delete; its loop device detached)", secs(deleted.elapsed()));
    println!("== kubectl get vm,dv,pvc,pv: only the two PVCs of before are left");
    kubectl(system, &["get", "vm,dv,pvc,pv"])?;
    Ok(())
}

/// Runs kubectl against the mini-cluster, showing its output.
fn kubectl(system: &System, args: &[&str]) -> anyhow::Result<()> {
    let status = std::process::Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", system.cluster.kubeconfig_path())
        .status()
        .context("running kubectl (is it installed?)")?;
    if !status.success() {
        bail!("kubectl {} failed: {status}", args.join(" "));
    }
    Ok(())
}

async fn delete_targets(client: &kube::Client) -> anyhow::Result<()> {
    // Left behind only when the demo stopped half-way; without the CRD there is none.
    match kubevirt::vms(client, NAMESPACE).delete(VM, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e).context("deleting the VirtualMachine"),
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NAMESPACE);
    for name in ["vm-disk-fs", "vm-disk-block"] {
        match pvcs.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("deleting PVC {name}")),
        }
    }
    Ok(())
}

/// The length of a file or a block device (whose metadata length is 0).
fn byte_len(path: &std::path::Path) -> std::io::Result<u64> {
    use std::io::Seek as _;
    std::fs::File::open(path)?.seek(std::io::SeekFrom::End(0))
}

//! The populate flow, branch by branch, on in-memory snapshots of API objects.

use cdi_proto::v1 as pb;
use serde_json::{Value, json};

use super::*;
use crate::controller::failure::TaskFailure;

const TARGET_UID: &str = "t-uid";
const PRIME_UID: &str = "p-uid";
const HOLDER_UID: &str = "h-uid";
const GENERATION: i64 = 3;

fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("a valid object")
}

fn import_ref() -> Value {
    json!({"apiGroup": "cdi.kubevirt.io", "kind": "VolumeImportSource", "name": "src"})
}

/// The target PVC `vms/disk`, naming the VolumeImportSource `src`.
fn claim(annotations: Value, phase: &str) -> PersistentVolumeClaim {
    from_json(json!({
        "metadata": {"name": "disk", "namespace": "vms", "uid": TARGET_UID, "annotations": annotations},
        "spec": {"storageClassName": "local", "dataSourceRef": import_ref()},
        "status": {"phase": phase},
    }))
}

/// The pending target with these annotations.
fn target(annotations: Value) -> Target {
    Target::from_pvc(&claim(annotations, "Pending")).expect("a target")
}

fn fresh() -> Target {
    target(json!({}))
}

fn populated() -> Target {
    target(json!({ann::POD_PHASE: "Succeeded"}))
}

fn running(attempt: u32) -> Target {
    target(json!({ann::POD_PHASE: "Running", ann::ATTEMPT: attempt.to_string()}))
}

fn source(generation: i64, spec: Value) -> VolumeImportSource {
    from_json(json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "VolumeImportSource",
        "metadata": {"name": "src", "namespace": "vms", "generation": generation},
        "spec": spec,
    }))
}

fn http_source() -> VolumeImportSource {
    source(GENERATION, json!({"source": {"http": {"url": "https://images.example.com/disk.img"}}}))
}

fn class(mode: Option<&str>) -> StorageClass {
    from_json(json!({"metadata": {"name": "local"}, "provisioner": "p", "volumeBindingMode": mode}))
}

/// The prime PVC, bound to `pv-1` unless `phase` says otherwise.
fn prime(phase: &str) -> PersistentVolumeClaim {
    from_json(json!({
        "metadata": {"name": "prime-t-uid", "namespace": "vms", "uid": PRIME_UID},
        "spec": {"volumeName": "pv-1"}, "status": {"phase": phase},
    }))
}

fn holder(phase: Option<&str>, node: Option<&str>) -> Pod {
    from_json(json!({
        "metadata": {"name": "importer-prime-t-uid", "namespace": "vms", "uid": HOLDER_UID},
        "spec": {"containers": [], "nodeName": node},
        "status": {"phase": phase},
    }))
}

/// `pv-1`, claimed by the claim with this uid.
fn pv(claim_uid: Option<&str>) -> PersistentVolume {
    from_json(json!({"metadata": {"name": "pv-1"}, "spec": {"claimRef": {"uid": claim_uid}}}))
}

fn failed(retryable: bool) -> Outcome {
    Outcome::Failed(TaskFailure { reason: FailureReason::SourceUnavailable, message: "HTTP 503".into(), retryable })
}

fn done(attempt: u32, outcome: Outcome) -> TaskView {
    TaskView::Done { task_id: format!("{PRIME_UID}-{attempt}"), outcome }
}

/// The cluster and the followers as a reconcile would find them.
struct World {
    source: Option<VolumeImportSource>,
    /// Read instead of `source` for an upload target.
    upload: Option<VolumeUploadSource>,
    class: Option<StorageClass>,
    prime: Option<PersistentVolumeClaim>,
    holder: Option<Pod>,
    pv: Option<PersistentVolume>,
    task: TaskView,
    /// Read instead of `source` for a clone target.
    clone: Option<VolumeCloneSource>,
    clone_volume: CloneVolume,
    source_holder: Option<Pod>,
    strategy: Choice,
    clone_snapshot: SnapshotState,
    /// The storage driver's ProvisioningFailed message about the prime.
    prime_refusal: Option<String>,
    snapshot_refusal: Option<String>,
    /// A DataVolume's `snapshot` source.
    source_snapshot: SourceSnapshot,
    /// The claim a snapshot source is restored into to be copied.
    restored: CloneVolume,
}

impl World {
    /// A valid source, an Immediate class, nothing created yet, no task.
    fn fresh() -> World {
        World {
            source: Some(http_source()),
            upload: None,
            class: Some(class(None)),
            prime: None,
            holder: None,
            pv: None,
            task: TaskView::None,
            clone: Some(clone_source("PersistentVolumeClaim")),
            clone_volume: CloneVolume::Ready {
                in_use_by: None,
                block: true,
                pv_name: "pv-src".into(),
                class: "local".into(),
                size: 1 << 30,
                co_locate: Some("src-uid".into()),
            },
            source_holder: None,
            strategy: Choice { strategy: Strategy::Copy, fallback: None },
            clone_snapshot: SnapshotState::Missing,
            prime_refusal: None,
            snapshot_refusal: None,
            source_snapshot: SourceSnapshot::Ready { driver: "local.csi".into(), block: Some(true), size: 1 << 30 },
            restored: CloneVolume::Missing,
        }
    }

    /// The prime bound to `pv-1`, the holder running on `node-1`, no task followed.
    fn holding() -> World {
        World {
            prime: Some(prime("Bound")),
            holder: Some(holder(Some("Running"), Some("node-1"))),
            pv: Some(pv(Some(PRIME_UID))),
            ..World::fresh()
        }
    }

    /// After a successful import: the holder gone, the prime still bound to `pv-1`.
    fn imported() -> World {
        World { holder: None, ..World::holding() }
    }
}

/// Runs decide the way reconcile.rs does: reads come from `world`, creations succeed.
/// Returns the steps on the way (reads and creations) and the step that ends the reconcile.
fn drive(target: Target, world: World) -> (Vec<Step>, Step) {
    let mut s = Snapshot::new(target);
    let mut trace = Vec::new();
    loop {
        let step = decide(&s);
        match &step {
            Step::Read(Fact::Source) if s.target.kind == SourceKind::Upload => {
                s.source = Lazy::Read(Source::from_upload(world.upload.as_ref()))
            }
            Step::Read(Fact::Source) if s.target.kind == SourceKind::Clone => {
                s.source = Lazy::Read(Source::from_clone(world.clone.as_ref()))
            }
            Step::Read(Fact::Source) => s.source = Lazy::Read(Source::from_object(world.source.as_ref())),
            Step::Read(Fact::CloneSource { name }) => {
                assert_eq!(name, "golden");
                s.clone_source = Lazy::Read(world.clone_volume.clone());
            }
            Step::Read(Fact::SourceHolder) => {
                s.source_holder = Lazy::Read(world.source_holder.as_ref().map(Holder::from))
            }
            Step::CreateSourceHolder { .. } => s.source_holder = Lazy::Read(Some(Holder::from(&holder(None, None)))),
            Step::Read(Fact::CloneStrategy) => s.strategy = Lazy::Read(world.strategy.clone()),
            Step::Read(Fact::CloneSnapshot) => s.clone_snapshot = Lazy::Read(world.clone_snapshot.clone()),
            Step::Read(Fact::PrimeRefusal) => s.prime_refusal = Lazy::Read(world.prime_refusal.clone()),
            Step::Read(Fact::SourceSnapshot { name }) => {
                assert_eq!(name, "golden");
                s.source_snapshot = Lazy::Read(world.source_snapshot.clone());
            }
            Step::Read(Fact::RestoredSource) => s.clone_source = Lazy::Read(world.restored.clone()),
            Step::Read(Fact::SnapshotGrant { name }) => {
                assert_eq!(name, "golden");
                s.snapshot_refusal = Lazy::Read(world.snapshot_refusal.clone());
            }
            // Recorded on the claim, and the reconcile goes on with it.
            Step::ChooseStrategy(choice) => s.target.clone_type = Some(choice.strategy.clone()),
            Step::Read(Fact::StorageClass) => s.storage_class = Lazy::Read(world.class.as_ref().map(Into::into)),
            Step::Read(Fact::Prime) => s.prime = Lazy::Read(world.prime.as_ref().map(Prime::from)),
            Step::Read(Fact::Holder) => s.holder = Lazy::Read(world.holder.as_ref().map(Holder::from)),
            Step::Read(Fact::Pv { name }) => {
                let found = world.pv.as_ref().filter(|pv| pv.name_any() == *name);
                s.pv = Lazy::Read(found.map(Pv::from));
            }
            Step::Read(Fact::Task) => s.task = Lazy::Read(world.task.clone()),
            // What the API returns right after a create: not bound, not scheduled.
            Step::CreatePrime => {
                let created: PersistentVolumeClaim = from_json(json!({"metadata": {"uid": PRIME_UID}, "spec": {}}));
                s.prime = Lazy::Read(Some(Prime::from(&created)));
            }
            Step::CreateHolder { .. } => s.holder = Lazy::Read(Some(Holder::from(&holder(None, None)))),
            _ => return (trace, step),
        }
        trace.push(step);
        assert!(trace.len() < 20, "decide keeps asking instead of deciding: {trace:?}");
    }
}

fn decide_in(target: Target, world: World) -> Step {
    drive(target, world).1
}

// ---- done, unsupported, the source ----

#[test]
fn a_populated_bound_claim_is_done_without_reading_anything() {
    let target = Target::from_pvc(&claim(json!({ann::POD_PHASE: "Succeeded"}), "Bound")).unwrap();
    assert_eq!(drive(target, World::imported()), (vec![], Step::Done));
}

#[test]
fn a_bound_claim_that_is_not_populated_yet_is_not_done() {
    let target = Target::from_pvc(&claim(json!({ann::POD_PHASE: "Running"}), "Bound")).unwrap();
    assert_ne!(decide_in(target, World::holding()), Step::Done);
}

// ---- clones ----

fn clone_source(kind: &str) -> VolumeCloneSource {
    from_json(json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "VolumeCloneSource",
        "metadata": {"name": "src", "namespace": "vms", "generation": GENERATION},
        "spec": {"source": {"kind": kind, "name": "golden"}},
    }))
}

/// A target naming the VolumeCloneSource `src`.
fn clone_target(annotations: Value) -> Target {
    let mut pvc = claim(annotations, "Pending");
    pvc.spec.as_mut().unwrap().data_source_ref.as_mut().unwrap().kind = "VolumeCloneSource".into();
    Target::from_pvc(&pvc).unwrap()
}

fn source_holder(phase: Option<&str>, node: Option<&str>) -> Pod {
    from_json(json!({
        "metadata": {"name": "t-uid-source-pod", "namespace": "golden-images", "uid": "s-uid"},
        "spec": {"containers": [], "nodeName": node},
        "status": {"phase": phase},
    }))
}

#[test]
fn a_clone_waits_for_its_source_claim_before_provisioning_anything() {
    for (volume, why) in [
        (CloneVolume::Missing, "source PVC vms/golden not found"),
        (CloneVolume::NotBound, "source PVC vms/golden is not bound yet"),
    ] {
        let (trace, step) = drive(clone_target(json!({})), World { clone_volume: volume, ..World::fresh() });
        assert_eq!(step, Step::WaitForCloneSource { why: why.into() });
        assert!(!trace.contains(&Step::CreatePrime), "{trace:?}");
    }
    let in_use = || World {
        clone_volume: CloneVolume::Ready {
            in_use_by: Some("virt-launcher-x".into()),
            block: true,
            pv_name: "pv-src".into(),
            class: "local".into(),
            size: 1 << 30,
            co_locate: None,
        },
        ..World::holding()
    };
    assert_eq!(decide_in(clone_target(json!({})), in_use()), Step::CloneSourceInUse { pod: "virt-launcher-x".into() });
    // A copy already under way is followed to its end, not held up.
    let running = clone_target(json!({ann::POD_PHASE: "Running", ann::CLONE_TYPE: "copy"}));
    let with_holder = World { source_holder: Some(source_holder(Some("Running"), Some("node-2"))), ..in_use() };
    assert!(matches!(decide_in(running, with_holder), Step::StartTask { .. }));
}

#[test]
fn a_clone_refused_across_namespaces_fails_terminally() {
    let refused =
        World { clone_volume: CloneVolume::Refused("not asked for by a DataVolume".into()), ..World::fresh() };
    let Step::FailTerminally(failure) = decide_in(clone_target(json!({})), refused) else { panic!() };
    assert_eq!((failure.reason, failure.generation), (FailureReason::InvalidRequest, GENERATION));
}

/// The step that holds the source claim `golden` (ReadWriteOnce: its holders share a node).
fn hold_golden() -> Step {
    Step::CreateSourceHolder { claim: "golden".into(), block: true, co_locate: Some("src-uid".into()) }
}

#[test]
fn a_clone_holds_both_volumes_then_starts_a_task_that_reads_the_source_on_its_node() {
    let target = clone_target(json!({
        cdi_ann::reserved::DATA_SOURCE_NAMESPACE: "golden-images", cdi_ann::CONTENT_TYPE: "archive",
    }));
    assert_eq!(target.source_namespace, "golden-images");
    let (trace, step) = drive(target.clone(), World::fresh());
    assert!(trace.contains(&Step::CreatePrime) && trace.contains(&Step::CreateHolder { node: None }), "{trace:?}");
    assert!(trace.contains(&hold_golden()), "{trace:?}");
    assert_eq!(step, Step::WaitForHolder);
    let pending_source = World { source_holder: Some(source_holder(Some("Pending"), None)), ..World::holding() };
    assert_eq!(decide_in(target.clone(), pending_source), Step::WaitForHolder);
    let both = World { source_holder: Some(source_holder(Some("Running"), Some("node-2"))), ..World::holding() };
    let Step::StartTask { task, .. } = decide_in(target, both) else { panic!("expected a start") };
    let peer = Peer {
        node: "node-2".into(),
        namespace: "golden-images".into(),
        claim: "golden".into(),
        holder_uid: "s-uid".into(),
        pv_name: "pv-src".into(),
        block: true,
    };
    assert_eq!(task.peer, Some(peer));
    assert_eq!(task.node, "node-1");
    assert_eq!(task.plan.content_type, ContentType::Archive, "a clone copies what its claim says it holds");
}

#[test]
fn a_clone_records_its_strategy_once_then_keeps_it() {
    let fallback = Choice { strategy: Strategy::Copy, fallback: Some(("IncompatibleVolumeModes", "modes".into())) };
    let world = World { strategy: fallback.clone(), ..World::fresh() };
    let (trace, _) = drive(clone_target(json!({})), world);
    assert_eq!(trace.iter().filter(|s| matches!(s, Step::ChooseStrategy(_))).count(), 1, "{trace:?}");
    assert!(trace.contains(&Step::ChooseStrategy(fallback)));
    // Chosen before: not read again, whatever the cluster would say now.
    let chosen = clone_target(json!({ann::CLONE_TYPE: "copy"}));
    let csi = World { strategy: Choice { strategy: Strategy::CsiClone, fallback: None }, ..World::fresh() };
    let (trace, step) = drive(chosen, csi);
    assert!(!trace.contains(&Step::Read(Fact::CloneStrategy)), "{trace:?}");
    assert_eq!(step, Step::WaitForHolder, "still the host-assisted copy");
}

#[test]
fn a_csi_clone_is_a_prime_the_driver_fills_from_the_source_claim() {
    let target = clone_target(json!({ann::CLONE_TYPE: "csi-clone"}));
    let fresh = decide_in(target.clone(), World { prime: None, ..World::fresh() });
    assert_eq!(fresh, Step::CreateSmartPrime { kind: "PersistentVolumeClaim", name: "golden".into() });
    let pending = World { prime: Some(prime("Pending")), ..World::fresh() };
    assert_eq!(decide_in(target.clone(), pending), Step::WaitForSmartPrime { announce: true });
    let (trace, step) = drive(target, World { prime: Some(prime("Bound")), ..World::fresh() });
    assert_eq!(step, Step::SmartCloneDone);
    assert!(!trace.iter().any(|s| matches!(s, Step::Read(Fact::Holder | Fact::SourceHolder))), "no pods: {trace:?}");
}

/// The prime of a smart clone, as the driver has it: filled from the claim `golden`.
fn smart_prime(phase: &str) -> PersistentVolumeClaim {
    let mut prime = prime(phase);
    prime.spec.get_or_insert_default().data_source_ref = Some(k8s_openapi::api::core::v1::TypedObjectReference {
        kind: "PersistentVolumeClaim".into(),
        name: "golden".into(),
        ..Default::default()
    });
    prime
}

#[test]
fn a_smart_clone_the_driver_refuses_to_provision_is_copied_instead() {
    let refused = |strategy: &str| {
        let world = World {
            prime: Some(smart_prime("Pending")),
            prime_refusal: Some("cannot clone across nodes".into()),
            clone_snapshot: SnapshotState::Ready,
            ..World::fresh()
        };
        drive(clone_target(json!({ann::CLONE_TYPE: strategy})), world)
    };
    let fallback = |trace: &[Step]| {
        trace.iter().find_map(|s| match s {
            Step::ChooseStrategy(Choice { strategy: Strategy::Copy, fallback: Some((reason, why)) }) => {
                Some((reason.to_string(), why.clone()))
            }
            _ => None,
        })
    };
    // The copy is recorded, then the refused prime goes before the copy's is made.
    let (trace, step) = refused("csi-clone");
    let (reason, why) = fallback(&trace).expect("a fallback to a copy");
    assert_eq!(reason, "CSICloneFailed");
    assert!(why.ends_with("cannot clone across nodes"), "{why}");
    assert_eq!(step, Step::DeletePrime);
    let (trace, step) = refused("snapshot");
    assert_eq!(fallback(&trace).map(|f| f.0).as_deref(), Some("SnapshotRestoreFailed"));
    assert_eq!(step, Step::DeletePrime);
    // Not refused (yet): the driver is waited for, its events read each time.
    let pending = World { prime: Some(smart_prime("Pending")), clone_snapshot: SnapshotState::Ready, ..World::fresh() };
    let (trace, step) = drive(clone_target(json!({ann::CLONE_TYPE: "snapshot"})), pending);
    assert_eq!(step, Step::WaitForSmartPrime { announce: true });
    assert!(trace.contains(&Step::Read(Fact::PrimeRefusal)), "{trace:?}");
}

/// A DataVolume's `snapshot` source, with `strategy` chosen for it.
fn snapshot_world(strategy: Choice) -> World {
    World { clone: Some(clone_source("VolumeSnapshot")), strategy, ..World::fresh() }
}

fn restore() -> Choice {
    Choice { strategy: Strategy::Snapshot, fallback: None }
}

#[test]
fn a_snapshot_source_the_target_cannot_be_restored_from_is_restored_aside_and_copied() {
    let modes = Choice { strategy: Strategy::Copy, fallback: Some(("IncompatibleVolumeModes", "modes".into())) };
    let (trace, step) = drive(clone_target(json!({})), snapshot_world(modes.clone()));
    assert!(trace.contains(&Step::ChooseStrategy(modes.clone())), "{trace:?}");
    let restored = Step::CreateRestoredSource {
        snapshot: "golden".into(),
        block: true,
        size: 1 << 30,
        driver: "local.csi".into(),
    };
    assert_eq!(step, restored);
    // The copy reads the restored claim as it would a source claim; its holder binds it.
    let copy = || clone_target(json!({ann::CLONE_TYPE: "copy"}));
    let tmp = "tmp-source-pvc-t-uid".to_string();
    let unbound = World { restored: CloneVolume::NotBound, ..snapshot_world(modes.clone()) };
    let (trace, step) = drive(copy(), unbound);
    assert!(
        trace.contains(&Step::CreateSourceHolder { claim: tmp.clone(), block: true, co_locate: None }),
        "{trace:?}"
    );
    assert!(!trace.iter().any(|s| matches!(s, Step::Read(Fact::CloneSource { .. }))), "{trace:?}");
    assert!(matches!(step, Step::WaitForCloneSource { .. }), "{step:?}");
    let ready = World {
        restored: CloneVolume::Ready {
            in_use_by: None,
            block: true,
            pv_name: "pv-tmp".into(),
            class: "local".into(),
            size: 1 << 30,
            co_locate: Some("tmp-uid".into()),
        },
        source_holder: Some(source_holder(Some("Running"), Some("node-2"))),
        ..World { clone: Some(clone_source("VolumeSnapshot")), ..World::holding() }
    };
    let Step::StartTask { task, .. } = decide_in(copy(), ready) else { panic!("expected a start") };
    let peer = task.peer.expect("a copy from the restored claim");
    assert_eq!((peer.claim, peer.pv_name, peer.node), (tmp, "pv-tmp".into(), "node-2".into()));
}

#[test]
fn a_snapshot_source_waits_until_it_is_ready_and_a_refused_restore_is_copied() {
    let not_ready = World { source_snapshot: SourceSnapshot::NotReady, ..snapshot_world(restore()) };
    assert!(matches!(decide_in(clone_target(json!({})), not_ready), Step::WaitForCloneSource { .. }));
    let missing = World { source_snapshot: SourceSnapshot::Missing, ..snapshot_world(restore()) };
    assert!(matches!(decide_in(clone_target(json!({})), missing), Step::WaitForCloneSource { .. }));
    // The driver takes the restore into the target, then refuses it: restored aside instead.
    let refused = World {
        prime: Some(smart_prime("Pending")),
        prime_refusal: Some("no such snapshot handle".into()),
        ..snapshot_world(restore())
    };
    let (trace, step) = drive(clone_target(json!({})), refused);
    let fell_back = |s: &Step| matches!(s, Step::ChooseStrategy(c) if c.fallback.as_ref().is_some_and(|f| f.0 == "SnapshotRestoreFailed"));
    assert!(trace.iter().any(fell_back), "{trace:?}");
    assert!(matches!(step, Step::CreateRestoredSource { .. }), "{step:?}");
}

#[test]
fn a_snapshot_clone_restores_a_snapshot_once_it_is_ready() {
    let target = clone_target(json!({ann::CLONE_TYPE: "snapshot"}));
    assert_eq!(decide_in(target.clone(), World::fresh()), Step::CreateSnapshot { claim: "golden".into() });
    let taking = World { clone_snapshot: SnapshotState::Taking, ..World::fresh() };
    assert_eq!(decide_in(target.clone(), taking), Step::WaitForSnapshot);
    let ready = World { clone_snapshot: SnapshotState::Ready, ..World::fresh() };
    let step = decide_in(target.clone(), ready);
    assert_eq!(step, Step::CreateSmartPrime { kind: "VolumeSnapshot", name: "cdi-tmp-t-uid".into() });
    // A snapshot the driver cannot take: the copy, recorded as a fallback, goes on at once.
    let failed = World { clone_snapshot: SnapshotState::Failed("no backing file".into()), ..World::fresh() };
    let (trace, step) = drive(target, failed);
    let fell_back =
        |s: &Step| matches!(s, Step::ChooseStrategy(c) if c.fallback.as_ref().is_some_and(|f| f.0 == "SnapshotFailed"));
    assert!(trace.iter().any(fell_back), "{trace:?}");
    assert!(trace.contains(&hold_golden()), "{trace:?}");
    assert_eq!(step, Step::WaitForHolder);
}

#[test]
fn after_a_clone_its_source_is_released_after_the_target_holder() {
    let target = clone_target(json!({ann::POD_PHASE: "Succeeded"}));
    let with = World { source_holder: Some(source_holder(Some("Running"), Some("node-2"))), ..World::holding() };
    assert_eq!(decide_in(target.clone(), with), Step::DeleteHolder);
    let only_source =
        World { source_holder: Some(source_holder(Some("Running"), Some("node-2"))), ..World::imported() };
    assert_eq!(decide_in(target.clone(), only_source), Step::DeleteSourceHolder);
    assert!(matches!(decide_in(target, World::imported()), Step::RebindPv { .. }));
}

#[test]
fn a_snapshot_source_is_restored_by_the_driver_in_its_own_namespace_when_the_target_may() {
    let world = || snapshot_world(restore());
    let (trace, step) = drive(clone_target(json!({})), world());
    assert_eq!(step, Step::CreateSmartPrime { kind: "VolumeSnapshot", name: "golden".into() });
    assert!(
        !trace.iter().any(|s| matches!(s, Step::Read(Fact::CloneSource { .. } | Fact::SnapshotGrant { .. }))),
        "{trace:?}"
    );
    // Another namespace's: only when a DataVolume asks for it.
    let across = || clone_target(json!({cdi_ann::reserved::DATA_SOURCE_NAMESPACE: "elsewhere"}));
    let (trace, step) = drive(across(), world());
    assert!(trace.contains(&Step::Read(Fact::SnapshotGrant { name: "golden".into() })), "{trace:?}");
    assert_eq!(step, Step::CreateSmartPrime { kind: "VolumeSnapshot", name: "golden".into() });
    let refused = World { snapshot_refusal: Some("not asked for by a DataVolume".into()), ..world() };
    let Step::FailTerminally(failure) = decide_in(across(), refused) else { panic!() };
    assert_eq!(
        (failure.reason, failure.message.as_str()),
        (FailureReason::InvalidRequest, "not asked for by a DataVolume")
    );
}

#[test]
fn an_unsupported_claim_is_reported_only_once() {
    let target = target(json!({ann::RUNNING_REASON: UNSUPPORTED_CONDITION}));
    let world = World {
        source: Some(source(GENERATION, json!({"source": {"vddk": {"url": "https://vcenter/sdk"}}}))),
        ..World::fresh()
    };
    assert!(matches!(decide_in(target, world), Step::Unsupported { announce: false, .. }));
}

#[test]
fn an_unsupported_import_variant_is_reported_and_nothing_is_created() {
    let world = World {
        source: Some(source(GENERATION, json!({"source": {"vddk": {"url": "https://vcenter/sdk"}}}))),
        ..World::fresh()
    };
    let (trace, step) = drive(fresh(), world);
    assert_eq!(trace, [Step::Read(Fact::Source)]);
    assert_eq!(
        step,
        Step::Unsupported {
            message: "import source type vddk is not supported by this populator yet".into(),
            announce: true
        }
    );
}

#[test]
fn a_missing_source_is_waited_for() {
    let world = World { source: None, ..World::fresh() };
    assert_eq!(drive(fresh(), world), (vec![Step::Read(Fact::Source)], Step::WaitForSource));
}

#[test]
fn an_invalid_source_fails_terminally_for_its_generation_and_uses_up_the_attempt() {
    let world = World { source: Some(source(7, json!({}))), ..World::fresh() };
    let Step::FailTerminally(failure) = decide_in(target(json!({ann::ATTEMPT: "2"})), world) else {
        panic!("expected a terminal failure")
    };
    assert_eq!((failure.reason, failure.generation, failure.attempt), (FailureReason::InvalidRequest, 7, 3));
    assert!(failure.message.starts_with("VolumeImportSource src: spec.source names no source"), "{}", failure.message);
}

#[test]
fn a_source_for_another_claim_is_left_alone() {
    let spec = json!({"targetClaim": "other", "source": {"http": {"url": "https://images.example.com/disk.img"}}});
    let world = World { source: Some(source(GENERATION, spec)), ..World::fresh() };
    assert_eq!(decide_in(fresh(), world), Step::NotOurs);
}

#[test]
fn a_source_that_names_this_claim_is_populated() {
    let spec = json!({"targetClaim": "disk", "source": {"http": {"url": "https://images.example.com/disk.img"}}});
    let world = World { source: Some(source(GENERATION, spec)), ..World::fresh() };
    assert_eq!(decide_in(fresh(), world), Step::WaitForHolder);
}

// ---- terminal failures are remembered per source generation ----

fn failed_for(generation: i64) -> Target {
    target(json!({ann::POD_PHASE: "Failed", ann::FAILED_GENERATION: generation.to_string(), ann::ATTEMPT: "1"}))
}

#[test]
fn after_a_terminal_failure_nothing_happens_until_the_source_changes() {
    assert_eq!(
        drive(failed_for(GENERATION), World::holding()),
        (vec![Step::Read(Fact::Source)], Step::WaitForSourceChange)
    );
}

#[test]
fn a_changed_source_after_a_terminal_failure_starts_the_next_attempt() {
    // The failure deleted the holder and kept the prime.
    let (trace, _) = drive(failed_for(GENERATION - 1), World { holder: None, ..World::holding() });
    assert!(trace.contains(&Step::CreateHolder { node: None }), "{trace:?}");
    assert!(!trace.contains(&Step::CreatePrime), "{trace:?}");
    let Step::StartTask { task, announce } = decide_in(failed_for(GENERATION - 1), World::holding()) else {
        panic!("expected a start")
    };
    assert_eq!((task.id, task.generation), (format!("{PRIME_UID}-1"), GENERATION));
    assert!(announce, "the claim says Failed: the new attempt must be announced (and the failure cleared)");
}

#[test]
fn the_remembered_generation_is_compared_as_written() {
    // Only this populator writes it, always as the plain number.
    let target = target(json!({ann::FAILED_GENERATION: format!("0{GENERATION}")}));
    assert!(matches!(decide_in(target, World::holding()), Step::StartTask { .. }));
}

#[test]
fn a_populated_claim_keeps_waiting_while_a_terminal_failure_is_recorded_for_the_source() {
    // The check for a failed generation comes before the hand-over, as it always did.
    let target = target(json!({ann::POD_PHASE: "Succeeded", ann::FAILED_GENERATION: GENERATION.to_string()}));
    assert_eq!(decide_in(target, World::imported()), Step::WaitForSourceChange);
}

// ---- scheduling ----

#[test]
fn a_missing_storage_class_is_waited_for_before_anything_is_created() {
    let world = World { class: None, ..World::fresh() };
    let (trace, step) = drive(fresh(), world);
    assert_eq!(trace, [Step::Read(Fact::Source), Step::Read(Fact::StorageClass)]);
    assert_eq!(step, Step::WaitForStorageClass);
}

#[test]
fn wait_for_first_consumer_without_a_node_waits_and_announces_it_once() {
    let world = || World { class: Some(class(Some("WaitForFirstConsumer"))), ..World::fresh() };
    let (trace, step) = drive(fresh(), world());
    assert_eq!(trace, [Step::Read(Fact::Source), Step::Read(Fact::StorageClass)]);
    assert_eq!(step, Step::WaitForConsumer { announce: true });
    let announced = target(json!({ann::POD_PHASE: "Pending"}));
    assert_eq!(decide_in(announced, world()), Step::WaitForConsumer { announce: false });
}

#[test]
fn wait_for_first_consumer_with_a_selected_node_pins_the_holder_there() {
    let world = World { class: Some(class(Some("WaitForFirstConsumer"))), ..World::fresh() };
    let (trace, _) = drive(target(json!({ann::SELECTED_NODE: "node-2"})), world);
    assert!(trace.contains(&Step::CreateHolder { node: Some("node-2".into()) }), "{trace:?}");
}

#[test]
fn a_fresh_claim_gets_its_prime_then_its_holder_in_one_reconcile() {
    let (trace, step) = drive(fresh(), World::fresh());
    assert_eq!(
        trace,
        [
            Step::Read(Fact::Source),
            Step::Read(Fact::StorageClass),
            Step::Read(Fact::Prime),
            Step::CreatePrime,
            Step::Read(Fact::Holder),
            Step::CreateHolder { node: None },
        ]
    );
    assert_eq!(step, Step::WaitForHolder, "a new holder is not running yet");
}

#[test]
fn an_existing_prime_is_not_created_again() {
    let world = World { prime: Some(prime("Pending")), ..World::fresh() };
    let (trace, step) = drive(fresh(), world);
    assert!(!trace.contains(&Step::CreatePrime), "{trace:?}");
    assert!(trace.contains(&Step::CreateHolder { node: None }), "{trace:?}");
    assert_eq!(step, Step::WaitForHolder);
}

#[test]
fn a_missing_holder_is_created_again_for_the_existing_prime() {
    let target = running(1);
    let (trace, step) = drive(target, World { holder: None, ..World::holding() });
    assert_eq!(&trace[trace.len() - 2..], [Step::Read(Fact::Holder), Step::CreateHolder { node: None }]);
    assert_eq!(step, Step::WaitForHolder);
}

#[test]
fn a_holder_that_is_not_running_on_a_node_is_waited_for() {
    for pod in [
        holder(None, None),
        holder(Some("Pending"), Some("node-1")),
        holder(Some("Running"), None),
        holder(Some("Failed"), Some("node-1")),
    ] {
        let world = World { holder: Some(pod.clone()), ..World::holding() };
        let (trace, step) = drive(fresh(), world);
        assert_eq!(step, Step::WaitForHolder, "{:?}", pod.status);
        assert!(!trace.contains(&Step::Read(Fact::Task)), "no task before the volume is there");
    }
}

// ---- the mover task ----

#[test]
fn a_running_holder_starts_the_task_of_the_current_attempt() {
    let step = decide_in(target(json!({ann::ATTEMPT: "2"})), World::holding());
    let expected = Task {
        id: format!("{PRIME_UID}-2"),
        node: "node-1".into(),
        holder_uid: HOLDER_UID.into(),
        pv_name: "pv-1".into(),
        plan: ImportPlan::try_from(&http_source()).unwrap(),
        generation: GENERATION,
        peer: None,
    };
    assert_eq!(step, Step::StartTask { task: Box::new(expected), announce: true });
}

#[test]
fn a_claim_already_running_restarts_its_task_without_announcing_it() {
    // E.g. after the populator restarted: the mover re-attaches to the same task id.
    let Step::StartTask { task, announce } = decide_in(running(1), World::holding()) else {
        panic!("expected a start")
    };
    assert_eq!(task.id, format!("{PRIME_UID}-1"));
    assert!(!announce);
}

#[test]
fn a_followed_task_of_this_attempt_is_waited_for() {
    let task = TaskView::Running { task_id: format!("{PRIME_UID}-1") };
    assert_eq!(decide_in(running(1), World { task, ..World::holding() }), Step::WaitForTask);
}

#[test]
fn a_task_of_an_earlier_attempt_is_replaced_by_the_current_one() {
    let stale_running = TaskView::Running { task_id: format!("{PRIME_UID}-0") };
    for task in [stale_running, done(0, failed(true))] {
        let step = decide_in(running(1), World { task, ..World::holding() });
        assert!(matches!(&step, Step::StartTask { task, .. } if task.id == format!("{PRIME_UID}-1")), "{step:?}");
    }
}

#[test]
fn a_holder_on_its_way_out_is_not_written_through() {
    // The previous attempt's holder is still terminating when a corrected source comes:
    // its volume is being torn down, so wait for it to go and a new one to run.
    let mut pod = holder(Some("Running"), Some("node-1"));
    pod.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()));
    let world = World { holder: Some(pod), ..World::holding() };
    assert_eq!(decide_in(running(1), world), Step::WaitForHolder);
}

#[test]
fn a_settled_task_is_not_acted_on_again_from_a_stale_claim() {
    // The claim still says Running at attempt 0 (the cache lags behind the write that
    // recorded the outcome): following task 0 again would act on its outcome twice.
    let task = TaskView::Settled { task_id: format!("{PRIME_UID}-0") };
    assert_eq!(decide_in(running(0), World { task, ..World::holding() }), Step::WaitForTask);
    // The next attempt is a new task.
    let task = TaskView::Settled { task_id: format!("{PRIME_UID}-0") };
    let step = decide_in(running(1), World { task, ..World::holding() });
    assert!(matches!(&step, Step::StartTask { task, .. } if task.id == format!("{PRIME_UID}-1")), "{step:?}");
}

#[test]
fn a_successful_task_ends_in_success() {
    let completed = pb::Completed { virtual_size: 1 << 30, formats: vec!["qcow2".into()], ..Default::default() };
    let task = done(0, Outcome::Succeeded(completed.clone()));
    let step = decide_in(running(0), World { task, ..World::holding() });
    assert_eq!(step, Step::TaskEnded(Ended::Succeeded(completed)));
}

#[test]
fn a_retryable_failure_retries_as_a_new_attempt_with_one_more_restart() {
    let target = target(json!({ann::POD_PHASE: "Running", ann::ATTEMPT: "2", ann::POD_RESTARTS: "1"}));
    let step = decide_in(target, World { task: done(2, failed(true)), ..World::holding() });
    let expected =
        Ended::Retry { reason: FailureReason::SourceUnavailable, message: "HTTP 503".into(), restarts: 2, attempt: 3 };
    assert_eq!(step, Step::TaskEnded(expected));
}

#[test]
fn a_terminal_task_failure_is_recorded_against_the_source_generation() {
    let target = target(json!({ann::POD_PHASE: "Running", ann::ATTEMPT: "2", ann::POD_RESTARTS: "1"}));
    let step = decide_in(target, World { task: done(2, failed(false)), ..World::holding() });
    let expected = Terminal {
        reason: FailureReason::SourceUnavailable,
        message: "HTTP 503".into(),
        generation: GENERATION,
        attempt: 3,
    };
    assert_eq!(step, Step::TaskEnded(Ended::Failed(expected)));
}

#[test]
fn a_lost_task_is_reported_and_keeps_its_attempt() {
    let task = done(0, Outcome::Lost("mover on node-1: unavailable".into()));
    let step = decide_in(running(0), World { task, ..World::holding() });
    assert_eq!(step, Step::TaskEnded(Ended::Lost("mover on node-1: unavailable".into())));
}

// ---- after success: the hand-over ----

#[test]
fn after_success_the_holder_is_deleted_first_and_the_class_is_never_read() {
    let (trace, step) = drive(populated(), World::holding());
    assert_eq!(trace, [Step::Read(Fact::Source), Step::Read(Fact::Holder)]);
    assert_eq!(step, Step::DeleteHolder);
}

#[test]
fn after_success_a_pv_still_claimed_by_the_prime_is_handed_to_the_target() {
    let (trace, step) = drive(populated(), World::imported());
    assert_eq!(
        trace,
        [
            Step::Read(Fact::Source),
            Step::Read(Fact::Holder),
            Step::Read(Fact::Prime),
            Step::Read(Fact::Pv { name: "pv-1".into() }),
        ]
    );
    assert_eq!(step, Step::RebindPv { pv: "pv-1".into() });
}

#[test]
fn a_pv_claimed_by_nobody_is_handed_over_too() {
    let world = World { pv: Some(pv(None)), ..World::imported() };
    assert_eq!(decide_in(populated(), world), Step::RebindPv { pv: "pv-1".into() });
}

#[test]
fn once_the_pv_is_the_targets_the_prime_is_deleted_when_lost() {
    let world = |phase| World { prime: Some(prime(phase)), pv: Some(pv(Some(TARGET_UID))), ..World::imported() };
    assert_eq!(decide_in(populated(), world("Bound")), Step::WaitForLost);
    assert_eq!(decide_in(populated(), world("Lost")), Step::DeletePrime);
}

#[test]
fn retain_after_completion_keeps_the_importer_pod_and_the_lost_prime() {
    let retained = || target(json!({ann::POD_PHASE: "Succeeded", ann::RETAIN: "true"}));
    // The holder stays: the PV goes to the target through it.
    assert_eq!(decide_in(retained(), World::holding()), Step::RebindPv { pv: "pv-1".into() });
    let lost = World { prime: Some(prime("Lost")), pv: Some(pv(Some(TARGET_UID))), ..World::holding() };
    assert_eq!(decide_in(retained(), lost), Step::WaitForBind, "the Lost prime is kept");
    let bound = Target::from_pvc(&claim(json!({ann::POD_PHASE: "Succeeded", ann::RETAIN: "true"}), "Bound")).unwrap();
    assert_eq!(drive(bound, World::holding()), (vec![], Step::Retained), "nothing is deleted, nothing read");
    // Anything but "true" is not asking.
    let no = target(json!({ann::POD_PHASE: "Succeeded", ann::RETAIN: "yes"}));
    assert_eq!(decide_in(no, World::holding()), Step::DeleteHolder);
}

#[test]
fn a_prime_whose_pv_is_gone_is_deleted() {
    let world = World { pv: None, ..World::imported() };
    assert_eq!(decide_in(populated(), world), Step::DeletePrime);
}

#[test]
fn with_the_prime_gone_the_target_waits_to_be_bound() {
    let world = World { prime: None, ..World::imported() };
    let (trace, step) = drive(populated(), world);
    assert!(!trace.iter().any(|s| matches!(s, Step::Read(Fact::Pv { .. }))), "{trace:?}");
    assert_eq!(step, Step::WaitForBind);
}

// ---- the target being deleted ----

#[test]
fn a_deleted_target_cancels_the_task_of_its_current_attempt_on_the_holders_node() {
    let holder = Holder::from(&holder(Some("Running"), Some("node-1")));
    let prime = Prime::from(&prime("Bound"));
    assert_eq!(
        unfollowed_task(&running(2), Some(&holder), Some(&prime)),
        Some((format!("{PRIME_UID}-2"), "node-1".to_string()))
    );
}

#[test]
fn a_deleted_target_without_a_scheduled_holder_or_a_prime_has_no_task_to_cancel() {
    let scheduled = Holder::from(&holder(Some("Running"), Some("node-1")));
    let unscheduled = Holder::from(&holder(None, None));
    let prime = Prime::from(&prime("Bound"));
    let t = running(0);
    assert_eq!(unfollowed_task(&t, None, Some(&prime)), None);
    assert_eq!(unfollowed_task(&t, Some(&unscheduled), Some(&prime)), None);
    assert_eq!(unfollowed_task(&t, Some(&scheduled), None), None);
}

// ---- reading the API objects ----

#[test]
fn a_claim_is_read_into_typed_facts() {
    let pvc = claim(
        json!({
            ann::POD_PHASE: "Running", ann::FAILED_GENERATION: "4", ann::ATTEMPT: "2",
            ann::POD_RESTARTS: "5", ann::SELECTED_NODE: "node-2", ann::RUNNING_REASON: UNSUPPORTED_CONDITION,
        }),
        "Bound",
    );
    let expected = Target {
        name: "disk".into(),
        uid: TARGET_UID.into(),
        kind: SourceKind::Import,
        source_name: "src".into(),
        class: "local".into(),
        bound: true,
        phase: Some(PodPhase::Running),
        failed_generation: Some("4".into()),
        attempt: 2,
        restarts: 5,
        selected_node: Some("node-2".into()),
        unsupported_reported: true,
        retain: false,
        clone_type: None,
        namespace: "vms".into(),
        source_namespace: "vms".into(),
        content_type: ContentType::Kubevirt,
    };
    assert_eq!(Target::from_pvc(&pvc), Some(expected));
}

#[test]
fn unreadable_bookkeeping_counts_as_never_written() {
    let target = target(json!({ann::POD_PHASE: "Bogus", ann::ATTEMPT: "x", ann::POD_RESTARTS: "-1"}));
    assert_eq!((target.phase, target.attempt, target.restarts), (None, 0, 0));
}

#[test]
fn only_claims_naming_a_cdi_source_kind_are_targets() {
    let with_ref = |r: Value| {
        let mut pvc = claim(json!({}), "Pending");
        pvc.spec.as_mut().unwrap().data_source_ref = Some(from_json(r));
        Target::from_pvc(&pvc).map(|t| t.kind)
    };
    let kind = |kind: &str| json!({"apiGroup": "cdi.kubevirt.io", "kind": kind, "name": "src"});
    assert_eq!(with_ref(kind("VolumeUploadSource")), Some(SourceKind::Upload));
    assert_eq!(with_ref(kind("VolumeCloneSource")), Some(SourceKind::Clone));
    assert_eq!(with_ref(kind("DataVolume")), None);
    assert_eq!(with_ref(json!({"apiGroup": "example.com", "kind": "VolumeImportSource", "name": "src"})), None);
    let plain: PersistentVolumeClaim = from_json(json!({"metadata": {"name": "p"}}));
    assert_eq!(Target::from_pvc(&plain), None);
}

#[test]
fn children_are_read_into_typed_facts() {
    assert_eq!(
        Prime::from(&prime("Lost")),
        Prime {
            uid: PRIME_UID.into(),
            namespace: "vms".into(),
            volume_name: Some("pv-1".into()),
            phase: Some(ClaimPhase::Lost),
            smart: false
        }
    );
    assert_eq!(
        Holder::from(&holder(Some("Running"), Some("node-1"))),
        Holder { uid: HOLDER_UID.into(), phase: Some(PodPhase::Running), node: Some("node-1".into()), deleting: false }
    );
    let unscheduled: Pod = from_json(json!({"metadata": {"name": "h"}}));
    assert_eq!(Holder::from(&unscheduled), Holder { uid: String::new(), phase: None, node: None, deleting: false });
    assert_eq!(Pv::from(&pv(Some(TARGET_UID))), Pv { claim_uid: Some(TARGET_UID.into()) });
}

#[test]
fn only_wait_for_first_consumer_classes_wait() {
    assert_eq!(VolumeBinding::from(&class(Some("WaitForFirstConsumer"))), VolumeBinding::WaitForFirstConsumer);
    assert_eq!(VolumeBinding::from(&class(Some("Immediate"))), VolumeBinding::Immediate);
    assert_eq!(VolumeBinding::from(&class(None)), VolumeBinding::Immediate);
}

#[test]
fn a_source_without_a_generation_counts_as_generation_zero() {
    let object: VolumeImportSource = from_json(json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "VolumeImportSource",
        "metadata": {"name": "src"}, "spec": {"source": {"http": {"url": "https://images.example.com/a.img"}}},
    }));
    assert!(matches!(Source::from_object(Some(&object)), Source::Found { generation: 0, .. }));
    assert_eq!(Source::from_object(None), Source::Missing);
}

#[test]
fn pod_phases_round_trip_their_names() {
    for phase in PodPhase::ALL {
        assert_eq!(PodPhase::parse(phase.as_str()), Some(phase));
    }
    assert_eq!(PodPhase::parse("running"), None);
}

// ---- uploads ----

fn upload_source(spec: Value) -> VolumeUploadSource {
    from_json(json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "VolumeUploadSource",
        "metadata": {"name": "src", "namespace": "vms", "generation": GENERATION},
        "spec": spec,
    }))
}

/// The pending target naming the VolumeUploadSource `src`.
fn upload_target(annotations: Value) -> Target {
    let mut pvc = claim(annotations, "Pending");
    pvc.spec.as_mut().unwrap().data_source_ref.as_mut().unwrap().kind = "VolumeUploadSource".into();
    Target::from_pvc(&pvc).expect("a target")
}

fn upload_world(world: World) -> World {
    World {
        source: None,
        upload: Some(upload_source(json!({"contentType": "archive", "preallocation": true}))),
        ..world
    }
}

#[test]
fn an_upload_goes_through_the_prime_and_holder_like_an_import() {
    let (trace, step) = drive(upload_target(json!({})), upload_world(World::fresh()));
    assert_eq!(
        trace,
        [
            Step::Read(Fact::Source),
            Step::Read(Fact::StorageClass),
            Step::Read(Fact::Prime),
            Step::CreatePrime,
            Step::Read(Fact::Holder),
            Step::CreateHolder { node: None },
        ]
    );
    assert_eq!(step, Step::WaitForHolder);
}

#[test]
fn an_uploads_task_is_the_primes_uid_whatever_the_attempt_with_the_sources_content_type() {
    let target = upload_target(json!({ann::ATTEMPT: "2"}));
    let Step::StartTask { task, announce } = decide_in(target, upload_world(World::holding())) else {
        panic!("expected the task to start")
    };
    assert!(announce);
    assert_eq!((task.id.as_str(), task.node.as_str()), (PRIME_UID, "node-1"));
    assert_eq!(task.plan.source, ImportSource::Upload);
    assert_eq!(task.plan.content_type, crate::plan::ContentType::Archive);
    assert_eq!(task.plan.preallocation, Some(true));
}

#[test]
fn a_followed_upload_task_is_waited_for_and_its_success_handed_over() {
    let target = upload_target(json!({ann::POD_PHASE: "Running"}));
    let world = World { task: TaskView::Running { task_id: PRIME_UID.into() }, ..upload_world(World::holding()) };
    assert_eq!(decide_in(target.clone(), world), Step::WaitForTask);
    let completed = pb::Completed::default();
    let world = World {
        task: TaskView::Done { task_id: PRIME_UID.into(), outcome: Outcome::Succeeded(completed.clone()) },
        ..upload_world(World::holding())
    };
    assert_eq!(decide_in(target, world), Step::TaskEnded(Ended::Succeeded(completed)));
}

#[test]
fn an_upload_whose_mover_lost_the_task_starts_it_again_under_the_same_id() {
    let target = upload_target(json!({ann::POD_PHASE: "Running"}));
    let lost = Outcome::Lost("mover on node-1: transport error".into());
    let world =
        World { task: TaskView::Done { task_id: PRIME_UID.into(), outcome: lost }, ..upload_world(World::holding()) };
    assert!(matches!(decide_in(target.clone(), world), Step::TaskEnded(Ended::Lost(_))));
    // Forgotten after the loss: the next reconcile starts it again, same id.
    let Step::StartTask { task, announce } = decide_in(target, upload_world(World::holding())) else {
        panic!("expected the task to start again")
    };
    assert_eq!(task.id, PRIME_UID);
    assert!(!announce, "the claim already says it runs");
}

#[test]
fn a_missing_or_invalid_upload_source_is_named_as_such() {
    let world = World { upload: None, ..upload_world(World::fresh()) };
    assert_eq!(decide_in(upload_target(json!({})), world), Step::WaitForSource);
    let world = World { upload: Some(upload_source(json!({"contentType": "iso"}))), ..upload_world(World::fresh()) };
    let Step::FailTerminally(failure) = decide_in(upload_target(json!({})), world) else {
        panic!("expected a terminal failure")
    };
    assert!(failure.message.starts_with("VolumeUploadSource src: "), "{}", failure.message);
}

#[test]
fn a_settled_upload_task_starts_again_once_the_claim_shows_the_retry_and_not_before() {
    let settled = || World { task: TaskView::Settled { task_id: PRIME_UID.into() }, ..upload_world(World::holding()) };
    // The claim still as before the retry was written: wait for the write.
    assert_eq!(decide_in(upload_target(json!({ann::POD_PHASE: "Running"})), settled()), Step::WaitForTask);
    let retry = upload_target(json!({ann::POD_PHASE: "Pending", ann::ATTEMPT: "1"}));
    let Step::StartTask { task, .. } = decide_in(retry, settled()) else { panic!("expected the task to start again") };
    assert_eq!(task.id, PRIME_UID);
}

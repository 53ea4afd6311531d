//! The golden PVC flow, branch by branch, on in-memory objects.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::storage::v1::StorageClass;
use serde_json::{Value, json};

use super::*;
use crate::controller::failure::TaskFailure;

const UID: &str = "g-uid";
const HOLDER_UID: &str = "h-uid";
const URL: &str = "https://images.example.com/golden.qcow2";

fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("a valid object")
}

/// `vms/golden` with the endpoint annotation plus `extra`, in claim phase `phase`.
fn claim(extra: Value, phase: &str) -> PersistentVolumeClaim {
    let mut annotations = json!({cdi_ann::IMPORT_ENDPOINT: URL});
    annotations.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let volume = (phase == "Bound").then_some("pv-9");
    from_json(json!({
        "metadata": {"name": "golden", "namespace": "vms", "uid": UID, "annotations": annotations},
        "spec": {"storageClassName": "local", "volumeName": volume},
        "status": {"phase": phase},
    }))
}

fn golden(extra: Value, phase: &str) -> Golden {
    Golden::from_pvc(&claim(extra, phase)).expect("a golden PVC")
}

fn class(mode: Option<&str>) -> StorageClass {
    from_json(json!({"metadata": {"name": "local"}, "provisioner": "p", "volumeBindingMode": mode}))
}

fn holder(phase: Option<&str>, node: Option<&str>) -> Pod {
    from_json(json!({
        "metadata": {"name": "importer-golden", "namespace": "vms", "uid": HOLDER_UID},
        "spec": {"containers": [], "nodeName": node},
        "status": {"phase": phase},
    }))
}

struct World {
    class: Option<StorageClass>,
    holder: Option<Pod>,
    task: TaskView,
}

impl World {
    fn empty(mode: Option<&str>) -> World {
        World { class: Some(class(mode)), holder: None, task: TaskView::None }
    }

    fn holding() -> World {
        World { holder: Some(holder(Some("Running"), Some("node-1"))), ..World::empty(None) }
    }
}

/// Decides as reconcile does: reads from `world`, creations succeed (a fresh pod).
fn drive(target: Golden, world: &World) -> (Vec<Step>, Step) {
    let mut s = Snapshot::new(target);
    let mut trace = Vec::new();
    loop {
        let step = decide(&s);
        match &step {
            Step::Read(Fact::StorageClass) => s.storage_class = Lazy::Read(world.class.as_ref().map(Into::into)),
            Step::Read(Fact::Holder) => s.holder = Lazy::Read(world.holder.as_ref().map(Holder::from)),
            Step::Read(Fact::Task) => s.task = Lazy::Read(world.task.clone()),
            Step::CreateHolder { .. } => s.holder = Lazy::Read(Some(Holder::from(&holder(None, None)))),
            _ => return (trace, step),
        }
        trace.push(step);
        assert!(trace.len() < 10, "decide keeps asking: {trace:?}");
    }
}

fn decide_in(target: Golden, world: &World) -> Step {
    drive(target, world).1
}

fn done(attempt: u32, outcome: Outcome) -> TaskView {
    TaskView::Done { task_id: format!("{UID}-{attempt}"), outcome }
}

fn failure(reason: FailureReason, retryable: bool) -> Outcome {
    Outcome::Failed(TaskFailure { reason, message: "HTTP 404".into(), retryable })
}

#[test]
fn only_claims_without_a_data_source_and_with_an_endpoint_are_golden() {
    assert!(Golden::from_pvc(&claim(json!({}), "Pending")).is_some());
    let mut with_ref = claim(json!({}), "Pending");
    with_ref.spec.as_mut().unwrap().data_source_ref =
        Some(from_json(json!({"kind": "VolumeImportSource", "name": "s"})));
    assert!(Golden::from_pvc(&with_ref).is_none(), "the populate flow's");
    let plain: PersistentVolumeClaim = from_json(json!({"metadata": {"name": "p"}, "spec": {}}));
    assert!(Golden::from_pvc(&plain).is_none());
}

#[test]
fn the_importer_pod_is_named_for_the_claim() {
    assert_eq!(golden(json!({}), "Pending").holder_name(), "importer-golden");
}

#[test]
fn success_removes_the_importer_pod_unless_retained() {
    let ok = || golden(json!({cdi_ann::IMPORT_STATUS: "Success"}), "Bound");
    assert_eq!(drive(ok(), &World::holding()), (vec![Step::Read(Fact::Holder)], Step::DeleteHolder));
    assert_eq!(decide_in(ok(), &World::empty(None)), Step::Done);
    let kept = golden(json!({cdi_ann::IMPORT_STATUS: "Success", ann::RETAIN: "true"}), "Bound");
    assert_eq!(drive(kept, &World::holding()), (vec![], Step::Done));
    // The pod phase alone says so too (a status write lost).
    assert_eq!(decide_in(golden(json!({ann::POD_PHASE: "Succeeded"}), "Bound"), &World::empty(None)), Step::Done);
}

#[test]
fn bad_annotations_fail_once_and_wait_for_a_change() {
    let bad = json!({cdi_ann::IMPORT_ENDPOINT: "ftp://host/x"});
    let Step::FailTerminally(t) = decide_in(golden(bad.clone(), "Bound"), &World::empty(None)) else { panic!() };
    assert_eq!((t.reason, t.attempt), (FailureReason::InvalidRequest, 1));
    assert!(t.message.contains(cdi_ann::IMPORT_ENDPOINT), "{}", t.message);
    let key = golden(bad.clone(), "Bound").inputs;
    let mut recorded = bad.clone();
    recorded.as_object_mut().unwrap().insert(FAILED_FOR.into(), key.clone().into());
    assert_eq!(decide_in(golden(recorded.clone(), "Bound"), &World::empty(None)), Step::WaitForChange);
    // An importer pod created from a stale copy of the claim does not stay.
    let world = World { holder: Some(holder(Some("Running"), Some("n"))), ..World::empty(None) };
    assert_eq!(decide_in(golden(recorded, "Bound"), &world), Step::DeleteHolder);
    // Fixed: tried again.
    let fixed = json!({cdi_ann::IMPORT_ENDPOINT: URL, FAILED_FOR: key});
    assert!(matches!(decide_in(golden(fixed, "Bound"), &World::holding()), Step::StartTask { .. }));
}

#[test]
fn a_task_failure_is_not_retried_until_the_inputs_change() {
    let key = golden(json!({}), "Bound").inputs;
    let failed = json!({FAILED_FOR: key, cdi_ann::IMPORT_STATUS: "Failed"});
    assert_eq!(drive(golden(failed, "Bound"), &World::empty(None)).1, Step::WaitForChange);
    let other_secret = json!({FAILED_FOR: key, cdi_ann::IMPORT_SECRET_NAME: "right"});
    assert!(matches!(decide_in(golden(other_secret, "Bound"), &World::holding()), Step::StartTask { .. }));
}

#[test]
fn unsupported_sources_are_reported_once_and_nothing_is_read_or_created() {
    let vddk = json!({cdi_ann::IMPORT_SOURCE: "vddk"});
    let (trace, step) = drive(golden(vddk, "Bound"), &World::empty(None));
    assert!(trace.is_empty(), "{trace:?}");
    assert_eq!(
        step,
        Step::Unsupported {
            message: "import source type vddk is not supported by this populator yet".into(),
            announce: true
        }
    );
    let reported = json!({cdi_ann::IMPORT_SOURCE: "imageio", ann::RUNNING_REASON: UNSUPPORTED_CONDITION});
    assert!(matches!(
        decide_in(golden(reported, "Bound"), &World::empty(None)),
        Step::Unsupported { announce: false, .. }
    ));
}

#[test]
fn an_immediate_claim_waits_for_its_volume_and_a_missing_class_is_waited_for() {
    assert_eq!(
        drive(golden(json!({}), "Pending"), &World::empty(None)),
        (vec![Step::Read(Fact::StorageClass)], Step::WaitForBind)
    );
    let world = World { class: None, ..World::empty(None) };
    assert_eq!(decide_in(golden(json!({}), "Pending"), &world), Step::WaitForStorageClass);
}

#[test]
fn under_wait_for_first_consumer_the_importer_pod_is_the_consumer() {
    let (trace, step) = drive(golden(json!({}), "Pending"), &World::empty(Some("WaitForFirstConsumer")));
    assert_eq!(
        trace,
        [Step::Read(Fact::StorageClass), Step::Read(Fact::Holder), Step::CreateHolder { announce: true }]
    );
    assert_eq!(step, Step::WaitForHolder, "the fresh pod is not running yet");
    let in_process = golden(json!({cdi_ann::IMPORT_STATUS: "In process"}), "Pending");
    let (trace, _) = drive(in_process, &World::empty(Some("WaitForFirstConsumer")));
    assert_eq!(trace[2], Step::CreateHolder { announce: false }, "announced once");
}

#[test]
fn a_bound_claim_gets_its_importer_pod_without_reading_the_class() {
    let (trace, step) = drive(golden(json!({}), "Bound"), &World::empty(None));
    assert_eq!(trace, [Step::Read(Fact::Holder), Step::CreateHolder { announce: true }]);
    assert_eq!(step, Step::WaitForHolder);
    let deleting = World { holder: Some(holder(Some("Running"), Some("n"))), ..World::empty(None) };
    let mut pod = deleting.holder.clone().unwrap();
    pod.metadata.deletion_timestamp = Some(from_json(json!("2026-01-01T00:00:00Z")));
    let world = World { holder: Some(pod), ..deleting };
    assert_eq!(decide_in(golden(json!({}), "Bound"), &world), Step::WaitForHolder);
}

#[test]
fn the_task_fills_the_claims_own_volume_through_the_importer_pod() {
    let Step::StartTask { task, announce } = decide_in(golden(json!({ann::ATTEMPT: "2"}), "Bound"), &World::holding())
    else {
        panic!()
    };
    assert!(announce);
    assert_eq!(
        (task.id.as_str(), task.node.as_str(), task.holder_uid.as_str(), task.pv_name.as_str()),
        ("g-uid-2", "node-1", HOLDER_UID, "pv-9")
    );
    let running = golden(json!({ann::POD_PHASE: "Running"}), "Bound");
    assert!(matches!(decide_in(running, &World::holding()), Step::StartTask { announce: false, .. }));
    // A running pod but a copy of the claim from before it was bound: wait.
    let stale = golden(json!({}), "Pending");
    let world = World { class: Some(class(Some("WaitForFirstConsumer"))), ..World::holding() };
    assert_eq!(decide_in(stale, &world), Step::WaitForBind);
}

#[test]
fn the_tasks_end_is_success_a_retry_or_a_terminal_failure() {
    let at = |task: TaskView| {
        decide_in(golden(json!({ann::POD_RESTARTS: "1"}), "Bound"), &World { task, ..World::holding() })
    };
    let ok = pb::Completed { virtual_size: 1 << 20, ..Default::default() };
    assert_eq!(at(done(0, Outcome::Succeeded(ok.clone()))), Step::TaskEnded(Ended::Succeeded(ok)));
    assert_eq!(
        at(done(0, failure(FailureReason::SourceUnavailable, true))),
        Step::TaskEnded(Ended::Retry {
            reason: FailureReason::SourceUnavailable,
            message: "HTTP 404".into(),
            restarts: 2,
            attempt: 1
        })
    );
    let Step::TaskEnded(Ended::Failed(t)) = at(done(0, failure(FailureReason::Unauthorized, false))) else { panic!() };
    assert_eq!((t.reason, t.attempt), (FailureReason::Unauthorized, 1));
    assert_eq!(at(TaskView::Running { task_id: "g-uid-0".into() }), Step::WaitForTask);
    assert_eq!(at(TaskView::Settled { task_id: "g-uid-0".into() }), Step::WaitForTask);
    // An earlier attempt's task: this attempt's starts.
    assert!(matches!(at(TaskView::Running { task_id: "g-uid-7".into() }), Step::StartTask { .. }));
}

#[test]
fn a_registry_golden_claim_is_imported_like_an_http_one() {
    // The docker:// endpoint alone selects the registry source.
    let registry = json!({cdi_ann::IMPORT_ENDPOINT: "docker://registry.local:5000/disk:1"});
    let Step::StartTask { task, .. } = decide_in(golden(registry, "Bound"), &World::holding()) else { panic!() };
    assert!(
        matches!(&task.plan.source, ImportSource::Registry(r) if r.url == "docker://registry.local:5000/disk:1"),
        "{:?}",
        task.plan
    );
}

// ---- uploads into the claim itself ----

/// `vms/golden` annotated as an upload target (as `virtctl image-upload` creates it).
fn upload_claim(extra: Value, phase: &str) -> PersistentVolumeClaim {
    let mut pvc = claim(extra, phase);
    let annotations = pvc.metadata.annotations.as_mut().unwrap();
    annotations.remove(cdi_ann::IMPORT_ENDPOINT);
    annotations.insert(cdi_ann::reserved::UPLOAD_TARGET.into(), String::new());
    pvc
}

#[test]
fn an_upload_target_without_a_data_source_is_golden_and_its_task_is_the_claims_uid() {
    let target = Golden::from_pvc(&upload_claim(json!({ann::ATTEMPT: "1"}), "Bound")).expect("golden");
    assert!(target.upload);
    let Step::StartTask { task, announce } = decide_in(target, &World::holding()) else {
        panic!("expected the upload task to start")
    };
    assert!(announce);
    assert_eq!((task.id.as_str(), task.node.as_str(), task.pv_name.as_str()), (UID, "node-1", "pv-9"));
    assert_eq!(task.plan.source, crate::plan::ImportSource::Upload);
    let mut with_ref = upload_claim(json!({}), "Pending");
    with_ref.spec.as_mut().unwrap().data_source_ref =
        Some(from_json(json!({"kind": "VolumeUploadSource", "name": "s"})));
    assert!(Golden::from_pvc(&with_ref).is_none(), "the populate flow's");
}

#[test]
fn an_immediate_upload_target_waits_to_be_bound_before_its_pod() {
    let target = Golden::from_pvc(&upload_claim(json!({}), "Pending")).unwrap();
    assert_eq!(decide_in(target, &World::empty(None)), Step::WaitForBind);
    let target = Golden::from_pvc(&upload_claim(json!({}), "Pending")).unwrap();
    assert_eq!(decide_in(target, &World::empty(Some("WaitForFirstConsumer"))), Step::WaitForHolder);
}

#[test]
fn an_uploaded_claim_is_done_and_its_pod_goes() {
    let target = Golden::from_pvc(&upload_claim(json!({ann::POD_PHASE: "Succeeded"}), "Bound")).unwrap();
    assert_eq!(decide_in(target, &World::holding()), Step::DeleteHolder);
}

#[test]
fn a_settled_golden_upload_starts_again_once_the_claim_shows_the_retry() {
    let world = World { task: TaskView::Settled { task_id: UID.into() }, ..World::holding() };
    let running = Golden::from_pvc(&upload_claim(json!({ann::POD_PHASE: "Running"}), "Bound")).unwrap();
    assert_eq!(decide_in(running, &world), Step::WaitForTask);
    let retry = Golden::from_pvc(&upload_claim(json!({ann::POD_PHASE: "Pending"}), "Bound")).unwrap();
    assert!(matches!(decide_in(retry, &world), Step::StartTask { .. }));
}

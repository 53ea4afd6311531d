use serde_json::json;

use super::*;

fn pvc(phase: &str, annotations: serde_json::Value) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "metadata": {"name": "disk", "namespace": "vms", "annotations": annotations},
        "spec": {"storageClassName": "local"},
        "status": {"phase": phase},
    }))
    .unwrap()
}

fn observe_pvc(phase: &str, annotations: serde_json::Value, wffc: bool) -> Observed {
    observe("disk", &Situation::Claim { claim: Claim::from_pvc(&pvc(phase, annotations), "disk"), wffc })
}

fn condition<'a>(o: &'a Observed, type_: &str) -> &'a Condition {
    o.conditions.iter().find(|c| c.type_ == type_).unwrap()
}

#[test]
fn a_fresh_claim_is_pending_with_progress_unknown() {
    let o = observe_pvc("Pending", json!({}), false);
    assert_eq!(o.phase, DataVolumePhase::Pending);
    assert_eq!(o.progress, "N/A");
    let bound = condition(&o, "Bound");
    assert_eq!(
        (bound.status, bound.reason.as_str(), bound.message.as_str()),
        (ConditionStatus::False, "Pending", "PVC disk Pending")
    );
    assert_eq!(condition(&o, "Ready").status, ConditionStatus::False);
    assert_eq!(condition(&o, "Running").status, ConditionStatus::False);
    assert_eq!(o.event, (DvEvent::Pending, "PVC disk Pending".into()));
}

#[test]
fn wait_for_first_consumer_without_a_node_is_pending_population() {
    let o = observe_pvc("Pending", json!({}), true);
    assert_eq!(o.phase, DataVolumePhase::PendingPopulation);
    assert_eq!(o.event.0, DvEvent::PendingPopulation);
    // The populate controller's own wait annotations change nothing.
    let waiting = json!({"cdi.kubevirt.io/storage.pod.phase": "Pending",
                         "cdi.kubevirt.io/storage.condition.running": "false",
                         "cdi.kubevirt.io/storage.condition.running.reason": "Pending"});
    assert_eq!(observe_pvc("Pending", waiting, true).phase, DataVolumePhase::PendingPopulation);
    // A consumer scheduled, or immediate binding asked for: the import goes ahead.
    let node = json!({"volume.kubernetes.io/selected-node": "node-1"});
    assert_eq!(observe_pvc("Pending", node, true).phase, DataVolumePhase::Pending);
    let immediate = json!({"cdi.kubevirt.io/storage.bind.immediate.requested": ""});
    assert_eq!(observe_pvc("Pending", immediate, true).phase, DataVolumePhase::Pending);
}

#[test]
fn the_populate_flow_maps_to_scheduled_in_progress_and_succeeded() {
    let scheduled = observe_pvc("Pending", json!({"cdi.kubevirt.io/storage.populator.pvcPrime": "prime-x"}), false);
    assert_eq!(scheduled.phase, DataVolumePhase::ImportScheduled);
    assert_eq!(scheduled.event, (DvEvent::ImportScheduled, "Import into disk scheduled".into()));

    let running = json!({"cdi.kubevirt.io/storage.pod.phase": "Running",
                         "cdi.kubevirt.io/storage.populator.progress": "45.68%",
                         "cdi.kubevirt.io/storage.condition.running": "true",
                         "cdi.kubevirt.io/storage.condition.running.reason": "Pod is running",
                         "cdi.kubevirt.io/storage.condition.running.message": ""});
    let o = observe_pvc("Pending", running, true);
    assert_eq!(o.phase, DataVolumePhase::ImportInProgress);
    assert_eq!(o.progress, "45.68%");
    let run = condition(&o, "Running");
    assert_eq!((run.status, run.reason.as_str()), (ConditionStatus::True, "Pod is running"));
    let ready = condition(&o, "Ready");
    assert_eq!((ready.status, ready.reason.as_str()), (ConditionStatus::False, "TransferRunning"));

    // Filled but not yet handed over: still in progress, at 100%.
    let filled = json!({"cdi.kubevirt.io/storage.pod.phase": "Succeeded",
                        "cdi.kubevirt.io/storage.populator.progress": "100.0%"});
    let o = observe_pvc("Pending", filled.clone(), false);
    assert_eq!((o.phase.clone(), o.progress.as_str()), (DataVolumePhase::ImportInProgress, "100.0%"));

    let o = observe_pvc("Bound", filled, false);
    assert_eq!(o.phase, DataVolumePhase::Succeeded);
    assert_eq!(o.progress, "100.0%");
    assert_eq!(condition(&o, "Ready").status, ConditionStatus::True);
    let bound = condition(&o, "Bound");
    assert_eq!((bound.status, bound.message.as_str()), (ConditionStatus::True, "PVC disk Bound"));
    assert_eq!(o.event, (DvEvent::ImportSucceeded, "Successfully imported into PVC disk".into()));
}

#[test]
fn a_retry_is_scheduled_again_and_counts_restarts() {
    let retry = json!({"cdi.kubevirt.io/storage.pod.phase": "Pending",
                       "cdi.kubevirt.io/storage.pod.restarts": "2",
                       "volume.kubernetes.io/selected-node": "node-1",
                       "cdi.kubevirt.io/storage.condition.running": "false",
                       "cdi.kubevirt.io/storage.condition.running.reason": "Error",
                       "cdi.kubevirt.io/storage.condition.running.message": "connection reset"});
    let o = observe_pvc("Pending", retry, true);
    assert_eq!(o.phase, DataVolumePhase::ImportScheduled);
    assert_eq!(o.restart_count, 2);
    let run = condition(&o, "Running");
    assert_eq!(
        (run.status, run.reason.as_str(), run.message.as_str()),
        (ConditionStatus::False, "Error", "connection reset")
    );
}

#[test]
fn a_terminal_failure_is_failed_with_running_false_error() {
    let failed = json!({"cdi.kubevirt.io/storage.pod.phase": "Failed",
                        "cdi.kubevirt.io/storage.condition.running": "false",
                        "cdi.kubevirt.io/storage.condition.running.reason": "Error",
                        "cdi.kubevirt.io/storage.condition.running.message": "HTTP 404 Not Found"});
    let o = observe_pvc("Pending", failed, false);
    assert_eq!(o.phase, DataVolumePhase::Failed);
    let run = condition(&o, "Running");
    assert_eq!((run.status, run.reason.as_str()), (ConditionStatus::False, "Error"));
    assert_eq!(condition(&o, "Ready").reason, "Error");
    assert_eq!(o.event, (DvEvent::ImportFailed, "Import into disk failed: HTTP 404 Not Found".into()));
    assert!(o.event.0.is_warning());

    // CDI's fatal-error annotation alone is enough, and a missing reason reads Error.
    let o = observe_pvc("Pending", json!({"cdi.kubevirt.io/storage.import.fatalError": "true"}), false);
    assert_eq!(o.phase, DataVolumePhase::Failed);
    assert_eq!(condition(&o, "Running").reason, "Error");
}

#[test]
fn adopted_claims_are_succeeded_and_lost_claims_failed() {
    let o = observe_pvc("Bound", json!({"cdi.kubevirt.io/storage.populatedFor": "disk"}), true);
    assert_eq!((o.phase.clone(), o.progress.as_str()), (DataVolumePhase::Succeeded, "100.0%"));
    assert_eq!(o.event.0, DvEvent::ClaimAdopted);
    // Populated for another DataVolume: not adopted by this one.
    assert_eq!(
        observe_pvc("Bound", json!({"cdi.kubevirt.io/storage.populatedFor": "x"}), true).phase,
        DataVolumePhase::Pending
    );

    let o = observe_pvc("Lost", json!({"cdi.kubevirt.io/storage.pod.phase": "Succeeded"}), false);
    assert_eq!(o.phase, DataVolumePhase::Failed);
    assert_eq!(condition(&o, "Bound").reason, "ClaimLost");
    assert_eq!(o.event.0, DvEvent::ClaimLost);
}

#[test]
fn situations_without_a_claim_of_ours_say_why_on_running() {
    let o = observe("disk", &Situation::Unsupported("upload (spec.source.upload)".into()));
    assert_eq!(o.phase, DataVolumePhase::Pending);
    let run = condition(&o, "Running");
    assert_eq!((run.status, run.reason.as_str()), (ConditionStatus::False, "Unsupported"));
    assert!(run.message.contains("upload"), "{}", run.message);
    assert_eq!(condition(&o, "Bound").reason, "NotFound");
    assert_eq!(o.event.0, DvEvent::UnsupportedSource);
    assert!(o.event.0.is_warning());

    let o = observe(
        "disk",
        &Situation::Invalid("Duplicate storage definition, both target storage and target pvc defined".into()),
    );
    assert_eq!(o.phase, DataVolumePhase::Failed);
    // What KubeVirt shows as DataVolumeError.
    assert_eq!(condition(&o, "Running").reason, "Error");
    assert_eq!(o.event.0, DvEvent::ClaimNotValid);

    let o = observe("disk", &Situation::NotOurs { phase: Some(ClaimPhase::Bound) });
    assert_eq!(o.phase, DataVolumePhase::Pending);
    assert!(condition(&o, "Running").message.contains("allowClaimAdoption"));
    assert_eq!(o.event.0, DvEvent::ResourceExists);

    let o = observe("disk", &Situation::NoStorageClass);
    assert_eq!(condition(&o, "Running").reason, "NoStorageClass");
}

fn at(seconds: i64) -> Time {
    Time(jiff::Timestamp::from_second(seconds).unwrap())
}

#[test]
fn status_keeps_timestamps_of_unchanged_conditions() {
    let pending = observe_pvc("Pending", json!({}), false);
    let first = status("disk", None, &pending, &at(100));
    assert_eq!(first.claim_name.as_deref(), Some("disk"));
    assert_eq!(first.restart_count, None, "0 is left out, as CDI does");
    assert!(first.conditions.iter().all(|c| c.last_transition_time == Some(at(100))));
    assert_eq!(first.conditions.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(), ["Bound", "Ready", "Running"]);

    // Nothing changed: the very same status, so nothing is written.
    assert_eq!(status("disk", Some(&first), &pending, &at(200)), first);

    let running = observe_pvc(
        "Pending",
        json!({"cdi.kubevirt.io/storage.pod.phase": "Running",
        "cdi.kubevirt.io/storage.condition.running": "true",
        "cdi.kubevirt.io/storage.condition.running.reason": "Pod is running"}),
        false,
    );
    let second = status("disk", Some(&first), &running, &at(300));
    let find = |s: &DataVolumeStatus, t: &str| s.conditions.iter().find(|c| c.type_ == t).cloned().unwrap();
    assert_eq!(find(&second, "Bound").last_transition_time, Some(at(100)));
    assert_eq!(find(&second, "Running").last_transition_time, Some(at(300)));
    // Ready stays False, with a new reason: the heartbeat moves, the transition does not.
    assert_eq!(find(&second, "Ready").last_transition_time, Some(at(100)));
    assert_eq!(find(&second, "Ready").last_heartbeat_time, Some(at(300)));
    assert_eq!(second.phase, Some(DataVolumePhase::ImportInProgress));
}

#[test]
fn events_tell_each_step_once() {
    let pending = observe_pvc("Pending", json!({}), false);
    assert_eq!(events(None, &pending), [(DvEvent::Pending, "PVC disk Pending".to_string())]);
    let s1 = status("disk", None, &pending, &at(1));
    assert!(events(Some(&s1), &pending).is_empty());

    let running = observe_pvc("Pending", json!({"cdi.kubevirt.io/storage.pod.phase": "Running"}), false);
    assert_eq!(events(Some(&s1), &running)[0].0, DvEvent::ImportInProgress);
    let s2 = status("disk", Some(&s1), &running, &at(2));

    // Filled, the volume not yet handed over: still in progress, nothing new to tell.
    let filled = observe_pvc(
        "Pending",
        json!({"cdi.kubevirt.io/storage.pod.phase": "Succeeded",
        "cdi.kubevirt.io/storage.condition.running": "false",
        "cdi.kubevirt.io/storage.condition.running.reason": "Completed"}),
        false,
    );
    assert_eq!(filled.phase, DataVolumePhase::ImportInProgress);
    assert!(events(Some(&s2), &filled).is_empty());

    let done = observe_pvc("Bound", json!({"cdi.kubevirt.io/storage.pod.phase": "Succeeded"}), false);
    let reasons: Vec<DvEvent> = events(Some(&s2), &done).into_iter().map(|(r, _)| r).collect();
    assert_eq!(reasons, [DvEvent::Bound, DvEvent::ImportSucceeded]);
    let s3 = status("disk", Some(&s2), &done, &at(3));
    assert!(events(Some(&s3), &done).is_empty());

    // A retry after a failure is told even though the phase was already ImportScheduled.
    let scheduled = observe_pvc("Pending", json!({"cdi.kubevirt.io/storage.pod.phase": "Pending"}), false);
    let s = status("disk", None, &scheduled, &at(1));
    let retry = observe_pvc(
        "Pending",
        json!({"cdi.kubevirt.io/storage.pod.phase": "Pending",
        "cdi.kubevirt.io/storage.condition.running": "false",
        "cdi.kubevirt.io/storage.condition.running.reason": "Error"}),
        false,
    );
    assert_eq!(events(Some(&s), &retry)[0].0, DvEvent::ImportScheduled);
}

// ---- uploads ----

fn upload_pvc(phase: &str, annotations: serde_json::Value) -> PersistentVolumeClaim {
    let mut pvc = pvc(phase, annotations);
    pvc.spec.as_mut().unwrap().data_source_ref = Some(
        serde_json::from_value(
            json!({"apiGroup": "cdi.kubevirt.io", "kind": "VolumeUploadSource", "name": "volume-upload-source-x"}),
        )
        .unwrap(),
    );
    pvc
}

fn observe_upload(phase: &str, annotations: serde_json::Value, wffc: bool) -> Observed {
    observe("disk", &Situation::Claim { claim: Claim::from_pvc(&upload_pvc(phase, annotations), "disk"), wffc })
}

#[test]
fn an_upload_is_scheduled_until_the_claim_is_ready_then_ready_then_succeeded() {
    assert_eq!(observe_upload("Pending", json!({}), false).phase, DataVolumePhase::Pending);
    let prime = json!({"cdi.kubevirt.io/storage.populator.pvcPrime": "prime-x"});
    let o = observe_upload("Pending", prime, false);
    assert_eq!(o.phase, DataVolumePhase::UploadScheduled);
    assert_eq!(o.event, (DvEvent::UploadScheduled, "Upload into disk scheduled".into()));

    // The task started, the mover does not hold it yet.
    let started = json!({"cdi.kubevirt.io/storage.populator.pvcPrime": "prime-x",
                         "cdi.kubevirt.io/storage.pod.phase": "Running",
                         "cdi.kubevirt.io/storage.pod.ready": "false"});
    assert_eq!(observe_upload("Pending", started, false).phase, DataVolumePhase::UploadScheduled);

    let ready = json!({"cdi.kubevirt.io/storage.populator.pvcPrime": "prime-x",
                       "cdi.kubevirt.io/storage.pod.phase": "Running",
                       "cdi.kubevirt.io/storage.pod.ready": "true",
                       "cdi.kubevirt.io/storage.condition.running": "true",
                       "cdi.kubevirt.io/storage.condition.running.reason": "Pod is running"});
    let o = observe_upload("Pending", ready, false);
    assert_eq!(o.phase, DataVolumePhase::UploadReady);
    assert_eq!(o.event.0, DvEvent::UploadReady);
    let run = condition(&o, "Running");
    assert_eq!((run.status, run.reason.as_str()), (ConditionStatus::True, "Pod is running"));
    let ready = condition(&o, "Ready");
    assert_eq!((ready.status, ready.reason.as_str()), (ConditionStatus::False, "TransferRunning"));

    let done = json!({"cdi.kubevirt.io/storage.pod.phase": "Succeeded",
                      "cdi.kubevirt.io/storage.pod.ready": "false",
                      "cdi.kubevirt.io/storage.populator.progress": "100.0%"});
    let o = observe_upload("Pending", done.clone(), false);
    assert_eq!((o.phase.clone(), o.progress.as_str()), (DataVolumePhase::UploadReady, "100.0%"));
    let o = observe_upload("Bound", done, false);
    assert_eq!(o.phase, DataVolumePhase::Succeeded);
    assert_eq!(o.event.0, DvEvent::UploadSucceeded);
    assert_eq!(condition(&o, "Ready").status, ConditionStatus::True);
}

#[test]
fn an_upload_under_wait_for_first_consumer_is_pending_population_unless_bound_immediately() {
    assert_eq!(observe_upload("Pending", json!({}), true).phase, DataVolumePhase::PendingPopulation);
    let immediate = json!({"cdi.kubevirt.io/storage.bind.immediate.requested": ""});
    assert_eq!(observe_upload("Pending", immediate, true).phase, DataVolumePhase::Pending);
    let node = json!({"volume.kubernetes.io/selected-node": "node-1",
                      "cdi.kubevirt.io/storage.populator.pvcPrime": "prime-x"});
    assert_eq!(observe_upload("Pending", node, true).phase, DataVolumePhase::UploadScheduled);
}

#[test]
fn a_failed_upload_is_failed_with_its_reason() {
    let failed = json!({"cdi.kubevirt.io/storage.pod.phase": "Failed",
                        "cdi.kubevirt.io/storage.condition.running": "false",
                        "cdi.kubevirt.io/storage.condition.running.reason": "Error",
                        "cdi.kubevirt.io/storage.condition.running.message": "target failed"});
    let o = observe_upload("Pending", failed, false);
    assert_eq!(o.phase, DataVolumePhase::Failed);
    assert_eq!(o.event, (DvEvent::UploadFailed, "Upload into disk failed: target failed".into()));
}

#[test]
fn a_golden_upload_target_is_an_upload_and_an_import_claim_is_not() {
    let golden = pvc("Bound", json!({"cdi.kubevirt.io/storage.upload.target": ""}));
    assert!(Claim::from_pvc(&golden, "disk").upload);
    assert!(!Claim::from_pvc(&pvc("Bound", json!({})), "disk").upload);
}

#[test]
fn a_clone_in_progress_is_named_after_its_strategy_as_cdi_names_it() {
    let running = |clone_type: &str, restore: bool| {
        let mut claim = pvc(
            "Pending",
            json!({"cdi.kubevirt.io/storage.pod.phase": "Running", "cdi.kubevirt.io/cloneType": clone_type,
                   "cdi.kubevirt.io/storage.condition.running": "true"}),
        );
        claim.spec.as_mut().unwrap().data_source_ref = Some(k8s_openapi::api::core::v1::TypedObjectReference {
            api_group: Some("cdi.kubevirt.io".into()),
            kind: "VolumeCloneSource".into(),
            name: "src".into(),
            namespace: None,
        });
        let claim = Claim { restore, ..Claim::from_pvc(&claim, "disk") };
        let o = observe("disk", &Situation::Claim { claim, wffc: false });
        assert_eq!(condition(&o, "Ready").reason, "TransferRunning", "{clone_type}");
        o.phase
    };
    assert_eq!(running("copy", false), DataVolumePhase::CloneInProgress);
    assert_eq!(running("csi-clone", false), DataVolumePhase::CsiCloneInProgress);
    assert_eq!(running("snapshot", false), DataVolumePhase::SnapshotForSmartCloneInProgress);
    assert_eq!(running("snapshot", true), DataVolumePhase::CloneFromSnapshotSourceInProgress);
    // A snapshot source copied host-assisted is a plain clone in progress.
    assert_eq!(running("copy", true), DataVolumePhase::CloneInProgress);
}

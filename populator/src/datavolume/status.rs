//! A DataVolume's status, read off its PVC: the phase, progress, restart count and the
//! `Bound`, `Ready` and `Running` conditions CDI reports, and the event that tells each step.
//! The populate controller writes CDI's annotations on the PVC (`storage.pod.phase`,
//! `storage.condition.running*`, `storage.populator.progress`, ...); this maps them as CDI's
//! DataVolume controller does.
//!
//! Nothing here talks to the API; the tests drive it with in-memory objects.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::vocab::{DvEvent, reason};
use crate::api::names::profile::clone_strategy;
use crate::api::names::{annotations as ann, condition_reasons as cdi, conditions, values};
use crate::api::{DataVolumeCondition, DataVolumePhase, DataVolumeStatus};
use crate::controller::decide::{ClaimPhase, PodPhase};

/// What the DataVolume's PVC says, read from it once.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Claim {
    pub name: String,
    pub phase: Option<ClaimPhase>,
    /// `storage.pod.phase`: where population stands.
    pub pod_phase: Option<PodPhase>,
    /// `storage.import.fatalError` is `"true"`.
    pub fatal_error: bool,
    /// `storage.pod.restarts`.
    pub restarts: i32,
    /// `storage.populator.progress`.
    pub progress: Option<String>,
    /// `storage.condition.running*`, when written.
    pub running: Option<Condition>,
    /// `storage.populator.pvcPrime` is set: the populate flow has started.
    pub prime_created: bool,
    /// `volume.kubernetes.io/selected-node` is set.
    pub node_selected: bool,
    /// `storage.bind.immediate.requested` is present.
    pub bind_immediate: bool,
    /// `storage.populatedFor` names the DataVolume: adopted as already populated.
    pub adopted: bool,
    /// Filled by an upload: its `dataSourceRef` names a `VolumeUploadSource` (or it is an
    /// upload target itself).
    pub upload: bool,
    /// `storage.pod.ready` is `"true"`: an upload can be sent.
    pub pod_ready: bool,
    /// Filled by a clone: its `dataSourceRef` names a `VolumeCloneSource`.
    pub clone: bool,
    /// A clone's strategy (`cloneType`), once chosen.
    pub clone_type: Option<String>,
    /// The clone restores a `snapshot` source (known from the DataVolume, not the claim).
    pub restore: bool,
}

impl Claim {
    /// The claim's facts; `dv_name` tells an adopted claim.
    pub fn from_pvc(pvc: &PersistentVolumeClaim, dv_name: &str) -> Claim {
        let annotation = |key: &str| pvc.annotations().get(key).map(String::as_str);
        let running = annotation(ann::RUNNING_CONDITION).map(|status| Condition {
            type_: conditions::RUNNING,
            status: ConditionStatus::parse(status),
            reason: annotation(ann::RUNNING_CONDITION_REASON).unwrap_or_default().to_string(),
            message: annotation(ann::RUNNING_CONDITION_MESSAGE).unwrap_or_default().to_string(),
        });
        Claim {
            name: pvc.name_any(),
            phase: pvc.status.as_ref().and_then(|s| s.phase.as_deref()).and_then(ClaimPhase::parse),
            pod_phase: annotation(ann::POD_PHASE).and_then(PodPhase::parse),
            fatal_error: annotation(ann::IMPORT_FATAL_ERROR) == Some("true"),
            restarts: annotation(ann::POD_RESTARTS).and_then(|r| r.parse().ok()).unwrap_or(0),
            progress: annotation(ann::POPULATOR_PROGRESS).filter(|p| !p.is_empty()).map(str::to_string),
            running,
            prime_created: annotation(ann::POPULATOR_PVC_PRIME).is_some(),
            node_selected: annotation(ann::SELECTED_NODE).is_some_and(|n| !n.is_empty()),
            bind_immediate: annotation(ann::BIND_IMMEDIATE_REQUESTED).is_some(),
            adopted: annotation(ann::POPULATED_FOR_DATA_VOLUME) == Some(dv_name),
            upload: pvc
                .spec
                .as_ref()
                .and_then(|s| s.data_source_ref.as_ref())
                .map_or(annotation(ann::reserved::UPLOAD_TARGET).is_some(), |r| {
                    r.kind == crate::api::names::kinds::VOLUME_UPLOAD_SOURCE
                }),
            pod_ready: annotation(ann::POD_READY).is_some_and(|r| r.eq_ignore_ascii_case("true")),
            clone: pvc
                .spec
                .as_ref()
                .and_then(|s| s.data_source_ref.as_ref())
                .is_some_and(|r| r.kind == crate::api::names::kinds::VOLUME_CLONE_SOURCE),
            clone_type: annotation(ann::reserved::CLONE_TYPE).map(str::to_string),
            restore: false,
        }
    }
}

/// Where a DataVolume stands, as the reconcile found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Situation {
    /// The spec cannot be acted on.
    Invalid(String),
    /// The source is CDI's but not handled yet.
    Unsupported(String),
    /// No storage class named and no default class.
    NoStorageClass,
    /// Nothing to act on yet (a clone's source claim to take the size from): why.
    Waiting(String),
    /// A PVC of that name exists and is not ours (nor adoptable).
    NotOurs { phase: Option<ClaimPhase> },
    /// Our PVC; `wffc`: its class binds on first consumer.
    Claim { claim: Claim, wffc: bool },
}

/// A condition status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }

    /// CDI writes `"true"`/`"false"` in annotations and `True`/`False` in conditions.
    fn parse(text: &str) -> ConditionStatus {
        if text.eq_ignore_ascii_case("true") {
            ConditionStatus::True
        } else if text.eq_ignore_ascii_case("false") {
            ConditionStatus::False
        } else {
            ConditionStatus::Unknown
        }
    }
}

/// One condition, without its timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub type_: &'static str,
    pub status: ConditionStatus,
    pub reason: String,
    pub message: String,
}

impl Condition {
    fn new(type_: &'static str, status: ConditionStatus, reason: &str, message: impl Into<String>) -> Condition {
        Condition { type_, status, reason: reason.to_string(), message: message.into() }
    }
}

/// The status to show, and the event that announces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub phase: DataVolumePhase,
    pub progress: String,
    pub restart_count: i32,
    /// Bound, Ready, Running.
    pub conditions: [Condition; 3],
    pub event: (DvEvent, String),
}

/// The status of DataVolume `name` in `situation`.
pub fn observe(name: &str, situation: &Situation) -> Observed {
    use ConditionStatus::False;
    let no_claim = Condition::new(conditions::BOUND, False, cdi::NOT_FOUND, "No PVC found");
    let (phase, bound, running, event) = match situation {
        Situation::Invalid(message) => (
            DataVolumePhase::Failed,
            no_claim,
            Condition::new(conditions::RUNNING, False, cdi::ERROR, message.as_str()),
            (DvEvent::ClaimNotValid, format!("DataVolume {name} cannot be acted on: {message}")),
        ),
        Situation::Unsupported(what) => {
            let message = format!("{what} is not supported by cdi-rs yet");
            (
                DataVolumePhase::Pending,
                no_claim,
                Condition::new(conditions::RUNNING, False, reason::UNSUPPORTED, message.as_str()),
                (DvEvent::UnsupportedSource, message),
            )
        }
        Situation::NoStorageClass => {
            let message = "no storage class named and no default storage class: set spec.storage.storageClassName \
                           or mark a class default";
            (
                DataVolumePhase::Pending,
                no_claim,
                Condition::new(conditions::RUNNING, False, reason::NO_STORAGE_CLASS, message),
                (DvEvent::Pending, message.to_string()),
            )
        }
        Situation::Waiting(why) => (
            DataVolumePhase::Pending,
            no_claim,
            Condition::new(conditions::RUNNING, False, cdi::PENDING, why.as_str()),
            (DvEvent::Pending, why.clone()),
        ),
        Situation::NotOurs { phase } => {
            let message = format!(
                "PVC {name} already exists and is not owned by DataVolume {name}; annotate the DataVolume \
                 {}=\"true\" to adopt it",
                ann::ALLOW_CLAIM_ADOPTION
            );
            (
                DataVolumePhase::Pending,
                bound_condition(name, *phase),
                Condition::new(conditions::RUNNING, False, reason::RESOURCE_EXISTS, message.as_str()),
                (DvEvent::ResourceExists, message),
            )
        }
        Situation::Claim { claim, wffc } => return observe_claim(name, claim, *wffc),
    };
    finish(phase, values::PROGRESS_UNKNOWN.to_string(), 0, bound, running, event)
}

/// How a DataVolume names the filling of its claim: an import's phases and events, or an
/// upload's (CDI's upload DataVolumes are `UploadScheduled` until the mover holds the task,
/// `UploadReady` while it can take or takes the bytes, then `Succeeded`).
struct Words {
    /// "Import", "Upload".
    noun: &'static str,
    /// "imported", "uploaded".
    done: &'static str,
    scheduled: (DataVolumePhase, DvEvent),
    /// The phase, event and wording while the claim is being filled.
    filling: (DataVolumePhase, DvEvent, &'static str),
    succeeded: DvEvent,
    failed: DvEvent,
}

const IMPORT: Words = Words {
    noun: "Import",
    done: "imported",
    scheduled: (DataVolumePhase::ImportScheduled, DvEvent::ImportScheduled),
    filling: (DataVolumePhase::ImportInProgress, DvEvent::ImportInProgress, "in progress"),
    succeeded: DvEvent::ImportSucceeded,
    failed: DvEvent::ImportFailed,
};

const UPLOAD: Words = Words {
    noun: "Upload",
    done: "uploaded",
    scheduled: (DataVolumePhase::UploadScheduled, DvEvent::UploadScheduled),
    filling: (DataVolumePhase::UploadReady, DvEvent::UploadReady, "ready"),
    succeeded: DvEvent::UploadSucceeded,
    failed: DvEvent::UploadFailed,
};

const CLONE: Words = Words {
    noun: "Clone",
    done: "cloned",
    scheduled: (DataVolumePhase::CloneScheduled, DvEvent::CloneScheduled),
    filling: (DataVolumePhase::CloneInProgress, DvEvent::CloneInProgress, "in progress"),
    succeeded: DvEvent::CloneSucceeded,
    failed: DvEvent::CloneFailed,
};

const CSI_CLONE: Words =
    Words { filling: (DataVolumePhase::CsiCloneInProgress, DvEvent::CloneInProgress, "in progress"), ..CLONE };

const SNAPSHOT_CLONE: Words = Words {
    filling: (DataVolumePhase::SnapshotForSmartCloneInProgress, DvEvent::CloneInProgress, "in progress"),
    ..CLONE
};

const RESTORE: Words = Words {
    filling: (DataVolumePhase::CloneFromSnapshotSourceInProgress, DvEvent::CloneInProgress, "in progress"),
    ..CLONE
};

fn observe_claim(name: &str, claim: &Claim, wffc: bool) -> Observed {
    use ConditionStatus::False;
    let words = if claim.upload {
        &UPLOAD
    } else if claim.clone {
        // CDI names the smart strategies' progress phases after them.
        match claim.clone_type.as_deref() {
            Some(clone_strategy::CSI_CLONE) => &CSI_CLONE,
            Some(clone_strategy::SNAPSHOT) if claim.restore => &RESTORE,
            Some(clone_strategy::SNAPSHOT) => &SNAPSHOT_CLONE,
            _ => &CLONE,
        }
    } else {
        &IMPORT
    };
    let bound = bound_condition(name, claim.phase);
    let running = claim.running.clone().unwrap_or_else(|| Condition::new(conditions::RUNNING, False, "", ""));
    let progress = claim.progress.clone().unwrap_or_else(|| values::PROGRESS_UNKNOWN.to_string());
    let is_bound = claim.phase == Some(ClaimPhase::Bound);
    let done = values::PROGRESS_DONE.to_string();
    let noun = words.noun;
    let filling = |progress| {
        let (phase, event, state) = words.filling.clone();
        (phase, progress, running.clone(), (event, format!("{noun} into {name} {state}")))
    };
    // An upload's holder runs before the mover is ready for bytes: still scheduled then.
    let pod_running = claim.pod_phase == Some(PodPhase::Running) && (!claim.upload || claim.pod_ready);
    let scheduled = claim.pod_phase == Some(PodPhase::Pending)
        || claim.prime_created
        || (claim.upload && claim.pod_phase.is_some());
    let (phase, progress, running, event) = if claim.phase == Some(ClaimPhase::Lost) {
        let running = Condition::new(conditions::RUNNING, False, cdi::CLAIM_LOST, "Claim Lost");
        (DataVolumePhase::Failed, progress, running, (DvEvent::ClaimLost, format!("PVC {name} lost its volume")))
    } else if claim.adopted {
        (DataVolumePhase::Succeeded, done, running, (DvEvent::ClaimAdopted, format!("PVC {name} adopted as populated")))
    } else if claim.pod_phase == Some(PodPhase::Succeeded) && is_bound {
        let event = (words.succeeded, format!("Successfully {} into PVC {name}", words.done));
        (DataVolumePhase::Succeeded, done, running, event)
    } else if claim.fatal_error || claim.pod_phase == Some(PodPhase::Failed) {
        let running = match claim.running.clone() {
            Some(c) if c.status == False && !c.reason.is_empty() => c,
            other => Condition {
                status: False,
                reason: cdi::ERROR.to_string(),
                ..other.unwrap_or_else(|| Condition::new(conditions::RUNNING, False, "", ""))
            },
        };
        let detail = if running.message.is_empty() { String::new() } else { format!(": {}", running.message) };
        (DataVolumePhase::Failed, progress, running, (words.failed, format!("{noun} into {name} failed{detail}")))
    } else if claim.pod_phase == Some(PodPhase::Succeeded) {
        // Filled; the volume is being handed over to the claim.
        filling(done)
    } else if pod_running {
        filling(progress)
    } else if wffc && claim.phase == Some(ClaimPhase::Pending) && !claim.node_selected && !claim.bind_immediate {
        (
            DataVolumePhase::PendingPopulation,
            progress,
            running,
            (DvEvent::PendingPopulation, format!("PVC {name} Pending: waiting for its first consumer")),
        )
    } else if scheduled {
        let (phase, event) = words.scheduled.clone();
        (phase, progress, running, (event, format!("{noun} into {name} scheduled")))
    } else {
        (DataVolumePhase::Pending, progress, running, (DvEvent::Pending, format!("PVC {name} Pending")))
    };
    finish(phase, progress, claim.restarts, bound, running, event)
}

fn bound_condition(name: &str, phase: Option<ClaimPhase>) -> Condition {
    use ConditionStatus::False;
    match phase {
        Some(ClaimPhase::Bound) => {
            Condition::new(conditions::BOUND, ConditionStatus::True, cdi::BOUND, format!("PVC {name} Bound"))
        }
        Some(ClaimPhase::Lost) => Condition::new(conditions::BOUND, False, cdi::CLAIM_LOST, "Claim Lost"),
        Some(ClaimPhase::Pending) | None => {
            Condition::new(conditions::BOUND, False, cdi::PENDING, format!("PVC {name} Pending"))
        }
    }
}

/// Ready follows the phase: True once Succeeded; while the transfer runs its reason says
/// so, otherwise it repeats why Running is false.
fn finish(
    phase: DataVolumePhase,
    progress: String,
    restart_count: i32,
    bound: Condition,
    running: Condition,
    event: (DvEvent, String),
) -> Observed {
    let ready = match phase {
        DataVolumePhase::Succeeded => Condition::new(conditions::READY, ConditionStatus::True, "", ""),
        DataVolumePhase::ImportInProgress
        | DataVolumePhase::UploadReady
        | DataVolumePhase::CloneInProgress
        | DataVolumePhase::CsiCloneInProgress
        | DataVolumePhase::SnapshotForSmartCloneInProgress
        | DataVolumePhase::CloneFromSnapshotSourceInProgress => {
            Condition::new(conditions::READY, ConditionStatus::False, cdi::TRANSFER_RUNNING, "")
        }
        _ => Condition::new(conditions::READY, ConditionStatus::False, &running.reason, running.message.clone()),
    };
    Observed { phase, progress, restart_count, conditions: [bound, ready, running], event }
}

/// The status to write: `observed`, keeping the timestamps of conditions that did not
/// change and stamping `now` on those that did.
pub fn status(name: &str, old: Option<&DataVolumeStatus>, observed: &Observed, now: &Time) -> DataVolumeStatus {
    let old_conditions = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let conditions = observed
        .conditions
        .iter()
        .map(|c| {
            let previous = old_conditions.iter().find(|o| o.type_ == c.type_);
            let unchanged = previous.is_some_and(|o| {
                o.status == c.status.as_str()
                    && o.reason.as_deref().unwrap_or_default() == c.reason
                    && o.message.as_deref().unwrap_or_default() == c.message
            });
            let (transition, heartbeat) = match previous {
                Some(o) if unchanged => (o.last_transition_time.clone(), o.last_heartbeat_time.clone()),
                Some(o) if o.status == c.status.as_str() => (o.last_transition_time.clone(), Some(now.clone())),
                _ => (Some(now.clone()), Some(now.clone())),
            };
            DataVolumeCondition {
                type_: c.type_.to_string(),
                status: c.status.as_str().to_string(),
                last_transition_time: transition,
                last_heartbeat_time: heartbeat,
                reason: (!c.reason.is_empty()).then(|| c.reason.clone()),
                message: (!c.message.is_empty()).then(|| c.message.clone()),
            }
        })
        .collect();
    DataVolumeStatus {
        claim_name: Some(name.to_string()),
        phase: Some(observed.phase.clone()),
        progress: Some(observed.progress.clone()),
        restart_count: (observed.restart_count > 0).then_some(observed.restart_count),
        conditions,
    }
}

/// The events that tell what changed from `old` to `observed`: the new step's, when the
/// phase or the reason it is in changed, and `Bound` when the claim just got its volume.
pub fn events(old: Option<&DataVolumeStatus>, observed: &Observed) -> Vec<(DvEvent, String)> {
    let condition = |type_: &str| old.and_then(|s| s.conditions.iter().find(|c| c.type_ == type_));
    let [bound, _, running] = &observed.conditions;
    let old_phase = old.and_then(|s| s.phase.clone());
    let old_running_reason = condition(conditions::RUNNING).and_then(|c| c.reason.clone()).unwrap_or_default();
    let mut out = Vec::new();
    let was_bound = condition(conditions::BOUND).is_some_and(|c| c.status == ConditionStatus::True.as_str());
    if bound.status == ConditionStatus::True && !was_bound {
        out.push((DvEvent::Bound, bound.message.clone()));
    }
    // Within one phase a new Running reason is news (a retry, a source refused), except
    // the normal course of a transfer: running, then completed while the volume is handed
    // over.
    let normal_course = [cdi::POD_RUNNING, cdi::COMPLETED].contains(&running.reason.as_str());
    let step_changed = old_phase.as_ref() != Some(&observed.phase)
        || (observed.phase != DataVolumePhase::Succeeded
            && old_running_reason != running.reason
            && !running.reason.is_empty()
            && !normal_course);
    if step_changed {
        out.push(observed.event.clone());
    }
    out
}

#[cfg(test)]
mod tests;

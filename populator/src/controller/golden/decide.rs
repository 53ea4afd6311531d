//! The golden PVC's decisions, on in-memory state only (as the populate flow's decide.rs):
//! reads are asked for as [`Fact`]s, the rest is a [`Step`] reconcile.rs carries out.
//!
//! ```text
//!  annotations ─▶ plan ─▶ (WFFC: importer pod is the first consumer | Immediate: wait for Bound)
//!    ─▶ importer pod running on the claim's node ─▶ mover task into the claim's own volume
//!    ─▶ Success (pod deleted unless retained) | retry | Failed (until the inputs change)
//! ```

use std::collections::BTreeMap;

use cdi_proto::v1 as pb;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::ResourceExt;

use super::plan::{self, GoldenError};
use crate::api::names::values::import_status;
use crate::controller::build;
use crate::controller::decide::{Holder, Lazy, PodPhase, VolumeBinding};
use crate::controller::failure::FailureReason;
use crate::controller::follow::{Outcome, TaskView};
use crate::controller::vocab::{UNSUPPORTED_CONDITION, ann, cdi_ann};
use crate::plan::{ImportPlan, ImportSource};

/// cdi-rs bookkeeping on a golden PVC: the [`plan::inputs_key`] of the annotations a
/// terminal failure was for. Nothing is tried again while they are the same.
pub const FAILED_FOR: &str = "cdi.kubevirt.io/storage.import.failedForInputs";

/// `cdi.kubevirt.io/storage.import.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportStatus {
    InProcess,
    Success,
    Failed,
}

impl ImportStatus {
    pub fn parse(s: &str) -> Option<ImportStatus> {
        [ImportStatus::InProcess, ImportStatus::Success, ImportStatus::Failed].into_iter().find(|v| v.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ImportStatus::InProcess => import_status::IN_PROCESS,
            ImportStatus::Success => import_status::SUCCESS,
            ImportStatus::Failed => import_status::FAILED,
        }
    }
}

/// What the flow needs of a golden PVC, read from it once.
#[derive(Debug, PartialEq)]
pub struct Golden {
    pub name: String,
    pub uid: String,
    /// `spec.storageClassName`; empty when unset.
    pub class: String,
    pub bound: bool,
    /// The PV it is bound to (how the mover finds the volume under the importer pod).
    pub volume_name: Option<String>,
    pub plan: Result<ImportPlan, GoldenError>,
    /// An upload target: the task id is the claim's UID, which the upload proxy uses.
    pub upload: bool,
    /// [`plan::inputs_key`] of its annotations now.
    pub inputs: String,
    pub status: Option<ImportStatus>,
    pub phase: Option<PodPhase>,
    pub failed_for: Option<String>,
    pub attempt: u32,
    pub restarts: u32,
    pub retain: bool,
    pub unsupported_reported: bool,
}

/// A PVC imported (or uploaded) in place: no `dataSourceRef` (nor `dataSource`), and the
/// endpoint annotation or the upload target one.
pub fn is_golden(pvc: &PersistentVolumeClaim) -> bool {
    let spec = pvc.spec.as_ref();
    spec.is_none_or(|s| s.data_source_ref.is_none() && s.data_source.is_none())
        && (pvc.annotations().contains_key(cdi_ann::IMPORT_ENDPOINT) || plan::is_upload(pvc.annotations()))
}

impl Golden {
    pub fn from_pvc(pvc: &PersistentVolumeClaim) -> Option<Golden> {
        if !is_golden(pvc) {
            return None;
        }
        let anns: &BTreeMap<String, String> = pvc.annotations();
        let annotation = |key: &str| anns.get(key).map(String::as_str);
        let number = |key: &str| annotation(key).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
        let phase = pvc.status.as_ref().and_then(|s| s.phase.as_deref());
        Some(Golden {
            name: pvc.name_any(),
            uid: pvc.uid().unwrap_or_default(),
            class: pvc.spec.as_ref().and_then(|s| s.storage_class_name.clone()).unwrap_or_default(),
            bound: phase == Some("Bound"),
            volume_name: pvc.spec.as_ref().and_then(|s| s.volume_name.clone()).filter(|v| !v.is_empty()),
            plan: plan::plan(anns),
            upload: plan::is_upload(anns),
            inputs: plan::inputs_key(anns),
            status: annotation(cdi_ann::IMPORT_STATUS).and_then(ImportStatus::parse),
            phase: annotation(ann::POD_PHASE).and_then(PodPhase::parse),
            failed_for: annotation(FAILED_FOR).map(str::to_string),
            attempt: number(ann::ATTEMPT),
            restarts: number(ann::POD_RESTARTS),
            retain: build::retain_after_completion(pvc),
            unsupported_reported: annotation(ann::RUNNING_REASON) == Some(UNSUPPORTED_CONDITION),
        })
    }

    /// The importer pod's name: `importer-<pvc name>`, as CDI's.
    pub fn holder_name(&self) -> String {
        build::holder_name(&self.name)
    }

    fn succeeded(&self) -> bool {
        self.status == Some(ImportStatus::Success) || self.phase == Some(PodPhase::Succeeded)
    }
}

/// What a decision may ask to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fact {
    StorageClass,
    Holder,
    Task,
}

/// What one reconcile has seen so far.
#[derive(Debug)]
pub struct Snapshot {
    pub target: Golden,
    /// `None`: the class does not exist.
    pub storage_class: Lazy<Option<VolumeBinding>>,
    pub holder: Lazy<Option<Holder>>,
    pub task: Lazy<TaskView>,
}

impl Snapshot {
    pub fn new(target: Golden) -> Snapshot {
        Snapshot { target, storage_class: Lazy::Unread, holder: Lazy::Unread, task: Lazy::Unread }
    }
}

/// A failure not retried until the import annotations change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminal {
    pub reason: FailureReason,
    pub message: String,
    /// The attempt to record: the failed one is used up.
    pub attempt: u32,
}

/// The mover task of the current attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// `<pvc uid>-<attempt>`; an upload's: `<pvc uid>`.
    pub id: String,
    pub node: String,
    pub holder_uid: String,
    pub pv_name: String,
    pub plan: ImportPlan,
}

/// How the followed task of the current attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    Succeeded(pb::Completed),
    Retry { reason: FailureReason, message: String, restarts: u32, attempt: u32 },
    Failed(Terminal),
    Lost(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Read(Fact),
    /// Imported; the importer pod is gone or kept as asked.
    Done,
    /// Imported, or failed for good: the importer pod goes.
    DeleteHolder,
    Unsupported {
        message: String,
        announce: bool,
    },
    FailTerminally(Terminal),
    /// The last terminal failure was for these very annotations.
    WaitForChange,
    WaitForStorageClass,
    /// An Immediate class provisions and binds without a consumer.
    WaitForBind,
    /// On the claim's node once it is bound; under WaitForFirstConsumer the pod is the
    /// consumer that gets it bound. `announce` the import unless already in process.
    CreateHolder {
        announce: bool,
    },
    WaitForHolder,
    StartTask {
        task: Box<Task>,
        announce: bool,
    },
    WaitForTask,
    TaskEnded(Ended),
}

pub fn decide(s: &Snapshot) -> Step {
    next(s).unwrap_or_else(Step::Read)
}

fn next(s: &Snapshot) -> Result<Step, Fact> {
    let t = &s.target;
    if t.succeeded() {
        if t.retain {
            return Ok(Step::Done);
        }
        return Ok(if s.holder.get().ok_or(Fact::Holder)?.is_some() { Step::DeleteHolder } else { Step::Done });
    }
    let failed_already = t.failed_for.as_deref() == Some(t.inputs.as_str());
    let plan = match &t.plan {
        Err(_) if failed_already => return wait_for_change(s),
        Err(e) => {
            return Ok(Step::FailTerminally(terminal(t, FailureReason::InvalidRequest, &e.to_string())));
        }
        Ok(plan) => plan,
    };
    if let ImportSource::Unsupported(name) = &plan.source {
        return Ok(Step::Unsupported {
            message: format!("import source type {name} is not supported by this populator yet"),
            announce: !t.unsupported_reported,
        });
    }
    if failed_already {
        return wait_for_change(s);
    }
    if !t.bound {
        match s.storage_class.get().ok_or(Fact::StorageClass)? {
            None => return Ok(Step::WaitForStorageClass),
            Some(VolumeBinding::Immediate) => return Ok(Step::WaitForBind),
            Some(VolumeBinding::WaitForFirstConsumer) => {}
        }
    }
    let Some(holder) = s.holder.get().ok_or(Fact::Holder)? else {
        return Ok(Step::CreateHolder { announce: t.status != Some(ImportStatus::InProcess) });
    };
    let (Some(node), Some(PodPhase::Running), false) = (&holder.node, holder.phase, holder.deleting) else {
        return Ok(Step::WaitForHolder);
    };
    // A running pod has its claim bound; this copy of the claim may predate that.
    let Some(pv_name) = t.volume_name.clone().filter(|_| t.bound) else { return Ok(Step::WaitForBind) };
    // The upload proxy knows no attempts: an upload's task is the claim's UID.
    let task_id = if t.upload { t.uid.clone() } else { format!("{}-{}", t.uid, t.attempt) };
    Ok(match s.task.get().ok_or(Fact::Task)? {
        TaskView::Running { task_id: running } if *running == task_id => Step::WaitForTask,
        TaskView::Done { task_id: done, outcome } if *done == task_id => Step::TaskEnded(ended(t, outcome)),
        // An upload's id stays the same across attempts: a claim that shows the retry
        // (Pending) or a failure whose inputs have since changed (Failed) starts it again.
        TaskView::Settled { task_id: settled }
            if *settled == task_id && !(t.upload && matches!(t.phase, Some(PodPhase::Pending | PodPhase::Failed))) =>
        {
            Step::WaitForTask
        }
        _ => Step::StartTask {
            task: Box::new(Task {
                id: task_id,
                node: node.clone(),
                holder_uid: holder.uid.clone(),
                pv_name,
                plan: plan.clone(),
            }),
            announce: t.phase != Some(PodPhase::Running),
        },
    })
}

/// After a terminal failure no importer pod stays: one created by a reconcile that saw the
/// claim from before the failure was recorded goes too.
fn wait_for_change(s: &Snapshot) -> Result<Step, Fact> {
    Ok(if s.holder.get().ok_or(Fact::Holder)?.is_some() { Step::DeleteHolder } else { Step::WaitForChange })
}

fn terminal(t: &Golden, reason: FailureReason, message: &str) -> Terminal {
    Terminal { reason, message: message.to_string(), attempt: t.attempt + 1 }
}

fn ended(t: &Golden, outcome: &Outcome) -> Ended {
    match outcome {
        Outcome::Succeeded(c) => Ended::Succeeded(c.clone()),
        Outcome::Failed(f) if f.retryable => Ended::Retry {
            reason: f.reason,
            message: f.message.clone(),
            restarts: t.restarts + 1,
            attempt: t.attempt + 1,
        },
        Outcome::Failed(f) => Ended::Failed(terminal(t, f.reason, &f.message)),
        Outcome::Lost(why) => Ended::Lost(why.clone()),
    }
}

#[cfg(test)]
mod tests;

//! The golden PVC (DESIGN.md §4, the 2022 design note): a PVC without a `dataSourceRef`
//! that carries `cdi.kubevirt.io/storage.import.endpoint` is imported in place, into its own
//! volume, through the populate flow's pieces: the same plan, importer (holder) pod, mover
//! request and follower; only the decisions (decide.rs) and the status it reports differ.
//! No prime PVC and no rebind: the data lands in the admin's claim.
//!
//! Status on the PVC, as CDI's: `storage.pod.phase`, the running condition, events, and
//! `storage.import.status` (`In process`, `Success`, `Failed`). A terminal failure is
//! recorded with a digest of the import annotations and not tried again until they change.

pub mod decide;
pub mod plan;

use std::sync::Arc;

use cdi_proto::v1 as pb;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;

use super::build;
use super::decide::{Holder, Lazy, PodPhase};
use super::reconcile::{
    FOLLOWED, POLL, SHORT, Work, annotate, mark_upload_ready, not_ready, phase, retry_later, running_condition,
    succeeded, unsupported,
};
use super::source;
use super::vocab::{EventReason, FINALIZER, ann, cdi_ann, condition};
use super::{Ctx, Error};
use crate::metrics::Finished;
use decide::{Ended, FAILED_FOR, Fact, Golden, ImportStatus, Snapshot, Step, Task, Terminal};

/// Reconciles a PVC that names no CDI source: a golden PVC, or one that no longer is but
/// still carries our finalizer (it is released), or nothing of ours.
pub async fn reconcile(pvc: Arc<PersistentVolumeClaim>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let golden = Golden::from_pvc(&pvc);
    if golden.is_none() && !pvc.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &pvc.namespace().unwrap_or_default());
    finalizer(&api, FINALIZER, pvc, |event| async {
        match (event, golden) {
            (Finalizer::Apply(pvc), Some(golden)) => apply(&pvc, golden, &ctx).await,
            // No longer golden (its endpoint annotation was removed): nothing to do.
            (Finalizer::Apply(_), None) => Ok(Action::await_change()),
            (Finalizer::Cleanup(pvc), _) => cleanup(&pvc, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

async fn apply(pvc: &PersistentVolumeClaim, target: Golden, ctx: &Ctx) -> Result<Action, Error> {
    let mut seen = Snapshot::new(target);
    loop {
        let step = decide::decide(&seen);
        tracing::trace!(pvc = %ObjectRef::from_obj(pvc), ?step, "golden: decided");
        if let Some(action) = act(step, &mut seen, pvc, ctx).await? {
            return Ok(action);
        }
    }
}

async fn act(step: Step, seen: &mut Snapshot, pvc: &PersistentVolumeClaim, ctx: &Ctx) -> Result<Option<Action>, Error> {
    let t = &seen.target;
    let action = match step {
        Step::Read(fact) => {
            observe(fact, seen, pvc, ctx).await?;
            return Ok(None);
        }
        Step::CreateHolder { announce } => {
            seen.holder = Lazy::Read(Some(create_holder(pvc, t, announce, ctx).await?));
            return Ok(None);
        }
        Step::Done | Step::WaitForChange => Action::await_change(),
        Step::DeleteHolder => {
            delete_holder(pvc, ctx).await?;
            Action::await_change()
        }
        Step::Unsupported { message, announce } => unsupported(pvc, ctx, &message, announce).await?,
        Step::FailTerminally(failure) => fail_terminally(pvc, t, ctx, &failure).await?,
        Step::WaitForStorageClass => {
            let note = format!("StorageClass {:?} not found; waiting for it", t.class);
            ctx.event(&ObjectRef::from_obj(pvc), EventReason::PendingPopulation, &note).await;
            Action::requeue(POLL)
        }
        // The claim's own changes (bound, the pod's) trigger the next look.
        Step::WaitForBind => Action::requeue(SHORT),
        Step::WaitForHolder => Action::requeue(POLL),
        Step::StartTask { task, .. } if let Some(left) = super::reconcile::retry_wait(pvc, &task.plan) => {
            Action::requeue(left)
        }
        Step::StartTask { task, announce } => start_task(pvc, t, *task, announce, ctx).await?,
        Step::WaitForTask => Action::requeue(FOLLOWED),
        Step::TaskEnded(ended) => {
            let lost = matches!(ended, Ended::Lost(_));
            let action = task_ended(pvc, t, ctx, ended).await?;
            if lost {
                ctx.followers.forget(&t.uid)
            } else {
                ctx.followers.settle(&t.uid)
            }
            action
        }
    };
    Ok(Some(action))
}

async fn observe(fact: Fact, seen: &mut Snapshot, pvc: &PersistentVolumeClaim, ctx: &Ctx) -> Result<(), Error> {
    match fact {
        Fact::StorageClass => {
            let name = &seen.target.class;
            let api: Api<StorageClass> = Api::all(ctx.client.clone());
            let class = api.get_opt(name).await.map_err(|e| Error::kube("read StorageClass", name, e))?;
            seen.storage_class = Lazy::Read(class.as_ref().map(Into::into));
        }
        Fact::Holder => {
            let name = seen.target.holder_name();
            let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pvc.namespace().unwrap_or_default());
            let pod = api.get_opt(&name).await.map_err(|e| Error::kube("read importer pod", &name, e))?;
            seen.holder = Lazy::Read(pod.as_ref().map(Holder::from));
        }
        Fact::Task => seen.task = Lazy::Read(ctx.followers.view(&seen.target.uid)),
    }
    Ok(())
}

fn status(s: ImportStatus) -> (&'static str, Option<String>) {
    (cdi_ann::IMPORT_STATUS, Some(s.as_str().to_string()))
}

/// Creates the importer pod on no node: the scheduler places it where the claim's volume is
/// (or, under WaitForFirstConsumer, picks the node the volume is then provisioned on).
async fn create_holder(pvc: &PersistentVolumeClaim, t: &Golden, announce: bool, ctx: &Ctx) -> Result<Holder, Error> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pvc.namespace().unwrap_or_default());
    let name = t.holder_name();
    let pod = build::holder_pod(pvc, &t.name, None, &ctx.cfg.holder_image);
    let pod = match api.create(&PostParams::default(), &pod).await {
        Ok(p) => p,
        Err(kube::Error::Api(s)) if s.code == 409 => {
            api.get(&name).await.map_err(|e| Error::kube("read importer pod", &name, e))?
        }
        Err(e) => return Err(Error::kube("create importer pod", &name, e)),
    };
    if announce {
        ctx.event(&ObjectRef::from_obj(pvc), EventReason::ImportScheduled, &format!("Import pod {name} created")).await;
        let mut pairs = running_condition("false", condition::PENDING, "waiting for the importer pod to run");
        pairs.extend([phase(PodPhase::Pending), status(ImportStatus::InProcess)]);
        annotate(ctx, pvc, &pairs).await?;
    }
    Ok(Holder::from(&pod))
}

async fn start_task(
    pvc: &PersistentVolumeClaim,
    t: &Golden,
    task: Task,
    announce: bool,
    ctx: &Ctx,
) -> Result<Action, Error> {
    let dest = ctx.holder_destination(pvc, &task.id, &task.holder_uid, &task.pv_name).await;
    let objects = source::ApiObjects::new(ctx.client.clone(), &pvc.namespace().unwrap_or_default());
    let built = match ctx.import_settings(&task.plan).await {
        Ok(settings) => source::populate_request(&objects, &task.plan, dest, &settings).await,
        Err(e) => Err(e),
    };
    let request = match built {
        Ok(r) => r,
        Err(e @ source::SourceError::Api { .. }) => return Err(Error::Source(e)),
        Err(e) => {
            let failure = Terminal {
                reason: super::failure::FailureReason::InvalidRequest,
                message: e.to_string(),
                attempt: t.attempt + 1,
            };
            return fail_terminally(pvc, t, ctx, &failure).await;
        }
    };
    let target_ref = ObjectRef::from_obj(pvc);
    if announce {
        if let Some(note) = source::node_pull_fallback(&task.plan) {
            ctx.event(&target_ref, EventReason::NodePullFallback, note).await;
        }
        let mut pairs = running_condition("true", condition::POD_RUNNING, "");
        pairs.extend([phase(PodPhase::Running), status(ImportStatus::InProcess), (FAILED_FOR, None)]);
        if t.upload {
            // Ready only once the mover has the task (the follower says so).
            pairs.push(not_ready());
        }
        annotate(ctx, pvc, &pairs).await?;
    }
    ctx.followers.start(ctx.me(), target_ref, t.uid.clone(), task.node, request, None);
    Ok(Action::requeue(FOLLOWED))
}

async fn task_ended(pvc: &PersistentVolumeClaim, t: &Golden, ctx: &Ctx, ended: Ended) -> Result<Action, Error> {
    match ended {
        Ended::Succeeded(c) if t.upload => {
            succeeded(pvc, &c, ctx, &[status(ImportStatus::Success), not_ready()], Work::Import).await
        }
        Ended::Succeeded(c) => succeeded(pvc, &c, ctx, &[status(ImportStatus::Success)], Work::Import).await,
        Ended::Retry { reason, message, restarts, attempt } => {
            if t.upload {
                annotate(ctx, pvc, &[not_ready()]).await?;
            }
            retry_later(pvc, ctx, reason, &message, restarts, attempt, Work::Import).await
        }
        Ended::Failed(failure) => fail_terminally(pvc, t, ctx, &failure).await,
        Ended::Lost(why) => {
            ctx.event(&ObjectRef::from_obj(pvc), EventReason::MoverUnavailable, &why).await;
            if t.upload {
                // The mover may have lost the task (a restart): no upload until it has it again.
                mark_upload_ready(ctx, pvc, None, false).await?;
            }
            Ok(Action::requeue(POLL))
        }
    }
}

async fn fail_terminally(pvc: &PersistentVolumeClaim, t: &Golden, ctx: &Ctx, f: &Terminal) -> Result<Action, Error> {
    let Terminal { reason, message, attempt } = f;
    let note = format!("{message} ({reason}); not retried until the import annotations change");
    ctx.event(&ObjectRef::from_obj(pvc), EventReason::ImportFailed, &note).await;
    let mut pairs = running_condition("false", reason.condition_reason(), message);
    pairs.extend([
        phase(PodPhase::Failed),
        status(ImportStatus::Failed),
        (FAILED_FOR, Some(t.inputs.clone())),
        (ann::ATTEMPT, Some(attempt.to_string())),
    ]);
    if t.upload {
        pairs.push(not_ready());
    }
    annotate(ctx, pvc, &pairs).await?;
    // Nothing is left running for a failed import.
    delete_holder(pvc, ctx).await?;
    ctx.metrics.population_finished(Finished::Failed(*reason), pvc);
    Ok(Action::await_change())
}

/// Deletes the importer pod; NotFound is done.
async fn delete_holder(pvc: &PersistentVolumeClaim, ctx: &Ctx) -> Result<(), Error> {
    let name = build::holder_name(&pvc.name_any());
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pvc.namespace().unwrap_or_default());
    match api.delete(&name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::kube("delete", &name, e)),
    }
}

/// The claim is being deleted: stop the task, remove the importer pod.
async fn cleanup(pvc: &PersistentVolumeClaim, ctx: &Ctx) -> Result<Action, Error> {
    let uid = pvc.uid().unwrap_or_default();
    if let Some((task_id, node)) = ctx.followers.task_of(&uid) {
        match ctx.movers.on_node(&node).await {
            Ok(mut mover) => {
                if let Err(s) = mover.cancel_task(pb::CancelTaskRequest { task_id: task_id.clone() }).await
                    && s.code() != tonic::Code::NotFound
                {
                    tracing::warn!(task = %task_id, error = %s.message(), "could not cancel the mover task");
                }
            }
            Err(e) => tracing::warn!(task = %task_id, error = %e, "could not reach the mover to cancel"),
        }
    }
    ctx.followers.forget(&uid);
    delete_holder(pvc, ctx).await?;
    Ok(Action::await_change())
}

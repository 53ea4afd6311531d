//! The populate flow for one target PVC (DESIGN.md §4), as a level-triggered, idempotent
//! reconcile: each call looks at what exists and does the next step; any step can be
//! interrupted and redone.
//!
//! source ready → prime PVC → holder pod running → mover task (followed) → outcome:
//! success → holder deleted → PV's claimRef moved to the target → prime `Lost` → deleted;
//! retryable failure → backoff and a new attempt; terminal failure → wait for the source
//! to change.

use std::sync::Arc;
use std::time::Duration;

use cdi_proto::v1 as pb;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;

use super::build::{self, HOLDER_VOLUME};
use super::follow::{Outcome, TaskView, backoff};
use super::source::{self, Destination};
use super::vocab::{FINALIZER, UNSUPPORTED_CONDITION, ann, condition, reason};
use super::{Ctx, Error};
use crate::api::VolumeImportSource;
use crate::api::names::{api as group, kinds};
use crate::plan::{ImportPlan, ImportSource};

/// How often to look again while waiting on something no watch reports.
const POLL: Duration = Duration::from_secs(10);
/// How often to look again while waiting on the binder or the kubelet.
const SHORT: Duration = Duration::from_secs(2);

/// The kinds a target PVC's `dataSourceRef` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceKind {
    Import,
    Upload,
    Clone,
}

fn source_of(pvc: &PersistentVolumeClaim) -> Option<(SourceKind, String)> {
    let r = pvc.spec.as_ref()?.data_source_ref.as_ref()?;
    if r.api_group.as_deref() != Some(group::GROUP) {
        return None;
    }
    let kind = match r.kind.as_str() {
        kinds::VOLUME_IMPORT_SOURCE => SourceKind::Import,
        kinds::VOLUME_UPLOAD_SOURCE => SourceKind::Upload,
        kinds::VOLUME_CLONE_SOURCE => SourceKind::Clone,
        _ => return None,
    };
    Some((kind, r.name.clone()))
}

pub async fn reconcile(pvc: Arc<PersistentVolumeClaim>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    ctx.metrics.reconciles.inc();
    let Some((kind, source_name)) = source_of(&pvc) else { return Ok(Action::await_change()) };
    let namespace = pvc.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, FINALIZER, pvc, |event| async {
        match event {
            Finalizer::Apply(pvc) => {
                let action = apply(&pvc, kind, &source_name, &ctx).await;
                tracing::debug!(pvc = %ObjectRef::from_obj(pvc.as_ref()), ?action, "applied");
                action
            }
            Finalizer::Cleanup(pvc) => {
                tracing::info!(pvc = %ObjectRef::from_obj(pvc.as_ref()), "target deleted: cleaning up");
                cleanup(&pvc, &ctx).await
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

pub fn error_policy(pvc: Arc<PersistentVolumeClaim>, error: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.reconcile_errors.inc();
    tracing::warn!(pvc = %ObjectRef::from_obj(pvc.as_ref()), error = %crate::one_line(error), "reconcile failed");
    Action::requeue(POLL)
}

fn annotation<'a>(pvc: &'a PersistentVolumeClaim, key: &str) -> Option<&'a str> {
    pvc.annotations().get(key).map(String::as_str)
}

fn bound(pvc: &PersistentVolumeClaim) -> bool {
    pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
}

/// Writes annotations on the target (a merge patch: never a read-modify-write); `None`
/// removes one.
async fn annotate(ctx: &Ctx, pvc: &PersistentVolumeClaim, pairs: &[(&str, Option<String>)]) -> Result<(), Error> {
    let map: serde_json::Map<String, serde_json::Value> =
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone().map_or(serde_json::Value::Null, Into::into))).collect();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &pvc.namespace().unwrap_or_default());
    api.patch(
        &pvc.name_any(),
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"annotations": map}})),
    )
    .await
    .map_err(|e| Error::kube("annotate", &pvc.name_any(), e))?;
    Ok(())
}

fn running_condition(status: &str, reason: &str, message: &str) -> Vec<(&'static str, Option<String>)> {
    vec![
        (ann::RUNNING, Some(status.to_string())),
        (ann::RUNNING_REASON, Some(reason.to_string())),
        (ann::RUNNING_MESSAGE, Some(message.to_string())),
    ]
}

async fn apply(pvc: &PersistentVolumeClaim, kind: SourceKind, source_name: &str, ctx: &Ctx) -> Result<Action, Error> {
    let namespace = pvc.namespace().unwrap_or_default();
    let target = ObjectRef::from_obj(pvc);
    let uid = pvc.uid().unwrap_or_default();
    let populated = annotation(pvc, ann::POD_PHASE) == Some("Succeeded");
    if bound(pvc) && populated {
        // Done; only leftovers of an interrupted cleanup may remain.
        delete_children(pvc, ctx).await?;
        return Ok(Action::await_change());
    }
    if kind != SourceKind::Import {
        let what = if kind == SourceKind::Upload { "VolumeUploadSource" } else { "VolumeCloneSource" };
        return unsupported(pvc, ctx, &format!("{what} is not supported by this populator yet")).await;
    }
    let sources: Api<VolumeImportSource> = Api::namespaced(ctx.client.clone(), &namespace);
    let Some(source) =
        sources.get_opt(source_name).await.map_err(|e| Error::kube("read VolumeImportSource", source_name, e))?
    else {
        ctx.event(
            &target,
            reason::SOURCE_MISSING,
            &format!("VolumeImportSource {namespace}/{source_name} not found; waiting for it"),
        )
        .await;
        return Ok(Action::requeue(POLL));
    };
    let generation = source.metadata.generation.unwrap_or(0).to_string();
    let plan = match ImportPlan::try_from(&source) {
        Ok(plan) => plan,
        Err(e) => {
            return fail_terminally(
                pvc,
                ctx,
                &generation,
                "InvalidRequest",
                &format!("VolumeImportSource {source_name}: {e}"),
            )
            .await;
        }
    };
    if !plan.serves_claim(&pvc.name_any()) {
        return Ok(Action::await_change());
    }
    if let ImportSource::Unsupported(name) = &plan.source {
        return unsupported(pvc, ctx, &format!("import source type {name} is not supported by this populator yet"))
            .await;
    }
    if annotation(pvc, ann::FAILED_GENERATION) == Some(generation.as_str()) {
        // A terminal failure for this very source: nothing changes until it does.
        return Ok(Action::await_change());
    }
    if !populated {
        let Some(node) = schedulable(pvc, ctx).await? else { return Ok(Action::await_change()) };
        let prime = ensure_prime(pvc, ctx).await?;
        let holder = ensure_holder(pvc, node.as_deref(), ctx).await?;
        let phase = holder.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
        let (Some(node), "Running") = (holder.spec.as_ref().and_then(|s| s.node_name.clone()), phase) else {
            return Ok(Action::requeue(POLL));
        };
        return follow(pvc, &prime, &holder, &node, &plan, &generation, ctx).await;
    }
    rebind(pvc, ctx, &uid).await
}

/// Whether the claim may be populated now: its class exists, and under
/// WaitForFirstConsumer the scheduler has chosen a node. `Some(node)`: go on (with the node
/// to pin the holder to, if any).
async fn schedulable(pvc: &PersistentVolumeClaim, ctx: &Ctx) -> Result<Option<Option<String>>, Error> {
    let class = pvc.spec.as_ref().and_then(|s| s.storage_class_name.clone()).unwrap_or_default();
    let classes: Api<StorageClass> = Api::all(ctx.client.clone());
    let Some(sc) = classes.get_opt(&class).await.map_err(|e| Error::kube("read StorageClass", &class, e))? else {
        ctx.event(
            &ObjectRef::from_obj(pvc),
            reason::PENDING_POPULATION,
            &format!("StorageClass {class:?} not found; waiting for it"),
        )
        .await;
        return Ok(None);
    };
    let node = annotation(pvc, ann::SELECTED_NODE).map(str::to_string);
    if sc.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer") && node.is_none() {
        if annotation(pvc, ann::POD_PHASE) != Some("Pending") {
            ctx.event(
                &ObjectRef::from_obj(pvc),
                reason::PENDING_POPULATION,
                "waiting for a consumer to be scheduled (WaitForFirstConsumer)",
            )
            .await;
            let mut pairs = running_condition("false", condition::PENDING, "waiting for the first consumer");
            pairs.push((ann::POD_PHASE, Some("Pending".into())));
            annotate(ctx, pvc, &pairs).await?;
        }
        return Ok(None);
    }
    Ok(Some(node))
}

async fn ensure_prime(pvc: &PersistentVolumeClaim, ctx: &Ctx) -> Result<PersistentVolumeClaim, Error> {
    let namespace = pvc.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &namespace);
    let name = build::prime_name(&pvc.uid().unwrap_or_default());
    if let Some(prime) = api.get_opt(&name).await.map_err(|e| Error::kube("read prime PVC", &name, e))? {
        return Ok(prime);
    }
    let prime = match api.create(&PostParams::default(), &build::prime_pvc(pvc)).await {
        Ok(p) => p,
        Err(kube::Error::Api(s)) if s.code == 409 => {
            api.get(&name).await.map_err(|e| Error::kube("read prime PVC", &name, e))?
        }
        Err(e) => return Err(Error::kube("create prime PVC", &name, e)),
    };
    ctx.event(&ObjectRef::from_obj(pvc), reason::PRIME_CREATED, &format!("created PVC prime {name}")).await;
    annotate(ctx, pvc, &[(ann::PVC_PRIME, Some(name))]).await?;
    Ok(prime)
}

async fn ensure_holder(pvc: &PersistentVolumeClaim, node: Option<&str>, ctx: &Ctx) -> Result<Pod, Error> {
    let namespace = pvc.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let name = build::holder_name(&pvc.uid().unwrap_or_default());
    if let Some(pod) = api.get_opt(&name).await.map_err(|e| Error::kube("read holder pod", &name, e))? {
        return Ok(pod);
    }
    let pod = build::holder_pod(pvc, node, &ctx.cfg.holder_image);
    match api.create(&PostParams::default(), &pod).await {
        Ok(p) => Ok(p),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            api.get(&name).await.map_err(|e| Error::kube("read holder pod", &name, e))
        }
        Err(e) => Err(Error::kube("create holder pod", &name, e)),
    }
}

fn attempt(pvc: &PersistentVolumeClaim) -> u32 {
    annotation(pvc, ann::ATTEMPT).and_then(|a| a.parse().ok()).unwrap_or(0)
}

/// Runs (or re-attaches to) the mover task and acts on its outcome.
async fn follow(
    pvc: &PersistentVolumeClaim,
    prime: &PersistentVolumeClaim,
    holder: &Pod,
    node: &str,
    plan: &ImportPlan,
    generation: &str,
    ctx: &Ctx,
) -> Result<Action, Error> {
    let uid = pvc.uid().unwrap_or_default();
    let target = ObjectRef::from_obj(pvc);
    let task_id = format!("{}-{}", prime.uid().unwrap_or_default(), attempt(pvc));
    match ctx.followers.view(&uid) {
        TaskView::Running { task_id: running } if running == task_id => Ok(Action::requeue(Duration::from_secs(60))),
        TaskView::Done { task_id: done, outcome } if done == task_id => {
            ctx.followers.forget(&uid);
            match outcome {
                Outcome::Succeeded(c) => succeeded(pvc, &c, ctx).await,
                Outcome::Failed(f) if f.retryable => retry_later(pvc, ctx, &f.reason, &f.message).await,
                Outcome::Failed(f) => fail_terminally(pvc, ctx, generation, &f.reason, &f.message).await,
                Outcome::Lost(why) => {
                    ctx.event(&target, reason::NO_MOVER, &why).await;
                    Ok(Action::requeue(POLL))
                }
            }
        }
        _ => {
            let pv_name = prime.spec.as_ref().and_then(|s| s.volume_name.clone()).unwrap_or_default();
            let mode = if build::is_block(pvc) { pb::VolumeMode::Block } else { pb::VolumeMode::Filesystem };
            let dest = Destination {
                task_id: task_id.clone(),
                target: pb::Target {
                    kind: Some(pb::target::Kind::PodVolume(pb::PodVolume {
                        pod_uid: holder.uid().unwrap_or_default(),
                        volume_name: HOLDER_VOLUME.into(),
                        pv_name,
                        mode: mode as i32,
                    })),
                },
                requested_size: build::requested_bytes(pvc).unwrap_or(0),
                filesystem_overhead: (mode == pb::VolumeMode::Filesystem).then_some(ctx.cfg.filesystem_overhead),
            };
            let namespace = pvc.namespace().unwrap_or_default();
            let request = match source::populate_request(&ctx.client, &namespace, plan, dest).await {
                Ok(r) => r,
                Err(e @ source::SourceError::Api { .. }) => return Err(Error::Source(e)),
                Err(e) => return fail_terminally(pvc, ctx, generation, "InvalidRequest", &e.to_string()).await,
            };
            if annotation(pvc, ann::POD_PHASE) != Some("Running") {
                ctx.event(&target, reason::SCHEDULED, &format!("Import scheduled on node {node} (task {task_id})"))
                    .await;
                let mut pairs = running_condition("true", condition::POD_RUNNING, "");
                pairs.push((ann::POD_PHASE, Some("Running".into())));
                pairs.push((ann::FAILED_GENERATION, None));
                annotate(ctx, pvc, &pairs).await?;
            }
            ctx.followers.start(ctx.me(), target, uid, node.to_string(), request);
            Ok(Action::requeue(Duration::from_secs(60)))
        }
    }
}

async fn succeeded(pvc: &PersistentVolumeClaim, c: &pb::Completed, ctx: &Ctx) -> Result<Action, Error> {
    let mut pairs = running_condition("false", condition::COMPLETED, "Import Complete");
    pairs.extend([
        (ann::POD_PHASE, Some("Succeeded".to_string())),
        (ann::PROGRESS, Some(crate::api::names::values::PROGRESS_DONE.to_string())),
    ]);
    annotate(ctx, pvc, &pairs).await?;
    let formats = c.formats.join(", ");
    ctx.event(
        &ObjectRef::from_obj(pvc),
        reason::SUCCEEDED,
        &format!("Successfully imported into PVC {} ({formats}, virtual size {})", pvc.name_any(), c.virtual_size),
    )
    .await;
    ctx.metrics.population_finished("succeeded", pvc);
    Ok(Action::requeue(Duration::ZERO))
}

async fn retry_later(pvc: &PersistentVolumeClaim, ctx: &Ctx, why: &str, message: &str) -> Result<Action, Error> {
    let restarts = annotation(pvc, ann::POD_RESTARTS).and_then(|r| r.parse::<u32>().ok()).unwrap_or(0) + 1;
    let delay = backoff(restarts, ctx.cfg.retry_base, ctx.cfg.retry_cap);
    ctx.event(
        &ObjectRef::from_obj(pvc),
        reason::FAILED,
        &format!("{message} ({why}); retry {restarts} in {}s", delay.as_secs()),
    )
    .await;
    let mut pairs = running_condition("false", condition::ERROR, message);
    pairs.extend([
        (ann::POD_RESTARTS, Some(restarts.to_string())),
        (ann::ATTEMPT, Some((attempt(pvc) + 1).to_string())),
        (ann::POD_PHASE, Some("Pending".to_string())),
    ]);
    annotate(ctx, pvc, &pairs).await?;
    ctx.metrics.population_finished("retried", pvc);
    Ok(Action::requeue(delay))
}

async fn fail_terminally(
    pvc: &PersistentVolumeClaim,
    ctx: &Ctx,
    generation: &str,
    why: &str,
    message: &str,
) -> Result<Action, Error> {
    ctx.event(
        &ObjectRef::from_obj(pvc),
        reason::FAILED,
        &format!("{message} ({why}); not retried until the source changes"),
    )
    .await;
    // CDI singles out a checksum mismatch; everything else terminal is an Error.
    let condition_reason = if why == "ChecksumMismatch" { condition::CHECKSUM_ERROR } else { condition::ERROR };
    let mut pairs = running_condition("false", condition_reason, message);
    pairs.extend([
        (ann::POD_PHASE, Some("Failed".to_string())),
        (ann::FAILED_GENERATION, Some(generation.to_string())),
        (ann::ATTEMPT, Some((attempt(pvc) + 1).to_string())),
    ]);
    annotate(ctx, pvc, &pairs).await?;
    // Free the volume; the prime stays for the next attempt.
    delete(ctx, "Pod", &pvc.namespace().unwrap_or_default(), &build::holder_name(&pvc.uid().unwrap_or_default()))
        .await?;
    ctx.metrics.population_finished("failed", pvc);
    Ok(Action::await_change())
}

async fn unsupported(pvc: &PersistentVolumeClaim, ctx: &Ctx, message: &str) -> Result<Action, Error> {
    if annotation(pvc, ann::RUNNING_REASON) != Some(UNSUPPORTED_CONDITION) {
        ctx.event(&ObjectRef::from_obj(pvc), reason::UNSUPPORTED, message).await;
        annotate(ctx, pvc, &running_condition("false", UNSUPPORTED_CONDITION, message)).await?;
    }
    Ok(Action::await_change())
}

/// The import succeeded: hand its PV to the target.
async fn rebind(pvc: &PersistentVolumeClaim, ctx: &Ctx, uid: &str) -> Result<Action, Error> {
    let namespace = pvc.namespace().unwrap_or_default();
    // The holder goes first, so nothing has the volume mounted when the consumer comes.
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let holder = build::holder_name(uid);
    if pods.get_opt(&holder).await.map_err(|e| Error::kube("read holder pod", &holder, e))?.is_some() {
        delete(ctx, "Pod", &namespace, &holder).await?;
        return Ok(Action::requeue(SHORT));
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &namespace);
    let prime_name = build::prime_name(uid);
    let prime = claims.get_opt(&prime_name).await.map_err(|e| Error::kube("read prime PVC", &prime_name, e))?;
    if let Some(prime) = &prime {
        let pv_name = prime.spec.as_ref().and_then(|s| s.volume_name.clone()).unwrap_or_default();
        let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
        let pv = pvs.get_opt(&pv_name).await.map_err(|e| Error::kube("read PV", &pv_name, e))?;
        let claimed_by_target =
            pv.as_ref().and_then(|p| p.spec.as_ref()?.claim_ref.as_ref()?.uid.clone()).as_deref() == Some(uid);
        if pv.is_some() && !claimed_by_target {
            let patch = serde_json::json!({
                "metadata": {"annotations": {ann::POPULATED_FOR: format!("{namespace}/{}", pvc.name_any())}},
                "spec": {"claimRef": {
                    "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "namespace": namespace, "name": pvc.name_any(), "uid": uid,
                    "resourceVersion": pvc.resource_version(),
                }},
            });
            pvs.patch(&pv_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| Error::kube("rebind PV", &pv_name, e))?;
            ctx.event(
                &ObjectRef::from_obj(pvc),
                reason::REBIND,
                &format!("PV {pv_name} handed over from {prime_name}"),
            )
            .await;
            return Ok(Action::requeue(SHORT));
        }
        // The binder marks the prime Lost once its PV belongs to the target.
        let lost = prime.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Lost");
        if lost || pv.is_none() {
            delete(ctx, "PersistentVolumeClaim", &namespace, &prime_name).await?;
        }
        return Ok(Action::requeue(SHORT));
    }
    if bound(pvc) {
        tracing::info!(pvc = %ObjectRef::from_obj(pvc), "populated and bound");
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(SHORT))
}

/// The target is being deleted: stop the mover task, remove the holder and the prime.
async fn cleanup(pvc: &PersistentVolumeClaim, ctx: &Ctx) -> Result<Action, Error> {
    let uid = pvc.uid().unwrap_or_default();
    let namespace = pvc.namespace().unwrap_or_default();
    let task = match ctx.followers.task_of(&uid) {
        Some(t) => Some(t),
        // Not followed (e.g. after a restart): the task of the current attempt, on the
        // holder's node.
        None => {
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &namespace);
            let holder = pods.get_opt(&build::holder_name(&uid)).await.ok().flatten();
            let prime = claims.get_opt(&build::prime_name(&uid)).await.ok().flatten();
            match (holder.and_then(|h| h.spec.and_then(|s| s.node_name)), prime.and_then(|p| p.uid())) {
                (Some(node), Some(prime_uid)) => Some((format!("{prime_uid}-{}", attempt(pvc)), node)),
                _ => None,
            }
        }
    };
    if let Some((task_id, node)) = task {
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
    delete_children(pvc, ctx).await?;
    Ok(Action::await_change())
}

async fn delete_children(pvc: &PersistentVolumeClaim, ctx: &Ctx) -> Result<(), Error> {
    let namespace = pvc.namespace().unwrap_or_default();
    let uid = pvc.uid().unwrap_or_default();
    delete(ctx, "Pod", &namespace, &build::holder_name(&uid)).await?;
    delete(ctx, "PersistentVolumeClaim", &namespace, &build::prime_name(&uid)).await
}

/// Deletes, treating NotFound as done.
async fn delete(ctx: &Ctx, kind: &str, namespace: &str, name: &str) -> Result<(), Error> {
    let params = DeleteParams::background();
    let result = match kind {
        "Pod" => Api::<Pod>::namespaced(ctx.client.clone(), namespace).delete(name, &params).await.map(|_| ()),
        _ => Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), namespace)
            .delete(name, &params)
            .await
            .map(|_| ()),
    };
    match result {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::kube("delete", name, e)),
    }
}

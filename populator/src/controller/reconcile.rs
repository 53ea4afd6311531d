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
use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;

use super::build;
use super::decide::{
    CloneVolume, Ended, Fact, Holder, Lazy, PodPhase, Prime, Pv, Snapshot, SnapshotState, Source, SourceKind,
    SourceSnapshot, Step, Target, Task, Terminal, decide, unfollowed_task,
};
use super::failure::FailureReason;
use super::source;
use super::strategy::{self, Choice, Strategy};
use super::vocab::{EventReason, FINALIZER, UNSUPPORTED_CONDITION, ann, cdi_ann, condition};
use super::{Ctx, Error};
use crate::api::{DataVolume, VolumeCloneSource, VolumeImportSource, VolumeUploadSource};
use crate::datavolume::render::CloneKind;
use crate::metrics::Finished;

/// How often to look again while waiting on something no watch reports.
pub(super) const POLL: Duration = Duration::from_secs(10);
/// How often to look again while waiting on the binder or the kubelet.
pub(super) const SHORT: Duration = Duration::from_secs(2);
/// How often to look again while a follower watches the task (its end triggers a
/// reconcile anyway).
pub(super) const FOLLOWED: Duration = Duration::from_secs(60);

pub async fn reconcile(pvc: Arc<PersistentVolumeClaim>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    ctx.metrics.reconciles.inc();
    // Claims without a CDI dataSourceRef may be golden PVCs, imported in place.
    let Some(target) = Target::from_pvc(&pvc) else { return super::golden::reconcile(pvc, ctx).await };
    let namespace = pvc.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, FINALIZER, pvc, |event| async {
        match event {
            Finalizer::Apply(pvc) => {
                let action = apply(&pvc, target, &ctx).await;
                tracing::debug!(pvc = %ObjectRef::from_obj(pvc.as_ref()), ?action, "applied");
                action
            }
            Finalizer::Cleanup(pvc) => {
                tracing::info!(pvc = %ObjectRef::from_obj(pvc.as_ref()), "target deleted: cleaning up");
                cleanup(&pvc, &target, &ctx).await
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

pub fn error_policy(pvc: Arc<PersistentVolumeClaim>, error: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.reconcile_errors.inc();
    if error.is_transient() {
        tracing::debug!(pvc = %ObjectRef::from_obj(pvc.as_ref()), error = %cdi_common::one_line(error), "transient API failure; retrying soon");
        return Action::requeue(SHORT);
    }
    tracing::warn!(pvc = %ObjectRef::from_obj(pvc.as_ref()), error = %cdi_common::one_line(error), "reconcile failed");
    Action::requeue(POLL)
}

/// Decides and acts until a step ends this reconcile. Reads and creations feed the
/// snapshot and the loop goes on; each fact is read at most once and each child created at
/// most once, so it ends.
async fn apply(pvc: &PersistentVolumeClaim, target: Target, ctx: &Ctx) -> Result<Action, Error> {
    let mut seen = Snapshot::new(target);
    loop {
        let step = decide(&seen);
        tracing::trace!(pvc = %ObjectRef::from_obj(pvc), ?step, "decided");
        if let Some(action) = act(step, &mut seen, pvc, ctx).await? {
            return Ok(action);
        }
    }
}

/// Does `step`; `None`: decide again.
async fn act(step: Step, seen: &mut Snapshot, pvc: &PersistentVolumeClaim, ctx: &Ctx) -> Result<Option<Action>, Error> {
    let action = match step {
        Step::Read(fact) => {
            observe(fact, seen, pvc, ctx).await?;
            return Ok(None);
        }
        Step::CreatePrime => {
            seen.prime = Lazy::Read(Some(create_prime(pvc, ctx).await?));
            return Ok(None);
        }
        Step::CreateHolder { node } => {
            seen.holder = Lazy::Read(Some(create_holder(pvc, node.as_deref(), ctx).await?));
            return Ok(None);
        }
        Step::CreateSourceHolder { claim, block, co_locate } => {
            let namespace = &seen.target.source_namespace;
            let pod =
                build::source_holder_pod(pvc, namespace, &claim, block, co_locate.as_deref(), &ctx.cfg.holder_image);
            seen.source_holder = Lazy::Read(Some(create_pod(ctx, pod, "clone source pod").await?));
            return Ok(None);
        }
        Step::WaitForCloneSource { why } => {
            ctx.event(&ObjectRef::from_obj(pvc), EventReason::CloneSourceMissing, &format!("{why}; waiting for it"))
                .await;
            Action::requeue(POLL)
        }
        Step::CloneSourceInUse { pod } => {
            let t = &seen.target;
            let note = format!(
                "source PVC {}/{} is in use by pod {pod}; the clone waits until it is released",
                t.source_namespace, t.source_name
            );
            ctx.event(&ObjectRef::from_obj(pvc), EventReason::CloneSourceInUse, &note).await;
            Action::requeue(POLL)
        }
        Step::DeleteSourceHolder => {
            delete(ctx, Child::SourceHolder, pvc).await?;
            Action::requeue(SHORT)
        }
        Step::ChooseStrategy(choice) => {
            record_strategy(pvc, &choice, ctx).await?;
            seen.target.clone_type = Some(choice.strategy);
            return Ok(None);
        }
        Step::CreateSnapshot { claim } => {
            let class = ctx.defaults.clone_profile(&seen.target.class).1;
            let namespace = &seen.target.source_namespace;
            let snapshot = build::clone_snapshot(pvc, namespace, &claim, class.as_deref());
            create_or_take(&snapshots(ctx, namespace), &snapshot, "create VolumeSnapshot").await?;
            Action::requeue(SHORT)
        }
        Step::WaitForSnapshot => Action::requeue(SHORT),
        Step::CreateSmartPrime { kind, name } => {
            let prime = build::smart_prime_pvc(pvc, &seen.target.source_namespace, kind, &name);
            seen.prime = Lazy::Read(Some(create_prime_from(pvc, prime, ctx).await?));
            return Ok(None);
        }
        Step::CreateRestoredSource { snapshot, block, size, driver } => {
            return create_restored_source(pvc, seen, &snapshot, block, size, &driver, ctx).await;
        }
        Step::WaitForSmartPrime { announce } => {
            if announce {
                let way = seen.target.clone_type.as_ref().map_or("clone", Strategy::as_str);
                let note = format!("Clone scheduled ({way}): the storage driver fills the volume");
                ctx.event(&ObjectRef::from_obj(pvc), EventReason::CloneScheduled, &note).await;
                let mut pairs = running_condition("true", condition::POD_RUNNING, "");
                pairs.extend([phase(PodPhase::Running), (ann::FAILED_GENERATION, None)]);
                annotate(ctx, pvc, &pairs).await?;
            }
            Action::requeue(SHORT)
        }
        Step::SmartCloneDone => {
            let size = build::requested_bytes(pvc).unwrap_or(0);
            let done = pb::Completed { virtual_size: size, target_size: size, ..Default::default() };
            succeeded(pvc, &done, ctx, &[], Work::Clone).await?
        }
        Step::Done => {
            delete_children(pvc, ctx).await?;
            Action::await_change()
        }
        Step::Retained => Action::await_change(),
        Step::Unsupported { message, announce } => unsupported(pvc, ctx, &message, announce).await?,
        Step::WaitForSource => wait_for_source(pvc, &seen.target, ctx).await,
        Step::NotOurs | Step::WaitForSourceChange => Action::await_change(),
        Step::FailTerminally(failure) => fail_terminally(pvc, &seen.target, ctx, &failure).await?,
        Step::WaitForStorageClass => wait_for_class(pvc, &seen.target, ctx).await,
        Step::WaitForConsumer { announce } => wait_for_consumer(pvc, ctx, announce).await?,
        Step::WaitForHolder => Action::requeue(POLL),
        Step::StartTask { task, .. } if let Some(left) = retry_wait(pvc, &task.plan) => Action::requeue(left),
        Step::StartTask { task, announce } => start_task(pvc, &seen.target, *task, announce, ctx).await?,
        Step::WaitForTask => Action::requeue(FOLLOWED),
        Step::TaskEnded(ended) => {
            let lost = matches!(ended, Ended::Lost(_));
            // Only once the outcome is recorded: if that fails, the next reconcile acts again.
            let action = task_ended(pvc, &seen.target, ctx, ended).await?;
            if lost {
                // The task may still run: follow it afresh next time.
                ctx.followers.forget(&seen.target.uid);
            } else {
                ctx.followers.settle(&seen.target.uid);
            }
            action
        }
        Step::DeleteHolder => {
            delete(ctx, Child::Holder, pvc).await?;
            Action::requeue(SHORT)
        }
        Step::RebindPv { pv } => rebind_pv(pvc, &pv, ctx).await?,
        Step::DeletePrime => {
            delete(ctx, Child::Prime, pvc).await?;
            Action::requeue(SHORT)
        }
        Step::WaitForLost | Step::WaitForBind => Action::requeue(SHORT),
    };
    Ok(Some(action))
}

/// Reads what `decide` asked for into the snapshot.
async fn observe(fact: Fact, seen: &mut Snapshot, pvc: &PersistentVolumeClaim, ctx: &Ctx) -> Result<(), Error> {
    let namespace = pvc.namespace().unwrap_or_default();
    let uid = seen.target.uid.clone();
    match fact {
        Fact::Source if seen.target.kind == SourceKind::Upload => {
            let name = &seen.target.source_name;
            let api: Api<VolumeUploadSource> = Api::namespaced(ctx.client.clone(), &namespace);
            let source = api.get_opt(name).await.map_err(|e| Error::kube("read VolumeUploadSource", name, e))?;
            seen.source = Lazy::Read(Source::from_upload(source.as_ref()));
        }
        Fact::Source if seen.target.kind == SourceKind::Clone => {
            let name = &seen.target.source_name;
            let api: Api<VolumeCloneSource> = Api::namespaced(ctx.client.clone(), &namespace);
            let source = api.get_opt(name).await.map_err(|e| Error::kube("read VolumeCloneSource", name, e))?;
            seen.source = Lazy::Read(Source::from_clone(source.as_ref()));
        }
        Fact::SnapshotGrant { name } => {
            let refusal = cross_namespace_refusal(pvc, &seen.target, CloneKind::Snapshot, &name, ctx).await?;
            seen.snapshot_refusal = Lazy::Read(refusal);
        }
        Fact::CloneSource { name } => {
            seen.clone_source = Lazy::Read(clone_volume(pvc, &seen.target, &name, ctx).await?)
        }
        Fact::RestoredSource => {
            let name = build::restored_source_name(&uid);
            seen.clone_source = Lazy::Read(read_clone_volume(&seen.target, &name, ctx).await?)
        }
        Fact::SourceSnapshot { name } => {
            seen.source_snapshot = Lazy::Read(source_snapshot(ctx, &seen.target.source_namespace, &name).await?)
        }
        Fact::CloneStrategy => seen.strategy = Lazy::Read(clone_strategy(seen, pvc, ctx).await?),
        Fact::CloneSnapshot => {
            let name = build::clone_snapshot_name(&uid);
            let found = snapshots(ctx, &seen.target.source_namespace)
                .get_opt(&name)
                .await
                .map_err(|e| Error::kube("read VolumeSnapshot", &name, e))?;
            let state = match found {
                None => SnapshotState::Missing,
                Some(s) if s.data["status"]["readyToUse"] == serde_json::Value::Bool(true) => SnapshotState::Ready,
                Some(s) => match s.data["status"]["error"]["message"].as_str() {
                    Some(message) => SnapshotState::Failed(message.to_string()),
                    None => SnapshotState::Taking,
                },
            };
            seen.clone_snapshot = Lazy::Read(state);
        }
        Fact::SourceHolder => {
            let name = build::source_holder_name(&uid);
            let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &seen.target.source_namespace);
            let holder = api.get_opt(&name).await.map_err(|e| Error::kube("read clone source pod", &name, e))?;
            seen.source_holder = Lazy::Read(holder.as_ref().map(Holder::from));
        }
        Fact::Source => {
            let name = &seen.target.source_name;
            let api: Api<VolumeImportSource> = Api::namespaced(ctx.client.clone(), &namespace);
            let source = api.get_opt(name).await.map_err(|e| Error::kube("read VolumeImportSource", name, e))?;
            seen.source = Lazy::Read(Source::from_object(source.as_ref()));
        }
        Fact::StorageClass => {
            let name = &seen.target.class;
            let api: Api<StorageClass> = Api::all(ctx.client.clone());
            let class = api.get_opt(name).await.map_err(|e| Error::kube("read StorageClass", name, e))?;
            seen.storage_class = Lazy::Read(class.as_ref().map(Into::into));
        }
        Fact::Prime => {
            let name = build::prime_name(&uid);
            let read = |namespace: &str| {
                let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
                let name = name.clone();
                async move { api.get_opt(&name).await.map_err(|e| Error::kube("read prime PVC", &name, e)) }
            };
            let mut prime = read(&namespace).await?;
            // A smart clone across namespaces makes its prime in the source's.
            let t = &seen.target;
            if prime.is_none() && t.kind == SourceKind::Clone && t.source_namespace != namespace {
                prime = read(&seen.target.source_namespace).await?;
            }
            seen.prime = Lazy::Read(prime.as_ref().map(Prime::from));
        }
        Fact::Holder => {
            let name = build::prime_holder_name(&uid);
            let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
            let holder = api.get_opt(&name).await.map_err(|e| Error::kube("read holder pod", &name, e))?;
            seen.holder = Lazy::Read(holder.as_ref().map(Holder::from));
        }
        Fact::Pv { name } => {
            let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
            let pv = api.get_opt(&name).await.map_err(|e| Error::kube("read PV", &name, e))?;
            seen.pv = Lazy::Read(pv.as_ref().map(Pv::from));
        }
        Fact::Task => seen.task = Lazy::Read(ctx.followers.view(&uid)),
        Fact::PrimeRefusal => {
            // decide asks only about a prime it has seen; one without a uid has no events, and
            // an empty uid in the selector would match events about nothing.
            let (prime, prime_namespace) =
                seen.prime.get().and_then(Option::as_ref).map(|p| (p.uid.clone(), p.namespace.clone())).unzip();
            let prime = prime.unwrap_or_default();
            if prime.is_empty() {
                seen.prime_refusal = Lazy::Read(None);
                return Ok(());
            }
            let refusals =
                ListParams::default().fields(&format!("involvedObject.uid={prime},reason=ProvisioningFailed"));
            let events = Api::<Event>::namespaced(ctx.client.clone(), &prime_namespace.unwrap_or(namespace))
                .list(&refusals)
                .await
                .map_err(|e| Error::kube("list the prime's events", &build::prime_name(&uid), e))?;
            let latest = events.items.into_iter().max_by_key(|e| e.last_timestamp.clone().map(|t| t.0));
            seen.prime_refusal = Lazy::Read(latest.map(|e| e.message.unwrap_or_default()));
        }
    }
    Ok(())
}

/// Writes annotations on the target (a merge patch: never a read-modify-write); `None`
/// removes one.
pub(super) async fn annotate(
    ctx: &Ctx,
    pvc: &PersistentVolumeClaim,
    pairs: &[(&str, Option<String>)],
) -> Result<(), Error> {
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

pub(super) fn running_condition(status: &str, reason: &str, message: &str) -> Vec<(&'static str, Option<String>)> {
    vec![
        (ann::RUNNING, Some(status.to_string())),
        (ann::RUNNING_REASON, Some(reason.to_string())),
        (ann::RUNNING_MESSAGE, Some(message.to_string())),
    ]
}

pub(super) fn phase(phase: PodPhase) -> (&'static str, Option<String>) {
    (ann::POD_PHASE, Some(phase.as_str().to_string()))
}

pub(super) async fn unsupported(
    pvc: &PersistentVolumeClaim,
    ctx: &Ctx,
    message: &str,
    announce: bool,
) -> Result<Action, Error> {
    if announce {
        ctx.event(&ObjectRef::from_obj(pvc), EventReason::UnsupportedSource, message).await;
        annotate(ctx, pvc, &running_condition("false", UNSUPPORTED_CONDITION, message)).await?;
    }
    Ok(Action::await_change())
}

async fn wait_for_source(pvc: &PersistentVolumeClaim, target: &Target, ctx: &Ctx) -> Action {
    let namespace = pvc.namespace().unwrap_or_default();
    let note = format!("{} {namespace}/{} not found; waiting for it", target.kind.kind_name(), target.source_name);
    ctx.event(&ObjectRef::from_obj(pvc), EventReason::SourceMissing, &note).await;
    Action::requeue(POLL)
}

async fn wait_for_class(pvc: &PersistentVolumeClaim, target: &Target, ctx: &Ctx) -> Action {
    let note = format!("StorageClass {:?} not found; waiting for it", target.class);
    ctx.event(&ObjectRef::from_obj(pvc), EventReason::PendingPopulation, &note).await;
    Action::await_change()
}

async fn wait_for_consumer(pvc: &PersistentVolumeClaim, ctx: &Ctx, announce: bool) -> Result<Action, Error> {
    if announce {
        let note = "waiting for a consumer to be scheduled (WaitForFirstConsumer)";
        ctx.event(&ObjectRef::from_obj(pvc), EventReason::PendingPopulation, note).await;
        let mut pairs = running_condition("false", condition::PENDING, "waiting for the first consumer");
        pairs.push(phase(PodPhase::Pending));
        annotate(ctx, pvc, &pairs).await?;
    }
    Ok(Action::await_change())
}

/// Creates the prime PVC (or takes the one a racing reconcile created), and says so.
async fn create_prime(pvc: &PersistentVolumeClaim, ctx: &Ctx) -> Result<Prime, Error> {
    create_prime_from(pvc, build::prime_pvc(pvc), ctx).await
}

/// Creates `prime` for `pvc` (or takes the one a racing reconcile created), and says so.
async fn create_prime_from(
    pvc: &PersistentVolumeClaim,
    prime: PersistentVolumeClaim,
    ctx: &Ctx,
) -> Result<Prime, Error> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &prime.namespace().unwrap_or_default());
    let name = prime.name_any();
    let prime = create_or_take(&api, &prime, "create prime PVC").await?;
    ctx.event(&ObjectRef::from_obj(pvc), EventReason::PrimeCreated, &format!("created PVC prime {name}")).await;
    annotate(ctx, pvc, &[(ann::PVC_PRIME, Some(name))]).await?;
    Ok(Prime::from(&prime))
}

/// Creates the holder pod (or takes the one a racing reconcile created).
async fn create_holder(pvc: &PersistentVolumeClaim, node: Option<&str>, ctx: &Ctx) -> Result<Holder, Error> {
    let prime = build::prime_name(&pvc.uid().unwrap_or_default());
    create_pod(ctx, build::holder_pod(pvc, &prime, node, &ctx.cfg.holder_image), "holder pod").await
}

/// Creates `pod` (or takes the one of that name a racing reconcile created); `what` names
/// it in errors.
async fn create_pod(ctx: &Ctx, pod: Pod, what: &'static str) -> Result<Holder, Error> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    Ok(Holder::from(&create_or_take(&api, &pod, what).await?))
}

/// Creates `object` (or takes the one of its name a racing reconcile created); `what` names
/// the step in errors.
async fn create_or_take<K>(api: &Api<K>, object: &K, what: &'static str) -> Result<K, Error>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = object.name_any();
    match api.create(&PostParams::default(), object).await {
        Ok(created) => Ok(created),
        Err(kube::Error::Api(s)) if s.code == 409 => api.get(&name).await.map_err(|e| Error::kube(what, &name, e)),
        Err(e) => Err(Error::kube(what, &name, e)),
    }
}

/// The claim a clone copies, and whether this target may copy it and now.
///
/// A source in another namespace is honoured only for a claim a DataVolume controls whose
/// own `source.pvc` names it: that DataVolume's creator was authorised for it by the
/// admission webhook, and its spec cannot change. Anyone can write the annotation on a
/// claim of their own.
async fn clone_volume(pvc: &PersistentVolumeClaim, t: &Target, name: &str, ctx: &Ctx) -> Result<CloneVolume, Error> {
    if let Some(why) = cross_namespace_refusal(pvc, t, CloneKind::Pvc, name, ctx).await? {
        return Ok(CloneVolume::Refused(why));
    }
    read_clone_volume(t, name, ctx).await
}

/// Claim `name` of `t`'s source namespace, as a clone source.
async fn read_clone_volume(t: &Target, name: &str, ctx: &Ctx) -> Result<CloneVolume, Error> {
    let ns = &t.source_namespace;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let Some(source) = claims.get_opt(name).await.map_err(|e| Error::kube("read source PVC", name, e))? else {
        return Ok(CloneVolume::Missing);
    };
    let pv_name = source.spec.as_ref().and_then(|s| s.volume_name.clone()).unwrap_or_default();
    if source.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") || pv_name.is_empty() {
        return Ok(CloneVolume::NotBound);
    }
    // Whether another pod uses it matters only before the copy starts (decide.rs): a copy
    // under way is not held up, so the namespace's pods are not listed on every reconcile of it.
    let list = if t.phase == Some(PodPhase::Running) {
        Vec::new()
    } else {
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
        pods.list(&Default::default()).await.map_err(|e| Error::kube("list pods in", ns, e))?.items
    };
    let user = list.iter().find(|p| {
        // Other clones' source holders only read it; an importer pod (a golden claim being
        // filled in place) writes it.
        let ours =
            p.labels().get(super::vocab::label::NAME).map(String::as_str) == Some(super::vocab::label::SOURCE_HOLDER);
        let done = matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
        let mounts = p.spec.as_ref().and_then(|s| s.volumes.as_ref()).is_some_and(|vs| {
            vs.iter().any(|v| v.persistent_volume_claim.as_ref().is_some_and(|c| c.claim_name == name))
        });
        mounts && !ours && !done
    });
    let modes = source.spec.as_ref().and_then(|s| s.access_modes.clone()).unwrap_or_default();
    let rwo_only = modes.iter().any(|m| m == "ReadWriteOnce") && !modes.iter().any(|m| m.contains("Many"));
    Ok(CloneVolume::Ready {
        co_locate: rwo_only.then(|| source.uid()).flatten(),
        in_use_by: user.map(ResourceExt::name_any),
        block: build::is_block(&source),
        pv_name,
        class: source.spec.as_ref().and_then(|s| s.storage_class_name.clone()).unwrap_or_default(),
        size: build::requested_bytes(&source).unwrap_or(0),
    })
}

/// How the clone is made, by CDI's rules: for a snapshot source, whether the target can be
/// restored from it; for a source claim, what the target's StorageProfile asks and the
/// driver can do.
async fn clone_strategy(seen: &Snapshot, pvc: &PersistentVolumeClaim, ctx: &Ctx) -> Result<Choice, Error> {
    let target_class = read_class(ctx, &seen.target.class).await?;
    let target_provisioner = target_class.as_ref().map(|c| c.provisioner.clone()).unwrap_or_default();
    let allow_expansion = target_class.as_ref().and_then(|c| c.allow_volume_expansion).unwrap_or(false);
    let (target_block, target_size) = (build::is_block(pvc), build::requested_bytes(pvc).unwrap_or(0));
    if let Some(SourceSnapshot::Ready { driver, block, size }) = seen.source_snapshot.get() {
        return Ok(strategy::choose_restore(&strategy::RestoreInputs {
            driver: driver.clone(),
            target_provisioner,
            target_class: seen.target.class.clone(),
            source_block: *block,
            target_block,
            restore_size: *size,
            target_size,
            allow_expansion,
        }));
    }
    let Some(CloneVolume::Ready { block, class, size, .. }) = seen.clone_source.get() else {
        // decide asks only once the source is ready: choose the copy, which needs nothing.
        return Ok(Choice { strategy: Strategy::Copy, fallback: None });
    };
    let source_class = read_class(ctx, class).await?;
    let (profile_strategy, snapshot_class) = ctx.defaults.clone_profile(&seen.target.class);
    // CDI's order: the CDI object's override, then the profile, then CDI's default.
    let overridden = crate::config::cdi::clone_strategy_override(&ctx.client)
        .await
        .map_err(|e| Error::kube("read the CDI object's", "cloneStrategyOverride", e))?;
    Ok(strategy::choose(&strategy::Inputs {
        profile_strategy: overridden.or(profile_strategy),
        source_class: class.clone(),
        target_class: seen.target.class.clone(),
        source_provisioner: source_class.as_ref().map(|c| c.provisioner.clone()).unwrap_or_default(),
        target_provisioner,
        source_block: *block,
        target_block,
        source_size: *size,
        target_size,
        allow_expansion,
        snapshot_class,
    }))
}

/// StorageClass `name`; `None` when it does not exist (or no name is given).
async fn read_class(ctx: &Ctx, name: &str) -> Result<Option<StorageClass>, Error> {
    if name.is_empty() {
        return Ok(None);
    }
    let classes: Api<StorageClass> = Api::all(ctx.client.clone());
    classes.get_opt(name).await.map_err(|e| Error::kube("read StorageClass", name, e))
}

/// VolumeSnapshot `namespace/name`, a DataVolume's source: its driver, mode and restore size
/// (from its bound VolumeSnapshotContent) once it is ready to use.
async fn source_snapshot(ctx: &Ctx, namespace: &str, name: &str) -> Result<SourceSnapshot, Error> {
    let Some(snapshot) =
        snapshots(ctx, namespace).get_opt(name).await.map_err(|e| Error::kube("read VolumeSnapshot", name, e))?
    else {
        return Ok(SourceSnapshot::Missing);
    };
    let status = &snapshot.data["status"];
    let content = status["boundVolumeSnapshotContentName"].as_str().unwrap_or_default();
    if status["readyToUse"] != serde_json::Value::Bool(true) || content.is_empty() {
        return Ok(SourceSnapshot::NotReady);
    }
    let contents: Api<kube::api::DynamicObject> =
        Api::all_with(ctx.client.clone(), &build::volume_snapshot_content_resource());
    let Some(content) =
        contents.get_opt(content).await.map_err(|e| Error::kube("read VolumeSnapshotContent", content, e))?
    else {
        return Ok(SourceSnapshot::NotReady);
    };
    let quantity = |v: &serde_json::Value| v.as_u64().or_else(|| crate::api::quantity::parse_bytes(v.as_str()?).ok());
    let size = quantity(&status["restoreSize"]).or_else(|| quantity(&content.data["status"]["restoreSize"]));
    Ok(SourceSnapshot::Ready {
        driver: content.data["spec"]["driver"].as_str().unwrap_or_default().to_string(),
        block: content.data["spec"]["sourceVolumeMode"].as_str().map(|m| m == "Block"),
        size: size.unwrap_or(0),
    })
}

/// Restores `snapshot` into the temporary claim a copy reads, with a class of its driver:
/// the target's if it is one, else the driver's default class, else its first by name.
async fn create_restored_source(
    pvc: &PersistentVolumeClaim,
    seen: &Snapshot,
    snapshot: &str,
    block: bool,
    size: u64,
    driver: &str,
    ctx: &Ctx,
) -> Result<Option<Action>, Error> {
    let t = &seen.target;
    let classes: Api<StorageClass> = Api::all(ctx.client.clone());
    let mut of_driver: Vec<StorageClass> =
        classes.list(&Default::default()).await.map_err(|e| Error::kube("list", "StorageClasses", e))?.items;
    of_driver.retain(|c| c.provisioner == driver);
    of_driver.sort_by_key(|c| {
        let default =
            c.annotations().get("storageclass.kubernetes.io/is-default-class").map(String::as_str) == Some("true");
        (c.name_any() != t.class, !default, c.name_any())
    });
    let Some(class) = of_driver.first() else {
        let note = format!(
            "no StorageClass of driver {driver:?} to restore VolumeSnapshot {}/{snapshot} into for a copy; waiting for one",
            t.source_namespace
        );
        ctx.event(&ObjectRef::from_obj(pvc), EventReason::CloneSourceMissing, &note).await;
        return Ok(Some(Action::requeue(POLL)));
    };
    // A snapshot that does not say its restore size is restored at the target's.
    let size = if size > 0 { size } else { build::requested_bytes(pvc).unwrap_or(0) };
    let claim = build::restored_source_pvc(pvc, &t.source_namespace, snapshot, &class.name_any(), block, size);
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &t.source_namespace);
    create_or_take(&api, &claim, "create the claim to restore the snapshot into").await?;
    Ok(Some(Action::requeue(SHORT)))
}

/// VolumeSnapshots of `namespace`, read and written untyped (no snapshot client types).
fn snapshots(ctx: &Ctx, namespace: &str) -> Api<kube::api::DynamicObject> {
    Api::namespaced_with(ctx.client.clone(), namespace, &build::volume_snapshot_resource())
}

/// Writes the chosen strategy on the claim, and tells it (a warning when it is a fallback).
async fn record_strategy(pvc: &PersistentVolumeClaim, choice: &Choice, ctx: &Ctx) -> Result<(), Error> {
    let way = choice.strategy.as_str();
    let target = ObjectRef::from_obj(pvc);
    match &choice.fallback {
        Some((reason, why)) => {
            let note = format!("{why}: cloning host-assisted ({way}) instead");
            ctx.event(&target, EventReason::CloneFallback(reason), &note).await;
        }
        None => ctx.event(&target, EventReason::CloneStrategy, &format!("Cloning with strategy {way}")).await,
    }
    let reason = choice.fallback.as_ref().map(|(r, _)| r.to_string());
    annotate(ctx, pvc, &[(ann::CLONE_TYPE, Some(way.to_string())), (ann::CLONE_FALLBACK_REASON, reason)]).await
}

/// Whether the DataVolume controlling `pvc` asks for a clone of `namespace/name`: by its
/// `source.pvc`, or by a `sourceRef` whose DataSource lives in that same namespace (one in
/// another namespace could be pointed elsewhere after the webhook judged the DataVolume, by
/// whoever may write it).
/// Why `t` may not clone `name` (of `origin`) from its source namespace, if that is another
/// namespace and no DataVolume asks for it.
async fn cross_namespace_refusal(
    pvc: &PersistentVolumeClaim,
    t: &Target,
    origin: CloneKind,
    name: &str,
    ctx: &Ctx,
) -> Result<Option<String>, Error> {
    let ns = &t.source_namespace;
    if *ns == t.namespace {
        return Ok(None);
    }
    Ok(match asked_by_datavolume(pvc, origin, ns, name, ctx).await? {
        Asked::Yes => None,
        Asked::No => Some(format!(
            "a clone from another namespace ({ns}/{name}) must be asked for by a DataVolume (whose creator the \
             admission webhook authorises); claim {}/{} names it itself",
            t.namespace, t.name
        )),
        Asked::ThroughDataSourceElsewhere(data_source) => Some(format!(
            "DataSource {data_source} names {ns}/{name}, in another namespace than its own: a clone across \
             namespaces is made only from a DataSource beside its source (its namespace's owners decide what it \
             names); create one in {ns}, or name the source in spec.source"
        )),
    })
}

/// Whether a DataVolume asks for a clone of a source in another namespace.
enum Asked {
    Yes,
    No,
    /// Through a DataSource (`namespace/name`) that lives elsewhere than the source, which its
    /// owners could point at another source after the webhook judged the DataVolume.
    ThroughDataSourceElsewhere(String),
}

async fn asked_by_datavolume(
    pvc: &PersistentVolumeClaim,
    origin: CloneKind,
    namespace: &str,
    name: &str,
    ctx: &Ctx,
) -> Result<Asked, Error> {
    let asked = |yes: bool| Ok(if yes { Asked::Yes } else { Asked::No });
    let Some(owner) = pvc.owner_references().iter().find(|o| o.controller == Some(true) && o.kind == "DataVolume")
    else {
        return asked(false);
    };
    let dv_namespace = pvc.namespace().unwrap_or_default();
    let api: Api<DataVolume> = Api::namespaced(ctx.client.clone(), &dv_namespace);
    let dv = api.get_opt(&owner.name).await.map_err(|e| Error::kube("read DataVolume", &owner.name, e))?;
    let Some(dv) = dv.filter(|dv| dv.uid().as_deref() == Some(owner.uid.as_str())) else { return asked(false) };
    let or_own = |ns: &Option<String>| ns.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| dv_namespace.clone());
    if let Some(p) = dv.spec.source.as_ref().and_then(|s| s.pvc.as_ref()) {
        return asked(origin == CloneKind::Pvc && or_own(&p.namespace) == namespace && p.name == name);
    }
    if let Some(s) = dv.spec.source.as_ref().and_then(|s| s.snapshot.as_ref()) {
        return asked(origin == CloneKind::Snapshot && or_own(&s.namespace) == namespace && s.name == name);
    }
    let Some(r) = dv.spec.source_ref.as_ref() else { return asked(false) };
    let ds_namespace = or_own(&r.namespace);
    if ds_namespace != namespace {
        return Ok(Asked::ThroughDataSourceElsewhere(format!("{ds_namespace}/{}", r.name)));
    }
    let client = ctx.client.clone();
    let Some(ds) = crate::datasource::get(&client, ds_namespace, r.name.clone()).await else { return asked(false) };
    let resolved = crate::datasource::resolve(&ds, |ns, n| crate::datasource::get(&client, ns, n)).await;
    let (namespace, name) = (namespace.to_string(), name.to_string());
    asked(match origin {
        CloneKind::Pvc => resolved == Ok(crate::datasource::Resolved::Pvc { namespace, name }),
        CloneKind::Snapshot => resolved == Ok(crate::datasource::Resolved::Snapshot { namespace, name }),
    })
}

/// Starts following (and the mover starts or re-attaches to) the task.
async fn start_task(
    pvc: &PersistentVolumeClaim,
    target: &Target,
    task: Task,
    announce: bool,
    ctx: &Ctx,
) -> Result<Action, Error> {
    let request = match populate_request(pvc, &task, ctx).await {
        Ok(r) => r,
        Err(e @ (source::SourceError::Api { .. } | source::SourceError::Mover(_))) => return Err(Error::Source(e)),
        Err(e) => {
            let failure = Terminal {
                reason: FailureReason::InvalidRequest,
                message: e.to_string(),
                generation: task.generation,
                attempt: target.attempt + 1,
            };
            return fail_terminally(pvc, target, ctx, &failure).await;
        }
    };
    let target_ref = ObjectRef::from_obj(pvc);
    let upload = target.kind == SourceKind::Upload;
    if announce {
        let (reason, note) = match &task.peer {
            _ if upload => {
                (EventReason::ImportScheduled, format!("Upload scheduled on node {} (task {})", task.node, task.id))
            }
            Some(peer) => (
                EventReason::CloneScheduled,
                format!(
                    "Clone scheduled on node {} (task {}), host-assisted (copy): PVC {}/{} read on node {}",
                    task.node, task.id, peer.namespace, peer.claim, peer.node
                ),
            ),
            None => {
                (EventReason::ImportScheduled, format!("Import scheduled on node {} (task {})", task.node, task.id))
            }
        };
        ctx.event(&target_ref, reason, &note).await;
        if let Some(note) = source::node_pull_fallback(&task.plan) {
            ctx.event(&target_ref, EventReason::NodePullFallback, note).await;
        }
        let mut pairs = running_condition("true", condition::POD_RUNNING, "");
        // The prime's name again: written right after creating it, it is lost for good if
        // that write failed, since the prime then exists and that step is not redone.
        let prime = (ann::PVC_PRIME, Some(build::prime_name(&target.uid)));
        pairs.extend([phase(PodPhase::Running), (ann::FAILED_GENERATION, None), prime]);
        if upload {
            // Ready only once the mover has the task (the follower says so).
            pairs.push(not_ready());
        }
        annotate(ctx, pvc, &pairs).await?;
    }
    let prime = upload.then(|| build::prime_name(&target.uid));
    ctx.followers.start(ctx.me(), target_ref, target.uid.clone(), task.node, request, prime);
    Ok(Action::requeue(FOLLOWED))
}

async fn populate_request(
    pvc: &PersistentVolumeClaim,
    task: &Task,
    ctx: &Ctx,
) -> Result<pb::PopulateRequest, source::SourceError> {
    let dest = ctx.holder_destination(pvc, &task.id, &task.holder_uid, &task.pv_name).await;
    if let Some(peer) = &task.peer {
        let address =
            ctx.movers.address_on_node(&peer.node).await.map_err(|e| source::SourceError::Mover(e.to_string()))?;
        let mode = if peer.block { pb::VolumeMode::Block } else { pb::VolumeMode::Filesystem };
        let volume = pb::PodVolume {
            pod_uid: peer.holder_uid.clone(),
            volume_name: build::SOURCE_VOLUME.to_string(),
            pv_name: peer.pv_name.clone(),
            mode: mode as i32,
        };
        let volume = pb::VolumeSource {
            address,
            volume: Some(pb::Target { kind: Some(pb::target::Kind::PodVolume(volume)) }),
            server_name: String::new(),
        };
        return Ok(source::clone_request(&task.plan, dest, volume));
    }
    let objects = source::ApiObjects::new(ctx.client.clone(), &pvc.namespace().unwrap_or_default());
    source::populate_request(&objects, &task.plan, dest, &ctx.import_settings(&task.plan).await?).await
}

async fn task_ended(pvc: &PersistentVolumeClaim, target: &Target, ctx: &Ctx, ended: Ended) -> Result<Action, Error> {
    let upload = target.kind == SourceKind::Upload;
    let extra: &[(&'static str, Option<String>)] = if upload { &[not_ready()] } else { &[] };
    let work = Work::of(target.kind);
    match ended {
        Ended::Succeeded(c) => succeeded(pvc, &c, ctx, extra, work).await,
        Ended::Retry { reason, message, restarts, attempt } => {
            if upload {
                annotate(ctx, pvc, extra).await?;
            }
            retry_later(pvc, ctx, reason, &message, restarts, attempt, work).await
        }
        Ended::Failed(failure) => fail_terminally(pvc, target, ctx, &failure).await,
        Ended::Lost(why) => {
            ctx.event(&ObjectRef::from_obj(pvc), EventReason::MoverUnavailable, &why).await;
            if upload {
                // The mover may have lost the task (a restart): no upload until it has it
                // again.
                mark_upload_ready(ctx, pvc, Some(&build::prime_name(&target.uid)), false).await?;
            }
            Ok(Action::requeue(POLL))
        }
    }
}

/// `storage.pod.ready: "false"`: the upload proxy must not send bytes (yet, or any more).
pub(super) fn not_ready() -> (&'static str, Option<String>) {
    (cdi_ann::POD_READY, Some("false".to_string()))
}

/// Writes `storage.pod.ready` on an upload's target and, when it has one, its prime (the
/// proxy reads the target; CDI's reads the prime).
pub(super) async fn mark_upload_ready(
    ctx: &Ctx,
    pvc: &PersistentVolumeClaim,
    prime: Option<&str>,
    ready: bool,
) -> Result<(), Error> {
    let pair = [(cdi_ann::POD_READY, Some(ready.to_string()))];
    annotate(ctx, pvc, &pair).await?;
    if let Some(prime) = prime {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &pvc.namespace().unwrap_or_default());
        let patch = serde_json::json!({"metadata": {"annotations": {cdi_ann::POD_READY: ready.to_string()}}});
        match api.patch(prime, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {}
            // Gone already (handed over): nothing left to mark.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(Error::kube("annotate", prime, e)),
        }
    }
    Ok(())
}

/// What a flow does, in its events and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Work {
    Import,
    Clone,
}

impl Work {
    pub(super) fn of(kind: SourceKind) -> Work {
        match kind {
            SourceKind::Import | SourceKind::Upload => Work::Import,
            SourceKind::Clone => Work::Clone,
        }
    }

    fn succeeded(self) -> EventReason {
        match self {
            Work::Import => EventReason::ImportSucceeded,
            Work::Clone => EventReason::CloneSucceeded,
        }
    }

    fn failed(self) -> EventReason {
        match self {
            Work::Import => EventReason::ImportFailed,
            Work::Clone => EventReason::CloneFailed,
        }
    }
}

/// Records success (plus the `extra` annotations of the caller's flow); the next reconcile
/// cleans up.
pub(super) async fn succeeded(
    pvc: &PersistentVolumeClaim,
    c: &pb::Completed,
    ctx: &Ctx,
    extra: &[(&'static str, Option<String>)],
    work: Work,
) -> Result<Action, Error> {
    let complete = match work {
        Work::Import => "Import Complete",
        Work::Clone => "Clone Complete",
    };
    let mut pairs = running_condition("false", condition::COMPLETED, complete);
    pairs.extend([
        phase(PodPhase::Succeeded),
        (ann::PROGRESS, Some(crate::api::names::values::PROGRESS_DONE.to_string())),
    ]);
    pairs.extend_from_slice(extra);
    annotate(ctx, pvc, &pairs).await?;
    let formats = c.formats.join(", ");
    let note = match work {
        Work::Import => {
            format!("Successfully imported into PVC {} ({formats}, virtual size {})", pvc.name_any(), c.virtual_size)
        }
        Work::Clone => format!("Successfully cloned into PVC {} (size {})", pvc.name_any(), c.virtual_size),
    };
    ctx.event(&ObjectRef::from_obj(pvc), work.succeeded(), &note).await;
    ctx.metrics.population_finished(Finished::Succeeded, pvc);
    Ok(Action::requeue(Duration::ZERO))
}

pub(super) async fn retry_later(
    pvc: &PersistentVolumeClaim,
    ctx: &Ctx,
    why: FailureReason,
    message: &str,
    restarts: u32,
    attempt: u32,
    work: Work,
) -> Result<Action, Error> {
    let delay = cdi_common::backoff::Backoff::new(ctx.cfg.retry_base, ctx.cfg.retry_cap).delay(restarts);
    let not_before = jiff::Timestamp::now().checked_add(delay).unwrap_or(jiff::Timestamp::MAX);
    ctx.event(
        &ObjectRef::from_obj(pvc),
        work.failed(),
        &format!("{message} ({why}); retry {restarts} in {}s", delay.as_secs()),
    )
    .await;
    let mut pairs = running_condition("false", why.condition_reason(), message);
    pairs.extend([
        (ann::POD_RESTARTS, Some(restarts.to_string())),
        (ann::ATTEMPT, Some(attempt.to_string())),
        (ann::RETRY_AFTER, Some(not_before.to_string())),
        phase(PodPhase::Pending),
    ]);
    annotate(ctx, pvc, &pairs).await?;
    ctx.metrics.population_finished(Finished::Retried(why), pvc);
    Ok(Action::requeue(delay))
}

/// What is left of the delay [`retry_later`] set before the task of `plan` may start; `None`
/// when it may start now. The annotations that record a retry wake the controller at once,
/// so the requeue alone would not hold the retry back. An upload waits for its uploader
/// anyway.
pub(super) fn retry_wait(pvc: &PersistentVolumeClaim, plan: &crate::plan::ImportPlan) -> Option<Duration> {
    if matches!(plan.source, crate::plan::ImportSource::Upload) {
        return None;
    }
    let at = pvc.annotations().get(ann::RETRY_AFTER)?.parse::<jiff::Timestamp>().ok()?;
    Duration::try_from(at.duration_since(jiff::Timestamp::now())).ok().filter(|left| !left.is_zero())
}

async fn fail_terminally(
    pvc: &PersistentVolumeClaim,
    target: &Target,
    ctx: &Ctx,
    failure: &Terminal,
) -> Result<Action, Error> {
    let Terminal { reason: why, message, generation, attempt } = failure;
    ctx.event(
        &ObjectRef::from_obj(pvc),
        Work::of(target.kind).failed(),
        &format!("{message} ({why}); not retried until the source changes"),
    )
    .await;
    let mut pairs = running_condition("false", why.condition_reason(), message);
    pairs.extend([
        phase(PodPhase::Failed),
        (ann::FAILED_GENERATION, Some(generation.to_string())),
        (ann::ATTEMPT, Some(attempt.to_string())),
    ]);
    if target.kind == SourceKind::Upload {
        pairs.push(not_ready());
    }
    annotate(ctx, pvc, &pairs).await?;
    // Free the volumes; the prime stays for the next attempt.
    delete(ctx, Child::Holder, pvc).await?;
    delete(ctx, Child::SourceHolder, pvc).await?;
    ctx.metrics.population_finished(Finished::Failed(*why), pvc);
    Ok(Action::await_change())
}

/// Hands the prime's PV to the target: the binder then binds the target to it and marks
/// the prime `Lost`.
async fn rebind_pv(pvc: &PersistentVolumeClaim, pv_name: &str, ctx: &Ctx) -> Result<Action, Error> {
    let namespace = pvc.namespace().unwrap_or_default();
    let uid = pvc.uid().unwrap_or_default();
    let patch = serde_json::json!({
        "metadata": {"annotations": {ann::POPULATED_FOR: format!("{namespace}/{}", pvc.name_any())}},
        "spec": {"claimRef": {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "namespace": namespace, "name": pvc.name_any(), "uid": uid,
            "resourceVersion": pvc.resource_version(),
        }},
    });
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    pvs.patch(pv_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::kube("rebind PV", pv_name, e))?;
    let note = format!("PV {pv_name} handed over from {}", build::prime_name(&uid));
    ctx.event(&ObjectRef::from_obj(pvc), EventReason::Rebind, &note).await;
    Ok(Action::requeue(SHORT))
}

/// The target is being deleted: stop the mover task, remove the holder and the prime.
async fn cleanup(pvc: &PersistentVolumeClaim, target: &Target, ctx: &Ctx) -> Result<Action, Error> {
    let uid = &target.uid;
    let namespace = pvc.namespace().unwrap_or_default();
    let task = match ctx.followers.task_of(uid) {
        Some(t) => Some(t),
        // Not followed (e.g. after a restart): the task of the current attempt, on the
        // holder's node.
        None => {
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &namespace);
            // Best effort: the children are deleted below whatever these reads say.
            let holder = pods.get_opt(&build::prime_holder_name(uid)).await.ok().flatten().as_ref().map(Holder::from);
            let prime = claims.get_opt(&build::prime_name(uid)).await.ok().flatten().as_ref().map(Prime::from);
            unfollowed_task(target, holder.as_ref(), prime.as_ref())
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
    ctx.followers.forget(uid);
    delete_children(pvc, ctx).await?;
    Ok(Action::await_change())
}

/// What the populator creates for a target.
#[derive(Debug, Clone, Copy)]
enum Child {
    Holder,
    Prime,
    /// A clone's source holder, in the source's namespace.
    SourceHolder,
    /// A snapshot clone's VolumeSnapshot.
    Snapshot,
    /// The claim a snapshot source was restored into to be copied, in the source's namespace.
    RestoredSource,
}

async fn delete_children(pvc: &PersistentVolumeClaim, ctx: &Ctx) -> Result<(), Error> {
    delete(ctx, Child::Holder, pvc).await?;
    delete(ctx, Child::SourceHolder, pvc).await?;
    delete(ctx, Child::Snapshot, pvc).await?;
    delete(ctx, Child::RestoredSource, pvc).await?;
    delete(ctx, Child::Prime, pvc).await
}

/// Deletes a child of `pvc`, treating NotFound as done.
async fn delete(ctx: &Ctx, child: Child, pvc: &PersistentVolumeClaim) -> Result<(), Error> {
    let namespace = pvc.namespace().unwrap_or_default();
    let uid = pvc.uid().unwrap_or_default();
    let params = DeleteParams::background();
    let (name, result) = match child {
        Child::Holder => {
            let name = build::prime_holder_name(&uid);
            let result = Api::<Pod>::namespaced(ctx.client.clone(), &namespace).delete(&name, &params).await;
            (name, result.map(|_| ()))
        }
        Child::Prime => {
            let name = build::prime_name(&uid);
            let mut namespaces = vec![namespace.clone()];
            // A smart clone across namespaces made it in the source's.
            if let Some(t) =
                Target::from_pvc(pvc).filter(|t| t.kind == SourceKind::Clone && t.source_namespace != namespace)
            {
                namespaces.push(t.source_namespace);
            }
            let mut result = Ok(());
            for namespace in namespaces {
                let api = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &namespace);
                match api.delete(&name, &params).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            (name, result)
        }
        Child::SourceHolder => {
            // Only a clone has one; its namespace is where its source lives.
            let Some(target) = Target::from_pvc(pvc).filter(|t| t.kind == SourceKind::Clone) else { return Ok(()) };
            let name = build::source_holder_name(&uid);
            let api = Api::<Pod>::namespaced(ctx.client.clone(), &target.source_namespace);
            (name.clone(), api.delete(&name, &params).await.map(|_| ()))
        }
        Child::Snapshot => {
            // Any clone may have one, in its source's namespace: a snapshot clone, or one that
            // fell back from it.
            let Some(target) = Target::from_pvc(pvc).filter(|t| t.kind == SourceKind::Clone) else { return Ok(()) };
            let name = build::clone_snapshot_name(&uid);
            (name.clone(), snapshots(ctx, &target.source_namespace).delete(&name, &params).await.map(|_| ()))
        }
        Child::RestoredSource => {
            let Some(target) = Target::from_pvc(pvc).filter(|t| t.kind == SourceKind::Clone) else { return Ok(()) };
            let name = build::restored_source_name(&uid);
            let api = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &target.source_namespace);
            (name.clone(), api.delete(&name, &params).await.map(|_| ()))
        }
    };
    match result {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::kube("delete", &name, e)),
    }
}

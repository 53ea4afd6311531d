//! One reconcile of a DataVolume: find (or create, or adopt) its PVC, then write the status
//! that PVC implies. Idempotent: every step can be redone after a crash.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::render::{self, Plan};
use super::status::{self, Claim, Situation};
use super::vocab::DvEvent;
use super::{Ctx, Error, defaults};
use crate::api::names::annotations as ann;
use crate::api::{DataVolume, VolumeImportSource, VolumeUploadSource};
use crate::controller::decide::{ClaimPhase, PodPhase, VolumeBinding};

/// How often to look again when nothing we watch will say that things changed (a default
/// storage class appearing, a foreign PVC going away).
const POLL: Duration = Duration::from_secs(15);

pub async fn reconcile(dv: Arc<DataVolume>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if dv.meta().deletion_timestamp.is_some() {
        // The garbage collector removes the PVC and the source after it.
        return Ok(Action::await_change());
    }
    let situation = situation(&dv, &ctx).await?;
    let observed = status::observe(&dv.name_any(), &situation);
    let now = Time(jiff::Timestamp::now());
    if dv.status.as_ref() != Some(&status::status(&dv.name_any(), dv.status.as_ref(), &observed, &now)) {
        // The cached object may predate our last status write (a change of the claim can
        // start a reconcile before the watch brings that write back): compare with the
        // stored status, so that each step is told once.
        let api: Api<DataVolume> = Api::namespaced(ctx.client.clone(), &dv.namespace().unwrap_or_default());
        let stored = api
            .get_status(&dv.name_any())
            .await
            .map_err(|e| Error::kube("read the status of DataVolume", &dv.name_any(), e))?;
        let new = status::status(&dv.name_any(), stored.status.as_ref(), &observed, &now);
        if stored.status.as_ref() != Some(&new) {
            for (reason, note) in status::events(stored.status.as_ref(), &observed) {
                ctx.event(&dv, reason, &note).await;
            }
            let patch = serde_json::json!({"status": new});
            api.patch_status(&dv.name_any(), &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map_err(|e| Error::kube("write the status of DataVolume", &dv.name_any(), e))?;
        }
    }
    Ok(match situation {
        Situation::NoStorageClass | Situation::NotOurs { .. } | Situation::Waiting(_) => Action::requeue(POLL),
        _ => Action::await_change(),
    })
}

pub fn error_policy(dv: Arc<DataVolume>, error: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(dv = %dv.name_any(), namespace = ?dv.namespace(), %error, "DataVolume reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// Where the DataVolume stands; creates or adopts its PVC on the way.
async fn situation(dv: &DataVolume, ctx: &Ctx) -> Result<Situation, Error> {
    let name = dv.name_any();
    let namespace = dv.namespace().unwrap_or_default();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &namespace);
    let existing = pvcs.get_opt(&name).await.map_err(|e| Error::kube("read PVC", &name, e))?;
    let dv_uid = dv.uid().unwrap_or_default();
    let plan = render::plan(dv);
    let ours = existing.as_ref().is_some_and(|pvc| controller_uid(pvc) == Some(dv_uid.as_str()));
    // What the webhook would have refused is reported, never acted on: no claim made, none
    // adopted.
    if !ours && let Plan::Invalid(message) = &plan {
        return Ok(Situation::Invalid(message.clone()));
    }
    let pvc = match existing {
        Some(pvc) if ours => {
            restore_source(dv, &plan, &pvc, ctx).await?;
            pvc
        }
        Some(pvc) if adoptable(dv, &pvc) => adopt(dv, &pvc, ctx).await?,
        Some(pvc) => return Ok(Situation::NotOurs { phase: claim_phase(&pvc) }),
        None => match plan {
            Plan::Invalid(message) => return Ok(Situation::Invalid(message)),
            Plan::Unsupported(what) => return Ok(Situation::Unsupported(what)),
            Plan::CloneFromDataSource { namespace, name } => {
                let from = match from_data_source(&namespace, &name, ctx).await {
                    Ok(from) => from,
                    Err(situation) => return Ok(situation),
                };
                match create_claim(dv, Plan::Clone { namespace: from.namespace, name: from.name }, ctx).await? {
                    Ok(pvc) => pvc,
                    Err(situation) => return Ok(situation),
                }
            }
            plan @ (Plan::Import(_) | Plan::Upload | Plan::Clone { .. } | Plan::Restore { .. }) => {
                match create_claim(dv, plan, ctx).await? {
                    Ok(pvc) => pvc,
                    Err(situation) => return Ok(situation),
                }
            }
        },
    };
    let mut claim = Claim::from_pvc(&pvc, &name);
    claim.restore = dv.spec.source.as_ref().is_some_and(|s| s.snapshot.is_some());
    let wffc = might_wait_for_consumer(&claim) && wait_for_first_consumer(&pvc, ctx).await?;
    Ok(Situation::Claim { claim, wffc })
}

/// What DataSource `namespace/name` names, as a clone's source; otherwise where the
/// DataVolume stands meanwhile.
async fn from_data_source(namespace: &str, name: &str, ctx: &Ctx) -> Result<render::CloneFrom, Situation> {
    let client = ctx.client.clone();
    let Some(ds) = crate::datasource::get(&client, namespace.to_string(), name.to_string()).await else {
        return Err(Situation::Waiting(format!("DataSource {namespace}/{name} not found")));
    };
    match crate::datasource::resolve(&ds, |ns, n| crate::datasource::get(&client, ns, n)).await {
        Ok(crate::datasource::Resolved::Pvc { namespace, name }) => {
            Ok(render::CloneFrom { kind: render::CloneKind::Pvc, namespace, name })
        }
        Ok(crate::datasource::Resolved::Snapshot { .. }) => {
            Err(Situation::Unsupported(format!("restoring a VolumeSnapshot (DataSource {namespace}/{name} names one)")))
        }
        Err(why) => Err(Situation::Waiting(format!("DataSource {namespace}/{name}: {why}"))),
    }
}

/// Creates the DataVolume's claim and its populator source for `plan` (or finds them made
/// by a racing reconcile). `Err`: where the DataVolume stands instead (a spec that cannot be
/// rendered, no class, a clone's source to wait for).
async fn create_claim(
    dv: &DataVolume,
    plan: Plan,
    ctx: &Ctx,
) -> Result<Result<PersistentVolumeClaim, Situation>, Error> {
    let name = dv.name_any();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &dv.namespace().unwrap_or_default());
    let class = match render::named_class(dv) {
        Some(class) => Some(class.to_string()),
        // `spec.pvc` is taken as written: the API server gives it the default class.
        None if dv.spec.pvc.is_some() => None,
        None => match default_class(dv, ctx).await? {
            Some(class) => Some(class),
            None => return Ok(Err(Situation::NoStorageClass)),
        },
    };
    let from = match &plan {
        Plan::Clone { namespace, name } => Some((render::CloneKind::Pvc, namespace, name)),
        Plan::Restore { namespace, name } => Some((render::CloneKind::Snapshot, namespace, name)),
        _ => None,
    }
    .map(|(kind, namespace, name)| render::CloneFrom { kind, namespace: namespace.clone(), name: name.clone() });
    let origin = match &from {
        Some(from) => clone_origin(from, ctx).await?,
        None => None,
    };
    let claim = match render::clone_claim(dv, class.as_deref(), ctx.defaults.as_ref(), from.as_ref(), origin) {
        Ok(claim) => claim,
        // Created later: the DataVolume waits for its source, as the claim would.
        Err(e @ render::RenderError::NoCloneSource(_)) => return Ok(Err(Situation::Waiting(e.to_string()))),
        Err(e) => return Ok(Err(Situation::Invalid(e.to_string()))),
    };
    match plan {
        Plan::Clone { .. } | Plan::Restore { .. } => {
            let from = from.as_ref().expect("a clone has a source");
            let source = render::clone_source(dv, from, ctx.defaults.as_ref());
            create_source(dv, source, "create VolumeCloneSource", ctx).await?;
        }
        Plan::Import(source) => {
            let node_pull = render::node_pull_fallback(&source);
            let source = render::import_source(dv, *source, ctx.defaults.as_ref());
            let created = create_source(dv, source, "create VolumeImportSource", ctx).await?;
            if created && let Some(note) = node_pull {
                ctx.event(dv, DvEvent::NodePullFallback, note).await;
            }
        }
        _ => {
            let source = render::upload_source(dv, ctx.defaults.as_ref());
            create_source(dv, source, "create VolumeUploadSource", ctx).await?;
        }
    }
    match pvcs.create(&PostParams::default(), &claim).await {
        Ok(pvc) => Ok(Ok(pvc)),
        // A racing reconcile made it: the next one reads it.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            Ok(Ok(pvcs.get(&name).await.map_err(|e| Error::kube("read PVC", &name, e))?))
        }
        Err(e) => Err(Error::kube("create PVC", &name, e)),
    }
}

fn claim_phase(pvc: &PersistentVolumeClaim) -> Option<ClaimPhase> {
    pvc.status.as_ref()?.phase.as_deref().and_then(ClaimPhase::parse)
}

/// The UID of the PVC's controller, when that is a DataVolume.
fn controller_uid(pvc: &PersistentVolumeClaim) -> Option<&str> {
    pvc.owner_references()
        .iter()
        .find(|r| r.controller == Some(true) && r.kind == DataVolume::kind(&()))
        .map(|r| r.uid.as_str())
}

/// `allowClaimAdoption: "true"`, and the PVC has no controller of its own.
fn adoptable(dv: &DataVolume, pvc: &PersistentVolumeClaim) -> bool {
    dv.annotations().get(ann::ALLOW_CLAIM_ADOPTION).map(String::as_str) == Some("true")
        && !pvc.owner_references().iter().any(|r| r.controller == Some(true))
        && pvc.meta().deletion_timestamp.is_none()
}

/// Makes the DataVolume the PVC's controller and marks the PVC populated for it. Only
/// metadata changes: the data in the claim is never touched. The resourceVersion guards
/// against a concurrent change of the owner list.
async fn adopt(dv: &DataVolume, pvc: &PersistentVolumeClaim, ctx: &Ctx) -> Result<PersistentVolumeClaim, Error> {
    let mut owners = pvc.owner_references().to_vec();
    owners.push(render::owned_by(dv));
    let patch = serde_json::json!({"metadata": {
        "resourceVersion": pvc.resource_version(),
        "ownerReferences": owners,
        "annotations": {ann::POPULATED_FOR_DATA_VOLUME: dv.name_any()},
    }});
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &dv.namespace().unwrap_or_default());
    api.patch(&pvc.name_any(), &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(|e| Error::kube("adopt PVC", &pvc.name_any(), e))
}

/// Creates one of the DataVolume's populator sources (`kind` names it in errors);
/// `false`: it existed already (ours from an earlier try; a stale one goes with its
/// DataVolume's uid, which the name carries).
async fn create_source<K>(dv: &DataVolume, source: K, kind: &'static str, ctx: &Ctx) -> Result<bool, Error>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &dv.namespace().unwrap_or_default());
    let name = source.name_any();
    match api.create(&PostParams::default(), &source).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(Error::kube(kind, &name, e)),
    }
}

/// The size and mode of a clone's source claim (a snapshot's restore size, as taken from a
/// volume of the target's mode); `None` when it does not exist (yet).
async fn clone_origin(from: &render::CloneFrom, ctx: &Ctx) -> Result<Option<render::CloneOrigin>, Error> {
    let (namespace, name) = (from.namespace.as_str(), from.name.as_str());
    if from.kind == render::CloneKind::Snapshot {
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), namespace, &crate::controller::build::volume_snapshot_resource());
        let snapshot = api.get_opt(name).await.map_err(|e| Error::kube("read VolumeSnapshot", name, e))?;
        let size = snapshot.and_then(|s| {
            let size = &s.data["status"]["restoreSize"];
            size.as_u64().or_else(|| crate::api::quantity::parse_bytes(size.as_str()?).ok())
        });
        // No overhead is added to a restore: the snapshot holds a whole volume.
        return Ok(size.map(|size| render::CloneOrigin { size, mode: defaults::VolumeMode::Filesystem }));
    }
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(source) = api.get_opt(name).await.map_err(|e| Error::kube("read source PVC", name, e))? else {
        return Ok(None);
    };
    let mode = if crate::controller::build::is_block(&source) {
        defaults::VolumeMode::Block
    } else {
        defaults::VolumeMode::Filesystem
    };
    Ok(crate::controller::build::requested_bytes(&source).map(|size| render::CloneOrigin { size, mode }))
}

/// Puts back the import (or upload) source of a claim still being filled, should it have
/// been deleted (the populate flow would wait for it forever).
async fn restore_source(dv: &DataVolume, plan: &Plan, pvc: &PersistentVolumeClaim, ctx: &Ctx) -> Result<(), Error> {
    let (_, name) = render::source_ref(dv);
    let names_ours = pvc.spec.as_ref().and_then(|s| s.data_source_ref.as_ref()).is_some_and(|r| r.name == name);
    let filled = pvc.annotations().get(ann::POD_PHASE).map(String::as_str) == Some(PodPhase::Succeeded.as_str());
    if !names_ours || filled {
        return Ok(());
    }
    if let Plan::Upload = plan {
        let api: Api<VolumeUploadSource> = Api::namespaced(ctx.client.clone(), &dv.namespace().unwrap_or_default());
        if api.get_opt(&name).await.map_err(|e| Error::kube("read VolumeUploadSource", &name, e))?.is_none() {
            tracing::info!(dv = %dv.name_any(), source = %name, "upload source missing: creating it again");
            let source = render::upload_source(dv, ctx.defaults.as_ref());
            create_source(dv, source, "create VolumeUploadSource", ctx).await?;
        }
        return Ok(());
    }
    let Plan::Import(source) = plan else { return Ok(()) };
    let api: Api<VolumeImportSource> = Api::namespaced(ctx.client.clone(), &dv.namespace().unwrap_or_default());
    if api.get_opt(&name).await.map_err(|e| Error::kube("read VolumeImportSource", &name, e))?.is_none() {
        tracing::info!(dv = %dv.name_any(), source = %name, "import source missing: creating it again");
        let source = render::import_source(dv, (**source).clone(), ctx.defaults.as_ref());
        create_source(dv, source, "create VolumeImportSource", ctx).await?;
    }
    Ok(())
}

async fn default_class(dv: &DataVolume, ctx: &Ctx) -> Result<Option<String>, Error> {
    let classes: Api<StorageClass> = Api::all(ctx.client.clone());
    let list = classes.list(&ListParams::default()).await.map_err(|e| Error::kube("list", "StorageClasses", e))?;
    Ok(defaults::default_class(&list.items, render::kubevirt_content(dv)))
}

/// Only a Pending claim not yet being filled can be waiting for its consumer; anything
/// else needs no StorageClass read.
fn might_wait_for_consumer(claim: &Claim) -> bool {
    claim.phase == Some(ClaimPhase::Pending)
        && !claim.node_selected
        && !claim.bind_immediate
        && !claim.adopted
        && !matches!(claim.pod_phase, Some(PodPhase::Running | PodPhase::Succeeded | PodPhase::Failed))
}

async fn wait_for_first_consumer(pvc: &PersistentVolumeClaim, ctx: &Ctx) -> Result<bool, Error> {
    let Some(class) = pvc.spec.as_ref().and_then(|s| s.storage_class_name.as_deref()).filter(|c| !c.is_empty()) else {
        return Ok(false);
    };
    let classes: Api<StorageClass> = Api::all(ctx.client.clone());
    let class = classes.get_opt(class).await.map_err(|e| Error::kube("read StorageClass", class, e))?;
    Ok(class.as_ref().map(VolumeBinding::from) == Some(VolumeBinding::WaitForFirstConsumer))
}

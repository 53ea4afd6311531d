//! The populate controller: PVCs whose `dataSourceRef` names a CDI source kind, and golden
//! PVCs (no data source, `storage.import.endpoint` or `storage.upload.target` annotation)
//! imported or uploaded in place (golden/).
//!
//! An upload is an import whose bytes come later: the mover holds the task waiting for the
//! upload proxy, and the follower marks the claim `storage.pod.ready: "true"` once it does.
//!
//! ```text
//!  watches: PVCs ─────────────┐
//!           holder pods (owned)├─▶ Controller ─▶ reconcile.rs (one step at a time, chosen by decide.rs)
//!           prime PVCs (owned) │                   │        ▲   └─ no CDI dataSourceRef: golden/
//!           Volume{Import,Upload}Source                   ▼        │ outcome triggers a reconcile
//!                                         follow.rs: mover task streams ──▶ progress annotations
//! ```
//!
//! Holder pods are CDI's importer pods by name (`importer-<claim>`); the mover appends the
//! task's log to their `cdi-log` emptyDir and they print it (`kubectl logs`).

pub mod build;
pub mod decide;
pub mod failure;
pub mod follow;
pub mod golden;
pub mod reconcile;
pub mod source;
pub mod strategy;
pub mod vocab;

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use tokio::sync::mpsc;

use crate::api::names::kinds;
use crate::api::{VolumeCloneSource, VolumeImportSource, VolumeUploadSource};
use crate::config::Defaults;
use crate::metrics::Metrics;
use crate::mover::Movers;
use follow::Followers;
use vocab::{EventReason, label};

/// Settings of the controller.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Image of the holder pods (one with `cdi-mover hold`).
    pub holder_image: String,
    /// At most one progress write per PVC per this.
    pub progress_interval: Duration,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// The populator's namespace: CDIConfig's `importProxy.trustedCAProxy` names a ConfigMap
    /// there, as in CDI's.
    pub namespace: String,
}

/// Everything a reconcile needs.
pub struct Ctx {
    pub client: kube::Client,
    pub recorder: Recorder,
    pub cfg: ControllerConfig,
    pub movers: Movers,
    pub followers: Arc<Followers>,
    pub metrics: Arc<Metrics>,
    /// CDIConfig's overhead and preallocation default, per storage class.
    pub defaults: Defaults,
    /// Asks for a reconcile of a PVC (followers, when their task ends).
    pub trigger: mpsc::UnboundedSender<ObjectRef<PersistentVolumeClaim>>,
    me: Weak<Ctx>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("cfg", &self.cfg).finish()
    }
}

impl Ctx {
    /// CDIConfig's settings for `plan`'s import; the import proxy's CA bundle is read now,
    /// and only for a source fetched over the network.
    pub async fn import_settings(
        &self,
        plan: &crate::plan::ImportPlan,
    ) -> Result<source::ImportSettings, source::SourceError> {
        let proxy = if source::over_network(plan) {
            let own = source::ApiObjects::new(self.client.clone(), &self.cfg.namespace);
            source::import_proxy(self.defaults.import_proxy().as_ref(), &own).await?
        } else {
            None
        };
        Ok(source::ImportSettings { insecure_registries: self.defaults.insecure_registries(), proxy })
    }

    pub fn me(&self) -> Arc<Ctx> {
        self.me.upgrade().expect("the context outlives its reconciles")
    }

    /// Where a task writes: the claim `pvc` (or its prime) as the holder pod mounts it, sized
    /// and preallocated as CDIConfig says for the claim's class — as the cluster has it, so
    /// this waits (boundedly) for the configuration's caches.
    pub async fn holder_destination(
        &self,
        pvc: &PersistentVolumeClaim,
        task_id: &str,
        holder_uid: &str,
        pv_name: &str,
    ) -> source::Destination {
        self.defaults.wait_ready().await;
        let class = pvc.spec.as_ref().and_then(|s| s.storage_class_name.as_deref()).unwrap_or_default();
        source::Destination::holder_volume(
            pvc,
            task_id,
            holder_uid,
            pv_name,
            self.defaults.filesystem_overhead(class),
            self.defaults.default_preallocation(),
        )
    }

    /// Records an event on a target PVC. Failing to record is logged, never fatal.
    pub async fn event(&self, target: &ObjectRef<PersistentVolumeClaim>, reason: EventReason, note: &str) {
        let event = Event {
            type_: if reason.is_warning() { EventType::Warning } else { EventType::Normal },
            reason: reason.as_str().to_string(),
            note: Some(note.chars().take(1000).collect()),
            action: "Populate".into(),
            secondary: None,
        };
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("PersistentVolumeClaim".into()),
            name: Some(target.name.clone()),
            namespace: target.namespace.clone(),
            uid: target.extra.uid.clone(),
            ..Default::default()
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::debug!(%target, reason = reason.as_str(), error = %e, "event not recorded");
        }
    }
}

/// Why a reconcile failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {op} {name}: {source}")]
    Kube {
        op: &'static str,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error(transparent)]
    Source(#[from] source::SourceError),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    pub fn kube(op: &'static str, name: &str, source: kube::Error) -> Error {
        Error::Kube { op, name: name.to_string(), source: Box::new(source) }
    }

    /// A failure the next try should get past within moments: a write based on a cached
    /// object the server has moved past (409 Conflict, or a JSON-patch `test` that failed:
    /// the cache catches up), throttling (429), a server error (5xx) or a broken connection
    /// to the API server. Anything else (403, 404 of a kind, bad requests) waits longer.
    pub fn is_transient(&self) -> bool {
        use kube::runtime::finalizer::Error as F;
        let api = |e: &kube::Error| match e {
            kube::Error::Api(s) => matches!(s.code, 409 | 422 | 429 | 500..=599),
            kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
            _ => false,
        };
        match self {
            Error::Kube { source, .. } => api(source),
            Error::Finalizer(f) => match f.as_ref() {
                F::AddFinalizer(e) | F::RemoveFinalizer(e) => api(e),
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.is_transient(),
                _ => false,
            },
            Error::Source(_) => false,
        }
    }
}

/// Runs the controller until the stream of reconciles ends.
pub async fn run(
    client: kube::Client,
    cfg: ControllerConfig,
    movers: Movers,
    metrics: Arc<Metrics>,
    defaults: Defaults,
) {
    let (trigger, triggered) = mpsc::unbounded_channel();
    let ctx = Arc::new_cyclic(|me| Ctx {
        recorder: Recorder::new(client.clone(), Reporter { controller: "cdi-populator".into(), instance: None }),
        client: client.clone(),
        cfg,
        movers,
        followers: Arc::new(Followers::default()),
        metrics: metrics.clone(),
        defaults,
        trigger,
        me: me.clone(),
    });
    metrics.set_followers(ctx.followers.clone());
    let pvcs: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let controller = Controller::new(pvcs, watcher::Config::default());
    let store = controller.store();
    let upload_store = store.clone();
    let clone_store = store.clone();
    controller
        .owns(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().labels(&format!("{}={}", label::NAME, label::HOLDER)),
        )
        // A smart clone's prime may live in the source's namespace: its annotation names the
        // target there, its owner reference everywhere else.
        .watches(
            Api::<PersistentVolumeClaim>::all(client.clone()),
            watcher::Config::default().labels(&format!("{}={}", label::NAME, label::PRIME)),
            |prime| clone_target(&prime.metadata).or_else(|| owning_claim(&prime.metadata)),
        )
        .watches(Api::<VolumeImportSource>::all(client.clone()), watcher::Config::default(), move |source| {
            naming(&store, kinds::VOLUME_IMPORT_SOURCE, &source.metadata)
        })
        .watches(Api::<VolumeUploadSource>::all(client.clone()), watcher::Config::default(), move |source| {
            naming(&upload_store, kinds::VOLUME_UPLOAD_SOURCE, &source.metadata)
        })
        .watches(Api::<VolumeCloneSource>::all(client.clone()), watcher::Config::default(), move |source| {
            naming(&clone_store, kinds::VOLUME_CLONE_SOURCE, &source.metadata)
        })
        // A clone's source holder may live in another namespace, where no owner reference
        // reaches: its annotation names the target.
        .watches(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().labels(&format!("{}={}", label::NAME, label::SOURCE_HOLDER)),
            |pod| clone_target(&pod.metadata),
        )
        .reconcile_on(tokio_stream_wrapper(triggered))
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|_| futures_util::future::ready(()))
        .await;
}

/// A source changed: every PVC in its namespace that names it.
fn naming(
    store: &kube::runtime::reflector::Store<PersistentVolumeClaim>,
    kind: &str,
    source: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Vec<ObjectRef<PersistentVolumeClaim>> {
    let name = source.name.clone().unwrap_or_default();
    store
        .state()
        .into_iter()
        .filter(|pvc| pvc.metadata.namespace == source.namespace)
        .filter(|pvc| {
            pvc.spec.as_ref().and_then(|s| s.data_source_ref.as_ref()).is_some_and(|r| r.kind == kind && r.name == name)
        })
        .map(|pvc| ObjectRef::from_obj(pvc.as_ref()))
        .collect()
}

/// The target claim a clone's source holder serves.
fn clone_target(meta: &ObjectMeta) -> Option<ObjectRef<PersistentVolumeClaim>> {
    let (namespace, name) = meta.annotations.as_ref()?.get(vocab::ann::CLONE_TARGET)?.split_once('/')?;
    Some(ObjectRef::new(name).within(namespace))
}

/// The claim that controls an object of its namespace.
fn owning_claim(meta: &ObjectMeta) -> Option<ObjectRef<PersistentVolumeClaim>> {
    let owner = meta.owner_references.as_ref()?.iter().find(|o| o.controller == Some(true))?;
    let namespace = meta.namespace.as_deref()?;
    (owner.kind == "PersistentVolumeClaim").then(|| ObjectRef::new(&owner.name).within(namespace))
}

fn tokio_stream_wrapper<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::Error;
    use kube::runtime::finalizer::Error as Finalizer;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status { code, ..Default::default() }))
    }

    #[test]
    fn stale_writes_and_server_trouble_are_retried_soon_and_other_errors_are_not() {
        assert!(Error::kube("update", "pvc", api(409)).is_transient());
        assert!(Error::Finalizer(Box::new(Finalizer::AddFinalizer(api(422)))).is_transient());
        let nested = Finalizer::ApplyFailed(Error::kube("patch", "pvc", api(409)));
        assert!(Error::Finalizer(Box::new(nested)).is_transient());
        assert!(Error::Finalizer(Box::new(Finalizer::AddFinalizer(api(500)))).is_transient());
        assert!(Error::kube("read", "pvc", api(503)).is_transient());
        assert!(Error::kube("read", "pvc", api(429)).is_transient());
        assert!(!Error::kube("read", "pvc", api(403)).is_transient());
        assert!(!Error::kube("create", "pod", api(400)).is_transient());
    }
}

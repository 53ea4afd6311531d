//! CDI's cluster-wide configuration kinds and their controllers, and the read side other
//! controllers size and lay out volumes with.
//!
//! | module | what |
//! |---|---|
//! | [`cdi`] | the `CDI` object: kept, and reported Deployed |
//! | [`cdiconfig`] | `config`: effective settings in `status` |
//! | [`storageprofile`] | one `StorageProfile` per StorageClass |
//! | [`capabilities`] | what CDI knows about provisioners, as data |
//! | [`defaults`] | the read side: overhead, preallocation, claim properties per class |
//!
//! All run on the leader only, like the populate controller.

pub mod capabilities;
pub mod cdi;
pub mod cdiconfig;
pub mod defaults;
pub mod storageprofile;

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use defaults::Defaults;

/// What the configuration controllers share.
pub struct Ctx {
    pub client: kube::Client,
    recorder: Recorder,
    /// The global filesystem overhead where CDIConfig's spec sets none (`--filesystem-overhead`).
    pub default_overhead: String,
    /// The populator's namespace, where the upload proxy's Service is.
    pub namespace: String,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("default_overhead", &self.default_overhead).finish()
    }
}

impl Ctx {
    /// Records an event about `object`; failing to record is logged, never fatal.
    async fn event<K: Resource<DynamicType = ()>>(&self, object: &K, type_: EventType, reason: &str, note: &str) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::debug!(object = %object.name_any(), reason, error = %e, "event not recorded");
        }
    }
}

/// Why a reconcile failed (it is retried).
pub use crate::api_error::ApiError as Error;

/// Retries soon: these reconciles only read and write small objects.
fn error_policy<K>(_: Arc<K>, error: &Error, _: Arc<Ctx>) -> Action {
    tracing::warn!(error = %error, "configuration reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// Writes `object` (carrying its new status) through the status subresource: the whole
/// status, so fields no longer set disappear, and only over the version read (a stale one
/// is a conflict, retried after the cache caught up).
async fn replace_status<K>(api: &Api<K>, object: &K) -> Result<(), Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = object.name_any();
    api.replace_status(&name, &PostParams::default(), object)
        .await
        .map(|_| ())
        .map_err(|e| Error::kube("update the status of", &name, e))
}

/// [`run_in`] the namespace `POD_NAMESPACE` names, else `cdi-rs` (the defaults of
/// `--namespace`).
pub async fn run(client: kube::Client, default_overhead: String) {
    let namespace = std::env::var("POD_NAMESPACE").ok().filter(|n| !n.is_empty()).unwrap_or_else(|| "cdi-rs".into());
    run_in(client, default_overhead, namespace).await
}

/// Runs the configuration controllers (and keeps `config` and `cdi` in existence) until one
/// of them stops, which they do not. `namespace` is the populator's (the upload proxy's
/// Service is there).
pub async fn run_in(client: kube::Client, default_overhead: String, namespace: String) {
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), Reporter { controller: "cdi-populator".into(), instance: None }),
        client: client.clone(),
        default_overhead,
        namespace,
    });
    cdi::ensure_one(&client).await;
    tokio::select! {
        () = cdiconfig::keep(client.clone()) => {}
        () = cdiconfig::run(ctx.clone()) => {}
        () = storageprofile::run(ctx.clone()) => {}
        () = cdi::run(ctx) => {}
    }
    tracing::error!("a configuration controller stopped");
}

//! The DataVolume controller: a DataVolume becomes a PVC of the same name whose
//! `dataSourceRef` names a `VolumeImportSource` it also creates; the populate controller
//! fills that PVC, and this one reports its progress on the DataVolume as CDI does.
//!
//! ```text
//!  watches: DataVolumes ───────────────┐
//!           PVCs (owned) ──────────────┼─▶ Controller ─▶ reconcile.rs
//!           VolumeImportSources (owned)┘                   ├─ render.rs: the PVC and VolumeImportSource to create
//!                                                          ├─ defaults.rs: class, access/volume mode, overhead
//!                                                          └─ status.rs: phase, conditions, events from the PVC
//! ```
//!
//! Deleting a DataVolume takes its PVC and source with it through their owner references
//! (the garbage collector's job); nothing here holds a finalizer.

pub mod defaults;
pub mod reconcile;
pub mod render;
pub mod status;
pub mod vocab;

use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use crate::api::{DataVolume, VolumeImportSource, VolumeUploadSource};
pub use defaults::{ConfigDefaults, StorageDefaults};
use vocab::DvEvent;

/// Everything a reconcile needs.
pub struct Ctx {
    pub client: kube::Client,
    pub recorder: Recorder,
    pub defaults: Arc<dyn StorageDefaults>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").finish_non_exhaustive()
    }
}

impl Ctx {
    /// Records an event on a DataVolume. Failing to record is logged, never fatal.
    pub async fn event(&self, dv: &DataVolume, reason: DvEvent, note: &str) {
        let event = Event {
            type_: if reason.is_warning() { EventType::Warning } else { EventType::Normal },
            reason: reason.as_str().to_string(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &dv.object_ref(&())).await {
            tracing::debug!(dv = %dv.name_any(), reason = reason.as_str(), error = %e, "event not recorded");
        }
    }
}

/// Why a reconcile failed (it is retried).
pub use crate::api_error::ApiError as Error;

/// Runs the controller until the stream of reconciles ends.
pub async fn run(client: kube::Client, defaults: Arc<dyn StorageDefaults>) {
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), Reporter { controller: "cdi-populator".into(), instance: None }),
        client: client.clone(),
        defaults,
    });
    Controller::new(Api::<DataVolume>::all(client.clone()), watcher::Config::default())
        .owns(Api::<PersistentVolumeClaim>::all(client.clone()), watcher::Config::default())
        .owns(Api::<VolumeImportSource>::all(client.clone()), watcher::Config::default())
        .owns(Api::<VolumeUploadSource>::all(client), watcher::Config::default())
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|_| futures_util::future::ready(()))
        .await;
}

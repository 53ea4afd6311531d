//! The stand-ins for Kubernetes' control-plane and node components. Each is a small
//! level-triggered loop on the shared store: it wakes on any write (or a short tick), looks
//! at the objects it cares about, and converges them with ordinary API writes, so every
//! change it makes is visible to watches exactly like a real controller's.

pub mod binder;
pub mod gc;
pub mod kubelet;
pub mod provisioner;
pub mod scheduler;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use crate::api::store::Store;

/// How often a loop looks again without a write having happened (for time-based work such
/// as graceful pod termination).
pub const TICK: Duration = Duration::from_millis(500);

/// Runs `sweep` after every store write until `stop` turns true. A sweep that fails is
/// logged and retried at the next wake-up, as a controller's requeue would.
pub async fn run_loop<F, Fut>(store: Arc<Store>, mut stop: watch::Receiver<bool>, name: &'static str, mut sweep: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut changes = store.subscribe_changes();
    loop {
        if *stop.borrow() {
            break;
        }
        if let Err(e) = sweep().await {
            tracing::debug!(controller = name, error = %e, "sweep failed; retrying");
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.changed() => {}
        }
    }
}

pub(crate) fn is_deleting(o: &Value) -> bool {
    !o["metadata"]["deletionTimestamp"].is_null()
}

pub(crate) fn has_finalizer(o: &Value, f: &str) -> bool {
    o["metadata"]["finalizers"].as_array().is_some_and(|l| l.iter().any(|x| x == f))
}

//! The stand-ins for Kubernetes' control-plane and node components. Each is a small
//! level-triggered loop on the shared store: it wakes on any write (or a short tick), looks
//! at the objects it cares about, and converges them with ordinary API writes, so every
//! change it makes is visible to watches exactly like a real controller's.

pub mod binder;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod gc;
pub mod kubelet;
pub mod nat;
pub mod provisioner;
pub mod proxy;
pub mod replicaset;
pub mod scheduler;
pub mod snapshotter;
pub mod workloads;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;

use serde_json::json;

use crate::api::registry::ResourceType;
use crate::api::store::{PatchType, Store, Sub, WriteOptions};
use crate::api::util::{meta_str, now};

/// How often a loop looks again without a write having happened (for time-based work such
/// as graceful pod termination).
pub const TICK: Duration = Duration::from_millis(500);

/// See [`run_loop`]: a loop rests this many times as long as its last sweep took.
const REST_FACTOR: u32 = 8;
/// The longest rest between sweeps.
const MAX_REST: Duration = Duration::from_secs(1);

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
        let started = std::time::Instant::now();
        if let Err(e) = sweep().await {
            tracing::debug!(controller = name, error = %e, "sweep failed; retrying");
        }
        // A sweep costs in proportion to the store's size. Resting a multiple of that
        // before the next one bounds each loop's share of the CPU (and of the store's lock)
        // when writes never stop, as with hundreds of PVCs; on a small store the rest is
        // microseconds. Writes during the rest are coalesced into the next sweep.
        // Capped: a sweep that waited on a process or the disk says nothing about the
        // store's size, and must not stall the loop.
        let rest = (started.elapsed() * REST_FACTOR).min(MAX_REST);
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.changed() => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(rest) => {}
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

/// An identical event is recorded again (as a count bump) at most this often.
const EVENT_REPEAT_SECS: u64 = 30;

pub(crate) fn opts(manager: &str) -> WriteOptions {
    WriteOptions { field_manager: manager.into(), ..Default::default() }
}

/// A merge patch as `manager`; errors (the object went away, a conflict) are for the next
/// sweep to resolve, so they are returned for logging only.
pub(crate) fn merge(
    store: &Store,
    plural: (&str, &str),
    o: &Value,
    sub: Sub,
    patch: Value,
    manager: &str,
) -> anyhow::Result<Value> {
    let rt = store.rt(plural.0, plural.1);
    Ok(store.patch(
        &rt,
        meta_str(o, "namespace"),
        meta_str(o, "name"),
        PatchType::Merge,
        &patch,
        sub,
        &opts(manager),
    )?)
}

/// What the stand-ins have recorded: (involved uid, reason, message, component) → the
/// Event's namespace and name, and when it was last written. Kept in memory, as client-go's
/// recorder keeps its aggregation cache: finding a repeat by listing the namespace's Events
/// costs a scan of all of them, on every sweep of every loop. Uids are unique across the
/// clusters of one process, so one map serves them all.
type EventKey = (String, String, String, String);
static RECORDED: std::sync::Mutex<Option<HashMap<EventKey, Recorded>>> = std::sync::Mutex::new(None);

struct Recorded {
    namespace: String,
    name: String,
    at: Instant,
}

/// Entries beyond this are pruned of those older than the repeat window.
const RECORDED_MAX: usize = 4096;

/// Records a core/v1 Event about `about`, folding repeats into `count` as client-go's
/// recorder does.
pub(crate) fn record_event(store: &Store, about: &Value, ty: &str, reason: &str, message: &str, component: &str) {
    let ns = match meta_str(about, "namespace") {
        "" => "default",
        n => n,
    };
    let uid = meta_str(about, "uid");
    let key: EventKey = (uid.into(), reason.into(), message.into(), component.into());
    let window = Duration::from_secs(EVENT_REPEAT_SECS);
    let earlier = {
        let mut recorded = RECORDED.lock().unwrap_or_else(|e| e.into_inner());
        let recorded = recorded.get_or_insert_with(HashMap::new);
        match recorded.get(&key) {
            // Repeats within a short window are dropped (client-go's recorder aggregates and
            // rate-limits too); otherwise every sweep would write and wake every loop again.
            Some(r) if r.at.elapsed() < window => return,
            Some(r) => Some((r.namespace.clone(), r.name.clone())),
            None => None,
        }
    };
    let rt = store.rt("", "events");
    let t = now();
    let written = match earlier.and_then(|(ns, name)| store.get(&rt, &ns, &name).ok()) {
        Some(e) => {
            let count = e["count"].as_i64().unwrap_or(1) + 1;
            merge(store, ("", "events"), &e, Sub::Main, json!({"count": count, "lastTimestamp": t}), component)
                .map(|_| meta_str(&e, "name").to_string())
        }
        None => create_event(store, &rt, about, ns, ty, reason, message, component, &t),
    };
    if let Ok(name) = written {
        let mut recorded = RECORDED.lock().unwrap_or_else(|e| e.into_inner());
        let recorded = recorded.get_or_insert_with(HashMap::new);
        if recorded.len() >= RECORDED_MAX {
            recorded.retain(|_, r| r.at.elapsed() < window);
        }
        recorded.insert(key, Recorded { namespace: ns.to_string(), name, at: Instant::now() });
    }
}

/// A new Event; answers its name.
#[allow(clippy::too_many_arguments)]
fn create_event(
    store: &Store,
    rt: &ResourceType,
    about: &Value,
    ns: &str,
    ty: &str,
    reason: &str,
    message: &str,
    component: &str,
    t: &str,
) -> anyhow::Result<String> {
    let event = json!({
        "metadata": {"name": format!("{}.{:x}", meta_str(about, "name"), jiff::Timestamp::now().as_nanosecond()), "namespace": ns},
        "involvedObject": {
            "kind": about["kind"], "apiVersion": about["apiVersion"], "name": meta_str(about, "name"),
            "namespace": meta_str(about, "namespace"), "uid": meta_str(about, "uid"), "resourceVersion": meta_str(about, "resourceVersion"),
        },
        "reason": reason, "message": message, "type": ty,
        "source": {"component": component},
        "reportingComponent": component, "reportingInstance": component,
        "firstTimestamp": t, "lastTimestamp": t, "count": 1,
    });
    let created = store.create(rt, ns, event, &opts(component))?;
    Ok(meta_str(&created, "name").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_event_is_recorded_once_within_the_window() {
        let store = Store::new(100);
        let ns = store.rt("", "namespaces");
        store.create(&ns, "", json!({"metadata": {"name": "default"}}), &WriteOptions::default()).unwrap();
        let cm = store.rt("", "configmaps");
        let about = store.create(&cm, "default", json!({"metadata": {"name": "a"}}), &WriteOptions::default()).unwrap();
        for _ in 0..3 {
            record_event(&store, &about, "Normal", "Waiting", "for a volume", "test");
        }
        record_event(&store, &about, "Normal", "Waiting", "for a node", "test");
        let events = store.all(&store.rt("", "events"));
        let mut messages: Vec<&str> = events.iter().map(|e| e["message"].as_str().unwrap_or_default()).collect();
        messages.sort();
        assert_eq!(messages, ["for a node", "for a volume"]);
        assert!(events.iter().all(|e| e["count"] == 1 && e["involvedObject"]["uid"] == about["metadata"]["uid"]));
    }
}

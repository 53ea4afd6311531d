//! The object store: every object of the cluster, one global resourceVersion counter, and a
//! bounded history of changes that watches replay from.
//!
//! All writes go through here, from HTTP clients and the in-process stand-in controllers
//! alike, under one lock, so each write is atomic and gets the next resourceVersion. A
//! write that changes nothing is not a write: it keeps the resourceVersion and emits no
//! event, as in Kubernetes (controllers rely on that to settle).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

use super::error::ApiError;
use super::kinds;
use super::registry::{Registry, ResourceType};
use super::selectors::{FieldSelector, LabelSelector};
use super::util::{meta_str, now};

mod objects;
mod write;

pub use objects::Objects;

/// `ADDED`, `MODIFIED`, `DELETED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as kept in the history and fanned out to watches. Objects are in storage form.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub storage: String,
    pub namespace: String,
    pub kind: EventType,
    pub object: Arc<Value>,
    /// The object before the change, so a selector-filtered watch can turn a MODIFIED that
    /// leaves (or enters) the selection into DELETED (or ADDED), as Kubernetes does.
    pub old: Option<Arc<Value>>,
}

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    Main,
    Status,
}

/// The patch content types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

/// `propagationPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    Orphan,
    #[default]
    Background,
    Foreground,
}

#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub propagation: Option<Propagation>,
    pub grace_seconds: Option<i64>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    /// `dryRun=All`: answer as the delete would, store nothing.
    pub dry_run: bool,
}

/// A namespace filter and selectors for list and watch.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Query {
    pub fn matches(&self, ns: &str, obj: &Value) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == ns) && self.labels.matches(obj) && self.fields.matches(obj)
    }
}

#[derive(Debug)]
pub struct ListResult {
    pub items: Vec<Arc<Value>>,
    pub resource_version: u64,
    pub continue_token: Option<String>,
    pub remaining: Option<usize>,
}

/// What a new watch starts from.
#[derive(Debug)]
pub struct WatchStart {
    /// Synthetic ADDED objects (current state), when the watch asked for initial state.
    pub initial: Vec<Arc<Value>>,
    /// Changes after the requested resourceVersion, from history.
    pub replay: Vec<Arc<Change>>,
    pub live: broadcast::Receiver<Arc<Change>>,
    /// The resourceVersion the watch is at once `initial`/`replay` are sent.
    pub at: u64,
}

/// The shared store.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Objects>,
    tx: broadcast::Sender<Arc<Change>>,
    changed: watch::Sender<u64>,
}

/// Request-side identity of a write.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub field_manager: String,
    pub force: bool,
    /// The object already carries its new `managedFields` (server-side apply computed them).
    pub keep_managed_fields: bool,
    /// `dryRun=All`: answer as the write would, store nothing.
    pub dry_run: bool,
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        let (tx, _) = broadcast::channel(4096);
        let (changed, _) = watch::channel(0);
        Store { inner: Mutex::new(Objects::new(history_limit)), tx, changed }
    }

    fn lock(&self) -> MutexGuard<'_, Objects> {
        // A panic while holding the lock leaves consistent data (every write is applied in one
        // step at the end), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Services get ClusterIPs from this address block (see `addresses.rs`).
    pub fn set_service_block(&self, block: u8) {
        self.lock().service_block = block;
    }

    /// Fires after every write: the stand-in controllers wait on it.
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn registry(&self) -> Registry {
        self.lock().registry.clone()
    }

    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// The preferred served type of a resource (`""`, `"pods"`).
    pub fn rt(&self, group: &str, plural: &str) -> ResourceType {
        self.lock().registry.preferred(group, plural).cloned().unwrap_or_else(|| panic!("unknown {plural}.{group}"))
    }

    /// Drops all history (as etcd compaction does): watches and continue tokens from before
    /// now get 410 Gone.
    pub fn compact(&self) {
        let mut g = self.lock();
        g.history.clear();
        g.compacted = g.rv;
    }

    // ----- reads -----

    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        let g = self.lock();
        g.get(rt, ns, name).map(|o| present(rt, o))
    }

    pub fn list(
        &self,
        rt: &ResourceType,
        q: &Query,
        limit: Option<usize>,
        cont: Option<&str>,
    ) -> Result<ListResult, ApiError> {
        let g = self.lock();
        let start = match cont.filter(|c| !c.is_empty()) {
            Some(c) => {
                let mut parts = c.splitn(3, '|');
                let (rv, ns, name) = (parts.next(), parts.next(), parts.next());
                let (Some(rv), Some(ns), Some(name)) = (rv.and_then(|r| r.parse::<u64>().ok()), ns, name) else {
                    return Err(ApiError::bad_request("continue key is not valid"));
                };
                if rv < g.compacted {
                    return Err(ApiError::gone(
                        "The provided continue parameter is too old to display a consistent list result. You can \
                         start a new list without the continue parameter.",
                    ));
                }
                Some((ns.to_string(), name.to_string()))
            }
            None => None,
        };
        let served = presenter(rt);
        let mut items = Vec::new();
        let mut last = None;
        let mut remaining = 0usize;
        if let Some(bucket) = g.buckets.get(&rt.storage) {
            let iter = in_namespace(bucket, q.namespace.as_deref()).filter(|((ns, _), o)| q.matches(ns, o));
            for (k, o) in iter {
                if start.as_ref().is_some_and(|s| k <= s) {
                    continue;
                }
                if limit.is_some_and(|l| items.len() >= l) {
                    remaining += 1;
                    continue;
                }
                items.push(served(o));
                last = Some(k.clone());
            }
        }
        let continue_token = (remaining > 0).then(|| {
            let (ns, name) = last.unwrap_or_default();
            format!("{}|{ns}|{name}", g.rv)
        });
        Ok(ListResult {
            items,
            resource_version: g.rv,
            continue_token,
            remaining: (remaining > 0).then_some(remaining),
        })
    }

    /// All objects of a bucket, for the in-process controllers.
    pub fn all(&self, rt: &ResourceType) -> Vec<Arc<Value>> {
        self.all_where(rt, |_| true)
    }

    /// The objects of a bucket that `keep` accepts. They are shared, not copied: the
    /// controllers sweep after every write, and copying thousands of objects each time kept
    /// one core busy with hundreds of DataVolumes.
    pub fn all_where(&self, rt: &ResourceType, keep: impl Fn(&Value) -> bool) -> Vec<Arc<Value>> {
        let g = self.lock();
        g.buckets
            .get(&rt.storage)
            .map(|b| b.values().filter(|o| keep(o)).map(presenter(rt)).collect())
            .unwrap_or_default()
    }

    /// Every object of every bucket, as served at its preferred version.
    pub fn snapshot(&self) -> Vec<(ResourceType, Arc<Value>)> {
        self.snapshot_except(&[])
    }

    /// Every object of every bucket but the `skipped` storage buckets.
    pub fn snapshot_except(&self, skipped: &[&str]) -> Vec<(ResourceType, Arc<Value>)> {
        let g = self.lock();
        let mut out = Vec::new();
        for (storage, bucket) in &g.buckets {
            if skipped.contains(&storage.as_str()) {
                continue;
            }
            let Some(rt) = g.registry.by_storage(storage) else { continue };
            let served = presenter(rt);
            out.extend(bucket.values().map(|o| (rt.clone(), served(o))));
        }
        out
    }

    /// Removes one finalizer, if present, with an optimistic-concurrency update.
    ///
    /// # Errors
    /// Conflict when the object changed since `obj` was read; NotFound when it is gone.
    pub fn remove_finalizer(
        &self,
        rt: &ResourceType,
        obj: &Value,
        finalizer: &str,
        manager: &str,
    ) -> Result<(), ApiError> {
        let Some(list) = obj["metadata"]["finalizers"].as_array() else { return Ok(()) };
        if !list.iter().any(|f| f == finalizer) {
            return Ok(());
        }
        let mut new = obj.clone();
        new["metadata"]["finalizers"] = json!(list.iter().filter(|f| *f != finalizer).collect::<Vec<_>>());
        let opts = WriteOptions { field_manager: manager.into(), ..Default::default() };
        self.update(rt, meta_str(obj, "namespace"), meta_str(obj, "name"), new, Sub::Main, &opts).map(|_| ())
    }

    /// Starts a watch. `from` is the resourceVersion the client has seen; `None` (or an
    /// explicit initial-events request) asks for the current state first.
    pub fn watch(
        &self,
        rt: &ResourceType,
        q: &Query,
        from: Option<u64>,
        initial: bool,
    ) -> Result<WatchStart, ApiError> {
        let g = self.lock();
        let live = self.tx.subscribe();
        if let Some(rv) = from.filter(|_| !initial)
            && rv < g.compacted
        {
            return Err(ApiError::gone(format!("too old resource version: {rv} ({})", g.compacted + 1)));
        }
        let mut out = WatchStart { initial: vec![], replay: vec![], live, at: g.rv };
        match from {
            Some(rv) if !initial => {
                out.replay = g.history.iter().filter(|c| c.rv > rv).cloned().collect();
                out.at = rv.max(out.replay.last().map_or(0, |c| c.rv));
            }
            _ => {
                if let Some(b) = g.buckets.get(&rt.storage) {
                    out.initial = in_namespace(b, q.namespace.as_deref())
                        .filter(|((ns, _), o)| q.matches(ns, o))
                        .map(|(_, o)| o.clone())
                        .collect();
                }
            }
        }
        Ok(out)
    }

    // ----- writes -----

    pub fn create(&self, rt: &ResourceType, ns: &str, obj: Value, opts: &WriteOptions) -> Result<Value, ApiError> {
        self.write(opts.dry_run, |g| g.create(rt, ns, obj, opts, None))
    }

    pub fn update(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        obj: Value,
        sub: Sub,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        self.write(opts.dry_run, |g| g.update(rt, ns, name, intake(rt, obj), sub, opts, false))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        ty: PatchType,
        body: &Value,
        sub: Sub,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        self.write(opts.dry_run, |g| g.patch(rt, ns, name, ty, body, sub, opts))
    }

    pub fn delete(&self, rt: &ResourceType, ns: &str, name: &str, opts: &DeleteOptions) -> Result<Value, ApiError> {
        self.write(opts.dry_run, |g| g.delete(rt, ns, name, opts))
    }

    /// The `pods/binding` subresource: assigns a pending pod to a node.
    pub fn bind_pod(&self, ns: &str, name: &str, node: &str) -> Result<(), ApiError> {
        let mut g = self.lock();
        let rt = g.registry.preferred("", "pods").cloned().expect("pods are built in");
        let pod = g.get(&rt, ns, name)?.clone();
        let current = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        if !current.is_empty() {
            return Err(ApiError::conflict(
                &rt,
                name,
                &format!("pod {name} is already assigned to node \"{current}\""),
            ));
        }
        if !pod["metadata"]["deletionTimestamp"].is_null() {
            return Err(ApiError::conflict(&rt, name, "pod is being deleted, cannot be assigned to a host"));
        }
        let mut new = (*pod).clone();
        new["spec"]["nodeName"] = json!(node);
        set_condition(&mut new, "PodScheduled", "True", "", "");
        let opts = WriteOptions { field_manager: "kube-scheduler".into(), ..Default::default() };
        let out = g.update(&rt, ns, name, new, Sub::Main, &opts, true)?;
        self.commit(g, out).map(|_| ())
    }

    /// Runs one write. A dry run goes through every step of it (defaults, admission,
    /// validation, managed fields) on a scratch copy of the state, so it answers what the
    /// write would store, and nothing is stored or published.
    fn write(
        &self,
        dry_run: bool,
        apply: impl FnOnce(&mut Objects) -> Result<Outcome, ApiError>,
    ) -> Result<Value, ApiError> {
        let mut g = self.lock();
        if dry_run {
            let mut scratch = g.scratch();
            drop(g);
            return apply(&mut scratch).map(|out| out.value);
        }
        let out = apply(&mut g)?;
        self.commit(g, out)
    }

    fn commit(&self, g: MutexGuard<'_, Objects>, out: Outcome) -> Result<Value, ApiError> {
        let Outcome { value, changes } = out;
        let rv = g.rv;
        let any = !changes.is_empty();
        // Published while still holding the lock, so watchers receive changes in
        // resourceVersion order: a watcher skips anything older than what it last saw, and
        // two writers publishing after unlocking could swap their changes and lose one.
        // (Sending on a broadcast channel never blocks.)
        for c in changes {
            let _ = self.tx.send(c);
        }
        drop(g);
        if any {
            self.changed.send_replace(rv);
        }
        Ok(value)
    }
}

/// The result of a write: what to answer, and the changes to publish once unlocked.
struct Outcome {
    value: Value,
    changes: Vec<Arc<Change>>,
}

/// Storage form → the form served at `rt`'s group/version.
pub fn present(rt: &ResourceType, obj: &Value) -> Value {
    if rt.group == "events.k8s.io" {
        return kinds::event::event_to_events_v1(obj);
    }
    let mut o = obj.clone();
    o["apiVersion"] = json!(rt.api_version());
    o["kind"] = json!(rt.kind);
    o
}

/// [`present`] for shared objects of one type: the same object when its storage form is
/// already the served form (the common case), so no copy is made. Built once per read, not
/// per object: the served apiVersion is a fresh string.
pub fn presenter(rt: &ResourceType) -> impl Fn(&Arc<Value>) -> Arc<Value> + '_ {
    let api_version = rt.api_version();
    let converted = rt.group == "events.k8s.io";
    move |obj| {
        let served = !converted && obj["kind"] == rt.kind.as_str() && obj["apiVersion"] == api_version.as_str();
        if served { obj.clone() } else { Arc::new(present(rt, obj)) }
    }
}

/// The objects of a bucket in one namespace (or all of them), found by the key's order
/// rather than by looking at every object.
fn in_namespace<'a>(
    bucket: &'a BTreeMap<objects::Key, Arc<Value>>,
    ns: Option<&str>,
) -> Box<dyn Iterator<Item = (&'a objects::Key, &'a Arc<Value>)> + 'a> {
    match ns {
        Some(ns) => {
            let ns = ns.to_string();
            let from = (ns.clone(), String::new());
            Box::new(bucket.range(from..).take_while(move |((n, _), _)| *n == ns))
        }
        None => Box::new(bucket.iter()),
    }
}

/// Served form → storage form.
pub(crate) fn intake(rt: &ResourceType, obj: Value) -> Value {
    if rt.group == "events.k8s.io" { kinds::event::event_from_events_v1(&obj) } else { obj }
}

/// Sets (or replaces) a `status.conditions` entry.
pub fn set_condition(obj: &mut Value, ty: &str, status: &str, reason: &str, message: &str) {
    let mut conds = obj["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let t = now();
    let mut c = json!({"type": ty, "status": status, "lastProbeTime": null, "lastTransitionTime": t});
    if !reason.is_empty() {
        c["reason"] = json!(reason);
    }
    if !message.is_empty() {
        c["message"] = json!(message);
    }
    match conds.iter_mut().find(|x| x["type"] == ty) {
        Some(x) if x["status"] == status => {}
        Some(x) => *x = c,
        None => conds.push(c),
    }
    obj["status"]["conditions"] = Value::Array(conds);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_ns() -> (Store, ResourceType) {
        let s = Store::new(100);
        let ns = s.rt("", "namespaces");
        s.create(&ns, "", json!({"metadata": {"name": "default"}}), &WriteOptions::default()).unwrap();
        let cm = s.rt("", "configmaps");
        (s, cm)
    }

    #[test]
    fn a_stale_update_is_a_conflict_and_a_no_op_update_keeps_the_version() {
        let (s, cm) = store_with_ns();
        let o = s
            .create(&cm, "default", json!({"metadata": {"name": "a"}, "data": {"k": "v"}}), &Default::default())
            .unwrap();
        let same = s.update(&cm, "default", "a", o.clone(), Sub::Main, &Default::default()).unwrap();
        assert_eq!(same["metadata"]["resourceVersion"], o["metadata"]["resourceVersion"]);
        let mut changed = o.clone();
        changed["data"]["k"] = json!("w");
        s.update(&cm, "default", "a", changed.clone(), Sub::Main, &Default::default()).unwrap();
        let err = s.update(&cm, "default", "a", changed, Sub::Main, &Default::default()).unwrap_err();
        assert_eq!((err.code, err.reason), (409, "Conflict"));
    }

    #[test]
    fn finalizers_hold_a_deleted_object_until_the_last_one_goes() {
        let (s, cm) = store_with_ns();
        s.create(&cm, "default", json!({"metadata": {"name": "a", "finalizers": ["x/y"]}}), &Default::default())
            .unwrap();
        let d = s.delete(&cm, "default", "a", &Default::default()).unwrap();
        assert!(!d["metadata"]["deletionTimestamp"].is_null());
        let body = json!([{"op": "remove", "path": "/metadata/finalizers/0"}]);
        s.patch(&cm, "default", "a", PatchType::Json, &body, Sub::Main, &Default::default()).unwrap();
        assert_eq!(s.get(&cm, "default", "a").unwrap_err().code, 404);
    }

    #[test]
    fn a_namespace_list_sees_only_that_namespace_and_shares_the_stored_objects() {
        let (s, cm) = store_with_ns();
        let ns = s.rt("", "namespaces");
        for n in ["de", "default2"] {
            s.create(&ns, "", json!({"metadata": {"name": n}}), &WriteOptions::default()).unwrap();
        }
        for (n, name) in [("de", "a"), ("default", "b"), ("default", "c"), ("default2", "d")] {
            s.create(&cm, n, json!({"metadata": {"name": name}}), &WriteOptions::default()).unwrap();
        }
        let names = |q: &Query| -> Vec<String> {
            s.list(&cm, q, None, None).unwrap().items.iter().map(|o| meta_str(o, "name").to_string()).collect()
        };
        let in_default = Query { namespace: Some("default".into()), ..Default::default() };
        assert_eq!(names(&in_default), ["b", "c"]);
        assert_eq!(names(&Query::default()), ["a", "b", "c", "d"]);
        let started = s.watch(&cm, &in_default, None, false).unwrap();
        let watched: Vec<&str> = started.initial.iter().map(|o| meta_str(o, "name")).collect();
        assert_eq!(watched, ["b", "c"]);
        // Readers get the stored object itself, not a copy.
        let (one, two) = (s.all(&cm), s.all(&cm));
        assert!(Arc::ptr_eq(&one[0], &two[0]));
    }

    #[test]
    fn a_dry_run_answers_the_write_and_leaves_the_store_as_it_was() {
        let (s, cm) = store_with_ns();
        let rv = s.resource_version();
        let dry = WriteOptions { dry_run: true, ..Default::default() };
        let answered = s.create(&cm, "default", json!({"metadata": {"name": "a"}, "data": {"k": "v"}}), &dry).unwrap();
        assert_eq!(answered["data"]["k"], "v");
        assert_eq!(s.get(&cm, "default", "a").unwrap_err().code, 404);
        assert_eq!(s.resource_version(), rv);
        s.create(&cm, "default", json!({"metadata": {"name": "a"}, "data": {"k": "v"}}), &Default::default()).unwrap();
        let patch = json!({"data": {"k": "w"}});
        let answered = s.patch(&cm, "default", "a", PatchType::Merge, &patch, Sub::Main, &dry).unwrap();
        assert_eq!(answered["data"]["k"], "w");
        assert_eq!(s.get(&cm, "default", "a").unwrap()["data"]["k"], "v");
    }

    #[test]
    fn concurrent_writers_publish_changes_in_resource_version_order() {
        // A watcher drops anything not newer than what it last saw, so publication order
        // must be resourceVersion order even with writers racing on several threads.
        let (s, cm) = store_with_ns();
        let s = Arc::new(s);
        let mut live = s.tx.subscribe();
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (s, cm) = (s.clone(), cm.clone());
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let o = json!({"metadata": {"name": format!("w{w}-{i}")}});
                        s.create(&cm, "default", o, &WriteOptions::default()).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let mut last = 0;
        for _ in 0..800 {
            let c = live.try_recv().expect("every change published");
            assert!(c.rv > last, "change {} published after {last}", c.rv);
            last = c.rv;
        }
    }
}

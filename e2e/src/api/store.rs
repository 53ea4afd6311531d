//! The object store: every object of the cluster, one global resourceVersion counter, and a
//! bounded history of changes that watches replay from.
//!
//! All writes go through here, from HTTP clients and the in-process stand-in controllers
//! alike, under one lock, so each write is atomic and gets the next resourceVersion. A
//! write that changes nothing is not a write: it keeps the resourceVersion and emits no
//! event, as in Kubernetes (controllers rely on that to settle).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

use super::admission::{self, CreateContext, DEFAULT_CLASS_ANNOTATION, FOREGROUND};
use super::error::ApiError;
use super::fields::{self, Writer};
use super::patch::strategic_merge;
use super::registry::{Registry, ResourceType};
use super::selectors::{FieldSelector, LabelSelector};
use super::util::{meta_str, name_suffix, new_uid, now, now_plus};

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
    pub object: Value,
    /// The object before the change, so a selector-filtered watch can turn a MODIFIED that
    /// leaves (or enters) the selection into DELETED (or ADDED), as Kubernetes does.
    pub old: Option<Value>,
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
    pub items: Vec<Value>,
    pub resource_version: u64,
    pub continue_token: Option<String>,
    pub remaining: Option<usize>,
}

/// What a new watch starts from.
#[derive(Debug)]
pub struct WatchStart {
    /// Synthetic ADDED objects (current state), when the watch asked for initial state.
    pub initial: Vec<Value>,
    /// Changes after the requested resourceVersion, from history.
    pub replay: Vec<Arc<Change>>,
    pub live: broadcast::Receiver<Arc<Change>>,
    /// The resourceVersion the watch is at once `initial`/`replay` are sent.
    pub at: u64,
}

type Key = (String, String);

#[derive(Debug, Clone)]
struct Inner {
    rv: u64,
    registry: Registry,
    buckets: HashMap<String, BTreeMap<Key, Value>>,
    history: VecDeque<Arc<Change>>,
    history_limit: usize,
    /// The history holds every change with rv > compacted.
    compacted: u64,
    uids: HashMap<String, (String, String, String)>,
    next_ip: u32,
}

/// The shared store.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
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
        Store {
            inner: Mutex::new(Inner {
                rv: 1,
                registry: Registry::default(),
                buckets: HashMap::new(),
                history: VecDeque::new(),
                history_limit: history_limit.max(1),
                compacted: 1,
                uids: HashMap::new(),
                next_ip: 10,
            }),
            tx,
            changed,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every write is applied in one
        // step at the end), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
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
        let mut items = Vec::new();
        let mut last = None;
        let mut remaining = 0usize;
        if let Some(bucket) = g.buckets.get(&rt.storage) {
            let iter = bucket.iter().filter(|((ns, _), o)| q.matches(ns, o));
            for (k, o) in iter {
                if start.as_ref().is_some_and(|s| k <= s) {
                    continue;
                }
                if limit.is_some_and(|l| items.len() >= l) {
                    remaining += 1;
                    continue;
                }
                items.push(present(rt, o));
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

    /// All objects of a bucket in storage form, for the in-process controllers.
    pub fn all(&self, rt: &ResourceType) -> Vec<Value> {
        self.all_where(rt, |_| true)
    }

    /// The objects of a bucket that `keep` accepts; only those are copied, which is what
    /// keeps the controllers' sweeps cheap when the store holds thousands of objects.
    pub fn all_where(&self, rt: &ResourceType, keep: impl Fn(&Value) -> bool) -> Vec<Value> {
        let g = self.lock();
        g.buckets
            .get(&rt.storage)
            .map(|b| b.values().filter(|o| keep(o)).map(|o| present(rt, o)).collect())
            .unwrap_or_default()
    }

    /// Every object of every bucket, as served at its preferred version.
    pub fn snapshot(&self) -> Vec<(ResourceType, Value)> {
        self.snapshot_except(&[])
    }

    /// Every object of every bucket but the `skipped` storage buckets.
    pub fn snapshot_except(&self, skipped: &[&str]) -> Vec<(ResourceType, Value)> {
        let g = self.lock();
        let mut out = Vec::new();
        for (storage, bucket) in &g.buckets {
            if skipped.contains(&storage.as_str()) {
                continue;
            }
            let Some(rt) = g.registry.by_storage(storage) else { continue };
            out.extend(bucket.values().map(|o| (rt.clone(), present(rt, o))));
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
                    out.initial = b.iter().filter(|((ns, _), o)| q.matches(ns, o)).map(|(_, o)| o.clone()).collect();
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
        let mut new = pod.clone();
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
        apply: impl FnOnce(&mut Inner) -> Result<Outcome, ApiError>,
    ) -> Result<Value, ApiError> {
        let mut g = self.lock();
        if dry_run {
            let mut scratch = g.clone();
            drop(g);
            return apply(&mut scratch).map(|out| out.value);
        }
        let out = apply(&mut g)?;
        self.commit(g, out)
    }

    fn commit(&self, g: MutexGuard<'_, Inner>, out: Outcome) -> Result<Value, ApiError> {
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
        return admission::event_to_events_v1(obj);
    }
    let mut o = obj.clone();
    o["apiVersion"] = json!(rt.api_version());
    o["kind"] = json!(rt.kind);
    o
}

/// Served form → storage form.
fn intake(rt: &ResourceType, obj: Value) -> Value {
    if rt.group == "events.k8s.io" { admission::event_from_events_v1(&obj) } else { obj }
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

fn strip_status(obj: &mut Value) {
    if let Some(m) = obj.as_object_mut() {
        m.remove("status");
    }
}

/// Everything but metadata and status: a change here bumps `generation`.
fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            m.remove(k);
        }
    }
    o
}

fn writer<'a>(opts: &'a WriteOptions, sub: Sub, api_version: &'a str, time: &'a str) -> Writer<'a> {
    Writer {
        manager: if opts.field_manager.is_empty() { "unknown" } else { &opts.field_manager },
        subresource: (sub == Sub::Status).then_some("status"),
        api_version,
        time,
    }
}

impl Inner {
    fn bucket(&mut self, storage: &str) -> &mut BTreeMap<Key, Value> {
        self.buckets.entry(storage.to_string()).or_default()
    }

    fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<&Value, ApiError> {
        self.buckets
            .get(&rt.storage)
            .and_then(|b| b.get(&(ns.to_string(), name.to_string())))
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(&mut self, storage: &str, ns: &str, kind: EventType, object: Value, old: Option<Value>) -> Arc<Change> {
        let c = Arc::new(Change { rv: self.rv, storage: storage.into(), namespace: ns.into(), kind, object, old });
        self.history.push_back(c.clone());
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted = dropped.rv;
            }
        }
        c
    }

    fn check_namespace(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<(), ApiError> {
        if !rt.namespaced {
            return Ok(());
        }
        let nsobj = self
            .buckets
            .get("/namespaces")
            .and_then(|b| b.get(&(String::new(), ns.to_string())))
            .ok_or_else(|| ApiError::namespace_not_found(ns))?;
        if !nsobj["metadata"]["deletionTimestamp"].is_null() {
            return Err(ApiError::forbidden(format!(
                "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being \
                 terminated",
                rt.qualified(),
            )));
        }
        Ok(())
    }

    fn create_context(&mut self, storage: &str) -> CreateContext {
        let mut ctx = CreateContext::default();
        if storage == "/persistentvolumeclaims" {
            let defaults: Vec<String> = self
                .buckets
                .get("storage.k8s.io/storageclasses")
                .map(|b| {
                    b.values()
                        .filter(|sc| sc["metadata"]["annotations"][DEFAULT_CLASS_ANNOTATION] == "true")
                        .map(|sc| meta_str(sc, "name").to_string())
                        .collect()
                })
                .unwrap_or_default();
            // Several defaults: Kubernetes picks the newest; one is enough here.
            ctx.default_class = defaults.into_iter().last();
        }
        if storage == "/services" {
            self.next_ip += 1;
            ctx.next_cluster_ip = format!("10.96.{}.{}", self.next_ip / 250, self.next_ip % 250 + 1);
        }
        ctx
    }

    fn create(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        obj: Value,
        opts: &WriteOptions,
        applied: Option<&Value>,
    ) -> Result<Outcome, ApiError> {
        let mut obj = intake(rt, obj);
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body of the request was not a JSON object"));
        }
        let body_ns = meta_str(&obj, "namespace").to_string();
        if rt.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let mut name = meta_str(&obj, "name").to_string();
        if name.is_empty() {
            let prefix = meta_str(&obj, "generateName");
            if prefix.is_empty() {
                return Err(ApiError::invalid(
                    rt,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
            name = format!("{prefix}{}", name_suffix());
        }
        self.check_namespace(rt, ns, &name)?;
        let ns = if rt.namespaced { ns } else { "" };
        if self.buckets.get(&rt.storage).is_some_and(|b| b.contains_key(&(ns.to_string(), name.clone()))) {
            return Err(ApiError::already_exists(rt, &name));
        }
        if rt.status {
            strip_status(&mut obj);
        }
        let ctx = self.create_context(&rt.storage);
        admission::on_create(&rt.storage, &mut obj, &ctx).map_err(|m| ApiError::invalid(rt, &name, m))?;
        if rt.is("apiextensions.k8s.io", "customresourcedefinitions") {
            self.registry.register_crd(&obj).map_err(|m| ApiError::invalid(rt, &name, m))?;
        }
        let rv = self.next_rv();
        let t = now();
        let uid = new_uid();
        {
            let meta = &mut obj["metadata"];
            meta["name"] = json!(name);
            if rt.namespaced {
                meta["namespace"] = json!(ns);
            } else if let Some(m) = meta.as_object_mut() {
                m.remove("namespace");
            }
            meta["uid"] = json!(uid);
            meta["resourceVersion"] = json!(rv.to_string());
            meta["creationTimestamp"] = json!(t);
            for k in ["deletionTimestamp", "deletionGracePeriodSeconds", "selfLink", "managedFields"] {
                if let Some(m) = meta.as_object_mut() {
                    m.remove(k);
                }
            }
        }
        if obj.get("spec").is_some() || rt.custom {
            obj["metadata"]["generation"] = json!(1);
        }
        let av = rt.api_version();
        let w = writer(opts, Sub::Main, &av, &t);
        match applied {
            Some(a) => {
                let merged =
                    fields::apply(&json!({}), a, &w, true).map_err(|_| ApiError::internal("apply on create"))?;
                obj["metadata"]["managedFields"] = merged["metadata"]["managedFields"].clone();
            }
            None => fields::track_update(None, &mut obj, &w),
        }
        obj["apiVersion"] = json!(self.storage_api_version(rt));
        obj["kind"] = json!(rt.kind);
        self.uids.insert(uid, (rt.storage.clone(), ns.to_string(), name.clone()));
        self.bucket(&rt.storage).insert((ns.to_string(), name), obj.clone());
        let change = self.record(&rt.storage, ns, EventType::Added, obj.clone(), None);
        Ok(Outcome { value: present(rt, &obj), changes: vec![change] })
    }

    /// The apiVersion objects of a bucket are stored under (its first served version).
    fn storage_api_version(&self, rt: &ResourceType) -> String {
        if rt.storage == "events" {
            return "v1".into();
        }
        self.registry.preferred(&rt.group, &rt.plural).map(|t| t.api_version()).unwrap_or_else(|| rt.api_version())
    }

    #[allow(clippy::too_many_arguments)]
    fn update(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        new: Value,
        sub: Sub,
        opts: &WriteOptions,
        internal: bool,
    ) -> Result<Outcome, ApiError> {
        let ns = if rt.namespaced { ns } else { "" };
        let old = self.get(rt, ns, name)?.clone();
        if !new.is_object() {
            return Err(ApiError::bad_request("the body of the request was not a JSON object"));
        }
        let body_name = meta_str(&new, "name");
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let body_rv = meta_str(&new, "resourceVersion");
        if !body_rv.is_empty() && body_rv != meta_str(&old, "resourceVersion") {
            return Err(ApiError::stale(rt, name));
        }
        let mut obj = match sub {
            Sub::Status => {
                let mut o = old.clone();
                o["status"] = new["status"].clone();
                if opts.keep_managed_fields {
                    o["metadata"]["managedFields"] = new["metadata"]["managedFields"].clone();
                }
                o
            }
            Sub::Main => {
                let mut o = new;
                if rt.status {
                    o["status"] = old["status"].clone();
                }
                // Identity and server-owned metadata are not the client's to change.
                for k in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"] {
                    match old["metadata"].get(k) {
                        Some(v) => o["metadata"][k] = v.clone(),
                        None => {
                            if let Some(m) = o["metadata"].as_object_mut() {
                                m.remove(k);
                            }
                        }
                    }
                }
                if o["metadata"].get("managedFields").is_none() || !opts.keep_managed_fields {
                    o["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
                }
                o
            }
        };
        obj["metadata"]["name"] = json!(name);
        if rt.namespaced {
            obj["metadata"]["namespace"] = json!(ns);
        }
        obj["apiVersion"] = old["apiVersion"].clone();
        obj["kind"] = old["kind"].clone();
        if obj["status"].is_null()
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        if !internal && sub == Sub::Main {
            admission::on_update(&rt.storage, &old, &mut obj).map_err(|m| ApiError::invalid(rt, name, m))?;
        }
        let deleting = !old["metadata"]["deletionTimestamp"].is_null();
        if deleting {
            let before = old["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
            let after = obj["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
            if after.iter().any(|f| !before.contains(f)) {
                return Err(ApiError::invalid(
                    rt,
                    name,
                    "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted",
                ));
            }
        }
        if spec_part(&obj) != spec_part(&old) && !old["metadata"]["generation"].is_null() {
            obj["metadata"]["generation"] = json!(old["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
        }
        obj["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        let t = now();
        let av = rt.api_version();
        if !opts.keep_managed_fields {
            let w = writer(opts, sub, &av, &t);
            fields::track_update(Some(&old), &mut obj, &w);
        }
        let finalizers_gone = obj["metadata"]["finalizers"].as_array().is_none_or(Vec::is_empty);
        if deleting && finalizers_gone && !self.waits_for_kubelet(rt, &obj) {
            return Ok(self.remove(rt, ns, name, obj));
        }
        if same_ignoring_times(&obj, &old) {
            return Ok(Outcome { value: present(rt, &old), changes: vec![] });
        }
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.bucket(&rt.storage).insert((ns.to_string(), name.to_string()), obj.clone());
        let change = self.record(&rt.storage, ns, EventType::Modified, obj.clone(), Some(old));
        Ok(Outcome { value: present(rt, &obj), changes: vec![change] })
    }

    /// A pod on a node being gracefully deleted stays until its kubelet confirms (with a
    /// zero-grace delete) that its containers stopped.
    fn waits_for_kubelet(&self, rt: &ResourceType, obj: &Value) -> bool {
        rt.storage == "/pods"
            && !obj["spec"]["nodeName"].as_str().unwrap_or_default().is_empty()
            && obj["metadata"]["deletionGracePeriodSeconds"].as_i64().unwrap_or(0) > 0
    }

    fn remove(&mut self, rt: &ResourceType, ns: &str, name: &str, mut obj: Value) -> Outcome {
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.bucket(&rt.storage).remove(&(ns.to_string(), name.to_string()));
        self.uids.remove(meta_str(&obj, "uid"));
        if rt.is("apiextensions.k8s.io", "customresourcedefinitions") {
            let group = obj["spec"]["group"].as_str().unwrap_or_default().to_string();
            let plural = obj["spec"]["names"]["plural"].as_str().unwrap_or_default().to_string();
            self.registry.unregister_crd(&group, &plural);
            self.buckets.remove(&format!("{group}/{plural}"));
        }
        let change = self.record(&rt.storage, ns, EventType::Deleted, obj.clone(), None);
        Outcome { value: present(rt, &obj), changes: vec![change] }
    }

    #[allow(clippy::too_many_arguments)]
    fn patch(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        ty: PatchType,
        body: &Value,
        sub: Sub,
        opts: &WriteOptions,
    ) -> Result<Outcome, ApiError> {
        let ns = if rt.namespaced { ns } else { "" };
        if ty == PatchType::Apply && opts.field_manager.is_empty() {
            return Err(ApiError::bad_request("PATCH, fieldManager is required for apply requests"));
        }
        let current = match self.get(rt, ns, name) {
            Ok(o) => present(rt, o),
            // Apply to a missing object creates it.
            Err(_) if ty == PatchType::Apply && sub == Sub::Main => {
                let mut obj = body.clone();
                obj["metadata"]["name"] = json!(name);
                return self.create(rt, ns, obj, opts, Some(body));
            }
            Err(e) => return Err(e),
        };
        let patched = match ty {
            PatchType::Json => {
                let p: json_patch::Patch = serde_json::from_value(body.clone())
                    .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
                let mut doc = current.clone();
                json_patch::patch(&mut doc, &p).map_err(|e| ApiError {
                    code: 422,
                    reason: "Invalid",
                    message: format!("the server rejected our request due to an error in our request: {e}"),
                    details: None,
                })?;
                doc
            }
            PatchType::Merge => {
                let mut doc = current.clone();
                json_patch::merge(&mut doc, body);
                doc
            }
            PatchType::Strategic => {
                if rt.custom {
                    return Err(ApiError::unsupported_media_type(
                        "the body of the request was in an unknown format - accepted media types include: \
                         application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                    ));
                }
                let mut doc = current.clone();
                strategic_merge(&mut doc, body);
                doc
            }
            PatchType::Apply => {
                let mut applied = body.clone();
                // Apply to the main resource ignores status, and to /status only status counts.
                match sub {
                    Sub::Main if rt.status => strip_status(&mut applied),
                    Sub::Status => {
                        applied = json!({"metadata": {}, "status": applied["status"].clone()});
                    }
                    Sub::Main => {}
                }
                let t = now();
                let av = rt.api_version();
                let w = writer(opts, sub, &av, &t);
                let merged = fields::apply(&current, &applied, &w, opts.force).map_err(|conflicts| {
                    let list: Vec<String> =
                        conflicts.iter().map(|c| format!("conflict with \"{}\": .{}", c.manager, c.path)).collect();
                    ApiError::conflict(
                        rt,
                        name,
                        &format!("Apply failed with {} conflict(s): {}", conflicts.len(), list.join(", ")),
                    )
                })?;
                let mut merged = intake(rt, merged);
                merged["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
                let keep = WriteOptions { keep_managed_fields: true, ..opts.clone() };
                return self.update(rt, ns, name, merged, sub, &keep, false);
            }
        };
        let mut patched = intake(rt, patched);
        // A patch is a write at the current version unless it names one itself.
        if meta_str(&patched, "resourceVersion").is_empty() {
            patched["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        }
        self.update(rt, ns, name, patched, sub, opts, false)
    }

    fn delete(&mut self, rt: &ResourceType, ns: &str, name: &str, opts: &DeleteOptions) -> Result<Outcome, ApiError> {
        let ns = if rt.namespaced { ns } else { "" };
        let mut obj = self.get(rt, ns, name)?.clone();
        if opts.uid.as_deref().is_some_and(|u| u != meta_str(&obj, "uid")) {
            return Err(ApiError::conflict(
                rt,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {}, UID in object meta: {}",
                    opts.uid.as_deref().unwrap_or_default(),
                    meta_str(&obj, "uid")
                ),
            ));
        }
        if opts.resource_version.as_deref().is_some_and(|r| r != meta_str(&obj, "resourceVersion")) {
            return Err(ApiError::stale(rt, name));
        }
        let finalizers = obj["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
        let deleting = !obj["metadata"]["deletionTimestamp"].is_null();
        let is_pod = rt.storage == "/pods";
        let on_node = is_pod && !obj["spec"]["nodeName"].as_str().unwrap_or_default().is_empty();
        let grace = if on_node {
            opts.grace_seconds.or_else(|| obj["spec"]["terminationGracePeriodSeconds"].as_i64()).unwrap_or(30)
        } else {
            0
        };
        if deleting {
            // Only a shorter grace period (the kubelet's final zero-grace delete) changes anything.
            let current = obj["metadata"]["deletionGracePeriodSeconds"].as_i64().unwrap_or(0);
            if is_pod && grace < current {
                obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                if finalizers.is_empty() && grace == 0 {
                    return Ok(self.remove(rt, ns, name, obj));
                }
                return self.store_modified(rt, ns, name, obj);
            }
            return Ok(Outcome { value: present(rt, &obj), changes: vec![] });
        }
        let propagation = opts.propagation.unwrap_or_default();
        let mut changes = Vec::new();
        if propagation == Propagation::Orphan {
            changes.extend(self.orphan_dependents(meta_str(&obj, "uid")));
        }
        let mut finalizers = finalizers;
        if propagation == Propagation::Foreground && !finalizers.iter().any(|f| f == FOREGROUND) {
            finalizers.push(json!(FOREGROUND));
        }
        let namespace_kind = rt.storage == "/namespaces";
        if finalizers.is_empty() && grace == 0 && !namespace_kind {
            let mut out = self.remove(rt, ns, name, obj);
            changes.append(&mut out.changes);
            return Ok(Outcome { value: out.value, changes });
        }
        obj["metadata"]["finalizers"] = json!(finalizers);
        obj["metadata"]["deletionTimestamp"] = json!(now_plus(grace));
        obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        if namespace_kind {
            obj["status"]["phase"] = json!("Terminating");
        }
        let mut out = self.store_modified(rt, ns, name, obj)?;
        changes.append(&mut out.changes);
        Ok(Outcome { value: out.value, changes })
    }

    fn store_modified(&mut self, rt: &ResourceType, ns: &str, name: &str, mut obj: Value) -> Result<Outcome, ApiError> {
        let old = self.get(rt, ns, name)?.clone();
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.bucket(&rt.storage).insert((ns.to_string(), name.to_string()), obj.clone());
        let change = self.record(&rt.storage, ns, EventType::Modified, obj.clone(), Some(old));
        Ok(Outcome { value: present(rt, &obj), changes: vec![change] })
    }

    /// Removes owner references to `uid` from every object (the Orphan policy).
    fn orphan_dependents(&mut self, uid: &str) -> Vec<Arc<Change>> {
        let mut targets = Vec::new();
        for (storage, bucket) in &self.buckets {
            for (k, o) in bucket {
                if o["metadata"]["ownerReferences"].as_array().is_some_and(|r| r.iter().any(|r| r["uid"] == uid)) {
                    targets.push((storage.clone(), k.clone()));
                }
            }
        }
        let mut changes = Vec::new();
        for (storage, (ns, name)) in targets {
            let Some(rt) = self.registry.by_storage(&storage).cloned() else { continue };
            let Ok(old) = self.get(&rt, &ns, &name).cloned() else { continue };
            let mut o = old.clone();
            if let Some(refs) = o["metadata"]["ownerReferences"].as_array_mut() {
                refs.retain(|r| r["uid"] != uid);
            }
            if let Ok(mut out) = self.store_modified(&rt, &ns, &name, o) {
                changes.append(&mut out.changes);
            }
        }
        changes
    }
}

/// Equal apart from `managedFields` timestamps: such a write is a no-op.
fn same_ignoring_times(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(mf) = v["metadata"]["managedFields"].as_array_mut() {
            for e in mf {
                e["time"] = Value::Null;
            }
        }
        v
    };
    strip(a) == strip(b)
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

//! The core of the store: objects by bucket, the resourceVersion counter, the bounded history
//! of changes that watches replay. Kind-specific behaviour is not here
//! but in `api::kinds`; the verbs that use both are in `write.rs`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};

use super::{Change, EventType, Outcome, present};
use crate::api::error::ApiError;
use crate::api::kinds;
use crate::api::registry::{Registry, ResourceType};

pub(super) type Key = (String, String);

/// Everything the store holds.
///
/// A dry run (and admission runs one before every write it sends to webhooks) works on a
/// [`scratch`](Objects::scratch) copy; the buckets are shared with it and
/// copied only when written, so the copy costs a few pointers, not the whole store.
#[derive(Debug)]
pub struct Objects {
    pub(super) rv: u64,
    pub(super) registry: Registry,
    /// Shared: readers (lists, watches, the in-process controllers' sweeps) take a reference
    /// count, not a deep copy; a write replaces the whole object.
    pub(super) buckets: HashMap<String, Arc<BTreeMap<Key, Arc<Value>>>>,
    pub(super) history: VecDeque<Arc<Change>>,
    pub(super) history_limit: usize,
    /// The history holds every change with rv > compacted.
    pub(super) compacted: u64,
    /// The cluster's address block, whose upper node half holds Service ClusterIPs (0: none
    /// leased, e.g. a bare store in unit tests).
    pub service_block: u8,
}

impl Objects {
    pub(super) fn new(history_limit: usize) -> Objects {
        Objects {
            rv: 1,
            registry: Registry::default(),
            buckets: HashMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted: 1,
            service_block: 0,
        }
    }

    /// A copy to run a dry-run write on: the same objects, no history (nothing it records is
    /// kept).
    pub(super) fn scratch(&self) -> Objects {
        Objects {
            rv: self.rv,
            registry: self.registry.clone(),
            buckets: self.buckets.clone(),
            history: VecDeque::new(),
            history_limit: self.history_limit,
            compacted: self.compacted,
            service_block: self.service_block,
        }
    }

    /// The stored objects of one bucket (`/pods`, `storage.k8s.io/storageclasses`).
    pub fn bucket_values(&self, storage: &str) -> impl Iterator<Item = &Value> {
        self.buckets.get(storage).into_iter().flat_map(|b| b.values().map(|v| &**v))
    }

    /// The served resources (CRDs add and remove theirs).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Forgets every object of a bucket (a CRD's instances, once it is gone).
    pub fn drop_bucket(&mut self, storage: &str) {
        self.buckets.remove(storage);
    }

    pub(super) fn bucket(&mut self, storage: &str) -> &mut BTreeMap<Key, Arc<Value>> {
        Arc::make_mut(self.buckets.entry(storage.to_string()).or_default())
    }

    pub(super) fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<&Arc<Value>, ApiError> {
        self.buckets
            .get(&rt.storage)
            .and_then(|b| b.get(&(ns.to_string(), name.to_string())))
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    pub(super) fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    pub(super) fn record(
        &mut self,
        storage: &str,
        ns: &str,
        kind: EventType,
        object: Arc<Value>,
        old: Option<Arc<Value>>,
    ) -> Arc<Change> {
        let c = Arc::new(Change { rv: self.rv, storage: storage.into(), namespace: ns.into(), kind, object, old });
        self.history.push_back(c.clone());
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted = dropped.rv;
            }
        }
        c
    }

    pub(super) fn check_namespace(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<(), ApiError> {
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

    /// The apiVersion objects of a bucket are stored under (its first served version).
    pub(super) fn storage_api_version(&self, rt: &ResourceType) -> String {
        if rt.storage == "events" {
            return "v1".into();
        }
        self.registry.preferred(&rt.group, &rt.plural).map(|t| t.api_version()).unwrap_or_else(|| rt.api_version())
    }

    pub(super) fn remove(&mut self, rt: &ResourceType, ns: &str, name: &str, mut obj: Value) -> Outcome {
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.bucket(&rt.storage).remove(&(ns.to_string(), name.to_string()));
        kinds::of(&rt.storage).removed(&obj, self);
        let obj = Arc::new(obj);
        let change = self.record(&rt.storage, ns, EventType::Deleted, obj.clone(), None);
        Outcome { value: present(rt, &obj), changes: vec![change] }
    }

    pub(super) fn store_modified(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        mut obj: Value,
    ) -> Result<Outcome, ApiError> {
        let old = self.get(rt, ns, name)?.clone();
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let obj = Arc::new(obj);
        self.bucket(&rt.storage).insert((ns.to_string(), name.to_string()), obj.clone());
        let change = self.record(&rt.storage, ns, EventType::Modified, obj.clone(), Some(old));
        Ok(Outcome { value: present(rt, &obj), changes: vec![change] })
    }
}

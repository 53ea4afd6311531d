//! What differs per kind when an object is written, standing in for the API server's registry
//! strategies and default admission plugins: defaults and validation on create, what an update
//! may change, how a delete proceeds, and what else the store does (a CRD serves a resource).
//! One module per kind that has rules of its own; every other kind gets the store's generic
//! semantics. Only what the project's flows and kubectl observe is modelled.

use serde_json::{Value, json};

use super::store::{DeleteOptions, Objects};

pub mod crd;
pub mod event;
pub mod namespace;
pub mod pod;
pub mod pv;
pub mod pvc;
pub mod secret;
pub mod service;
pub mod storage;
pub mod workloads;

/// The finalizer foreground deletion adds (the garbage collector removes it).
pub const FOREGROUND: &str = "foregroundDeletion";

/// How a delete of one object proceeds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deletion {
    /// Seconds between the delete and the object's removal (someone confirms it went).
    pub grace: i64,
    /// Kept (with a deletionTimestamp) even without finalizers, until a controller ends it.
    pub always_held: bool,
}

/// The rules of one kind. Errors are the message of a 422 Invalid.
pub trait Rules: Sync {
    /// Defaults and validation of a new object; `objects` is the store as it is now (a CRD
    /// registers its resource there).
    fn on_create(&self, _obj: &mut Value, _objects: &mut Objects) -> Result<(), String> {
        Ok(())
    }

    /// Validation (and normalisation) of an update of the main resource.
    fn on_update(&self, _old: &Value, _new: &mut Value) -> Result<(), String> {
        Ok(())
    }

    /// How a delete of `obj` proceeds.
    fn deletion(&self, _obj: &Value, _opts: &DeleteOptions) -> Deletion {
        Deletion::default()
    }

    /// Whether an object being deleted whose last finalizer went stays until someone else
    /// confirms (a pod on a node: its kubelet).
    fn held_after_finalizers(&self, _obj: &Value) -> bool {
        false
    }

    /// After the object left the store.
    fn removed(&self, _obj: &Value, _objects: &mut Objects) {}
}

/// Kinds without rules of their own.
struct Generic;
impl Rules for Generic {}

/// The rules of the kinds stored in bucket `storage`.
pub fn of(storage: &str) -> &'static dyn Rules {
    match storage {
        "/namespaces" => &namespace::Namespace,
        "/pods" => &pod::Pod,
        "/persistentvolumeclaims" => &pvc::Claim,
        "/persistentvolumes" => &pv::Volume,
        "/secrets" => &secret::Secret,
        "/services" => &service::Service,
        "storage.k8s.io/storageclasses" => &storage::StorageClass,
        "storage.k8s.io/csidrivers" => &storage::CsiDriver,
        "apiextensions.k8s.io/customresourcedefinitions" => &crd::Crd,
        "apps/deployments" => &workloads::Deployment,
        "apps/replicasets" => &workloads::ReplicaSet,
        "apps/daemonsets" => &workloads::DaemonSet,
        "admissionregistration.k8s.io/validatingwebhookconfigurations" => {
            &crate::api::admission::WebhookConfiguration { mutating: false }
        }
        "admissionregistration.k8s.io/mutatingwebhookconfigurations" => {
            &crate::api::admission::WebhookConfiguration { mutating: true }
        }
        _ => &Generic,
    }
}

pub(crate) fn add_finalizer(obj: &mut Value, f: &str) {
    let list = obj["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
    if !list.iter().any(|x| x == f) {
        let mut list = list;
        list.push(json!(f));
        obj["metadata"]["finalizers"] = Value::Array(list);
    }
}

/// Sets `obj[key]` when it is absent or null.
pub(crate) fn default(obj: &mut Value, key: &str, v: Value) {
    if obj.get(key).is_none_or(Value::is_null) {
        obj[key] = v;
    }
}

pub(crate) fn without(v: &Value, keys: &[&str]) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        for k in keys {
            m.remove(*k);
        }
    }
    v
}

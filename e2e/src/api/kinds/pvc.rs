//! PersistentVolumeClaims: required access modes and size, the default StorageClass when none
//! is named (DefaultStorageClass admission), `dataSource` and `dataSourceRef` mirrored for the
//! kinds both accept, the `kubernetes.io/pvc-protection` finalizer, and a spec that is
//! immutable after creation but for the size (and the binder setting `volumeName` once).

use serde_json::{Value, json};

use super::storage::DEFAULT_CLASS_ANNOTATION;
use super::{Rules, add_finalizer, default, without};
use crate::api::store::Objects;
use crate::api::util::meta_str;

pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";

#[derive(Debug)]
pub struct Claim;

impl Rules for Claim {
    fn on_create(&self, obj: &mut Value, objects: &mut Objects) -> Result<(), String> {
        let spec = &mut obj["spec"];
        if spec["accessModes"].as_array().is_none_or(Vec::is_empty) {
            return Err("spec.accessModes: Required value: at least 1 access mode is required".into());
        }
        if spec["resources"]["requests"]["storage"].is_null() {
            return Err("spec.resources[storage]: Required value".into());
        }
        default(spec, "volumeMode", json!("Filesystem"));
        // DefaultStorageClass admission: only an absent class is defaulted; "" means none.
        if spec.get("storageClassName").is_none_or(Value::is_null)
            && let Some(c) = default_class(objects)
        {
            spec["storageClassName"] = json!(c);
        }
        // dataSource and dataSourceRef mirror each other for the kinds both accept.
        if spec.get("dataSourceRef").is_none_or(Value::is_null) && spec["dataSource"].is_object() {
            spec["dataSourceRef"] = spec["dataSource"].clone();
        } else if spec.get("dataSource").is_none_or(Value::is_null) && spec["dataSourceRef"].is_object() {
            let r = &spec["dataSourceRef"];
            let group = r["apiGroup"].as_str().unwrap_or_default();
            let kind = r["kind"].as_str().unwrap_or_default();
            if r["namespace"].is_null()
                && ((group.is_empty() && kind == "PersistentVolumeClaim")
                    || (group == "snapshot.storage.k8s.io" && kind == "VolumeSnapshot"))
            {
                let mut ds = r.clone();
                ds.as_object_mut().map(|m| m.remove("namespace"));
                spec["dataSource"] = ds;
            }
        }
        add_finalizer(obj, PVC_PROTECTION);
        obj["status"] = json!({"phase": "Pending"});
        Ok(())
    }

    fn on_update(&self, old: &Value, new: &mut Value) -> Result<(), String> {
        let mut o = without(&old["spec"], &["resources", "volumeAttributesClassName"]);
        let n = without(&new["spec"], &["resources", "volumeAttributesClassName"]);
        // volumeName may be set once, by the binder.
        if o["volumeName"].as_str().is_none_or(str::is_empty) && !n["volumeName"].is_null() {
            o["volumeName"] = n["volumeName"].clone();
        }
        if o != n {
            return Err("spec: Forbidden: spec is immutable after creation except resources.requests and \
                        volumeAttributesClassName for bound claims"
                .into());
        }
        Ok(())
    }
}

/// The StorageClass annotated as the default (the newest, if several are).
fn default_class(objects: &Objects) -> Option<String> {
    objects
        .bucket_values("storage.k8s.io/storageclasses")
        .filter(|sc| sc["metadata"]["annotations"][DEFAULT_CLASS_ANNOTATION] == "true")
        .map(|sc| meta_str(sc, "name").to_string())
        .last()
}

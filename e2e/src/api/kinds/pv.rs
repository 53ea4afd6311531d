//! PersistentVolumes: required capacity, reclaim policy and volume mode defaults, and the
//! `kubernetes.io/pv-protection` finalizer (PV protection removes it once no claim is bound).

use serde_json::{Value, json};

use super::{Rules, add_finalizer, default};
use crate::api::store::Objects;

pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";

#[derive(Debug)]
pub struct Volume;

impl Rules for Volume {
    fn on_create(&self, obj: &mut Value, _objects: &mut Objects) -> Result<(), String> {
        let spec = &mut obj["spec"];
        if spec["capacity"]["storage"].is_null() {
            return Err("spec.capacity: Required value".into());
        }
        default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
        default(spec, "volumeMode", json!("Filesystem"));
        add_finalizer(obj, PV_PROTECTION);
        obj["status"] = json!({"phase": "Pending"});
        Ok(())
    }
}

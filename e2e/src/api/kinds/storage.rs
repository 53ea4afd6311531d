//! StorageClasses (defaults; provisioner, parameters, reclaim policy and binding mode are
//! immutable) and CSIDrivers (defaults).

use serde_json::{Value, json};

use super::{Rules, default};
use crate::api::store::Objects;

pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";

#[derive(Debug)]
pub struct StorageClass;

impl Rules for StorageClass {
    fn on_create(&self, obj: &mut Value, _objects: &mut Objects) -> Result<(), String> {
        if obj["provisioner"].as_str().is_none_or(str::is_empty) {
            return Err("provisioner: Required value".into());
        }
        default(obj, "reclaimPolicy", json!("Delete"));
        default(obj, "volumeBindingMode", json!("Immediate"));
        Ok(())
    }

    fn on_update(&self, old: &Value, new: &mut Value) -> Result<(), String> {
        for f in ["provisioner", "parameters", "reclaimPolicy", "volumeBindingMode"] {
            if old[f] != new[f] {
                return Err(format!("{f}: Forbidden: updates to {f} are forbidden."));
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct CsiDriver;

impl Rules for CsiDriver {
    fn on_create(&self, obj: &mut Value, _objects: &mut Objects) -> Result<(), String> {
        let spec = &mut obj["spec"];
        default(spec, "attachRequired", json!(true));
        default(spec, "podInfoOnMount", json!(false));
        default(spec, "volumeLifecycleModes", json!(["Persistent"]));
        default(spec, "fsGroupPolicy", json!("ReadWriteOnceWithFSType"));
        default(spec, "requiresRepublish", json!(false));
        default(spec, "storageCapacity", json!(false));
        default(spec, "seLinuxMount", json!(false));
        Ok(())
    }
}

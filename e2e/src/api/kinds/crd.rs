//! CustomResourceDefinitions: accepted names, stored versions and the Established condition
//! on create, the resource served from then on, and the instance-cleanup finalizer; once the
//! definition is gone, so are its resource and every instance.

use serde_json::{Value, json};

use super::{Rules, add_finalizer};
use crate::api::store::Objects;
use crate::api::util::now;

pub const CRD_CLEANUP: &str = "customresourcecleanup.apiextensions.k8s.io";

#[derive(Debug)]
pub struct Crd;

impl Rules for Crd {
    fn on_create(&self, obj: &mut Value, objects: &mut Objects) -> Result<(), String> {
        let names = obj["spec"]["names"].clone();
        let t = now();
        obj["status"] = json!({
            "acceptedNames": names,
            "storedVersions": obj["spec"]["versions"].as_array().map(|vs| vs.iter()
                .filter(|v| v["storage"].as_bool() == Some(true)).map(|v| v["name"].clone()).collect::<Vec<_>>()),
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": t},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": t},
            ],
        });
        add_finalizer(obj, CRD_CLEANUP);
        objects.registry_mut().register_crd(obj)
    }

    fn removed(&self, obj: &Value, objects: &mut Objects) {
        let group = obj["spec"]["group"].as_str().unwrap_or_default().to_string();
        let plural = obj["spec"]["names"]["plural"].as_str().unwrap_or_default().to_string();
        objects.registry_mut().unregister_crd(&group, &plural);
        objects.drop_bucket(&format!("{group}/{plural}"));
    }
}

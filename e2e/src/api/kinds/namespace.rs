//! Namespaces: the `kubernetes` finalizer and the name label on create; a deleted namespace
//! is `Terminating` until the namespace controller has emptied it and removed the finalizer.

use serde_json::{Value, json};

use super::{Deletion, Rules};
use crate::api::store::{DeleteOptions, Objects};

#[derive(Debug)]
pub struct Namespace;

impl Rules for Namespace {
    fn on_create(&self, obj: &mut Value, _objects: &mut Objects) -> Result<(), String> {
        let name = obj["metadata"]["name"].clone();
        obj["spec"] = json!({"finalizers": ["kubernetes"]});
        obj["status"] = json!({"phase": "Active"});
        obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
        Ok(())
    }

    fn deletion(&self, _obj: &Value, _opts: &DeleteOptions) -> Deletion {
        Deletion { grace: 0, always_held: true }
    }
}

/// What a namespace being deleted looks like.
pub fn mark_terminating(obj: &mut Value) {
    obj["status"]["phase"] = json!("Terminating");
}

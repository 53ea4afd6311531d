//! Secrets: type `Opaque` by default, and `stringData` folded into `data` on every write
//! (it is write-only).

use serde_json::{Value, json};

use super::{Rules, default};
use crate::api::store::Objects;
use crate::api::util::base64;

#[derive(Debug)]
pub struct Secret;

impl Rules for Secret {
    fn on_create(&self, obj: &mut Value, _objects: &mut Objects) -> Result<(), String> {
        default(obj, "type", json!("Opaque"));
        fold_string_data(obj);
        Ok(())
    }

    fn on_update(&self, _old: &Value, new: &mut Value) -> Result<(), String> {
        fold_string_data(new);
        Ok(())
    }
}

pub fn fold_string_data(obj: &mut Value) {
    if let Some(sd) = obj.as_object_mut().and_then(|m| m.remove("stringData"))
        && let Some(sd) = sd.as_object()
    {
        for (k, v) in sd {
            obj["data"][k] = json!(base64(v.as_str().unwrap_or_default().as_bytes()));
        }
    }
}

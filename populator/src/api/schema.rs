//! The root schema of our kinds, written by hand (`#[kube(schema = "manual")]`) for one
//! reason: CDI's `VolumeImportSource` and `VolumeUploadSource` declare a `status` object
//! (always empty, no status subresource) and CDI's clients send `status: {}`. kube-derive
//! only adds `status` together with a status subresource, and without `status` in the schema
//! the API server rejects those objects under strict field validation (kubectl's default).

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

/// `{spec, status?}` with `spec` required, as controller-gen writes it for CDI.
/// `metadata`, `apiVersion` and `kind` are implicit in every CRD.
pub(crate) fn root<Spec: JsonSchema>(
    generator: &mut SchemaGenerator,
    description: &str,
    empty_status: Option<&str>,
) -> Schema {
    let mut properties = serde_json::Map::new();
    properties.insert("spec".into(), generator.subschema_for::<Spec>().to_value());
    if let Some(status_description) = empty_status {
        properties.insert("status".into(), serde_json::json!({"type": "object", "description": status_description}));
    }
    json_schema!({
        "type": "object",
        "description": description,
        "properties": properties,
        "required": ["spec"],
    })
}

/// Any JSON object, kept whole: for fields whose shape we accept as given and do not act on
/// (the API server would otherwise prune their contents).
pub(crate) fn free_form_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

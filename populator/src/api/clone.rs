//! `VolumeCloneSource`: a PVC named by it is filled with a copy of another PVC or of a
//! VolumeSnapshot in the same namespace.

use std::borrow::Cow;

use k8s_openapi::api::core::v1::TypedLocalObjectReference;
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

/// The volume to copy, and how to lay out the copy.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cdi.kubevirt.io",
    version = "v1beta1",
    kind = "VolumeCloneSource",
    namespaced,
    schema = "manual",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeCloneSourceSpec {
    /// The volume to copy: kind `PersistentVolumeClaim`, or `VolumeSnapshot` (apiGroup
    /// `snapshot.storage.k8s.io`), in the source's namespace.
    pub source: TypedLocalObjectReference,
    /// Allocate the whole volume up front. Unset: the cluster default (off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preallocation: Option<bool>,
    /// Priority class of the pods doing the copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

impl JsonSchema for VolumeCloneSource {
    fn schema_name() -> Cow<'static, str> {
        "VolumeCloneSource".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        super::schema::root::<VolumeCloneSourceSpec>(
            generator,
            "A PersistentVolumeClaim or VolumeSnapshot to copy into a claim; a claim names it \
             in spec.dataSourceRef.",
            None,
        )
    }
}

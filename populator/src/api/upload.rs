//! `VolumeUploadSource`: a PVC named by it is filled by a client upload (virtctl
//! image-upload or the upload API) instead of a download.

use std::borrow::Cow;

use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

/// How to lay out the uploaded data in the volume.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cdi.kubevirt.io",
    version = "v1beta1",
    kind = "VolumeUploadSource",
    namespaced,
    schema = "manual",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeUploadSourceSpec {
    /// `kubevirt` (a disk image, the default) or `archive` (a tar to extract).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Allocate the whole volume up front. Unset: the cluster default (off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preallocation: Option<bool>,
}

/// CDI defines an empty status and no status subresource; see
/// [`super::import::VolumeImportSourceStatus`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeUploadSourceStatus {}

impl JsonSchema for VolumeUploadSource {
    fn schema_name() -> Cow<'static, str> {
        "VolumeUploadSource".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        super::schema::root::<VolumeUploadSourceSpec>(
            generator,
            "Marks a PersistentVolumeClaim to be filled by an upload; a claim names it in \
             spec.dataSourceRef.",
            Some("Always empty."),
        )
    }
}

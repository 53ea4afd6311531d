//! `VolumeImportSource`: where to import a PVC's data from (HTTP, S3, GCS, registry, blank,
//! ImageIO, VDDK). A PVC names it in `spec.dataSourceRef`; one source may serve many PVCs.

use std::borrow::Cow;

use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

use super::sources::{DataVolumeCheckpoint, ImportSourceType};

/// Where to import the data from, and how to lay it out in the volume.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cdi.kubevirt.io",
    version = "v1beta1",
    kind = "VolumeImportSource",
    namespaced,
    schema = "manual",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeImportSourceSpec {
    /// Where the data comes from: exactly one variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ImportSourceType>,
    /// Allocate the whole volume up front. Unset: the cluster default (off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preallocation: Option<bool>,
    /// `kubevirt` (a disk image, the default) or `archive` (a tar to extract).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Multi-stage imports: the only PVC this source may populate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_claim: Option<String>,
    /// Multi-stage imports: the stages, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkpoints: Vec<DataVolumeCheckpoint>,
    /// Multi-stage imports: the last checkpoint listed is the final one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_checkpoint: Option<bool>,
}

/// CDI defines an empty status and no status subresource. Kept so that adding one is a
/// `#[kube(status = "VolumeImportSourceStatus")]` away.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeImportSourceStatus {}

impl JsonSchema for VolumeImportSource {
    fn schema_name() -> Cow<'static, str> {
        "VolumeImportSource".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        super::schema::root::<VolumeImportSourceSpec>(
            generator,
            "Where to import a PersistentVolumeClaim's data from; a claim names it in \
             spec.dataSourceRef.",
            Some("Always empty."),
        )
    }
}

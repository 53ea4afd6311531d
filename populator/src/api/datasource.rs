//! `DataSource`: a named pointer to a golden volume (a PVC, a VolumeSnapshot, or another
//! DataSource) that DataVolumes clone through `spec.sourceRef`.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::datavolume::{DataVolumeCondition, DataVolumeSourcePvc, DataVolumeSourceSnapshot};

/// What the DataSource points at.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cdi.kubevirt.io",
    version = "v1beta1",
    kind = "DataSource",
    doc = "A named golden volume (a PVC, a VolumeSnapshot or another DataSource) that DataVolumes clone through spec.sourceRef.",
    namespaced,
    status = "DataSourceStatus",
    shortname = "das",
    derive = "PartialEq",
    derive = "Default"
)]
#[serde(rename_all = "camelCase")]
pub struct DataSourceSpec {
    /// The volume: exactly one variant.
    #[serde(default)]
    pub source: DataSourceSource,
}

/// `spec.source` (and `status.source`, resolved): one of `pvc`, `snapshot`, `dataSource`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataSourceSource {
    /// A PVC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<DataVolumeSourcePvc>,
    /// A VolumeSnapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<DataVolumeSourceSnapshot>,
    /// Another DataSource (one level of indirection at most, same namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_source: Option<DataSourceRefSourceDataSource>,
}

/// A DataSource named by another, `{namespace, name}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataSourceRefSourceDataSource {
    /// Namespace of the DataSource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the DataSource.
    pub name: String,
}

/// What the controller resolved.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataSourceStatus {
    /// The volume after following a `dataSource` reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<DataSourceSource>,
    /// `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<DataVolumeCondition>,
}

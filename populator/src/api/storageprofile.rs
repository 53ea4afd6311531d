//! `StorageProfile`: what CDI knows about one StorageClass (same name, cluster-scoped) —
//! the access and volume modes claims of that class should get, how to clone them, which
//! VolumeSnapshotClass to use. The admin may set `spec`; the controller resolves `status`
//! from it, the class and a table of known provisioners (`crate::config::capabilities`).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The admin's overrides; every field is optional.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cdi.kubevirt.io",
    version = "v1beta1",
    kind = "StorageProfile",
    status = "StorageProfileStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "What CDI knows about the StorageClass of the same name: the claim properties, clone \
           strategy and snapshot class its claims get."
)]
#[serde(rename_all = "camelCase")]
pub struct StorageProfileSpec {
    /// How to clone claims of this class: `copy` (host-assisted), `snapshot` or `csi-clone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_strategy: Option<String>,
    /// The access and volume modes claims of this class may use, preferred first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub claim_property_sets: Vec<ClaimPropertySet>,
    /// How DataImportCron keeps its sources on this class: `pvc` or `snapshot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_import_cron_source_format: Option<String>,
    /// The VolumeSnapshotClass for snapshot clones (default: the one of the class's driver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_class: Option<String>,
}

/// One combination of access modes and volume mode a claim of the class may have.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimPropertySet {
    /// E.g. `[ReadWriteOnce]`, `[ReadWriteMany]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub access_modes: Vec<String>,
    /// `Filesystem` or `Block`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<String>,
}

/// The resolved profile: what DataVolumes and other clients use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageProfileStatus {
    /// The StorageClass this profile describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// The class's provisioner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioner: Option<String>,
    /// How claims of the class are cloned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_strategy: Option<String>,
    /// The spec's sets, else the known ones of the provisioner; empty when unknown (then a
    /// DataVolume must spell out its access modes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub claim_property_sets: Vec<ClaimPropertySet>,
    /// How DataImportCron keeps its sources on this class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_import_cron_source_format: Option<String>,
    /// The VolumeSnapshotClass for snapshot clones, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_class: Option<String>,
}

//! `DataVolume`: a PVC together with where its data comes from. What KubeVirt users write,
//! alone or inside a VirtualMachine's `dataVolumeTemplates`; the DataVolume controller turns
//! it into a PVC and a populator source.
//!
//! Lenient like [`super::sources`]: any object CDI's API accepts deserialises (one that does
//! not would break the watch of every DataVolume); the controller checks the spec.

use std::fmt;

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaimSpec, TypedLocalObjectReference, TypedObjectReference, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::sources::{
    DataVolumeBlankImage, DataVolumeCheckpoint, DataVolumeSourceGcs, DataVolumeSourceHttp, DataVolumeSourceImageIo,
    DataVolumeSourceRegistry, DataVolumeSourceS3, DataVolumeSourceVddk, ImportSourceType,
};

/// A PVC and the data to fill it with.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cdi.kubevirt.io",
    version = "v1beta1",
    kind = "DataVolume",
    doc = "A PersistentVolumeClaim together with where its data comes from; the DataVolume controller creates the claim and fills it.",
    namespaced,
    status = "DataVolumeStatus",
    shortname = "dv",
    shortname = "dvs",
    printcolumn = r#"{"name":"Phase","type":"string","description":"The phase the DataVolume is in","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Progress","type":"string","description":"Transfer progress in percent when known, N/A otherwise","jsonPath":".status.progress"}"#,
    printcolumn = r#"{"name":"Restarts","type":"integer","description":"How many times the transfer was restarted","jsonPath":".status.restartCount"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    derive = "PartialEq",
    derive = "Default"
)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSpec {
    /// Where the data comes from: exactly one variant. Exclusive with `sourceRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<DataVolumeSource>,
    /// A DataSource to clone from, instead of `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ref: Option<DataVolumeSourceRef>,
    /// The PVC to create, used as written. Exclusive with `storage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PersistentVolumeClaimSpec>,
    /// The PVC to create, completed from the storage class's StorageProfile and sized for
    /// the filesystem overhead. Exclusive with `pvc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    /// Priority class of the pods doing the transfer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Service account of the pods doing the transfer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// `kubevirt` (a disk image, the default) or `archive` (a tar to extract).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Multi-stage imports: the stages, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkpoints: Vec<DataVolumeCheckpoint>,
    /// Multi-stage imports: the last checkpoint listed is the final one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_checkpoint: Option<bool>,
    /// Allocate the whole volume up front. Unset: the cluster default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preallocation: Option<bool>,
}

/// `spec.source`: the import variants of a VolumeImportSource plus clone (`pvc`,
/// `snapshot`) and `upload`. Exactly one should be set (CDI's webhook checks).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSource {
    /// Download over HTTP(S).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<DataVolumeSourceHttp>,
    /// Download from an S3-compatible object store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<DataVolumeSourceS3>,
    /// Download from Google Cloud Storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs: Option<DataVolumeSourceGcs>,
    /// Pull a container disk image from a registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<DataVolumeSourceRegistry>,
    /// Copy a PVC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<DataVolumeSourcePvc>,
    /// Copy (restore) a VolumeSnapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<DataVolumeSourceSnapshot>,
    /// Wait for a client upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<DataVolumeSourceUpload>,
    /// Create an empty raw disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blank: Option<DataVolumeBlankImage>,
    /// Copy a disk from oVirt through ImageIO.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imageio: Option<DataVolumeSourceImageIo>,
    /// Copy a disk from VMware vCenter/ESXi through VDDK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vddk: Option<DataVolumeSourceVddk>,
}

impl DataVolumeSource {
    /// The import variants, as a VolumeImportSource's `spec.source`; `None` when none is
    /// set (a clone or upload source, or an empty one).
    pub fn import_source(&self) -> Option<ImportSourceType> {
        let source = ImportSourceType {
            http: self.http.clone(),
            s3: self.s3.clone(),
            registry: self.registry.clone(),
            gcs: self.gcs.clone(),
            blank: self.blank.clone(),
            imageio: self.imageio.clone(),
            vddk: self.vddk.clone(),
        };
        (source != ImportSourceType::default()).then_some(source)
    }
}

/// A PVC to clone, `{namespace, name}`; the namespace defaults to the DataVolume's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSourcePvc {
    /// Namespace of the PVC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the PVC.
    pub name: String,
}

/// A VolumeSnapshot to restore, `{namespace, name}`; the namespace defaults to the
/// DataVolume's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSourceSnapshot {
    /// Namespace of the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the snapshot.
    pub name: String,
}

/// An upload source; it has no fields (`upload: {}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DataVolumeSourceUpload {}

/// `spec.sourceRef`: a DataSource that names the volume to clone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSourceRef {
    /// Always `DataSource`.
    pub kind: String,
    /// Namespace of the DataSource; defaults to the DataVolume's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the DataSource.
    pub name: String,
}

/// `spec.storage`: a PVC spec whose missing parts the StorageProfile fills in.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// `ReadWriteOnce`, `ReadWriteMany`, ...; from the StorageProfile when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_modes: Vec<String>,
    /// Restricts the volumes the claim may bind to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// `requests.storage` is the usable size wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<VolumeResourceRequirements>,
    /// Bind to this PersistentVolume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_name: Option<String>,
    /// The storage class; the cluster's default (virt default first) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// `Filesystem`, `Block`, or `FromStorageProfile`; from the StorageProfile when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<String>,
    /// Copied to the PVC's `dataSource`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_source: Option<TypedLocalObjectReference>,
    /// Copied to the PVC's `dataSourceRef` (external population).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_source_ref: Option<TypedObjectReference>,
}

/// What the controller observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeStatus {
    /// Name of the PVC holding the data (the DataVolume's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_name: Option<String>,
    /// Where the DataVolume is in its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<DataVolumePhase>,
    /// `"NN.NN%"`, `"N/A"` when unknown, `"100.0%"` when done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// How many times the transfer was restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_count: Option<i32>,
    /// `Bound`, `Ready`, `Running`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<DataVolumeCondition>,
}

/// One condition of a DataVolume (or a DataSource: the same shape).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeCondition {
    /// `Bound`, `Ready` or `Running` (`Ready` for a DataSource).
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// When `status` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// When the controller last looked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<Time>,
    /// Why, in one CamelCase word (or CDI's wording, e.g. `Pod is running`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The phases CDI defines, spelled as CDI spells them. A phase this build does not know
/// (a newer CDI's) is kept as [`DataVolumePhase::Other`] rather than refused.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DataVolumePhase {
    /// `""`: not yet looked at.
    Unset,
    Pending,
    PvcBound,
    ImportScheduled,
    ImportInProgress,
    CloneScheduled,
    CloneInProgress,
    SnapshotForSmartCloneInProgress,
    CloneFromSnapshotSourceInProgress,
    SmartClonePvcInProgress,
    CsiCloneInProgress,
    ExpansionInProgress,
    NamespaceTransferInProgress,
    UploadScheduled,
    UploadReady,
    WaitForFirstConsumer,
    PendingPopulation,
    Succeeded,
    Failed,
    Unknown,
    Paused,
    PrepClaimInProgress,
    RebindInProgress,
    /// A phase not in the list above, kept verbatim.
    Other(String),
}

impl DataVolumePhase {
    /// Every named phase, in CDI's order.
    pub const ALL: [DataVolumePhase; 23] = [
        Self::Unset,
        Self::Pending,
        Self::PvcBound,
        Self::ImportScheduled,
        Self::ImportInProgress,
        Self::CloneScheduled,
        Self::CloneInProgress,
        Self::SnapshotForSmartCloneInProgress,
        Self::CloneFromSnapshotSourceInProgress,
        Self::SmartClonePvcInProgress,
        Self::CsiCloneInProgress,
        Self::ExpansionInProgress,
        Self::NamespaceTransferInProgress,
        Self::UploadScheduled,
        Self::UploadReady,
        Self::WaitForFirstConsumer,
        Self::PendingPopulation,
        Self::Succeeded,
        Self::Failed,
        Self::Unknown,
        Self::Paused,
        Self::PrepClaimInProgress,
        Self::RebindInProgress,
    ];

    /// CDI's spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Unset => "",
            Self::Pending => "Pending",
            Self::PvcBound => "PVCBound",
            Self::ImportScheduled => "ImportScheduled",
            Self::ImportInProgress => "ImportInProgress",
            Self::CloneScheduled => "CloneScheduled",
            Self::CloneInProgress => "CloneInProgress",
            Self::SnapshotForSmartCloneInProgress => "SnapshotForSmartCloneInProgress",
            Self::CloneFromSnapshotSourceInProgress => "CloneFromSnapshotSourceInProgress",
            Self::SmartClonePvcInProgress => "SmartClonePVCInProgress",
            Self::CsiCloneInProgress => "CSICloneInProgress",
            Self::ExpansionInProgress => "ExpansionInProgress",
            Self::NamespaceTransferInProgress => "NamespaceTransferInProgress",
            Self::UploadScheduled => "UploadScheduled",
            Self::UploadReady => "UploadReady",
            Self::WaitForFirstConsumer => "WaitForFirstConsumer",
            Self::PendingPopulation => "PendingPopulation",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Unknown => "Unknown",
            Self::Paused => "Paused",
            Self::PrepClaimInProgress => "PrepClaimInProgress",
            Self::RebindInProgress => "RebindInProgress",
            Self::Other(other) => other,
        }
    }
}

impl From<&str> for DataVolumePhase {
    fn from(text: &str) -> Self {
        Self::ALL.into_iter().find(|phase| phase.as_str() == text).unwrap_or_else(|| Self::Other(text.to_owned()))
    }
}

impl fmt::Display for DataVolumePhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for DataVolumePhase {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for DataVolumePhase {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(Self::from(text.as_str()))
    }
}

impl JsonSchema for DataVolumePhase {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "DataVolumePhase".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // A plain string, no enum: a newer CDI's phase must not be refused.
        json_schema!({"type": "string", "description": "The phase the DataVolume is in."})
    }
}

//! The import source variants (`spec.source.<variant>` of a `VolumeImportSource`), with CDI's
//! field names and JSON shapes. DataVolume's `spec.source` reuses them when it arrives.
//!
//! The types are deliberately lenient: free-form strings stay strings and optional fields
//! stay `Option`, so any object the API server accepted deserialises (one object that fails
//! to deserialise would break the watch of every object of its kind). Checking happens once,
//! in [`crate::plan`].
//!
//! Optional strings that CDI declares as plain Go strings (`omitempty`) treat `""` as
//! absent; the plan does the same.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Exactly one field should be set; the API server does not enforce that (CDI's webhook
/// does), [`crate::plan::ImportPlan`] does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImportSourceType {
    /// Download over HTTP(S).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<DataVolumeSourceHttp>,
    /// Download from an S3-compatible object store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<DataVolumeSourceS3>,
    /// Pull a container disk image from a registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<DataVolumeSourceRegistry>,
    /// Download from Google Cloud Storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs: Option<DataVolumeSourceGcs>,
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

/// An `http://` or `https://` URL, with optional basic auth, extra CAs and extra headers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSourceHttp {
    /// The URL of the image.
    pub url: String,
    /// Name of a Secret in the source's namespace holding `accessKeyId` (user name) and
    /// `secretKey` (password) for HTTP basic auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    /// Name of a ConfigMap in the source's namespace whose values are PEM CA certificates
    /// to trust for this URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_config_map: Option<String>,
    /// Extra request headers, each `"Name: value"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_headers: Vec<String>,
    /// Names of Secrets, each holding one `"Name: value"` header under the key
    /// `secretHeader`, for headers that carry credentials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_extra_headers: Vec<String>,
    /// Expected digest of the downloaded bytes, `algorithm:hex` with algorithm one of
    /// md5, sha1, sha256, sha512.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// Do not verify the server's TLS certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

/// An object in an S3-compatible store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSourceS3 {
    /// The object's URL (the region is taken from the endpoint).
    pub url: String,
    /// Name of a Secret holding `accessKeyId` and `secretKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    /// Name of a ConfigMap of PEM CA certificates for the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_config_map: Option<String>,
}

/// An object in Google Cloud Storage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSourceGcs {
    /// `gs://bucket/object` or `https://storage.cloud.google.com/bucket/object`.
    pub url: String,
    /// Name of a Secret holding `credentials.json`; without one, access is anonymous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
}

/// A container disk image (the disk is the single file under `/disk/` in the image).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSourceRegistry {
    /// `docker://` or `oci-archive://` URL. Give either this or `imageStream`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// OpenShift image stream name (only with `pullMethod: node`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_stream: Option<String>,
    /// `pod` (default: the importer pulls) or `node` (the kubelet pulls, using the node's
    /// image cache and credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_method: Option<String>,
    /// Name of a Secret holding `accessKeyId` (user) and `secretKey` (password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    /// Name of a ConfigMap of PEM CA certificates for the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_config_map: Option<String>,
    /// Which image of a multi-platform manifest list to pick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformOptions>,
}

/// Selects one image of a multi-platform image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlatformOptions {
    /// CPU architecture, e.g. `amd64`, `arm64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
}

/// An empty raw disk; it has no fields (`blank: {}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DataVolumeBlankImage {}

/// A disk of an oVirt/RHV VM, read through ImageIO.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSourceImageIo {
    /// The ovirt-engine API URL.
    pub url: String,
    /// The disk's id.
    pub disk_id: String,
    /// Name of a Secret with the engine credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    /// Name of a ConfigMap with the engine's CA certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_config_map: Option<String>,
    /// Do not verify the engine's TLS certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

/// A disk of a VMware VM, read through VDDK.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSourceVddk {
    /// URL of the vCenter or ESXi host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// UUID of the VM the disk belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// The disk's backing file, e.g. `[datastore] vm/vm.vmdk`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing_file: Option<String>,
    /// SHA-1 thumbprint of the host's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbprint: Option<String>,
    /// Name of a Secret with the host's user name and password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    /// Name of a ConfigMap with the host's CA certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_config_map: Option<String>,
    /// Image holding the VDDK library (overrides the cluster-wide default).
    #[serde(rename = "initImageURL", default, skip_serializing_if = "Option::is_none")]
    pub init_image_url: Option<String>,
    /// Name of a ConfigMap of extra VDDK arguments (key `vddk-config-file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_args: Option<String>,
}

/// One stage of a multi-stage (warm) import: copy the changes from snapshot `previous` to
/// snapshot `current`. CDI uses these with VDDK and ImageIO only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeCheckpoint {
    /// Snapshot id of the previous stage ("" for the first).
    pub previous: String,
    /// Snapshot id of this stage.
    pub current: String,
}

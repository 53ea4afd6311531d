//! `CDIConfig`: the cluster-wide settings of CDI, one object named `config`
//! ([`super::names::singletons::CDI_CONFIG`]). Admins edit `spec`; the controller writes the
//! effective values, defaults filled in, to `status`, which is what clients (KubeVirt's
//! virt-controller, virtctl, our own controllers) read.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{LocalObjectReference, ResourceRequirements};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The admin's settings; every field is optional.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cdi.kubevirt.io",
    version = "v1beta1",
    kind = "CDIConfig",
    plural = "cdiconfigs",
    status = "CDIConfigStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "The cluster-wide settings of CDI: one object, named config."
)]
#[serde(rename_all = "camelCase")]
pub struct CDIConfigSpec {
    /// The upload proxy's URL for clients (virtctl), instead of the detected one.
    #[serde(rename = "uploadProxyURLOverride", default, skip_serializing_if = "Option::is_none")]
    pub upload_proxy_url_override: Option<String>,
    /// Proxy settings for imports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_proxy: Option<ImportProxy>,
    /// Storage class of scratch volumes (cdi-rs never needs one; kept for CDI's clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scratch_space_storage_class: Option<String>,
    /// Resources of the worker pods' containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_resource_requirements: Option<ResourceRequirements>,
    /// Opt-in features, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feature_gates: Vec<String>,
    /// Share of a Filesystem volume kept free for the filesystem, globally and per class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem_overhead: Option<FilesystemOverhead>,
    /// Preallocate DataVolumes that do not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preallocation: Option<bool>,
    /// Registries (host[:port]) reached without TLS verification.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub insecure_registries: Vec<String>,
    /// Deprecated in CDI (no DataVolume garbage collection any more); kept as given.
    #[serde(rename = "dataVolumeTTLSeconds", default, skip_serializing_if = "Option::is_none")]
    pub data_volume_ttl_seconds: Option<i32>,
    /// TLS settings of the servers (`old`, `intermediate`, `modern`, `custom`), kept as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::free_form_object")]
    pub tls_security_profile: Option<serde_json::Value>,
    /// Pull secrets for the worker pods' images.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Verbosity of the worker pods' logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_verbosity: Option<i32>,
    /// `Enabled` (default) or `Disabled`: PVC rendering from StorageProfiles by webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_pvc_rendering: Option<String>,
}

/// Proxies for imports; CDI's JSON keys (capitalised as they are).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImportProxy {
    /// Proxy for `http://` sources.
    #[serde(rename = "HTTPProxy", default, skip_serializing_if = "Option::is_none")]
    pub http_proxy: Option<String>,
    /// Proxy for `https://` sources.
    #[serde(rename = "HTTPSProxy", default, skip_serializing_if = "Option::is_none")]
    pub https_proxy: Option<String>,
    /// Hosts reached directly, comma-separated.
    #[serde(rename = "noProxy", default, skip_serializing_if = "Option::is_none")]
    pub no_proxy: Option<String>,
    /// Name of a ConfigMap (in CDI's namespace) with the proxy's CA bundle.
    #[serde(rename = "trustedCAProxy", default, skip_serializing_if = "Option::is_none")]
    pub trusted_ca_proxy: Option<String>,
}

/// Filesystem overhead: a share between 0 and 1, as a string (`"0.06"`), globally and per
/// StorageClass (which wins).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FilesystemOverhead {
    /// For classes without their own value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<String>,
    /// Per StorageClass name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub storage_class: BTreeMap<String, String>,
}

/// The effective settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CDIConfigStatus {
    /// Where clients upload to: the override, else the upload proxy's address.
    #[serde(rename = "uploadProxyURL", default, skip_serializing_if = "Option::is_none")]
    pub upload_proxy_url: Option<String>,
    /// The upload proxy's CA bundle (PEM), for clients.
    #[serde(rename = "uploadProxyCA", default, skip_serializing_if = "Option::is_none")]
    pub upload_proxy_ca: Option<String>,
    /// Proxy settings in effect for imports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_proxy: Option<ImportProxy>,
    /// The spec's class if it exists, else empty (the target claim's class).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scratch_space_storage_class: String,
    /// Resources of the worker pods' containers: the spec's, else CDI's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_pod_resource_requirements: Option<ResourceRequirements>,
    /// The overhead in effect: global and one entry per StorageClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem_overhead: Option<FilesystemOverhead>,
    /// Whether DataVolumes that do not say are preallocated.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preallocation: bool,
    /// Pull secrets for the worker pods' images.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
}

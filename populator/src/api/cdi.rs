//! `CDI`: CDI's install object (CDI's operator reconciles it). cdi-rs has no operator: the
//! populator keeps one object, `cdi`, and reports through its status that CDI is deployed,
//! which is how clients (KubeVirt) find out that CDI is there and which CDIConfig counts.
//!
//! The spec is accepted as CDI defines it, so CDI's own manifests apply; of it, cdi-rs acts
//! on nothing yet (placement, replicas and certificates come from `deploy/`).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cdiconfig::CDIConfigSpec;

/// How CDI is installed.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cdi.kubevirt.io",
    version = "v1beta1",
    kind = "CDI",
    plural = "cdis",
    singular = "cdi",
    shortname = "cdi",
    shortname = "cdis",
    status = "CDIStatus",
    derive = "PartialEq",
    derive = "Default",
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    doc = "A CDI installation; the populator keeps one, named cdi, and reports its state."
)]
#[serde(rename_all = "camelCase")]
pub struct CDISpec {
    /// Pull policy of CDI's images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// `RemoveWorkloads` or `BlockUninstallIfWorkloadsExist`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uninstall_strategy: Option<String>,
    /// Placement and replicas of CDI's own pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::free_form_object")]
    pub infra: Option<serde_json::Value>,
    /// Placement of the worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::free_form_object")]
    pub workload: Option<serde_json::Value>,
    /// Patches and flags for CDI's components.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::free_form_object")]
    pub customize_components: Option<serde_json::Value>,
    /// A clone strategy for every class, over the StorageProfiles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_strategy_override: Option<String>,
    /// The CDIConfig spec the operator would keep in `config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<CDIConfigSpec>,
    /// Lifetimes of CDI's certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::free_form_object")]
    pub cert_config: Option<serde_json::Value>,
    /// Priority class of CDI's own pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class: Option<String>,
}

/// The operator SDK's status, as CDI's operator writes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CDIStatus {
    /// `Deploying`, `Deployed`, `Error`, ... (see [`super::names::cdi_phases`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// `Available`, `Progressing`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<OperatorCondition>,
    /// Version of the running operator (here: the populator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_version: Option<String>,
    /// Version being deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,
    /// Version deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_version: Option<String>,
}

/// A condition as the operator SDK writes it (it has a heartbeat, unlike `metav1.Condition`).
/// Timestamps are RFC 3339 strings, kept as written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperatorCondition {
    /// `Available`, `Progressing` or `Degraded`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// One CamelCase word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the condition was last checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<String>,
    /// When `status` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

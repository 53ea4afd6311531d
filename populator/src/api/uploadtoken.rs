//! `UploadTokenRequest` (`upload.cdi.kubevirt.io/v1beta1`): asks for a short-lived token
//! allowing one upload into one claim. It is not stored: the populator's aggregated API
//! answers a `create` with the token and keeps nothing, so there is no CRD.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "upload.cdi.kubevirt.io";
pub const VERSION: &str = "v1beta1";
pub const API_VERSION: &str = "upload.cdi.kubevirt.io/v1beta1";
pub const KIND: &str = "UploadTokenRequest";
pub const PLURAL: &str = "uploadtokenrequests";

/// The request and, as answered, its token.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadTokenRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: UploadTokenRequestSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<UploadTokenRequestStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadTokenRequestSpec {
    /// The claim to upload into (in the request's namespace).
    #[serde(default)]
    pub pvc_name: String,
}

#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadTokenRequestStatus {
    /// The bearer token for the upload proxy.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
}

impl std::fmt::Debug for UploadTokenRequestStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UploadTokenRequestStatus { token: <redacted> }")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdis_json_round_trips_and_the_token_is_not_debug_printed() {
        let json = serde_json::json!({
            "apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": "token-for-virtctl", "namespace": "ns"},
            "spec": {"pvcName": "disk"},
            "status": {"token": "secret.jwt.value"},
        });
        let r: UploadTokenRequest = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(r.spec.pvc_name, "disk");
        assert_eq!(serde_json::to_value(&r).unwrap(), json);
        assert!(!format!("{r:?}").contains("secret.jwt.value"));
    }
}

//! Protobuf request bodies of the review APIs and TokenRequest. kubectl's typed clients
//! (`kubectl create token`, `kubectl auth can-i`, `kubectl auth whoami`) send these as
//! `application/vnd.kubernetes.protobuf`; the answer goes back as JSON, which they accept.
//! Only the `spec` fields the server reads are decoded (field numbers from Kubernetes'
//! `generated.proto` of authentication/v1 and authorization/v1).

use prost::Message;
use serde_json::{Value, json};

use super::reviews::Endpoint;
use crate::api::error::ApiError;

/// Kubernetes' protobuf envelope starts with these bytes, then a `runtime.Unknown`.
const MAGIC: &[u8] = b"k8s\0";

#[derive(Clone, PartialEq, Message)]
struct Unknown {
    #[prost(bytes = "vec", optional, tag = "2")]
    raw: Option<Vec<u8>>,
}

/// Every review and TokenRequest is `{metadata = 1, spec = 2, status = 3}`; the spec is
/// kept as bytes (a message's wire form) and decoded by type.
#[derive(Clone, PartialEq, Message)]
struct Object {
    #[prost(bytes = "vec", optional, tag = "2")]
    spec: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct ResourceAttributes {
    #[prost(string, optional, tag = "1")]
    namespace: Option<String>,
    #[prost(string, optional, tag = "2")]
    verb: Option<String>,
    #[prost(string, optional, tag = "3")]
    group: Option<String>,
    #[prost(string, optional, tag = "4")]
    version: Option<String>,
    #[prost(string, optional, tag = "5")]
    resource: Option<String>,
    #[prost(string, optional, tag = "6")]
    subresource: Option<String>,
    #[prost(string, optional, tag = "7")]
    name: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct NonResourceAttributes {
    #[prost(string, optional, tag = "1")]
    path: Option<String>,
    #[prost(string, optional, tag = "2")]
    verb: Option<String>,
}

/// `SubjectAccessReviewSpec`; `SelfSubjectAccessReviewSpec` is its first two fields.
#[derive(Clone, PartialEq, Message)]
struct AccessSpec {
    #[prost(message, optional, tag = "1")]
    resource_attributes: Option<ResourceAttributes>,
    #[prost(message, optional, tag = "2")]
    non_resource_attributes: Option<NonResourceAttributes>,
    #[prost(string, optional, tag = "3")]
    user: Option<String>,
    #[prost(string, repeated, tag = "4")]
    groups: Vec<String>,
    #[prost(string, optional, tag = "6")]
    uid: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct RulesSpec {
    #[prost(string, optional, tag = "1")]
    namespace: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct TokenReviewSpec {
    #[prost(string, optional, tag = "1")]
    token: Option<String>,
    #[prost(string, repeated, tag = "2")]
    audiences: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
struct BoundObjectReference {
    #[prost(string, optional, tag = "1")]
    kind: Option<String>,
    #[prost(string, optional, tag = "2")]
    api_version: Option<String>,
    #[prost(string, optional, tag = "3")]
    name: Option<String>,
    #[prost(string, optional, tag = "4")]
    uid: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct TokenRequestSpec {
    #[prost(string, repeated, tag = "1")]
    audiences: Vec<String>,
    #[prost(message, optional, tag = "3")]
    bound_object_ref: Option<BoundObjectReference>,
    #[prost(int64, optional, tag = "4")]
    expiration_seconds: Option<i64>,
}

pub fn is_protobuf(content_type: &str) -> bool {
    content_type.split(';').next().is_some_and(|t| t.trim() == "application/vnd.kubernetes.protobuf")
}

fn spec<S: Message + Default>(raw: &[u8]) -> Result<Option<S>, prost::DecodeError> {
    Object::decode(raw)?.spec.map(|b| S::decode(b.as_slice())).transpose()
}

/// Unset optional fields are absent in JSON, not null.
fn without_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, without_nulls(v))).collect())
        }
        other => other,
    }
}

/// The body as the JSON the review handlers read (`{"spec": …}`).
///
/// # Errors
/// 400 when the bytes are not a Kubernetes protobuf object.
pub fn decode(endpoint: Endpoint, body: &[u8]) -> Result<Value, ApiError> {
    let bad = |e: &dyn std::fmt::Display| ApiError::bad_request(format!("the protobuf request body is invalid: {e}"));
    let envelope = body.strip_prefix(MAGIC).ok_or_else(|| bad(&"no k8s protobuf magic"))?;
    let raw = Unknown::decode(envelope).map_err(|e| bad(&e))?.raw.unwrap_or_default();
    let spec = match endpoint {
        Endpoint::SubjectAccessReview | Endpoint::LocalSubjectAccessReview | Endpoint::SelfSubjectAccessReview => {
            let s: AccessSpec = spec(&raw).map_err(|e| bad(&e))?.unwrap_or_default();
            let mut out = json!({"groups": s.groups});
            if let Some(u) = s.user {
                out["user"] = json!(u);
            }
            if let Some(u) = s.uid {
                out["uid"] = json!(u);
            }
            if let Some(r) = s.resource_attributes {
                out["resourceAttributes"] = json!({"namespace": r.namespace, "verb": r.verb, "group": r.group,
                    "version": r.version, "resource": r.resource, "subresource": r.subresource, "name": r.name});
            }
            if let Some(n) = s.non_resource_attributes {
                out["nonResourceAttributes"] = json!({"path": n.path, "verb": n.verb});
            }
            out
        }
        Endpoint::SelfSubjectRulesReview => {
            let s: RulesSpec = spec(&raw).map_err(|e| bad(&e))?.unwrap_or_default();
            json!({"namespace": s.namespace})
        }
        Endpoint::TokenReview => {
            let s: TokenReviewSpec = spec(&raw).map_err(|e| bad(&e))?.unwrap_or_default();
            json!({"token": s.token, "audiences": s.audiences})
        }
        Endpoint::SelfSubjectReview => json!({}),
        Endpoint::TokenRequest => {
            let s: TokenRequestSpec = spec(&raw).map_err(|e| bad(&e))?.unwrap_or_default();
            let mut out = json!({"audiences": s.audiences, "expirationSeconds": s.expiration_seconds});
            if let Some(b) = s.bound_object_ref {
                out["boundObjectRef"] =
                    json!({"kind": b.kind, "apiVersion": b.api_version, "name": b.name, "uid": b.uid});
            }
            out
        }
    };
    Ok(json!({"spec": without_nulls(spec)}))
}

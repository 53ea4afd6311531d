//! `AdmissionReview` in, `AdmissionReview` out: the envelope around a webhook's decision.

use std::future::Future;

use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::core::response::{StatusCause, StatusDetails};
use kube::core::{DynamicObject, Status};

/// A request as the API server sends it; the object is decoded by the rule that reads it.
pub type Request = AdmissionRequest<DynamicObject>;

/// Why a request is refused: CDI's message, and the field it is about (CDI's field path,
/// e.g. `spec.source`; empty when the object as a whole is refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub message: String,
    pub field: String,
}

impl Denial {
    pub fn new(message: impl Into<String>, field: impl Into<String>) -> Denial {
        Denial { message: message.into(), field: field.into() }
    }
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Admit (`Ok`) or deny.
pub type Verdict = Result<(), Denial>;

/// The body could not be read as an `admission.k8s.io/v1` review with a request.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the body is not an AdmissionReview: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("the AdmissionReview has no request")]
    NoRequest,
    #[error("cannot encode the answer: {0}")]
    Encode(#[source] serde_json::Error),
}

/// Decodes `body`, lets `decide` judge its request, and encodes the answer (JSON).
///
/// # Errors
/// A body that is not a review with a request.
pub async fn answer<F, Fut>(body: &[u8], decide: F) -> Result<Vec<u8>, ReviewError>
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = (AdmissionResponse, Verdict)>,
{
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body).map_err(ReviewError::Decode)?;
    let request: Request = review.try_into().map_err(|_| ReviewError::NoRequest)?;
    let (response, verdict) = decide(request).await;
    let response = match verdict {
        Ok(()) => response,
        Err(denial) => deny(response, &denial),
    };
    serde_json::to_vec(&response.into_review()).map_err(ReviewError::Encode)
}

/// A denial as CDI answers one: code 422 (Unprocessable Entity) with the message, and the
/// cause with its field.
fn deny(response: AdmissionResponse, denial: &Denial) -> AdmissionResponse {
    let mut response = response.deny(&denial.message);
    response.result = Status {
        code: 422,
        message: denial.message.clone(),
        details: Some(StatusDetails {
            name: String::new(),
            group: String::new(),
            kind: String::new(),
            uid: String::new(),
            causes: vec![StatusCause {
                reason: "FieldValueInvalid".into(),
                message: denial.message.clone(),
                field: denial.field.clone(),
            }],
            retry_after_seconds: 0,
        }),
        ..Status::failure(&denial.message, "")
    };
    response
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn review(op: &str) -> Vec<u8> {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "u-1", "kind": {"group": "cdi.kubevirt.io", "version": "v1beta1", "kind": "DataVolume"},
            "resource": {"group": "cdi.kubevirt.io", "version": "v1beta1", "resource": "datavolumes"},
            "name": "dv", "namespace": "default", "operation": op, "userInfo": {"username": "admin"},
            "object": {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": "dv"}},
            "dryRun": false}})
        .to_string()
        .into_bytes()
    }

    #[tokio::test]
    async fn an_admission_echoes_the_uid_and_allows() {
        let out = answer(&review("CREATE"), |r| async move { (AdmissionResponse::from(&r), Ok(())) }).await.unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(out["kind"], "AdmissionReview");
        assert_eq!(out["response"]["uid"], "u-1");
        assert_eq!(out["response"]["allowed"], true);
    }

    #[tokio::test]
    async fn a_denial_carries_cdis_code_message_and_field() {
        let out = answer(&review("UPDATE"), |r| async move {
            (AdmissionResponse::from(&r), Err(Denial::new("Cannot update DataVolume Spec", "DataVolume.Spec")))
        })
        .await
        .unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        let resp = &out["response"];
        assert_eq!(resp["allowed"], false);
        assert_eq!(resp["status"]["code"], 422);
        assert_eq!(resp["status"]["message"], "Cannot update DataVolume Spec");
        assert_eq!(resp["status"]["details"]["causes"][0]["field"], "DataVolume.Spec");
    }

    #[tokio::test]
    async fn what_is_not_a_review_is_an_error() {
        let decide = |r: Request| async move { (AdmissionResponse::from(&r), Ok(())) };
        assert!(matches!(answer(b"{}", decide).await, Err(ReviewError::Decode(_) | ReviewError::NoRequest)));
        assert!(matches!(answer(b"[", decide).await, Err(ReviewError::Decode(_))));
    }
}

//! The write verbs: create, `pods/binding`, update, patch (the content type picks the patch
//! type), delete and deletecollection.

use axum::http::{StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::json_response;
use super::request::{Request, delete_options, explicit_manager};
use crate::api::admission;
use crate::api::error::ApiError;
use crate::api::store::PatchType;

/// POST on a collection.
pub(super) async fn create(req: &Request<'_>) -> Result<Response, ApiError> {
    let o = admission::create(&req.st.store, req.rt(), req.ns(), req.body_json()?, &req.wopts, req.user).await?;
    Ok(json_response(StatusCode::CREATED, &o))
}

/// POST `pods/<name>/binding`: assigns the pod to the node the Binding names.
pub(super) fn bind(req: &Request, name: &str) -> Result<Response, ApiError> {
    let (st, rt, ns) = (req.st, req.rt(), req.ns());
    let b = req.body_json()?;
    let node = b["target"]["name"].as_str().unwrap_or_default();
    if node.is_empty() {
        return Err(ApiError::invalid(rt, name, "target.name: Required value"));
    }
    if req.wopts.dry_run {
        st.store.get(rt, ns, name)?;
    } else {
        st.store.bind_pod(ns, name, node)?;
    }
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

/// PUT on an object or its status.
pub(super) async fn update(req: &Request<'_>, name: &str) -> Result<Response, ApiError> {
    let (st, rt, ns) = (req.st, req.rt(), req.ns());
    let o = admission::update(&st.store, rt, ns, name, req.body_json()?, req.sub, &req.wopts, req.user).await?;
    Ok(json_response(StatusCode::OK, &o))
}

/// PATCH on an object or its status; an apply may create the object (201).
pub(super) async fn patch(req: &Request<'_>, name: &str) -> Result<Response, ApiError> {
    let (st, rt, ns) = (req.st, req.rt(), req.ns());
    let ct = req.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let ty = patch_type(ct)?;
    if ty == PatchType::Apply && !explicit_manager(req.q) {
        return Err(ApiError::bad_request("PATCH, fieldManager is required for apply requests"));
    }
    let patch: Value = serde_json::from_slice(&req.body).map_err(|e| {
        ApiError::bad_request(format!("the patch body is not JSON (YAML apply bodies are not supported): {e}"))
    })?;
    let existed = st.store.get(rt, ns, name).is_ok();
    let o = admission::patch(&st.store, rt, ns, name, ty, &patch, req.sub, &req.wopts, req.user).await?;
    Ok(json_response(if existed { StatusCode::OK } else { StatusCode::CREATED }, &o))
}

/// The patch type a PATCH's Content-Type names (415 for any other).
fn patch_type(content_type: &str) -> Result<PatchType, ApiError> {
    match content_type.split(';').next().unwrap_or("").trim() {
        "application/json-patch+json" => Ok(PatchType::Json),
        "application/merge-patch+json" => Ok(PatchType::Merge),
        "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => Ok(PatchType::Apply),
        other => Err(ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format - accepted media types include: \
             application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml \
             (got {other})"
        ))),
    }
}

/// DELETE on an object: 200 once it is gone, 202 while finalizers hold it.
pub(super) async fn delete(req: &Request<'_>, name: &str) -> Result<Response, ApiError> {
    let (st, rt, ns) = (req.st, req.rt(), req.ns());
    let opts = delete_options(req.q, &req.body)?;
    let o = admission::delete(&st.store, rt, ns, name, &opts, req.user).await?;
    // A dry run leaves the object in place: what it answers says whether the delete
    // would have been held by finalizers.
    let still_there =
        if opts.dry_run { o["metadata"]["deletionTimestamp"].is_string() } else { st.store.get(rt, ns, name).is_ok() };
    Ok(json_response(if still_there { StatusCode::ACCEPTED } else { StatusCode::OK }, &o))
}

/// DELETE on a collection: deletes what the selectors match, answers the deleted objects.
pub(super) async fn delete_collection(req: &Request<'_>) -> Result<Response, ApiError> {
    let (st, rt) = (req.st, req.rt());
    let query = req.query()?;
    let opts = delete_options(req.q, &req.body)?;
    let res = st.store.list(rt, &query, None, None)?;
    let mut items = Vec::new();
    for o in res.items {
        let ons = o["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        let oname = o["metadata"]["name"].as_str().unwrap_or_default().to_string();
        // As in Kubernetes, an object gone meanwhile is skipped and any other failure (a
        // webhook's denial) ends the request.
        match admission::delete(&st.store, rt, &ons, &oname, &opts, req.user).await {
            Ok(d) => items.push(d),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(),
                "metadata": {"resourceVersion": st.store.resource_version().to_string()}, "items": items}),
    ))
}

//! The read verbs: list (plain or as a Table, or handed to a watch), get, and `pods/log`.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::json_response;
use super::request::{Request, is_watch};
use super::watch::watch_response;
use crate::api::error::ApiError;
use crate::api::selectors::FieldSelector;
use crate::api::table::to_table;

/// GET on a collection: a list, a Table, or a watch.
pub(super) fn list(req: &Request) -> Result<Response, ApiError> {
    let (st, rt, q) = (req.st, req.rt(), req.q);
    let query = req.query()?;
    if is_watch(&req.target, q) {
        return watch_response(st, rt.clone(), query, q, req.table);
    }
    let limit = q.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0);
    let res = st.store.list(rt, &query, limit, q.get("continue").map(String::as_str))?;
    let rv = res.resource_version.to_string();
    if req.table {
        let table = to_table(rt, &res.items, &rv, res.continue_token.as_deref(), req.include_object());
        return Ok(json_response(StatusCode::OK, &table));
    }
    let mut meta = json!({"resourceVersion": rv});
    if let Some(c) = res.continue_token {
        meta["continue"] = json!(c);
    }
    if let Some(r) = res.remaining {
        meta["remainingItemCount"] = json!(r);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": meta, "items": res.items}),
    ))
}

/// GET on one object (or a `/watch/` of it).
pub(super) fn get(req: &Request, name: &str) -> Result<Response, ApiError> {
    let (st, rt) = (req.st, req.rt());
    if req.target.legacy_watch {
        let mut query = req.query()?;
        query.fields = FieldSelector::parse(&format!("metadata.name={name}"))?;
        return watch_response(st, rt.clone(), query, req.q, req.table);
    }
    let o = st.store.get(rt, req.ns(), name)?;
    if req.table {
        let rv = o["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string();
        return Ok(json_response(StatusCode::OK, &to_table(rt, &[o.into()], &rv, None, req.include_object())));
    }
    Ok(json_response(StatusCode::OK, &o))
}

/// `pods/log`: what the container wrote, read from its node's log directory.
pub(super) fn pod_log(req: &Request, name: &str) -> Result<Response, ApiError> {
    let (st, ns, q) = (req.st, req.ns(), req.q);
    let pod = st.store.get(req.rt(), ns, name)?;
    let container = match q.get("container") {
        Some(c) => c.clone(),
        None => pod["spec"]["containers"][0]["name"].as_str().unwrap_or_default().to_string(),
    };
    let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
    let file = st.nodes_dir.join(node).join("logs").join(format!("{ns}_{name}_{container}.log"));
    // Containers that only pretend to run have no output.
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let text = match q.get("tailLines").and_then(|t| t.parse::<usize>().ok()) {
        Some(n) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].iter().map(|l| format!("{l}\n")).collect()
        }
        None => text,
    };
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], text).into_response())
}

//! The HTTP front of the API server: one handler takes every request, converts protobuf at
//! the edges, and routes it to a non-resource path or to the verb that serves it.
//!
//! - `request`: what a request targets and the options it implies;
//! - `nonresource`: version, health, discovery and OpenAPI paths;
//! - `read`: list, get, `pods/log`; `write`: create, binding, update, patch, delete;
//! - `watch`: watch streams.

mod nonresource;
mod read;
mod request;
mod watch;
mod write;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query as QueryParams, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::auth::UserInfo;
use super::error::ApiError;
use super::protobuf;
use super::store::Store;
use request::{Request, is_watch, parse_target, subresource, write_options};

/// Shared state of the HTTP front.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub store: Arc<Store>,
    /// Bumped to end every open watch (server shutdown, or a test simulating a dropped
    /// connection).
    pub watch_generation: tokio::sync::watch::Sender<u64>,
    pub bookmark_interval: Duration,
    /// `nodes/<node>/logs/` holds the output of the processes pods run (`pods/log`).
    pub nodes_dir: std::path::PathBuf,
}

/// The router: every path goes to one handler, which parses Kubernetes paths itself.
pub fn router(state: ApiState) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(state)
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn error_response(e: &ApiError) -> Response {
    json_response(StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &e.status_body())
}

async fn handle(
    State(st): State<ApiState>,
    method: Method,
    uri: Uri,
    QueryParams(q): QueryParams<HashMap<String, String>>,
    headers: HeaderMap,
    user: Option<axum::Extension<UserInfo>>,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_end_matches('/').to_string();
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    // Protobuf in and out (built-in kinds): bodies become JSON before dispatch, and JSON
    // answers become protobuf after it when the client prefers that.
    let (body, output) = match protobuf_edges(&st, &method, &path, &q, &headers, &accept, body) {
        Ok(v) => v,
        Err(e) => return error_response(&e),
    };
    // Set by the auth middleware; a router without it serves an anonymous-like nobody.
    let user = user.map(|u| u.0).unwrap_or_default();
    let resp = match dispatch(&st, &method, &path, &q, &headers, &accept, &user, body).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%method, %path, code = e.code, message = %e.message, "request failed");
            error_response(&e)
        }
    };
    match output {
        protobuf::Output::Protobuf => protobuf::to_protobuf_response(resp).await,
        protobuf::Output::Json => resp,
    }
}

/// Decodes a protobuf request body to JSON and negotiates the response encoding. Watches,
/// tables and paths that are not a built-in resource answer JSON (or 406 to a client that
/// accepts protobuf only).
fn protobuf_edges(
    st: &ApiState,
    method: &Method,
    path: &str,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    accept: &str,
    body: Bytes,
) -> Result<(Bytes, protobuf::Output), ApiError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let target = parse_target(&st.store.registry(), &segs).ok();
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    // An unknown path keeps its 404; PATCH bodies are never protobuf (dispatch answers 415).
    let body = if protobuf::is_protobuf(ct) && !body.is_empty() && method != Method::PATCH && target.is_some() {
        let rt = target.as_ref().map(|t| &t.rt);
        let api_version = rt.map(|r| r.api_version()).unwrap_or_default();
        let kind = match (method, target.as_ref().and_then(|t| t.sub.as_deref())) {
            (&Method::DELETE, _) => "DeleteOptions".to_string(),
            (_, Some("binding")) => "Binding".to_string(),
            _ => rt.map(|r| r.kind.clone()).unwrap_or_default(),
        };
        protobuf::decode_request(&body, rt, (&api_version, &kind))?
    } else {
        body
    };
    let Some(t) = target else { return Ok((body, protobuf::Output::Json)) };
    let log = t.sub.as_deref() == Some("log");
    let output = protobuf::negotiate(accept, protobuf::supports(&t.rt) && !is_watch(&t, q) && !log)?;
    Ok((body, output))
}

/// Routes a request: non-resource paths first, then one function per verb on the target.
#[allow(clippy::too_many_arguments)]
async fn dispatch(
    st: &ApiState,
    method: &Method,
    path: &str,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    accept: &str,
    user: &UserInfo,
    body: Bytes,
) -> Result<Response, ApiError> {
    let reg = st.store.registry();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if method == Method::GET
        && let Some(resp) = nonresource::serve(st, &reg, &segs, accept)
    {
        return resp;
    }
    let target = parse_target(&reg, &segs)?;
    let wopts = write_options(method, q, headers)?;
    let sub = subresource(&target, method)?;
    let req = Request { st, target, q, headers, body, table: accept.contains("as=Table"), sub, wopts, user };
    match (method, req.target.name.as_deref(), req.target.sub.as_deref()) {
        (&Method::GET, None, _) => read::list(&req),
        (&Method::GET, Some(name), Some("log")) => read::pod_log(&req, name),
        (&Method::GET, Some(name), _) => read::get(&req, name),
        (&Method::POST, None, None) => write::create(&req).await,
        (&Method::POST, Some(name), Some("binding")) => write::bind(&req, name),
        (&Method::PUT, Some(name), _) => write::update(&req, name).await,
        (&Method::PATCH, Some(name), _) => write::patch(&req, name).await,
        (&Method::DELETE, Some(name), None) => write::delete(&req, name).await,
        (&Method::DELETE, None, None) => write::delete_collection(&req).await,
        _ => Err(ApiError::method_not_allowed()),
    }
}

//! Paths that are not resources: `/version`, the health checks, discovery (`/api`,
//! `/apis`, group and version documents, aggregated discovery) and `/openapi/...`.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{ApiState, json_response};
use crate::api::discovery;
use crate::api::error::ApiError;
use crate::api::openapi;
use crate::api::registry::Registry;

/// Answers a GET of a non-resource path, or `None` when the path names resources.
pub(super) fn serve(st: &ApiState, reg: &Registry, segs: &[&str], accept: &str) -> Option<Result<Response, ApiError>> {
    let found = |doc: Option<serde_json::Value>| {
        doc.map(|d| json_response(StatusCode::OK, &d)).ok_or_else(ApiError::path_not_found)
    };
    Some(match segs {
        ["version"] => Ok(json_response(StatusCode::OK, &discovery::version())),
        ["healthz"] | ["livez"] | ["readyz"] => Ok((StatusCode::OK, "ok").into_response()),
        ["api"] => Ok(discovery_root(reg, true, accept)),
        ["apis"] => Ok(discovery_root(reg, false, accept)),
        ["api", v] => found(discovery::resource_list(reg, "", v)),
        ["apis", g] => found(discovery::api_group(reg, g)),
        ["apis", g, v] => found(discovery::resource_list(reg, g, v)),
        ["openapi", rest @ ..] => openapi::serve(&st.store, reg, rest, accept),
        _ => return None,
    })
}

/// `/api` or `/apis`: the plain version/group list, or aggregated discovery when the
/// Accept header asks for it.
fn discovery_root(reg: &Registry, core: bool, accept: &str) -> Response {
    // Aggregated discovery is chosen by the Accept header, first match wins.
    for part in accept.split(',') {
        let part = part.trim();
        if part.contains("as=APIGroupDiscoveryList") {
            let (ct, av) = if part.contains("v=v2beta1") {
                (discovery::AGGREGATED_V2BETA1, "apidiscovery.k8s.io/v2beta1")
            } else if part.contains("v=v2") {
                (discovery::AGGREGATED_V2, "apidiscovery.k8s.io/v2")
            } else {
                continue;
            };
            let body = serde_json::to_vec(&discovery::aggregated(reg, core, av)).unwrap_or_default();
            return (StatusCode::OK, [(header::CONTENT_TYPE, ct)], body).into_response();
        }
        if part.starts_with("application/json") || part.starts_with("*/*") {
            break;
        }
    }
    if core {
        json_response(StatusCode::OK, &discovery::core_versions())
    } else {
        json_response(StatusCode::OK, &discovery::api_groups(reg))
    }
}

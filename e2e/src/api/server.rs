//! The HTTP front of the API server: routes Kubernetes REST paths to the store, encodes
//! lists, tables and watch streams, and answers errors with `Status` bodies.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query as QueryParams, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::discovery;
use super::error::ApiError;
use super::openapi;
use super::protobuf;
use super::registry::ResourceType;
use super::selectors::{FieldSelector, LabelSelector};
use super::store::{
    Change, DeleteOptions, EventType, PatchType, Propagation, Query, Store, Sub, WriteOptions, present,
};
use super::table::to_table;

/// Shared state of the HTTP front.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub store: Arc<Store>,
    /// Bumped to end every open watch (server shutdown, or a test simulating a dropped
    /// connection).
    pub watch_generation: watch::Sender<u64>,
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

/// A parsed resource path.
#[derive(Debug)]
struct Target {
    rt: ResourceType,
    namespace: String,
    name: Option<String>,
    sub: Option<String>,
    legacy_watch: bool,
}

async fn handle(
    State(st): State<ApiState>,
    method: Method,
    uri: Uri,
    QueryParams(q): QueryParams<HashMap<String, String>>,
    headers: HeaderMap,
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
    let resp = match dispatch(&st, &method, &path, &q, &headers, &accept, body).await {
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
    let watch = t.legacy_watch || q.get("watch").is_some_and(|w| w == "true" || w == "1");
    let log = t.sub.as_deref() == Some("log");
    let output = protobuf::negotiate(accept, protobuf::supports(&t.rt) && !watch && !log)?;
    Ok((body, output))
}

async fn dispatch(
    st: &ApiState,
    method: &Method,
    path: &str,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    accept: &str,
    body: Bytes,
) -> Result<Response, ApiError> {
    let reg = st.store.registry();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if method == Method::GET {
        match segs.as_slice() {
            ["version"] => return Ok(json_response(StatusCode::OK, &discovery::version())),
            ["healthz"] | ["livez"] | ["readyz"] => return Ok((StatusCode::OK, "ok").into_response()),
            ["api"] => return Ok(discovery_root(&reg, true, accept)),
            ["apis"] => return Ok(discovery_root(&reg, false, accept)),
            ["api", v] => {
                return discovery::resource_list(&reg, "", v)
                    .map(|d| json_response(StatusCode::OK, &d))
                    .ok_or_else(ApiError::path_not_found);
            }
            ["apis", g] => {
                return discovery::api_group(&reg, g)
                    .map(|d| json_response(StatusCode::OK, &d))
                    .ok_or_else(ApiError::path_not_found);
            }
            ["apis", g, v] => {
                return discovery::resource_list(&reg, g, v)
                    .map(|d| json_response(StatusCode::OK, &d))
                    .ok_or_else(ApiError::path_not_found);
            }
            ["openapi", rest @ ..] => return openapi::serve(&st.store, &reg, rest, accept),
            _ => {}
        }
    }
    let target = parse_target(&reg, &segs)?;
    // Reads ignore dryRun, as Kubernetes does.
    let dry_run = method != Method::GET && dry_run(q.get("dryRun").map(String::as_str))?;
    let manager = q.get("fieldManager").cloned().unwrap_or_else(|| {
        let ua = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("unknown");
        ua.split('/').next().unwrap_or("unknown").to_string()
    });
    let explicit_manager = q.get("fieldManager").is_some_and(|m| !m.is_empty());
    let wopts = WriteOptions {
        field_manager: manager,
        force: q.get("force").is_some_and(|f| f == "true"),
        dry_run,
        ..Default::default()
    };
    let rt = &target.rt;
    let ns = target.namespace.as_str();
    let table = accept.contains("as=Table");
    let sub = match target.sub.as_deref() {
        None => Sub::Main,
        Some("status") if rt.status => Sub::Status,
        Some("binding") if rt.binding => Sub::Main,
        Some("log") if rt.binding && method == Method::GET => Sub::Main,
        Some(_) => return Err(ApiError::path_not_found()),
    };
    let body_json = || -> Result<Value, ApiError> {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))
    };

    match (method, target.name.as_deref(), target.sub.as_deref()) {
        (&Method::GET, None, _) => {
            let query = parse_query(q, ns)?;
            if target.legacy_watch || q.get("watch").is_some_and(|w| w == "true" || w == "1") {
                return watch_response(st, rt.clone(), query, q, table);
            }
            let limit = q.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0);
            let res = st.store.list(rt, &query, limit, q.get("continue").map(String::as_str))?;
            let rv = res.resource_version.to_string();
            if table {
                let include = q.get("includeObject").map(String::as_str).unwrap_or("Metadata");
                return Ok(json_response(
                    StatusCode::OK,
                    &to_table(rt, &res.items, &rv, res.continue_token.as_deref(), include),
                ));
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
        (&Method::GET, Some(name), Some("log")) => {
            let pod = st.store.get(rt, ns, name)?;
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
        (&Method::GET, Some(name), _) => {
            if target.legacy_watch {
                let mut query = parse_query(q, ns)?;
                query.fields = FieldSelector::parse(&format!("metadata.name={name}"))?;
                return watch_response(st, rt.clone(), query, q, table);
            }
            let o = st.store.get(rt, ns, name)?;
            if table {
                let include = q.get("includeObject").map(String::as_str).unwrap_or("Metadata");
                let rv = o["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string();
                return Ok(json_response(StatusCode::OK, &to_table(rt, &[o], &rv, None, include)));
            }
            Ok(json_response(StatusCode::OK, &o))
        }
        (&Method::POST, None, None) => {
            let o = st.store.create(rt, ns, body_json()?, &wopts)?;
            Ok(json_response(StatusCode::CREATED, &o))
        }
        (&Method::POST, Some(name), Some("binding")) => {
            let b = body_json()?;
            let node = b["target"]["name"].as_str().unwrap_or_default();
            if node.is_empty() {
                return Err(ApiError::invalid(rt, name, "target.name: Required value"));
            }
            if dry_run {
                st.store.get(rt, ns, name)?;
            } else {
                st.store.bind_pod(ns, name, node)?;
            }
            Ok(json_response(
                StatusCode::CREATED,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            ))
        }
        (&Method::PUT, Some(name), _) => {
            let o = st.store.update(rt, ns, name, body_json()?, sub, &wopts)?;
            Ok(json_response(StatusCode::OK, &o))
        }
        (&Method::PATCH, Some(name), _) => {
            let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
            let ty = match ct.split(';').next().unwrap_or("").trim() {
                "application/json-patch+json" => PatchType::Json,
                "application/merge-patch+json" => PatchType::Merge,
                "application/strategic-merge-patch+json" => PatchType::Strategic,
                "application/apply-patch+yaml" | "application/apply-patch+cbor" => PatchType::Apply,
                other => {
                    return Err(ApiError::unsupported_media_type(format!(
                        "the body of the request was in an unknown format - accepted media types include: \
                         application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml \
                         (got {other})"
                    )));
                }
            };
            if ty == PatchType::Apply && !explicit_manager {
                return Err(ApiError::bad_request("PATCH, fieldManager is required for apply requests"));
            }
            let patch: Value = serde_json::from_slice(&body).map_err(|e| {
                ApiError::bad_request(format!("the patch body is not JSON (YAML apply bodies are not supported): {e}"))
            })?;
            let existed = st.store.get(rt, ns, name).is_ok();
            let o = st.store.patch(rt, ns, name, ty, &patch, sub, &wopts)?;
            Ok(json_response(if existed { StatusCode::OK } else { StatusCode::CREATED }, &o))
        }
        (&Method::DELETE, Some(name), None) => {
            let opts = delete_options(q, &body)?;
            let o = st.store.delete(rt, ns, name, &opts)?;
            // A dry run leaves the object in place: what it answers says whether the delete
            // would have been held by finalizers.
            let still_there = if opts.dry_run {
                o["metadata"]["deletionTimestamp"].is_string()
            } else {
                st.store.get(rt, ns, name).is_ok()
            };
            Ok(json_response(if still_there { StatusCode::ACCEPTED } else { StatusCode::OK }, &o))
        }
        (&Method::DELETE, None, None) => {
            let query = parse_query(q, ns)?;
            let opts = delete_options(q, &body)?;
            let res = st.store.list(rt, &query, None, None)?;
            let mut items = Vec::new();
            for o in res.items {
                let ons = o["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
                let oname = o["metadata"]["name"].as_str().unwrap_or_default().to_string();
                if let Ok(d) = st.store.delete(rt, &ons, &oname, &opts) {
                    items.push(d);
                }
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(),
                        "metadata": {"resourceVersion": st.store.resource_version().to_string()}, "items": items}),
            ))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn discovery_root(reg: &super::registry::Registry, core: bool, accept: &str) -> Response {
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

fn parse_target(reg: &super::registry::Registry, segs: &[&str]) -> Result<Target, ApiError> {
    let (group, version, rest) = match segs {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::path_not_found()),
    };
    let (legacy_watch, rest) = match rest {
        ["watch", r @ ..] => (true, r),
        r => (false, r),
    };
    let find = |plural: &str| reg.find(group, version, plural).cloned().ok_or_else(ApiError::path_not_found);
    let ns_scoped = |ns: &str, plural: &str, name: Option<&str>, sub: Option<&str>| -> Result<Target, ApiError> {
        let rt = find(plural)?;
        if !rt.namespaced {
            return Err(ApiError::path_not_found());
        }
        Ok(Target {
            rt,
            namespace: ns.to_string(),
            name: name.map(str::to_string),
            sub: sub.map(str::to_string),
            legacy_watch,
        })
    };
    let cluster = |plural: &str, name: Option<&str>, sub: Option<&str>| -> Result<Target, ApiError> {
        let rt = find(plural)?;
        Ok(Target {
            rt,
            namespace: String::new(),
            name: name.map(str::to_string),
            sub: sub.map(str::to_string),
            legacy_watch,
        })
    };
    match rest {
        ["namespaces", ns, plural] if group.is_empty() && matches!(*plural, "status" | "finalize") => {
            cluster("namespaces", Some(ns), Some(plural))
        }
        ["namespaces", ns, plural] => ns_scoped(ns, plural, None, None),
        ["namespaces", ns, plural, name] => ns_scoped(ns, plural, Some(name), None),
        ["namespaces", ns, plural, name, sub] => ns_scoped(ns, plural, Some(name), Some(sub)),
        [plural] => cluster(plural, None, None),
        [plural, name] => cluster(plural, Some(name), None),
        [plural, name, sub] => cluster(plural, Some(name), Some(sub)),
        _ => Err(ApiError::path_not_found()),
    }
}

fn parse_query(q: &HashMap<String, String>, ns: &str) -> Result<Query, ApiError> {
    Ok(Query {
        namespace: (!ns.is_empty()).then(|| ns.to_string()),
        labels: LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?,
        fields: FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))?,
    })
}

fn delete_options(q: &HashMap<String, String>, body: &Bytes) -> Result<DeleteOptions, ApiError> {
    let b: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("DeleteOptions is not JSON: {e}")))?
    };
    // The body's dryRun (a list) or the query's; "All" is the only value Kubernetes defines.
    let listed = b["dryRun"].as_array().and_then(|l| l.first()).and_then(Value::as_str);
    let dry_run = dry_run(listed.or(q.get("dryRun").map(String::as_str)))?;
    let policy = b["propagationPolicy"].as_str().map(str::to_string).or_else(|| q.get("propagationPolicy").cloned());
    let propagation = match policy.as_deref() {
        None | Some("") => None,
        Some("Orphan") => Some(Propagation::Orphan),
        Some("Background") => Some(Propagation::Background),
        Some("Foreground") => Some(Propagation::Foreground),
        Some(other) => return Err(ApiError::bad_request(format!("unknown propagationPolicy {other}"))),
    };
    // The deprecated orphanDependents flag maps onto the policy.
    let propagation = match b["orphanDependents"].as_bool() {
        Some(true) => Some(Propagation::Orphan),
        _ => propagation,
    };
    Ok(DeleteOptions {
        propagation,
        grace_seconds: b["gracePeriodSeconds"]
            .as_i64()
            .or_else(|| q.get("gracePeriodSeconds").and_then(|g| g.parse().ok())),
        uid: b["preconditions"]["uid"].as_str().map(str::to_string),
        resource_version: b["preconditions"]["resourceVersion"].as_str().map(str::to_string),
        dry_run,
    })
}

/// The `dryRun` parameter: absent or empty is a real write, `All` a dry run.
fn dry_run(value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => {
            Err(ApiError::bad_request(format!("dryRun: Unsupported value: \"{other}\": supported values: \"All\"")))
        }
    }
}

/// Turns a change into the event a watch with this query sees, if any.
fn event_for(c: &Change, rt: &ResourceType, q: &Query) -> Option<(EventType, Value)> {
    if c.storage != rt.storage || q.namespace.as_deref().is_some_and(|n| n != c.namespace) {
        return None;
    }
    let now = q.matches(&c.namespace, &c.object);
    let before = c.old.as_ref().is_some_and(|o| q.matches(&c.namespace, o));
    let kind = match (c.kind, now, before) {
        (EventType::Added, true, _) => EventType::Added,
        (EventType::Modified, true, true) => EventType::Modified,
        (EventType::Modified, true, false) => EventType::Added,
        (EventType::Modified, false, true) => EventType::Deleted,
        (EventType::Deleted, true, _) => EventType::Deleted,
        _ => return None,
    };
    Some((kind, c.object.clone()))
}

struct WatchParams {
    bookmarks: bool,
    initial_events: bool,
    timeout: Option<Duration>,
    table: bool,
    include: String,
}

fn watch_response(
    st: &ApiState,
    rt: ResourceType,
    query: Query,
    q: &HashMap<String, String>,
    table: bool,
) -> Result<Response, ApiError> {
    let initial_events = q.get("sendInitialEvents").is_some_and(|v| v == "true");
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    if initial_events && (!bookmarks || q.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan")) {
        return Err(ApiError::invalid(
            &rt,
            "",
            "sendInitialEvents: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan \
             and allowWatchBookmarks to true",
        ));
    }
    let from = q
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0")
        .map(|v| v.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid resource version: {v}"))));
    let from = from.transpose()?;
    let start = match st.store.watch(&rt, &query, from, initial_events || from.is_none()) {
        Ok(s) => s,
        // Kubernetes starts the stream and reports an expired version as its one event.
        Err(e) if e.code == 410 => {
            return Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], line("ERROR", e.status_body()))
                .into_response());
        }
        Err(e) => return Err(e),
    };
    let params = WatchParams {
        bookmarks,
        initial_events,
        timeout: q.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).map(Duration::from_secs),
        table,
        include: q.get("includeObject").cloned().unwrap_or_else(|| "Metadata".into()),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let stop = st.watch_generation.subscribe();
    tokio::spawn(run_watch(tx, start, rt, query, params, stop, st.bookmark_interval));
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx)) });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-cache")],
        Body::from_stream(stream),
    )
        .into_response())
}

fn line(kind: &str, object: Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

async fn run_watch(
    tx: mpsc::Sender<Bytes>,
    start: super::store::WatchStart,
    rt: ResourceType,
    query: Query,
    p: WatchParams,
    mut stop: watch::Receiver<u64>,
    bookmark_interval: Duration,
) {
    let encode = |kind: EventType, obj: &Value| -> Bytes {
        let o = present(&rt, obj);
        if p.table {
            let rv = o["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string();
            line(kind.as_str(), to_table(&rt, &[o], &rv, None, &p.include))
        } else {
            line(kind.as_str(), o)
        }
    };
    let bookmark = |rv: u64, end_of_initial: bool| -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if end_of_initial {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line("BOOKMARK", json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": meta}))
    };
    let super::store::WatchStart { initial, replay, mut live, at } = start;
    let mut last = at;
    for o in &initial {
        if tx.send(encode(EventType::Added, o)).await.is_err() {
            return;
        }
    }
    if p.initial_events && tx.send(bookmark(at, true)).await.is_err() {
        return;
    }
    for c in &replay {
        if let Some((k, o)) = event_for(c, &rt, &query)
            && tx.send(encode(k, &o)).await.is_err()
        {
            return;
        }
        last = last.max(c.rv);
    }
    let deadline = p.timeout.map(|t| tokio::time::Instant::now() + t);
    loop {
        let timeout = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = live.recv() => match msg {
                Ok(c) => {
                    if c.rv <= last { continue; }
                    last = c.rv;
                    if let Some((k, o)) = event_for(&c, &rt, &query)
                        && tx.send(encode(k, &o)).await.is_err()
                    {
                        return;
                    }
                }
                // A watcher too slow for the fan-out buffer is cut off; the client re-watches
                // from its last resourceVersion (and gets 410 if that is too old).
                Err(_) => return,
            },
            _ = tokio::time::sleep(bookmark_interval), if p.bookmarks => {
                if tx.send(bookmark(last, false)).await.is_err() { return; }
            }
            _ = tx.closed() => return,
            _ = stop.changed() => return,
            _ = timeout => return,
        }
    }
}

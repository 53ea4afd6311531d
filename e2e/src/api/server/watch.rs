//! Watches: the parameters a watch request carries, which change a watcher sees as which
//! event, and the task that streams events (and bookmarks) as JSON lines.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};

use super::ApiState;
use crate::api::error::ApiError;
use crate::api::registry::ResourceType;
use crate::api::store::{Change, EventType, Query, WatchStart, presenter};
use crate::api::table::to_table;

/// Turns a change into the event a watch with this query sees, if any.
fn event_for<'c>(c: &'c Change, rt: &ResourceType, q: &Query) -> Option<(EventType, &'c Arc<Value>)> {
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
    Some((kind, &c.object))
}

/// What a watch request asks for, from its query.
struct WatchParams {
    /// Start after this resourceVersion (from history), or else from now.
    from: Option<u64>,
    bookmarks: bool,
    initial_events: bool,
    timeout: Option<Duration>,
    table: bool,
    include: String,
}

impl WatchParams {
    fn parse(q: &HashMap<String, String>, rt: &ResourceType, table: bool) -> Result<Self, ApiError> {
        let initial_events = q.get("sendInitialEvents").is_some_and(|v| v == "true");
        let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
        if initial_events && (!bookmarks || q.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan")) {
            return Err(ApiError::invalid(
                rt,
                "",
                "sendInitialEvents: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan \
                 and allowWatchBookmarks to true",
            ));
        }
        let from = q
            .get("resourceVersion")
            .filter(|v| !v.is_empty() && *v != "0")
            .map(|v| v.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid resource version: {v}"))));
        Ok(WatchParams {
            from: from.transpose()?,
            bookmarks,
            initial_events,
            timeout: q.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).map(Duration::from_secs),
            table,
            include: q.get("includeObject").cloned().unwrap_or_else(|| "Metadata".into()),
        })
    }
}

/// Starts a watch of `rt` objects matching `query` and answers its event stream.
pub(super) fn watch_response(
    st: &ApiState,
    rt: ResourceType,
    query: Query,
    q: &HashMap<String, String>,
    table: bool,
) -> Result<Response, ApiError> {
    let params = WatchParams::parse(q, &rt, table)?;
    let from = params.from;
    let start = match st.store.watch(&rt, &query, from, params.initial_events || from.is_none()) {
        Ok(s) => s,
        // Kubernetes starts the stream and reports an expired version as its one event.
        Err(e) if e.code == 410 => {
            return Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], line("ERROR", &e.status_body()))
                .into_response());
        }
        Err(e) => return Err(e),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let stop = st.watch_generation.subscribe();
    let watcher = Watcher { tx, rt, query, p: params };
    tokio::spawn(watcher.run(start, stop, st.bookmark_interval));
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx)) });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-cache")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// One watch event as a line of the stream.
fn line(kind: &str, object: &Value) -> Bytes {
    #[derive(serde::Serialize)]
    struct Event<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        object: &'a Value,
    }
    // Serialised from a reference: the object is shared with the store and every other watch.
    let mut v = serde_json::to_vec(&Event { kind, object }).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// The task behind one watch stream: it ends when the client goes away, the timeout passes,
/// the server ends all watches, or the watcher falls behind.
struct Watcher {
    tx: mpsc::Sender<Bytes>,
    rt: ResourceType,
    query: Query,
    p: WatchParams,
}

impl Watcher {
    async fn run(self, start: WatchStart, stop: watch::Receiver<u64>, bookmark_interval: Duration) {
        let WatchStart { initial, replay, live, at } = start;
        if let Some(last) = self.send_backlog(&initial, &replay, at).await {
            self.stream_live(live, last, stop, bookmark_interval).await;
        }
    }

    /// Sends the initial state (and its closing bookmark) and the replayed history; answers
    /// the last resourceVersion sent, or `None` once the client is gone.
    async fn send_backlog(&self, initial: &[Arc<Value>], replay: &[Arc<Change>], at: u64) -> Option<u64> {
        let mut last = at;
        for o in initial {
            self.send(self.encode(EventType::Added, o)).await?;
        }
        if self.p.initial_events {
            self.send(self.bookmark(at, true)).await?;
        }
        for c in replay {
            if let Some((k, o)) = event_for(c, &self.rt, &self.query) {
                self.send(self.encode(k, o)).await?;
            }
            last = last.max(c.rv);
        }
        Some(last)
    }

    /// Forwards live changes and periodic bookmarks until the stream ends.
    async fn stream_live(
        &self,
        mut live: broadcast::Receiver<Arc<Change>>,
        mut last: u64,
        mut stop: watch::Receiver<u64>,
        bookmark_interval: Duration,
    ) {
        let deadline = self.p.timeout.map(|t| tokio::time::Instant::now() + t);
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
                        if let Some((k, o)) = event_for(&c, &self.rt, &self.query)
                            && self.send(self.encode(k, o)).await.is_none()
                        {
                            return;
                        }
                    }
                    // A watcher too slow for the fan-out buffer is cut off; the client re-watches
                    // from its last resourceVersion (and gets 410 if that is too old).
                    Err(_) => return,
                },
                _ = tokio::time::sleep(bookmark_interval), if self.p.bookmarks => {
                    if self.send(self.bookmark(last, false)).await.is_none() { return; }
                }
                _ = self.tx.closed() => return,
                _ = stop.changed() => return,
                _ = timeout => return,
            }
        }
    }

    /// `None` once the client is gone.
    async fn send(&self, line: Bytes) -> Option<()> {
        self.tx.send(line).await.ok()
    }

    fn encode(&self, kind: EventType, obj: &Arc<Value>) -> Bytes {
        let o = presenter(&self.rt)(obj);
        if self.p.table {
            let rv = o["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string();
            line(kind.as_str(), &to_table(&self.rt, &[o], &rv, None, &self.p.include))
        } else {
            line(kind.as_str(), &o)
        }
    }

    fn bookmark(&self, rv: u64, end_of_initial: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if end_of_initial {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line("BOOKMARK", &json!({"kind": self.rt.kind, "apiVersion": self.rt.api_version(), "metadata": meta}))
    }
}

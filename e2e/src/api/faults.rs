//! Fault injection, for tests: the API server answers some requests with an error instead
//! of serving them (a 409 Conflict, a 500), or serves them and then answers with an error
//! (the write happened; the client believes it failed), and drops open watch connections
//! mid-stream, as an API server restart or a broken load balancer would.
//!
//! Unset, it changes nothing: a [`Faults`] without rules passes every request through.
//! Requests carrying [`OBSERVER_HEADER`] (the test's own client, see
//! [`Cluster::client`](crate::Cluster::client)) are never faulted: the test watches the
//! system under faults without suffering them.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use serde_json::json;
use std::sync::Arc;
use tokio::sync::watch;

/// The header that exempts a request from fault injection.
pub const OBSERVER_HEADER: &str = "x-cdi-e2e-observer";

/// Which requests a rule applies to; unset fields match anything.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    pub method: Option<Method>,
    /// The resource's plural (`persistentvolumeclaims`), subresources included.
    pub resource: Option<String>,
    /// Watches are left alone by default: their faults are [`Faults::drop_watches`].
    pub watches: bool,
}

impl Matcher {
    pub fn any() -> Matcher {
        Matcher::default()
    }

    pub fn method(mut self, method: Method) -> Matcher {
        self.method = Some(method);
        self
    }

    pub fn resource(mut self, plural: &str) -> Matcher {
        self.resource = Some(plural.to_string());
        self
    }

    fn matches(&self, method: &Method, resource: Option<&str>, watch: bool) -> bool {
        self.method.as_ref().is_none_or(|m| m == method)
            && self.resource.as_deref().is_none_or(|r| Some(r) == resource)
            && (self.watches || !watch)
    }
}

/// When a faulted request fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Refused: nothing happened.
    Before,
    /// Served, then answered with the error: the change was made, the client does not know.
    After,
}

#[derive(Debug)]
enum Count {
    /// The next `n` matching requests.
    Next(usize),
    /// Every `n`th matching request.
    Every(usize),
    /// One in `one_in` matching requests, chosen by a seeded generator (xorshift state).
    Random { one_in: u64, state: u64 },
}

#[derive(Debug)]
struct Rule {
    matcher: Matcher,
    code: u16,
    when: When,
    count: Count,
    seen: usize,
}

/// The faults a test has set on a cluster's API server; see the module docs.
#[derive(Debug)]
pub struct Faults {
    rules: Mutex<Vec<Rule>>,
    injected: AtomicUsize,
    /// Bumped to break every open watch connection.
    cut: watch::Sender<u64>,
    watches_cut: Arc<AtomicUsize>,
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            rules: Mutex::new(Vec::new()),
            injected: AtomicUsize::new(0),
            cut: watch::Sender::new(0),
            watches_cut: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Faults {
    /// The next `n` requests `matcher` matches fail with `code`.
    pub fn fail_next(&self, matcher: Matcher, n: usize, code: u16, when: When) {
        self.add(Rule { matcher, code, when, count: Count::Next(n), seen: 0 });
    }

    /// Every `nth` request `matcher` matches fails with `code`, until cleared.
    pub fn fail_every(&self, matcher: Matcher, nth: usize, code: u16, when: When) {
        self.add(Rule { matcher, code, when, count: Count::Every(nth.max(1)), seen: 0 });
    }

    /// One in `one_in` requests `matcher` matches fails with `code`, picked at random from
    /// `seed`, until cleared. Unlike [`Faults::fail_every`], the failures do not fall into
    /// step with a client that makes the same requests in the same order every time.
    pub fn fail_randomly(&self, matcher: Matcher, one_in: u64, code: u16, when: When, seed: u64) {
        let state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        self.add(Rule { matcher, code, when, count: Count::Random { one_in: one_in.max(1), state }, seen: 0 });
    }

    fn add(&self, rule: Rule) {
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).push(rule);
    }

    /// Removes every rule (watches already dropped stay dropped).
    pub fn clear(&self) {
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Breaks every watch connection open now: the client sees the connection fail
    /// mid-stream (not a clean end of the watch) and must watch again.
    pub fn drop_watches(&self) {
        self.cut.send_modify(|g| *g += 1);
    }

    /// Requests answered with an injected error so far.
    pub fn injected(&self) -> usize {
        self.injected.load(Ordering::SeqCst)
    }

    /// Watch connections broken so far.
    pub fn watches_dropped(&self) -> usize {
        self.watches_cut.load(Ordering::SeqCst)
    }

    /// The rule that fires for this request, if one does.
    fn fire(&self, method: &Method, resource: Option<&str>, watch: bool) -> Option<(u16, When)> {
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        let mut fired = None;
        for rule in rules.iter_mut().filter(|r| r.matcher.matches(method, resource, watch)) {
            rule.seen += 1;
            let fires = match &mut rule.count {
                Count::Next(0) => false,
                Count::Next(n) => {
                    *n -= 1;
                    true
                }
                Count::Every(n) => rule.seen.is_multiple_of(*n),
                Count::Random { one_in, state } => {
                    *state ^= *state << 13;
                    *state ^= *state >> 7;
                    *state ^= *state << 17;
                    state.is_multiple_of(*one_in)
                }
            };
            if fires && fired.is_none() {
                fired = Some((rule.code, rule.when));
            }
        }
        fired
    }
}

/// The middleware: passes requests through, or fails them as the rules say, and makes
/// watch responses breakable.
pub async fn inject(State(faults): State<Arc<Faults>>, request: Request, next: Next) -> Response {
    if request.headers().contains_key(OBSERVER_HEADER) {
        return next.run(request).await;
    }
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default();
    let watch = path.contains("/watch/") || query.split('&').any(|kv| kv == "watch=true" || kv == "watch=1");
    let resource = resource_of(&path);
    let fired = faults.fire(&method, resource.as_deref(), watch);
    if let Some((code, When::Before)) = fired {
        faults.injected.fetch_add(1, Ordering::SeqCst);
        return failure(code, resource.as_deref(), &path);
    }
    let response = next.run(request).await;
    if let Some((code, When::After)) = fired {
        faults.injected.fetch_add(1, Ordering::SeqCst);
        return failure(code, resource.as_deref(), &path);
    }
    if watch && response.status() == StatusCode::OK {
        return breakable(response, faults.cut.subscribe(), faults.watches_cut.clone());
    }
    response
}

/// A watch response whose body fails when `cut` changes: hyper then aborts the connection
/// without the chunked encoding's end, which clients see as a dropped connection.
fn breakable(response: Response, mut cut: watch::Receiver<u64>, counter: Arc<AtomicUsize>) -> Response {
    let (parts, body) = response.into_parts();
    cut.mark_unchanged();
    let stream = futures_util::stream::unfold(Some((body.into_data_stream(), cut)), move |state| {
        let counter = counter.clone();
        async move {
            let (mut body, mut cut) = state?;
            tokio::select! {
                chunk = body.next() => chunk.map(|c| (c, Some((body, cut)))),
                _ = cut.changed() => {
                    counter.fetch_add(1, Ordering::SeqCst);
                    Some((Err(axum::Error::new(std::io::Error::other("watch dropped by fault injection"))), None))
                }
            }
        }
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

/// The plural of a Kubernetes resource path (`/api/v1/namespaces/ns/pods/x/status` → `pods`).
fn resource_of(path: &str) -> Option<String> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let rest = match segs.as_slice() {
        ["api", _, rest @ ..] => rest,
        ["apis", _, _, rest @ ..] => rest,
        _ => return None,
    };
    let rest = rest.strip_prefix(&["watch"]).unwrap_or(rest);
    match rest {
        ["namespaces", _, plural, ..] => Some(plural.to_string()),
        [plural, ..] => Some(plural.to_string()),
        [] => None,
    }
}

/// A `Status` body as the real API server sends for this code.
fn failure(code: u16, resource: Option<&str>, path: &str) -> Response {
    let name = path.rsplit('/').next().unwrap_or_default();
    let what = resource.unwrap_or("resource");
    let (reason, message) = match code {
        409 => (
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {what} \"{name}\": the object has been modified; please apply \
                 your changes to the latest version and try again"
            ),
        ),
        500 => (
            "InternalError",
            "an error on the server (\"injected fault\") has prevented the request from succeeding".into(),
        ),
        503 => ("ServiceUnavailable", "the server is currently unable to handle the request".into()),
        _ => ("", format!("injected fault {code}")),
    };
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_are_read_from_paths() {
        assert_eq!(
            resource_of("/api/v1/namespaces/default/persistentvolumeclaims/x").as_deref(),
            Some("persistentvolumeclaims")
        );
        assert_eq!(resource_of("/api/v1/persistentvolumes").as_deref(), Some("persistentvolumes"));
        assert_eq!(
            resource_of("/apis/cdi.kubevirt.io/v1beta1/watch/namespaces/a/volumeimportsources").as_deref(),
            Some("volumeimportsources")
        );
        assert_eq!(resource_of("/api/v1/namespaces/default/pods/p/status").as_deref(), Some("pods"));
        assert_eq!(resource_of("/version"), None);
    }

    #[test]
    fn rules_fire_next_n_and_every_nth_on_what_they_match() {
        let f = Faults::default();
        let patch_pvcs = Matcher::any().method(Method::PATCH).resource("persistentvolumeclaims");
        f.fail_next(patch_pvcs, 2, 409, When::Before);
        let pvc = Some("persistentvolumeclaims");
        assert_eq!(f.fire(&Method::GET, pvc, false), None);
        assert_eq!(f.fire(&Method::PATCH, Some("pods"), false), None);
        assert_eq!(f.fire(&Method::PATCH, pvc, false), Some((409, When::Before)));
        assert_eq!(f.fire(&Method::PATCH, pvc, false), Some((409, When::Before)));
        assert_eq!(f.fire(&Method::PATCH, pvc, false), None);
        f.clear();
        f.fail_every(Matcher::any(), 3, 500, When::After);
        let fired: Vec<bool> = (0..6).map(|_| f.fire(&Method::GET, pvc, false).is_some()).collect();
        assert_eq!(fired, [false, false, true, false, false, true]);
        assert_eq!(f.fire(&Method::GET, pvc, true), None, "watches are not matched unless asked");
        f.clear();
        f.fail_randomly(Matcher::any(), 4, 500, When::Before, 7);
        let fired = (0..4000).filter(|_| f.fire(&Method::GET, pvc, false).is_some()).count();
        assert!((800..1200).contains(&fired), "{fired} of 4000 failed, not about one in four");
    }
}

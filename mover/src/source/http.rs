//! HTTP(S) sources: rustls (ring) with an optional extra CA, basic auth and extra headers
//! sent only to the origin the user named, manual redirects, `HTTP(S)_PROXY`/`NO_PROXY`
//! from the environment (reqwest's default), and — when the server honours `Range` —
//! several connections in parallel that resume from the last good byte after a drop.

use std::fmt;
use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cdi_common::backoff::Backoff;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use tokio::runtime::Handle;

use super::{Opened, RandomAccess, SourceError, is_retryable_status, redact};

/// Parallel connections for ranged downloads.
pub const DEFAULT_CONNECTIONS: usize = 4;
/// Bytes fetched per ranged request.
pub const DEFAULT_CHUNK: usize = 2 << 20;
/// Bytes read to detect the format (and to prove that ranges work).
const PROBE_LEN: u64 = 64 << 10;
const MAX_REDIRECTS: usize = 10;
/// Consecutive failures without progress before a ranged transfer gives up.
const MAX_RETRIES: u32 = 6;
/// Between resumptions of a dropped transfer: 200 ms, doubling, at most 8 s.
const RETRY: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(8));
/// HEAD requests tried after a dropped connection before streaming without ranges.
const HEAD_RETRIES: u32 = 3;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection that delivers nothing for this long is considered dead (and resumed).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const USER_AGENT: &str = concat!("cdi-mover/", env!("CARGO_PKG_VERSION"));

/// PEM certificates to trust, and where they came from (for messages).
#[derive(Debug, Clone)]
pub struct CaBundle {
    pub pem: Vec<u8>,
    /// A file name, or "the request".
    pub origin: String,
}

/// User name and password for HTTP basic auth. Never printed.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Extra trusted CA certificates, in addition to the system's.
    pub ca: Option<CaBundle>,
    pub insecure_skip_verify: bool,
    /// Extra request headers, sent to the named origin only.
    pub headers: Vec<(String, String)>,
    pub credentials: Option<Credentials>,
    pub connections: usize,
    pub chunk_size: usize,
    /// Forward proxies instead of the process's `HTTP(S)_PROXY` environment.
    pub proxy: Option<ProxySettings>,
}

/// Forward proxies chosen for one import (CDIConfig's importProxy).
#[derive(Clone, Default)]
pub struct ProxySettings {
    /// For http:// URLs; may carry user info, so never printed whole.
    pub http: Option<String>,
    /// For https:// URLs (CONNECT).
    pub https: Option<String>,
    /// Comma-separated hosts, domains, IPs and CIDRs reached directly.
    pub no_proxy: Option<String>,
    /// Extra CA certificates for the proxy (or a TLS-inspecting one).
    pub ca: Option<CaBundle>,
}

impl fmt::Debug for ProxySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |url: &Option<String>| url.as_deref().map(redact_proxy);
        f.debug_struct("ProxySettings")
            .field("http", &shown(&self.http))
            .field("https", &shown(&self.https))
            .field("no_proxy", &self.no_proxy)
            .field("ca", &self.ca.as_ref().map(|c| &c.origin))
            .finish()
    }
}

/// A proxy URL as it may be shown: scheme, host and port, without user info.
pub fn redact_proxy(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => redact(&u),
        Err(_) => "(an unparsable proxy URL)".into(),
    }
}

impl Default for HttpOptions {
    fn default() -> HttpOptions {
        HttpOptions {
            ca: None,
            insecure_skip_verify: false,
            headers: Vec::new(),
            credentials: None,
            connections: DEFAULT_CONNECTIONS,
            chunk_size: DEFAULT_CHUNK,
            proxy: None,
        }
    }
}

/// Per-request authorisation for object stores reached over HTTP (S3's signatures, GCS's
/// bearer tokens), and the store's reading of its own error bodies.
pub trait RequestAuth: Send + Sync + fmt::Debug {
    /// Headers that authorise `method` on `url`. Called for every request to the named
    /// origin (never across a redirect to another), so signatures are always fresh.
    fn authorize<'a>(&'a self, method: &'a Method, url: &'a Url) -> BoxFuture<'a, Result<HeaderMap, SourceError>>;

    /// A specific error for a refused request, from the store's error body (at most
    /// [`ERROR_BODY_LIMIT`] bytes); `None` keeps the generic HTTP status error.
    fn refusal(&self, _status: StatusCode, _body: &[u8]) -> Option<SourceError> {
        None
    }
}

/// The most of an error response body read for [`RequestAuth::refusal`].
pub const ERROR_BODY_LIMIT: usize = 16 << 10;

/// How an object store uses the HTTP source: its name in messages, its authorisation, and
/// what it already knows about the object.
#[derive(Debug, Clone, Default)]
pub struct ObjectAccess {
    /// Shown instead of the URL (e.g. `s3://bucket/key`).
    pub name: Option<String>,
    pub auth: Option<Arc<dyn RequestAuth>>,
    /// The object's length from the store's metadata: no HEAD is sent (some servers answer
    /// none), ranges are assumed and proven by the first range request.
    pub len: Option<u64>,
}

/// An HTTP(S) object.
#[derive(Debug)]
pub struct HttpSource {
    client: reqwest::Client,
    rt: Handle,
    /// The URL the user named: credentials and extra headers go to its origin only.
    origin: Url,
    /// Where the object is after the redirects seen when opening.
    url: Url,
    name: String,
    len: u64,
    headers: HeaderMap,
    credentials: Option<Credentials>,
    connections: usize,
    chunk_size: usize,
    cancel: Option<Arc<AtomicBool>>,
    auth: Option<Arc<dyn RequestAuth>>,
}

impl HttpSource {
    /// Opens `url`: a HEAD for length and range support, then either a probe range request
    /// (ranges work: random access and parallel download) or the GET that will stream it.
    /// Failures that make the import pointless (404, refused credentials) surface here,
    /// before any target is touched.
    pub fn open(
        url: Url,
        opts: HttpOptions,
        cancel: Option<Arc<AtomicBool>>,
        rt: Handle,
    ) -> Result<Opened, SourceError> {
        HttpSource::open_object(url, opts, ObjectAccess::default(), cancel, rt)
    }

    /// [`HttpSource::open`] for an object store's object: see [`ObjectAccess`].
    pub fn open_object(
        url: Url,
        opts: HttpOptions,
        access: ObjectAccess,
        cancel: Option<Arc<AtomicBool>>,
        rt: Handle,
    ) -> Result<Opened, SourceError> {
        let client = build_client(&opts)?;
        HttpSource::open_with_client(client, url, opts, access, cancel, rt)
    }

    /// [`HttpSource::open_object`] with a client already built (the store used it for its
    /// metadata).
    pub fn open_with_client(
        client: reqwest::Client,
        url: Url,
        opts: HttpOptions,
        access: ObjectAccess,
        cancel: Option<Arc<AtomicBool>>,
        rt: Handle,
    ) -> Result<Opened, SourceError> {
        let headers = parse_headers(&opts.headers)?;
        let mut source = HttpSource {
            client,
            rt: rt.clone(),
            name: access.name.unwrap_or_else(|| redact(&url)),
            origin: url.clone(),
            url,
            len: 0,
            headers,
            credentials: opts.credentials.clone(),
            connections: opts.connections.max(1),
            chunk_size: opts.chunk_size.max(64 << 10),
            cancel,
            auth: access.auth,
        };
        let head = match access.len {
            Some(len) => Ok((source.url.clone(), Some(len), true)),
            None => rt.block_on(source.head_retrying()),
        };
        if let Ok((final_url, Some(len), true)) = head
            && len > 0
        {
            source.url = final_url;
            source.len = len;
            // Ranges are advertised; prove it with the first bytes we need anyway.
            let probe_len = len.min(PROBE_LEN);
            let mut probe = vec![0u8; probe_len as usize];
            if rt.block_on(source.fetch_into(&mut probe, 0)).is_ok() {
                let source = Arc::new(source);
                let stream_source = source.clone();
                return Ok(Opened::new(source.name.clone(), Some(len), Some(source), move || {
                    Ok(Box::new(stream_source.parallel_stream(0, len)) as Box<dyn Read + Send>)
                }));
            }
            tracing::info!(url = %source.name, "server advertises ranges but did not honour them; streaming");
        }
        // No usable ranges: one GET, streamed. Its status decides now.
        let (response, _) = rt.block_on(source.send(Method::GET, None))?;
        let response = rt.block_on(source.check_status(response))?;
        let len = response.content_length();
        let name = source.name.clone();
        let source = Arc::new(source);
        Ok(Opened::new(name, len, None, move || Ok(Box::new(source.single_stream(response)) as Box<dyn Read + Send>)))
    }

    /// [`HttpSource::head`], tried again when the connection drops: taken as "no ranges",
    /// one lost connection would cost the whole download its ability to resume.
    async fn head_retrying(&self) -> Result<(Url, Option<u64>, bool), SourceError> {
        let mut failures = 0;
        loop {
            match self.head().await {
                Err(e @ SourceError::Transfer { .. }) if failures < HEAD_RETRIES => {
                    failures += 1;
                    tracing::warn!(url = %self.name, attempt = failures, error = %crate::error::one_line(&e), "HEAD request failed; trying again");
                    tokio::time::sleep(RETRY.delay(failures)).await;
                }
                other => return other,
            }
        }
    }

    /// HEAD: `(final url, length, accepts byte ranges)`. Errors mean "HEAD is no help";
    /// the GET decides what is really wrong.
    async fn head(&self) -> Result<(Url, Option<u64>, bool), SourceError> {
        let (response, url) = self.send(Method::HEAD, None).await?;
        if !response.status().is_success() {
            return Err(SourceError::Status { url: self.name.clone(), status: response.status().as_u16(), hint: "" });
        }
        let len = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let ranges = response
            .headers()
            .get(header::ACCEPT_RANGES)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|unit| unit.trim().eq_ignore_ascii_case("bytes")));
        Ok((url, len, ranges))
    }

    /// Sends a request to the current URL, following redirects by hand so that credentials
    /// and extra headers only ever go to the origin the user named.
    async fn send(&self, method: Method, range: Option<(u64, u64)>) -> Result<(reqwest::Response, Url), SourceError> {
        let mut url = self.url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut request = self.client.request(method.clone(), url.clone());
            if url.origin() == self.origin.origin() {
                request = request.headers(self.headers.clone());
                if let Some(c) = &self.credentials {
                    request = request.basic_auth(&c.username, Some(&c.password));
                }
                if let Some(auth) = &self.auth {
                    request = request.headers(auth.authorize(&method, &url).await?);
                }
            }
            if let Some((first, last)) = range {
                request = request.header(header::RANGE, format!("bytes={first}-{last}"));
            }
            let response = request.send().await.map_err(|e| SourceError::Transfer {
                url: self.name.clone(),
                operation: "request",
                offset: range.map_or(0, |r| r.0),
                source: e.without_url(),
            })?;
            if !response.status().is_redirection() {
                return Ok((response, url));
            }
            let next = response
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| url.join(l).ok())
                .filter(|u| matches!(u.scheme(), "http" | "https"));
            let Some(next) = next else {
                // S3 answers a bucket in another region with a 301 and no Location: its
                // body says where to go.
                if self.auth.is_some() {
                    return Err(self.refusal(response).await);
                }
                return Err(SourceError::BadRedirect { url: redact(&url) });
            };
            tracing::debug!(from = %redact(&url), to = %redact(&next), "following redirect");
            url = next;
        }
        Err(SourceError::TooManyRedirects { url: self.name.clone(), limit: MAX_REDIRECTS })
    }

    /// Fetches `[start, end)`, handing bytes to `sink` in order. A dropped connection resumes
    /// from the last byte received, with capped exponential backoff; only consecutive
    /// failures without progress count against the retry budget.
    async fn fetch_range(&self, start: u64, end: u64, sink: &mut (dyn FnMut(&[u8]) + Send)) -> Result<(), SourceError> {
        let mut pos = start;
        let mut failures = 0u32;
        while pos < end {
            let before = pos;
            match self.try_fetch(&mut pos, end, sink).await {
                Ok(()) => {}
                Err(e) if e.is_retryable() => {
                    failures = if pos > before { 1 } else { failures + 1 };
                    if failures > MAX_RETRIES {
                        return Err(e);
                    }
                    let delay = RETRY.delay(failures);
                    tracing::warn!(url = %self.name, offset = pos, attempt = failures, error = %crate::error::one_line(&e), "transfer interrupted; resuming");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn try_fetch(
        &self,
        pos: &mut u64,
        end: u64,
        sink: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<(), SourceError> {
        let (response, _) = self.send(Method::GET, Some((*pos, end - 1))).await?;
        match response.status() {
            StatusCode::PARTIAL_CONTENT => {
                let start = response
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_content_range_start);
                if start != Some(*pos) {
                    return Err(SourceError::BadRange {
                        url: self.name.clone(),
                        offset: *pos,
                        detail: format!("Content-Range {:?}", response.headers().get(header::CONTENT_RANGE)),
                    });
                }
            }
            s if s.is_success() => {
                return Err(SourceError::BadRange {
                    url: self.name.clone(),
                    offset: *pos,
                    detail: format!("status {} instead of 206 Partial Content", s.as_u16()),
                });
            }
            _ => return Err(self.refusal(response).await),
        }
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| SourceError::Transfer {
                url: self.name.clone(),
                operation: "download",
                offset: *pos,
                source: e.without_url(),
            })?;
            let take = chunk.len().min((end - *pos) as usize);
            sink(&chunk[..take]);
            *pos += take as u64;
            if *pos == end {
                return Ok(());
            }
        }
        Err(SourceError::ShortBody { url: self.name.clone(), offset: *pos, expected: end - *pos, got: 0 })
    }

    async fn fetch_into(&self, buf: &mut [u8], offset: u64) -> Result<(), SourceError> {
        let mut filled = 0usize;
        let end = offset + buf.len() as u64;
        self.fetch_range(offset, end, &mut |data: &[u8]| {
            buf[filled..filled + data.len()].copy_from_slice(data);
            filled += data.len();
        })
        .await
    }

    /// Sequential read of `[start, end)` with `connections` ranged requests in flight,
    /// delivered in order through a small channel (memory: connections × chunk size).
    fn parallel_stream(self: &Arc<Self>, start: u64, end: u64) -> ChannelReader {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, SourceError>>(2);
        let this = self.clone();
        self.rt.spawn(async move {
            let chunk = this.chunk_size as u64;
            let ranges = (start..end).step_by(chunk as usize).map(move |s| (s, (s + chunk).min(end)));
            let fetches = futures_util::stream::iter(ranges).map(|(s, e)| {
                let this = this.clone();
                async move {
                    let mut data = BytesMut::with_capacity((e - s) as usize);
                    this.fetch_range(s, e, &mut |d: &[u8]| data.extend_from_slice(d)).await?;
                    Ok(data.freeze())
                }
            });
            let mut ordered = fetches.buffered(this.connections);
            while let Some(result) = ordered.next().await {
                let failed = result.is_err();
                // The receiver is gone when the import stopped; stop fetching too.
                if tx.send(result).await.is_err() || failed {
                    return;
                }
            }
        });
        self.reader(rx)
    }

    fn reader(&self, rx: tokio::sync::mpsc::Receiver<Result<Bytes, SourceError>>) -> ChannelReader {
        ChannelReader { rx, current: Bytes::new(), cancel: self.cancel.clone(), rt: self.rt.clone() }
    }

    /// Streams the body of a GET that was already answered (no range support).
    fn single_stream(self: &Arc<Self>, response: reqwest::Response) -> ChannelReader {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, SourceError>>(64);
        let name = self.name.clone();
        let expected = response.content_length();
        self.rt.spawn(async move {
            let mut body = response.bytes_stream();
            let mut pos = 0u64;
            while let Some(chunk) = body.next().await {
                let item = match chunk {
                    Ok(bytes) => {
                        pos += bytes.len() as u64;
                        Ok(bytes)
                    }
                    Err(e) => {
                        tracing::warn!(url = %name, offset = pos, error = %e.without_url(), "download interrupted");
                        Err(SourceError::Interrupted { url: name.clone(), offset: pos })
                    }
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
            if let Some(expected) = expected.filter(|&e| e != pos) {
                let _ = tx.send(Err(SourceError::ShortBody { url: name, offset: pos, expected, got: pos })).await;
            }
        });
        self.reader(rx)
    }
}

impl RandomAccess for HttpSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), SourceError> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.len) {
            return Err(SourceError::OutOfBounds { offset, len: buf.len() as u64, size: self.len });
        }
        if buf.is_empty() {
            return Ok(());
        }
        self.rt.block_on(self.fetch_into(buf, offset))
    }
}

/// The synchronous end of a download running on the runtime.
#[derive(Debug)]
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, SourceError>>,
    current: Bytes,
    cancel: Option<Arc<AtomicBool>>,
    rt: Handle,
}

/// How often a reader waiting on the network checks for cancellation.
const CANCEL_POLL: Duration = Duration::from_millis(200);

impl ChannelReader {
    fn next(&mut self) -> Option<Result<Bytes, SourceError>> {
        let Some(cancel) = self.cancel.clone() else { return self.rx.blocking_recv() };
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Some(Err(SourceError::Aborted("cancelled".into())));
            }
            // Built inside block_on: a timer needs the runtime's context to be created.
            let rx = &mut self.rx;
            if let Ok(item) = self.rt.block_on(async { tokio::time::timeout(CANCEL_POLL, rx.recv()).await }) {
                return item;
            }
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.next() {
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(e)) => return Err(e.into_io()),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

pub(crate) fn build_client(opts: &HttpOptions) -> Result<reqwest::Client, SourceError> {
    crate::tls::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(USER_AGENT)
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(IDLE_TIMEOUT)
        .tcp_nodelay(true);
    if let Some(ca) = &opts.ca {
        builder = trusting(builder, ca)?;
    }
    if opts.insecure_skip_verify {
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    if let Some(proxy) = &opts.proxy {
        builder = with_proxy(builder, proxy)?;
    }
    builder.build().map_err(|e| SourceError::InvalidOption(format!("HTTP client setup: {}", e.without_url())))
}

/// Routes the client through `proxy` (and only it: the environment's proxies no longer apply).
fn with_proxy(
    mut builder: reqwest::ClientBuilder,
    proxy: &ProxySettings,
) -> Result<reqwest::ClientBuilder, SourceError> {
    builder = builder.no_proxy();
    let no_proxy = proxy.no_proxy.as_deref().and_then(reqwest::NoProxy::from_string);
    let bad = |url: &str, e: reqwest::Error| {
        SourceError::InvalidOption(format!("proxy {}: {}", redact_proxy(url), e.without_url()))
    };
    if let Some(url) = proxy.http.as_deref().filter(|u| !u.trim().is_empty()) {
        builder = builder.proxy(reqwest::Proxy::http(url).map_err(|e| bad(url, e))?.no_proxy(no_proxy.clone()));
    }
    if let Some(url) = proxy.https.as_deref().filter(|u| !u.trim().is_empty()) {
        builder = builder.proxy(reqwest::Proxy::https(url).map_err(|e| bad(url, e))?.no_proxy(no_proxy));
    }
    match &proxy.ca {
        Some(ca) => trusting(builder, ca),
        None => Ok(builder),
    }
}

/// The client trusting every certificate of `ca` besides the system's.
fn trusting(builder: reqwest::ClientBuilder, ca: &CaBundle) -> Result<reqwest::ClientBuilder, SourceError> {
    let bad = |reason: String| SourceError::CaFile { origin: ca.origin.clone(), reason };
    let certs = reqwest::Certificate::from_pem_bundle(&ca.pem).map_err(|e| bad(e.without_url().to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate found".into()));
    }
    Ok(builder.tls_certs_merge(certs))
}

fn parse_headers(headers: &[(String, String)]) -> Result<HeaderMap, SourceError> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let n = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| SourceError::InvalidOption(format!("header name {name:?} is not a valid HTTP header name")))?;
        // The value may be a token: never echo it.
        let v = HeaderValue::from_str(value.trim()).map_err(|_| {
            SourceError::InvalidOption(format!("the value of header {name:?} contains invalid characters"))
        })?;
        map.append(n, v);
    }
    Ok(map)
}

pub(crate) fn status_error(name: &str, status: StatusCode) -> SourceError {
    let hint = match status.as_u16() {
        404 | 410 => " (not found: check the URL)",
        401 | 407 => " (authentication required or refused: check the credentials)",
        403 => " (forbidden: check the credentials and the object's permissions)",
        s if is_retryable_status(s) => " (server-side failure; will retry)",
        _ => "",
    };
    SourceError::Status { url: name.to_string(), status: status.as_u16(), hint }
}

impl HttpSource {
    async fn check_status(&self, response: reqwest::Response) -> Result<reqwest::Response, SourceError> {
        if response.status().is_success() { Ok(response) } else { Err(self.refusal(response).await) }
    }

    /// The error for a refused request: the store's own reading of its error body when it
    /// has one, else the status.
    async fn refusal(&self, response: reqwest::Response) -> SourceError {
        let status = response.status();
        if let Some(auth) = &self.auth {
            let body = read_limited(response, ERROR_BODY_LIMIT).await;
            if let Some(e) = auth.refusal(status, &body) {
                return e;
            }
        }
        status_error(&self.name, status)
    }
}

/// Up to `limit` bytes of a body; a body that fails midway is what arrived.
pub(crate) async fn read_limited(response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = response.bytes_stream();
    let mut out = Vec::new();
    while let Some(Ok(chunk)) = body.next().await {
        out.extend_from_slice(&chunk[..chunk.len().min(limit - out.len())]);
        if out.len() >= limit {
            break;
        }
    }
    out
}

/// `bytes START-END/TOTAL` → START.
fn parse_content_range_start(v: &str) -> Option<u64> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    rest.split('-').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_start() {
        assert_eq!(parse_content_range_start("bytes 100-199/1000"), Some(100));
        assert_eq!(parse_content_range_start("bytes */1000"), None);
        assert_eq!(parse_content_range_start("items 1-2/3"), None);
    }

    #[test]
    fn header_values_are_not_echoed_in_errors() {
        let e = parse_headers(&[("X-Token".into(), "secret\nvalue".into())]).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(parse_headers(&[("bad name".into(), "v".into())]).is_err());
        assert_eq!(parse_headers(&[("X-A".into(), " v ".into())]).unwrap()["x-a"], "v");
    }

    #[test]
    fn credentials_debug_is_redacted() {
        let c = Credentials { username: "u".into(), password: "hunter2".into() };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}

//! The upload proxy (`cdi-populator upload-proxy`): CDI's `cdi-uploadproxy` endpoints over
//! HTTPS, each request checked against its token and streamed into the node mover that
//! holds the claim's volume, with the mover API's `Upload` call (mutual TLS).
//!
//! * `POST /v1beta1/upload`, `/v1beta1/upload-async`: the body is the image.
//! * `POST /v1beta1/upload-form`, `/v1beta1/upload-form-async`: multipart/form-data; the
//!   part named `file` is the image (parsed as it streams, with `multer`).
//! * The same under `/v1alpha1/`; `HEAD` on each answers 200 (virtctl probes `upload-async`
//!   that way to choose it); `/healthz`.
//!
//! Sync and async behave alike: both answer after the mover has committed the image.
//! CDI's async path answers before converting, but here the mover converts as bytes arrive,
//! so once the last byte is in there is nothing left to wait for but the flush.
//!
//! Statuses: 400 no or malformed `Authorization`; 401 a token that does not verify (the
//! body says why); 403 a claim that is not an upload target; 404 no such claim; 503 with
//! `Retry-After` while the claim is not ready (after waiting up to --ready-timeout) or its
//! mover is unreachable; 503 also if the upload already succeeded (as CDI; no Retry-After);
//! then the mover's answer: INVALID_ARGUMENT and RESOURCE_EXHAUSTED → 400, ABORTED (another
//! upload is running) → 503, FAILED_PRECONDITION → 409, NOT_FOUND/UNAVAILABLE → 503 with
//! `Retry-After`, others → 500.

mod mover_call;
pub mod target;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::{Bytes, BytesMut};
use cdi_proto::upload_wire;
use cdi_proto::v1::{UploadEnd, UploadRequest, UploadStart, upload_request};
use futures_util::StreamExt as _;
use tokio::sync::mpsc;
use tonic::Code;

use self::target::{Cluster, Destination, KubeCluster, Refusal};
use super::token::VerifyingKey;
use crate::certs::{ClientIdentity, ServingCert};
use crate::cli::UploadProxyArgs;
use crate::mover::{MoverConfig, Movers};
use crate::webhook::tls::{self, CertStore, TlsListener};

/// Bytes per gRPC data message: large enough to keep per-message overhead small, well
/// under gRPC's 4 MiB default message limit.
const CHUNK: usize = 256 * 1024;
/// A body chunk at least this large is sent as its own message, without being copied
/// (hyper hands out chunks of up to a few hundred KiB, views of its read buffer).
const SEND_AS_IS: usize = 64 * 1024;
/// The largest data message: a larger chunk is sent in pieces of this size.
const MAX_MESSAGE: usize = 1024 * 1024;
/// Data messages in flight between the HTTP body and the gRPC stream: the bound on what the
/// proxy holds per upload (about 1 MiB of CHUNK-sized messages, 4 MiB at most). Each is two
/// frames on the channel: its header, then its bytes.
const CHANNEL_DEPTH: usize = 4;
/// What a 503 asks the client to wait before retrying, in seconds.
const RETRY_AFTER_SECS: u64 = 5;
/// How often the claim's readiness is read again while waiting.
const READY_POLL: Duration = Duration::from_millis(500);
/// How often the serving certificate files are checked for a renewed Secret.
const CERT_RELOAD: Duration = Duration::from_secs(60);

/// The proxy's settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The token public key (`verify.key`, a SEC1 point).
    pub verify_key: VerifyingKey,
    /// How long a request waits for its claim to become ready before a 503.
    pub ready_timeout: Duration,
    /// Interval between readiness checks while waiting.
    pub ready_poll: Duration,
}

/// The shared state of the handlers.
#[derive(Debug)]
pub struct Proxy<C> {
    pub cluster: C,
    pub cfg: ProxyConfig,
}

/// The proxy's endpoints.
pub fn router<C: Cluster>(proxy: Arc<Proxy<C>>) -> axum::Router {
    let mut router = axum::Router::new();
    for version in ["v1beta1", "v1alpha1"] {
        for (path, form) in
            [("upload", false), ("upload-async", false), ("upload-form", true), ("upload-form-async", true)]
        {
            let handler = move |state: State<Arc<Proxy<C>>>, request: Request| upload(state, form, request);
            router = router.route(&format!("/{version}/{path}"), post(handler).head(|| async { StatusCode::OK }));
        }
    }
    router
        .route("/healthz", get(|| async { "ok\n" }))
        // Uploads are streamed, never collected: no body limit applies.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(cors))
        .with_state(proxy)
}

/// CORS allow-all, as CDI's proxy (browsers upload from other origins): preflights answer
/// 204 with every method and the asked-for headers; other answers allow any origin.
async fn cors(request: Request, next: Next) -> Response {
    let any = HeaderValue::from_static("*");
    if request.method() == Method::OPTIONS && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, any);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("HEAD, GET, POST, PUT, PATCH, DELETE"),
        );
        if let Some(asked) = request.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
        }
        return response;
    }
    let mut response = next.run(request).await;
    response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, any);
    response
}

/// An answer: a status and a sentence saying why.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    message: String,
    retry_after: bool,
}

impl Reply {
    fn new(status: StatusCode, message: impl Into<String>) -> Reply {
        Reply { status, message: message.into(), retry_after: false }
    }

    fn retry(message: impl Into<String>) -> Reply {
        Reply { status: StatusCode::SERVICE_UNAVAILABLE, message: message.into(), retry_after: true }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.message).into_response();
        if self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

async fn upload<C: Cluster>(State(proxy): State<Arc<Proxy<C>>>, form: bool, request: Request) -> Response {
    let started = Instant::now();
    let path = request.uri().path().to_string();
    let (claim, outcome) = proxy.upload(form, request).await;
    // The upload's buffers, kept for reuse while it ran (see `cdi_common::heap`), go back.
    cdi_common::heap::release_free();
    let (status, bytes, error) = match &outcome {
        Ok(bytes) => (StatusCode::OK, *bytes, None),
        Err(reply) => (reply.status, 0, Some(reply.message.as_str())),
    };
    // Never the token: only what it named.
    tracing::info!(
        %path,
        claim = claim.as_deref().unwrap_or("-"),
        status = status.as_u16(),
        bytes,
        millis = started.elapsed().as_millis() as u64,
        error = error.unwrap_or(""),
        "upload request"
    );
    match outcome {
        Ok(_) => StatusCode::OK.into_response(),
        Err(reply) => reply.into_response(),
    }
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Result<&str, Reply> {
    let bad = |why: &str| {
        Reply::new(
            StatusCode::BAD_REQUEST,
            format!("{why}: send `Authorization: Bearer <token>` with a token from an UploadTokenRequest"),
        )
    };
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| bad("no Authorization header"))?;
    let value = value.to_str().map_err(|_| bad("the Authorization header is not text"))?;
    match value.trim().split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => Ok(token.trim()),
        _ => Err(bad("the Authorization header is not a bearer token")),
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default()
}

impl<C: Cluster> Proxy<C> {
    /// Checks and streams one upload; returns the claim (`namespace/name`, once the token
    /// named it) and the bytes committed or the refusal.
    async fn upload(&self, form: bool, request: Request) -> (Option<String>, Result<u64, Reply>) {
        let claims = match bearer(request.headers()).and_then(|t| {
            self.cfg.verify_key.verify(t, unix_now()).map_err(|e| Reply::new(StatusCode::UNAUTHORIZED, e.to_string()))
        }) {
            Ok(c) => c,
            Err(reply) => return (None, Err(reply)),
        };
        let claim = format!("{}/{}", claims.namespace, claims.name);
        let outcome = async {
            // The request's own faults first: no point waiting for the claim to refuse them.
            let body = if form {
                let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
                let boundary = content_type.and_then(|c| multer::parse_boundary(c).ok()).ok_or_else(|| {
                    Reply::new(
                        StatusCode::BAD_REQUEST,
                        "a form upload needs Content-Type multipart/form-data with a boundary",
                    )
                })?;
                BodyKind::Form { boundary }
            } else {
                BodyKind::Raw
            };
            // A form's Content-Length counts the whole form, not the image: announce none.
            let announced = match body {
                BodyKind::Raw => content_length(request.headers()),
                BodyKind::Form { .. } => 0,
            };
            let destination = self.destination(&claims.namespace, &claims.name).await?;
            self.stream(&destination, &claim, announced, body, request.into_body()).await
        }
        .await;
        (Some(claim), outcome)
    }

    /// Waits up to `ready_timeout` for the claim to be ready; where its bytes go.
    async fn destination(&self, namespace: &str, name: &str) -> Result<Destination, Reply> {
        let deadline = Instant::now() + self.cfg.ready_timeout;
        loop {
            let refusal = match target::resolve(&self.cluster, namespace, name).await {
                Ok(d) => return Ok(d),
                Err(r) => r,
            };
            let waiting = matches!(refusal, Refusal::NotReady(_) | Refusal::Lookup(_));
            if waiting && Instant::now() + self.cfg.ready_poll < deadline {
                tokio::time::sleep(self.cfg.ready_poll).await;
                continue;
            }
            return Err(match refusal {
                Refusal::NotFound(m) => Reply::new(StatusCode::NOT_FOUND, m),
                Refusal::NotUploadTarget(m) => Reply::new(StatusCode::FORBIDDEN, m),
                Refusal::Succeeded(m) => Reply::new(StatusCode::SERVICE_UNAVAILABLE, m),
                Refusal::NotReady(m) | Refusal::Lookup(m) => Reply::retry(m),
            });
        }
    }

    /// Streams the body into the mover's `Upload` call; `end` only after a clean body.
    async fn stream(
        &self,
        to: &Destination,
        claim: &str,
        announced: u64,
        kind: BodyKind,
        body: Body,
    ) -> Result<u64, Reply> {
        let mover = self.cluster.mover(&to.node).await.map_err(|e| {
            Reply::retry(format!("cannot reach the mover holding PVC {claim} on node {}: {e}", to.node))
        })?;
        let (tx, call) = mover_call::upload(mover, 2 * CHANNEL_DEPTH);
        let start = UploadStart { task_id: to.task_id.clone(), content_length: announced };
        // The channel is empty: this cannot wait.
        let _ = tx.send(frame(upload_request::Request::Start(start))).await;
        let pump = async move {
            match kind {
                BodyKind::Raw => pump_raw(body, tx).await,
                BodyKind::Form { boundary } => pump_form(body, &boundary, tx).await,
            }
        };
        tokio::pin!(call, pump);
        let mut pumped: Option<Result<u64, PumpError>> = None;
        // The call may end first (the mover refused): then the rest of the body is not
        // read, and hyper closes the connection after the answer.
        let answer = loop {
            tokio::select! {
                answer = &mut call => break answer,
                p = &mut pump, if pumped.is_none() => pumped = Some(p),
            }
        };
        match (pumped, answer) {
            // The body broke off or was not a usable form: the mover saw no `end` and
            // committed nothing; its answer says only that.
            (Some(Err(PumpError::Client(why))), answer) => {
                tracing::debug!(%claim, mover = ?answer.err().map(|s| s.message().to_string()), "upload cut short");
                Err(Reply::new(
                    StatusCode::BAD_REQUEST,
                    format!("{why}; nothing was written, PVC {claim} waits for another upload"),
                ))
            }
            (pumped, Ok(answer)) => {
                if let Some(done) = answer.completed {
                    tracing::info!(%claim, virtual_size = done.virtual_size, formats = ?done.formats, "upload committed");
                }
                Ok(match pumped {
                    Some(Ok(n)) => n,
                    _ => 0,
                })
            }
            (_, Err(status)) => Err(mover_reply(&status, claim)),
        }
    }
}

enum BodyKind {
    Raw,
    Form { boundary: String },
}

#[derive(Debug)]
enum PumpError {
    /// The uploader's side: a body that broke off, a form without a `file` part.
    Client(String),
    /// The call ended while bytes were still coming: its answer says why.
    MoverGone,
}

/// A whole request message, framed (start and end; data goes without a copy, see `Sender`).
fn frame(request: upload_request::Request) -> Bytes {
    upload_wire::frame(&UploadRequest { request: Some(request) })
}

fn content_length(headers: &HeaderMap) -> u64 {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Turns body chunks into data messages: large chunks as they are, small ones collected into
/// messages of at most CHUNK bytes (a buffer that never grows, so never reallocates). Each
/// message goes out as its header and then the chunk itself.
struct Sender {
    tx: mpsc::Sender<Bytes>,
    buf: BytesMut,
    sent: u64,
}

impl Sender {
    fn new(tx: mpsc::Sender<Bytes>) -> Sender {
        Sender { tx, buf: BytesMut::new(), sent: 0 }
    }

    async fn push(&mut self, mut chunk: Bytes) -> Result<(), PumpError> {
        if self.buf.len() + chunk.len() > CHUNK {
            self.flush().await?;
        }
        if self.buf.is_empty() && chunk.len() >= SEND_AS_IS {
            while chunk.len() > MAX_MESSAGE {
                self.send(chunk.split_to(MAX_MESSAGE)).await?;
            }
            return self.send(chunk).await;
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve(CHUNK);
        }
        self.buf.extend_from_slice(&chunk);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), PumpError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        // A fresh buffer next time: the rest of this one is shared with the message.
        let data = std::mem::take(&mut self.buf).freeze();
        self.send(data).await
    }

    async fn send(&mut self, data: Bytes) -> Result<(), PumpError> {
        let n = data.len() as u64;
        let header = upload_wire::data_header(data.len());
        for part in [header, data] {
            self.tx.send(part).await.map_err(|_| PumpError::MoverGone)?;
        }
        self.sent += n;
        Ok(())
    }

    /// The body ended cleanly: the rest, then `end` with the length.
    async fn finish(mut self) -> Result<u64, PumpError> {
        self.flush().await?;
        let end = UploadEnd { length: self.sent };
        self.tx.send(frame(upload_request::Request::End(end))).await.map_err(|_| PumpError::MoverGone)?;
        Ok(self.sent)
    }
}

async fn pump_raw(body: Body, tx: mpsc::Sender<Bytes>) -> Result<u64, PumpError> {
    let mut out = Sender::new(tx);
    let mut body = body.into_data_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            PumpError::Client(format!("the upload broke off after {} bytes: {e}", out.sent + out.buf.len() as u64))
        })?;
        out.push(chunk).await?;
    }
    out.finish().await
}

async fn pump_form(body: Body, boundary: &str, tx: mpsc::Sender<Bytes>) -> Result<u64, PumpError> {
    let mut out = Sender::new(tx);
    let mut form = multer::Multipart::new(body.into_data_stream(), boundary);
    let broken = |e: multer::Error, sent: u64| {
        PumpError::Client(format!("the upload form broke off after {sent} bytes of the file: {e}"))
    };
    loop {
        // Parts before `file` are skipped (multer drains them).
        let Some(mut field) = form.next_field().await.map_err(|e| broken(e, 0))? else {
            return Err(PumpError::Client("the form has no part named \"file\"".into()));
        };
        if field.name() != Some("file") {
            continue;
        }
        while let Some(chunk) = field.chunk().await.map_err(|e| broken(e, out.sent + out.buf.len() as u64))? {
            out.push(chunk).await?;
        }
        return out.finish().await;
    }
}

/// The HTTP answer for the mover's gRPC error.
fn mover_reply(status: &tonic::Status, claim: &str) -> Reply {
    let why = status.message();
    match status.code() {
        Code::InvalidArgument => {
            Reply::new(StatusCode::BAD_REQUEST, format!("the upload to PVC {claim} was refused: {why}"))
        }
        // CDI's wording, which scripts may look for.
        Code::ResourceExhausted => Reply::new(
            StatusCode::BAD_REQUEST,
            format!("effective image size is larger than the reported available storage (PVC {claim}): {why}"),
        ),
        Code::Aborted => {
            Reply::new(StatusCode::SERVICE_UNAVAILABLE, format!("another upload to PVC {claim} is in progress: {why}"))
        }
        Code::FailedPrecondition => Reply::new(StatusCode::CONFLICT, format!("PVC {claim} takes no upload now: {why}")),
        Code::NotFound | Code::Unavailable => {
            Reply::retry(format!("the mover holding PVC {claim} cannot take the upload yet: {why}"))
        }
        _ => Reply::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the upload to PVC {claim} failed: {why}")),
    }
}

fn read(dir: &Path, name: &str) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(name);
    std::fs::read(&path).with_context(|| format!("reading {} (from Secret cdi-uploadproxy-tls)", path.display()))
}

fn serving_cert(dir: &Path) -> anyhow::Result<ServingCert> {
    Ok(ServingCert { cert: read(dir, "tls.crt")?, key: read(dir, "tls.key")? })
}

/// `cdi-populator upload-proxy`: serves until the listener fails.
pub async fn run(args: UploadProxyArgs) -> anyhow::Result<()> {
    let dir = args.tls_dir.as_path();
    let verify_key = VerifyingKey(read(dir, "verify.key")?);
    let identity =
        ClientIdentity { cert: read(dir, "client.crt")?, key: read(dir, "client.key")?, ca: read(dir, "ca.crt")? };
    let certs = Arc::new(CertStore::default());
    let mut current = serving_cert(dir)?;
    certs.set(&current).context("the upload proxy's serving certificate")?;

    let client = kube::Client::try_default().await?;
    let movers = Movers::new(
        client.clone(),
        Some(identity),
        MoverConfig {
            namespace: args.mover_namespace.clone().unwrap_or_else(|| args.namespace.clone()),
            selector: args.mover_selector.clone(),
            port: args.mover_port,
        },
    );
    let cfg =
        ProxyConfig { verify_key, ready_timeout: Duration::from_secs(args.ready_timeout), ready_poll: READY_POLL };
    let proxy = Arc::new(Proxy { cluster: KubeCluster { client, movers }, cfg });

    // A renewed Secret shows up in the mounted files: serve with it from then on.
    {
        let (certs, dir) = (certs.clone(), args.tls_dir.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(CERT_RELOAD).await;
                match serving_cert(&dir) {
                    Ok(cert) if cert != current => match certs.set(&cert) {
                        Ok(()) => {
                            tracing::info!("upload proxy serving certificate reloaded");
                            current = cert;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "unusable renewed serving certificate; keeping the old one")
                        }
                    },
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot re-read the serving certificate"),
                }
            }
        });
    }

    let tcp = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let addr = tcp.local_addr()?;
    let listener = TlsListener::new(tcp, tls::server_config(certs)?)?;
    tracing::info!(%addr, "upload proxy serving");
    axum::serve(listener, router(proxy)).await?;
    anyhow::bail!("the upload proxy server returned")
}

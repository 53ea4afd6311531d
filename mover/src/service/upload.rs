//! The `Upload` call: pumps an uploader's bytes into an upload task's import.
//!
//! ```text
//!  Upload stream ──▶ pump (this) ──Chunk──▶ bounded channel ──▶ UploadFeed (Read) ──▶ crate::import
//!                      ▲                                                                │
//!                      └────────────── outcome (oneshot, from tasks.rs) ◀───────────────┘
//! ```
//!
//! The pump stops reading as soon as the import is over (a bad image is refused while the
//! uploader is still sending), and when the task is cancelled.

use cdi_proto::upload_wire::{self, Decoder};
use cdi_proto::v1 as pb;
use futures_util::StreamExt as _;
use futures_util::stream::Stream as MessageStream;
use http_body::Frame;
use http_body_util::BodyExt as _;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use tonic::body::Body;

use super::convert;
use super::tasks::{Attempt, Registry, UploadRefused};
use crate::error::{ImportError, Reason, one_line};
use crate::import::ImportResult;
use crate::source::UploadFeed;
use crate::source::upload::Chunk;

/// Messages queued between the gRPC stream and the import: with the proxy's chunks of at
/// most 1 MiB, a few MiB in flight; the rest waits in the client (HTTP/2 flow control).
const CHUNKS_IN_FLIGHT: usize = 4;

/// What became of the uploader's stream, as the pump saw it.
enum Stream {
    /// `end` was passed on; whether it agrees with the data is the import's to say.
    Ended,
    /// Cut, with the status to answer (if anyone still listens).
    Cut(Status),
    /// The import was over before the stream was.
    ImportDone(Result<ImportResult, ImportError>),
    /// The task was cancelled.
    Stopped,
}

/// Serves one Upload call, its requests from tonic or from [`requests`].
pub async fn serve(
    tasks: &Registry,
    mut stream: impl MessageStream<Item = Result<pb::UploadRequest, Status>> + Unpin,
) -> Result<pb::UploadResponse, Status> {
    use pb::upload_request::Request;
    let first = stream
        .next()
        .await
        .transpose()?
        .ok_or_else(|| Status::invalid_argument("the stream is empty: the first message must be start"))?;
    let Some(Request::Start(start)) = first.request else {
        return Err(Status::invalid_argument("start: the first message must be start (task_id, content_length)"));
    };
    let id = convert::task_id(&start.task_id)?;
    let mut turn = tasks.upload_turn(&id).await.map_err(|e| match e {
        UploadRefused::NotFound(_) => Status::not_found(e.to_string()),
        UploadRefused::NotUpload { .. } | UploadRefused::Over { .. } => Status::failed_precondition(e.to_string()),
        UploadRefused::Busy(_) => Status::aborted(e.to_string()),
    })?;
    let content_length = (start.content_length > 0).then_some(start.content_length);
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let (reply, mut outcome) = oneshot::channel();
    let attempt = Attempt { feed: UploadFeed::new(rx, content_length), content_length, reply };
    if turn.submit(attempt).await.is_err() {
        return Err(Status::failed_precondition(format!("upload task {id} has ended: it takes no more uploads")));
    }
    tracing::info!(task = %id, content_length = start.content_length, "upload started");
    let mut stopping = turn.task().stopping();
    let mut sent: u64 = 0;
    let how = loop {
        let msg = tokio::select! {
            msg = stream.next() => msg.transpose(),
            done = &mut outcome => break Stream::ImportDone(done.unwrap_or(Err(ImportError::Cancelled))),
            _ = stopping.wait_for(|s| *s) => break Stream::Stopped,
        };
        let chunk = match msg {
            Ok(Some(pb::UploadRequest { request: Some(Request::Data(data)) })) => {
                sent += data.len() as u64;
                Chunk::Data(data)
            }
            Ok(Some(pb::UploadRequest { request: Some(Request::End(end)) })) => {
                // The import reads on to the end and checks it.
                let _ = tx.send(Chunk::End { length: end.length }).await;
                break Stream::Ended;
            }
            Ok(Some(_)) => {
                let why = "a message other than data or end after start";
                let _ = tx.send(Chunk::Cut(why.into())).await;
                break Stream::Cut(Status::invalid_argument(format!(
                    "{why}; nothing was committed, task {id} waits for another upload"
                )));
            }
            Ok(None) => {
                let why = "the stream closed without an end message";
                let _ = tx.send(Chunk::Cut(why.into())).await;
                break Stream::Cut(Status::cancelled(format!(
                    "{why} after {sent} bytes; nothing was committed, task {id} waits for another upload"
                )));
            }
            Err(status) => {
                let why = format!("the stream broke: {}", status.message());
                let _ = tx.send(Chunk::Cut(why.clone())).await;
                let code = match status.code() {
                    c @ (tonic::Code::Cancelled | tonic::Code::Unavailable | tonic::Code::DeadlineExceeded) => c,
                    _ => tonic::Code::Cancelled,
                };
                break Stream::Cut(Status::new(
                    code,
                    format!("{why} after {sent} bytes; nothing was committed, task {id} waits for another upload"),
                ));
            }
        };
        // Fails only when the import has stopped reading: its outcome follows.
        if tx.send(chunk).await.is_err() {
            break Stream::ImportDone((&mut outcome).await.unwrap_or(Err(ImportError::Cancelled)));
        }
    };
    // The feed sees the stream's end (or cut) from here on; a retry waits for this
    // attempt's end rather than being refused.
    drop(tx);
    turn.stream_over();
    let (result, cut) = match how {
        Stream::ImportDone(r) => (r, None),
        Stream::Cut(status) => (outcome.await.unwrap_or(Err(ImportError::Cancelled)), Some(status)),
        Stream::Ended | Stream::Stopped => (outcome.await.unwrap_or(Err(ImportError::Cancelled)), None),
    };
    let answer = match (result, cut) {
        (Ok(done), _) => {
            tracing::info!(task = %id, bytes = sent, "upload completed");
            Ok(pb::UploadResponse { completed: Some(convert::completed(&done)) })
        }
        (Err(ImportError::Cancelled), _) => {
            Err(Status::cancelled(format!("upload task {id} was cancelled; it takes no more uploads")))
        }
        // The uploader's cut explains whatever the import tripped over.
        (Err(_), Some(cut)) => Err(cut),
        (Err(e), None) => Err(status_of(&id, &e)),
    };
    drop(turn);
    answer
}

/// The Upload call straight from HTTP/2: its data reaches the import as slices of the frames
/// it came in, not copied into tonic's decode buffer first (see `cdi_proto::upload_wire`).
/// The answer is the one tonic would send: the response message and `grpc-status: 0` in
/// the trailers, or a trailers-only error.
pub async fn serve_http(tasks: &Registry, request: http::Request<Body>) -> http::Response<Body> {
    let outcome = serve(tasks, Box::pin(requests(request.into_body()))).await;
    match outcome {
        Ok(answer) => {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let frames = [Frame::data(upload_wire::frame(&answer)), Frame::trailers(trailers)];
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames.map(Ok::<_, Status>)));
            let mut response = http::Response::new(Body::new(body));
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
            response
        }
        Err(status) => status.into_http(),
    }
}

/// The request messages of an Upload body: whole ones, and slices of large data messages
/// as they arrive.
fn requests(body: Body) -> impl MessageStream<Item = Result<pb::UploadRequest, Status>> {
    struct Reading {
        body: Body,
        decoder: Decoder,
        ready: std::collections::VecDeque<upload_wire::Piece>,
        done: bool,
    }
    let reading = Reading { body, decoder: Decoder::default(), ready: Default::default(), done: false };
    futures_util::stream::unfold(reading, |mut r| async move {
        loop {
            if let Some(piece) = r.ready.pop_front() {
                return Some((Ok(piece.into_request()), r));
            }
            if r.done {
                return None;
            }
            let read = match r.body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => r.decoder.feed(data, &mut r.ready),
                    // A client's trailers say nothing the call needs.
                    Err(_trailers) => Ok(()),
                },
                Some(Err(status)) => Err(status),
                None => {
                    r.done = true;
                    r.decoder.finish()
                }
            };
            if let Err(status) = read {
                // The stream is cut here; what it had completed is moot.
                r.ready.clear();
                r.done = true;
                return Some((Err(status), r));
            }
        }
    })
}

/// A failed attempt's answer; the task waits for another upload.
fn status_of(id: &str, e: &ImportError) -> Status {
    let message = format!("{}; nothing was committed, task {id} waits for another upload", one_line(e));
    match e.reason() {
        Reason::TooLarge => Status::resource_exhausted(message),
        Reason::InvalidImage
        | Reason::UnsupportedImage
        | Reason::InvalidArchive
        | Reason::SourceInvalid
        | Reason::ChecksumMismatch
        | Reason::InvalidRequest => Status::invalid_argument(message),
        Reason::SourceUnavailable | Reason::Cancelled => Status::cancelled(message),
        Reason::TargetFailed | Reason::NotFound | Reason::Unauthorized => Status::internal(message),
    }
}

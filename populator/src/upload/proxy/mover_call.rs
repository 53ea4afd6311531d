//! The mover's `Upload` call, made by hand: its request body is the upload's own chunks, each
//! behind a few header bytes (see `cdi_proto::upload_wire`), where tonic's client would copy
//! every message into its encode buffer first. The answer is read as tonic reads one.

use std::future::Future;

use bytes::Bytes;
use cdi_proto::upload_wire;
use cdi_proto::v1::UploadResponse;
use http::header::{CONTENT_TYPE, HeaderValue, TE};
use http_body::Frame;
use http_body_util::{BodyExt as _, StreamBody};
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::codegen::Service as _;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Starts an Upload call on `channel`. The frames sent on the returned sender are the request
/// body, in order; dropping the sender ends it. The future is the mover's answer.
pub fn upload(
    channel: Channel,
    depth: usize,
) -> (mpsc::Sender<Bytes>, impl Future<Output = Result<UploadResponse, Status>> + Send) {
    let (tx, rx) = mpsc::channel(depth);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|bytes| (Ok::<_, Status>(Frame::data(bytes)), rx))
    });
    (tx, call(channel, Body::new(StreamBody::new(frames))))
}

async fn call(mut channel: Channel, body: Body) -> Result<UploadResponse, Status> {
    let mut request = http::Request::new(body);
    *request.method_mut() = http::Method::POST;
    // The channel adds the mover's scheme and address.
    *request.uri_mut() = http::Uri::from_static(upload_wire::PATH);
    let headers = request.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(TE, HeaderValue::from_static("trailers"));
    // As tonic's client: a connection that fails is UNAVAILABLE, the mover's retry signal.
    let transport = |e: tonic::transport::Error| Status::from_error(Box::new(e));
    std::future::poll_fn(|cx| channel.poll_ready(cx)).await.map_err(transport)?;
    let response = channel.call(request).await.map_err(transport)?;
    answer(response).await
}

/// The mover's answer: a trailers-only error, or one message and `grpc-status: 0`.
async fn answer(response: http::Response<Body>) -> Result<UploadResponse, Status> {
    if let Some(status) = status_of(response.headers())
        && status.code() != Code::Ok
    {
        return Err(status);
    }
    if response.status() != http::StatusCode::OK {
        return Err(Status::internal(format!("the mover answered HTTP {} to Upload", response.status())));
    }
    let collected = response.into_body().collect().await?;
    let status = collected
        .trailers()
        .and_then(status_of)
        .unwrap_or_else(|| Status::internal("the mover's answer to Upload ended without a grpc-status"));
    if status.code() != Code::Ok {
        return Err(status);
    }
    upload_wire::read_one(collected.to_bytes())
}

/// The status `headers` carry, if any. Without its details: tonic's reader panics on details
/// that are not base64, and the proxy has no use for them.
fn status_of(headers: &http::HeaderMap) -> Option<Status> {
    if !headers.contains_key(Status::GRPC_STATUS) {
        return None;
    }
    let mut headers = headers.clone();
    headers.remove(Status::GRPC_STATUS_DETAILS);
    Status::from_header_map(&headers)
}

#[cfg(test)]
mod tests {
    use cdi_proto::v1::Completed;

    use super::*;

    fn response(headers: &[(&'static str, &'static str)], frames: Vec<Frame<Bytes>>) -> http::Response<Body> {
        let body = StreamBody::new(futures_util::stream::iter(frames.into_iter().map(Ok::<_, Status>)));
        let mut response = http::Response::new(Body::new(body));
        for (name, value) in headers {
            response.headers_mut().insert(*name, HeaderValue::from_static(value));
        }
        response
    }

    fn trailers(status: &'static str) -> Frame<Bytes> {
        let mut map = http::HeaderMap::new();
        map.insert("grpc-status", HeaderValue::from_static(status));
        Frame::trailers(map)
    }

    #[tokio::test]
    async fn an_answer_is_its_message_once_the_trailers_say_ok() {
        let sent = UploadResponse { completed: Some(Completed { virtual_size: 7, ..Default::default() }) };
        let ok = response(&[], vec![Frame::data(upload_wire::frame(&sent)), trailers("0")]);
        assert_eq!(answer(ok).await.unwrap(), sent);

        let failed_late = response(&[], vec![Frame::data(upload_wire::frame(&sent)), trailers("13")]);
        assert_eq!(answer(failed_late).await.unwrap_err().code(), Code::Internal);

        let no_trailers = response(&[], vec![Frame::data(upload_wire::frame(&sent))]);
        let err = answer(no_trailers).await.unwrap_err();
        assert!(err.message().contains("without a grpc-status"), "{err}");
    }

    #[tokio::test]
    async fn a_trailers_only_answer_is_the_movers_refusal() {
        let refused = response(&[("grpc-status", "10"), ("grpc-message", "another%20upload")], vec![]);
        let err = answer(refused).await.unwrap_err();
        assert_eq!((err.code(), err.message()), (Code::Aborted, "another upload"));

        let garbled = response(&[("grpc-status", "8"), ("grpc-status-details-bin", "not base64!")], vec![]);
        assert_eq!(answer(garbled).await.unwrap_err().code(), Code::ResourceExhausted);

        let mut gateway = response(&[], vec![]);
        *gateway.status_mut() = http::StatusCode::BAD_GATEWAY;
        let err = answer(gateway).await.unwrap_err();
        assert!(err.message().contains("HTTP 502"), "{err}");
    }
}

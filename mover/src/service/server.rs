//! Running the service: listeners, TLS handshakes, metrics, and draining on shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use cdi_common::TLS_READ_BUFFER;
use cdi_proto::upload_wire;
use cdi_proto::v1::mover_server::MoverServer;
use futures_util::StreamExt;
use tokio::io::ReadBuf;
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::MoverService;
use super::metrics::{self, Metrics};
use super::tasks::Registry;
use super::tls::{Reloading, TlsFiles};
use crate::source::{PeerClient, PeerTls};

/// HTTP/2 flow control for what clients send (WriteVolume uploads): room for a few 1 MiB
/// chunks in flight, in large frames, rather than hyper's 1 MiB windows of 16 KiB frames.
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 8 << 20;
const MAX_FRAME: u32 = 1 << 20;
/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// `None`: plaintext (local tests only).
    pub tls: Option<TlsFiles>,
    pub kubelet_root: PathBuf,
    pub max_concurrent: usize,
    pub metrics_listen: Option<SocketAddr>,
    pub node_name: String,
    /// How long finished tasks stay visible.
    pub retention: Duration,
    /// How long shutdown waits for cancelled tasks to clean up.
    pub drain_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] super::tls::TlsError),
    #[error("the gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Where the server listens, once bound (port 0 picks one).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Bound {
    pub grpc: SocketAddr,
    pub metrics: Option<SocketAddr>,
}

/// Binds, reports the addresses through `on_bound`, and serves until `shutdown`; then
/// refuses new tasks, cancels the running ones, waits for them, and stops.
pub async fn serve(
    cfg: ServeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(Bound),
) -> Result<(), ServeError> {
    crate::tls::install_crypto_provider();
    let metrics = Metrics::new();
    let tasks = Registry::new(cfg.max_concurrent, cfg.retention, metrics.clone());
    // A mover reads its peers' volumes with its serving identity, trusting the CA its own
    // clients come from: all movers' certificates are signed by it.
    let peers = PeerClient {
        tls: cfg.tls.as_ref().map(|f| PeerTls { cert: f.cert.clone(), key: f.key.clone(), ca: f.client_ca.clone() }),
    };
    let service = MoverService {
        kubelet_root: cfg.kubelet_root.clone(),
        node_name: cfg.node_name.clone(),
        tasks: tasks.clone(),
        peers,
    };

    let listener =
        TcpListener::bind(cfg.listen).await.map_err(|source| ServeError::Bind { addr: cfg.listen, source })?;
    let grpc = listener.local_addr().map_err(|source| ServeError::Bind { addr: cfg.listen, source })?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let metrics_addr = match cfg.metrics_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })?;
            let bound = l.local_addr().map_err(|source| ServeError::Bind { addr, source })?;
            let mut stop = stop_rx.clone();
            tokio::spawn(metrics::serve(l, metrics.clone(), async move {
                let _ = stop.wait_for(|s| *s).await;
            }));
            Some(bound)
        }
        None => None,
    };
    on_bound(Bound { grpc, metrics: metrics_addr });
    tracing::info!(%grpc, metrics = ?metrics_addr, tls = cfg.tls.is_some(), "serving cdi.mover.v1");

    let drain_timeout = cfg.drain_timeout;
    let drained = async move {
        shutdown.await;
        tracing::info!("shutting down: refusing new tasks, cancelling running ones");
        tasks.drain(drain_timeout).await;
        let _ = stop_tx.send(true);
    };
    let router = tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .add_service(Routes { tasks: service.tasks.clone(), grpc: MoverServer::new(service) });
    match cfg.tls {
        None => {
            let incoming = TcpListenerStream::new(listener).map(|conn| conn.inspect(no_delay));
            router.serve_with_incoming_shutdown(incoming, drained).await?
        }
        Some(files) => {
            let tls = Arc::new(Reloading::new(files)?);
            let mut stop = stop_rx.clone();
            let incoming = tls_incoming(listener, tls, async move {
                let _ = stop.wait_for(|s| *s).await;
            });
            router.serve_with_incoming_shutdown(incoming, drained).await?;
        }
    }
    Ok(())
}

/// The mover's service: the `Upload` call read straight from HTTP/2 (see
/// [`super::upload::serve_http`]), every other call through the generated server.
#[derive(Clone)]
struct Routes {
    grpc: MoverServer<MoverService>,
    tasks: Arc<Registry>,
}

impl NamedService for Routes {
    const NAME: &'static str = <MoverServer<MoverService> as NamedService>::NAME;
}

impl Service<http::Request<Body>> for Routes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() == upload_wire::PATH {
            let tasks = self.tasks.clone();
            Box::pin(async move { Ok(super::upload::serve_http(&tasks, request).await) })
        } else {
            self.grpc.call(request)
        }
    }
}

/// Sends small frames at once. tonic sets this only on connections it accepts itself; ours
/// come from our own listener. Without it, the server's HTTP/2 WINDOW_UPDATEs wait for
/// delayed ACKs and a client-streaming upload (WriteVolume) crawls at a window per ~40 ms.
fn no_delay(tcp: &TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

type TlsConn = tokio_rustls::server::TlsStream<BufferedTcp>;

/// A TCP connection read through a [`TLS_READ_BUFFER`]; its own type so that tonic can ask it for
/// the peer's address.
struct BufferedTcp(tokio::io::BufReader<TcpStream>);

impl tokio::io::AsyncRead for BufferedTcp {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for BufferedTcp {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl Connected for BufferedTcp {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.0.get_ref().connect_info()
    }
}

/// Accepts TCP connections and completes their TLS handshakes (each with the configuration
/// current at accept time), handing established connections to the server.
fn tls_incoming(
    listener: TcpListener,
    tls: Arc<Reloading>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> ReceiverStream<Result<TlsConn, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        tokio::pin!(stop);
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                },
                () = &mut stop => return,
            };
            no_delay(&tcp);
            let tcp = BufferedTcp(tokio::io::BufReader::with_capacity(TLS_READ_BUFFER, tcp));
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(mut conn)) => {
                        // A whole ReadVolume chunk per write, not 64 KiB (rustls's default).
                        conn.get_mut().1.set_buffer_limit(Some(cdi_common::mtls::WRITE_BUFFER));
                        let _ = tx.send(Ok(conn)).await;
                    }
                    // Refused clients (no certificate, wrong CA) end here.
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    fn routes() -> Routes {
        let tasks = Registry::new(2, Duration::from_secs(60), Metrics::new());
        let service = MoverService {
            kubelet_root: PathBuf::from("/nonexistent"),
            node_name: "node-1".into(),
            tasks: tasks.clone(),
            peers: PeerClient { tls: None },
        };
        Routes { grpc: MoverServer::new(service), tasks }
    }

    fn grpc_request(path: &'static str, body: &'static [u8]) -> http::Request<Body> {
        let mut request = http::Request::new(Body::new(http_body_util::Full::new(bytes::Bytes::from_static(body))));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = http::Uri::from_static(path);
        request.headers_mut().insert("content-type", http::HeaderValue::from_static("application/grpc"));
        request
    }

    #[tokio::test]
    async fn upload_is_read_by_our_decoder_and_other_calls_by_tonic() {
        // A compressed message: our decoder's refusal, not tonic's, says who read it.
        let response = routes().call(grpc_request(upload_wire::PATH, &[1, 0, 0, 0, 1, 0])).await.unwrap();
        let status = tonic::Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::Unimplemented, "{status}");
        assert!(status.message().contains("compressed messages are not accepted"), "{status}");

        let response = routes().call(grpc_request("/cdi.mover.v1.Mover/Capabilities", &[0, 0, 0, 0, 0])).await.unwrap();
        let body = response.into_body().collect().await.unwrap();
        let trailers = body.trailers().cloned().unwrap();
        assert_eq!(tonic::Status::from_header_map(&trailers).unwrap().code(), tonic::Code::Ok);
        let answer: cdi_proto::v1::CapabilitiesResponse = upload_wire::read_one(body.to_bytes()).unwrap();
        assert_eq!(answer.node_name, "node-1");
    }
}

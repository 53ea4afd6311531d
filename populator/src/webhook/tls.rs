//! The webhook's TLS: a serving certificate that can be replaced while serving (when its
//! Secret changes), and an axum listener whose connections have finished their handshake.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cdi_common::TLS_READ_BUFFER;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::certs::ServingCert;

/// A client that has not finished its handshake by then is dropped (and holds nothing).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections handshaken but not yet taken by the server.
const BACKLOG: usize = 64;

/// An accepted connection, read through a [`TLS_READ_BUFFER`].
pub type Buffered = BufReader<TcpStream>;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the serving certificate is not PEM: {0}")]
    Pem(#[source] rustls::pki_types::pem::Error),
    #[error("the serving certificate Secret has no certificate")]
    NoCertificate,
    #[error("the serving certificate and key do not fit: {0}")]
    Key(#[source] rustls::Error),
}

/// The certificate handshakes use now; none until the first one is set.
#[derive(Debug, Default)]
pub struct CertStore {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl CertStore {
    /// Serves with `cert` from the next handshake on.
    ///
    /// # Errors
    /// Unreadable PEM, or a key that does not match the certificate.
    pub fn set(&self, cert: &ServingCert) -> Result<(), TlsError> {
        let chain = CertificateDer::pem_slice_iter(&cert.cert).collect::<Result<Vec<_>, _>>().map_err(TlsError::Pem)?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate);
        }
        let key = PrivateKeyDer::from_pem_slice(&cert.key).map_err(TlsError::Pem)?;
        let provider = rustls::crypto::ring::default_provider();
        let certified = CertifiedKey::from_der(chain, key, &provider).map_err(TlsError::Key)?;
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(certified));
        Ok(())
    }

    pub fn is_set(&self) -> bool {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).is_some()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// The rustls server settings: TLS 1.2+ with ring, our suite order (AES-128-GCM first, as a Go
/// server would choose), HTTP/1.1 (what the API server speaks to webhooks and what upload
/// clients use), the certificate from `certs`.
pub fn server_config(certs: Arc<CertStore>) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = Arc::new(cdi_common::mtls::crypto_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    Ok(config)
}

/// TLS connections for `axum::serve`: a task accepts TCP connections and runs each
/// handshake in a task of its own, so a slow or silent client delays no one else.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<Buffered>, SocketAddr)>,
    local: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: rustls::ServerConfig) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(BACKLOG);
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let acceptor = tokio::spawn(accept_loop(tcp, local, acceptor, tx));
        Ok(TlsListener { ready, local, acceptor })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

/// Logs name the listening address, not a server: the webhook, the upload API and the upload
/// proxy all accept through here.
async fn accept_loop(
    tcp: TcpListener,
    local: SocketAddr,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<Buffered>, SocketAddr)>,
) {
    loop {
        let (stream, peer) = match tcp.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!(%local, error = %e, "accepting a TLS connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            let stream = BufReader::with_capacity(TLS_READ_BUFFER, stream);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%local, %peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%local, %peer, "TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<Buffered>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept loop only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

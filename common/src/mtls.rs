//! Mutual-TLS connections to a mover's gRPC server, for tonic's `connect_with_connector`.
//!
//! tonic's own TLS connector reads the socket 4 KiB at a time and lets rustls take 64 KiB of
//! plaintext per write: an upload relayed by the proxy costs a write call per 64 KiB on the
//! proxy and a wake-up of the mover for each. This one reads through [`TLS_READ_BUFFER`] and
//! lets a whole message (up to [`WRITE_BUFFER`]) out in one write.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::BufReader;
use tokio::net::TcpStream;

use crate::TLS_READ_BUFFER;

/// Ciphertext rustls may hold for the socket: one of the largest stream messages.
pub const WRITE_BUFFER: usize = 1 << 20;

/// ring's suites, AES-128-GCM first. ring's own order puts AES-256-GCM first, which costs
/// more per byte; Go's TLS (CDI's servers, virtctl) puts AES-128-GCM first too. Servers
/// built on this provider should also set `ignore_client_order`, so that clients preferring
/// AES-256 (OpenSSL's curl, rustls) get the cheaper suite as they would from CDI.
#[must_use]
pub fn crypto_provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let mut provider = rustls::crypto::ring::default_provider();
    let first = TLS13_AES_128_GCM_SHA256.suite();
    provider.cipher_suites.sort_by_key(|s| s.suite() != first);
    provider
}

/// A client configuration presenting `cert` + `key` and trusting only `ca` (all PEM), speaking
/// HTTP/2 (ALPN `h2`).
///
/// # Errors
/// PEM that does not parse, or a key that does not fit the certificate, as text.
pub fn client_config(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca) {
        roots.add(c.map_err(|e| format!("CA certificate: {e}"))?).map_err(|e| format!("CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no CA certificate in the CA bundle".into());
    }
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("client certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("client key: {e}"))?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(crypto_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("client certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A TCP connection read through [`TLS_READ_BUFFER`].
pub type Buffered = BufReader<TcpStream>;

/// Connects to the URI's host and port and completes a TLS handshake checking `server_name`.
#[derive(Clone, Debug)]
pub struct Connector {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    timeout: Duration,
    keepalive: Option<Duration>,
}

impl Connector {
    /// # Errors
    /// A server name that is neither a DNS name nor an IP address.
    pub fn new(config: rustls::ClientConfig, server_name: &str, timeout: Duration) -> Result<Connector, String> {
        let server_name =
            ServerName::try_from(server_name.to_string()).map_err(|e| format!("server name {server_name:?}: {e}"))?;
        Ok(Connector { config: Arc::new(config), server_name, timeout, keepalive: None })
    }

    /// TCP keepalive probes after `idle`.
    #[must_use]
    pub fn keepalive(mut self, idle: Duration) -> Connector {
        self.keepalive = Some(idle);
        self
    }

    /// TCP connection to `address` (`host:port`, `[v6]:port`) and TLS handshake, within the
    /// timeout.
    ///
    /// # Errors
    /// No port in the address, the connection or the handshake failed (a rustls error inside
    /// the `io::Error` for a refused certificate), or took longer than the timeout.
    pub async fn connect(&self, address: &str) -> std::io::Result<tokio_rustls::client::TlsStream<Buffered>> {
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("no host and port in {address:?}"));
        let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| bad())?;
        let connecting = async {
            let tcp = TcpStream::connect((host, port)).await?;
            // Small messages (window updates, the answer) must not wait for delayed ACKs.
            tcp.set_nodelay(true)?;
            if let Some(idle) = self.keepalive {
                socket2::SockRef::from(&tcp).set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(idle))?;
            }
            let tcp = BufReader::with_capacity(TLS_READ_BUFFER, tcp);
            let mut tls =
                tokio_rustls::TlsConnector::from(self.config.clone()).connect(self.server_name.clone(), tcp).await?;
            tls.get_mut().1.set_buffer_limit(Some(WRITE_BUFFER));
            Ok(tls)
        };
        tokio::time::timeout(self.timeout, connecting).await.unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no TLS connection to {host}:{port} within {:?}", self.timeout),
            ))
        })
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<Buffered>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let address = uri.authority().map(http::uri::Authority::as_str).unwrap_or_default();
            Ok(TokioIo::new(this.connect(address).await?))
        })
    }
}

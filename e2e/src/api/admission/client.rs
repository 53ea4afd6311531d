//! Calling one webhook: where its `clientConfig` points (a Service resolved to a ready pod,
//! or a URL), HTTPS verified against its `caBundle`, one `AdmissionReview` POST over a kept
//! connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use serde_json::Value;

use crate::api::store::Store;

/// Answers bigger than this are refused (Kubernetes caps webhook responses too).
const MAX_RESPONSE: usize = 3 << 20;

/// Where a webhook is called.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The TLS server name, and the Host header.
    pub host: String,
    pub path: String,
}

/// The endpoint of a `clientConfig`.
///
/// # Errors
/// A message saying why the webhook cannot be reached.
pub async fn endpoint(store: &Store, cc: &Value) -> Result<Endpoint, String> {
    if let Some(svc) = cc.get("service").filter(|s| s.is_object()) {
        let (ns, name) = (svc["namespace"].as_str().unwrap_or_default(), svc["name"].as_str().unwrap_or_default());
        let port = u16::try_from(svc["port"].as_u64().unwrap_or(443)).unwrap_or(443);
        let host = format!("{name}.{ns}.svc");
        let path = svc["path"].as_str().filter(|p| !p.is_empty()).unwrap_or("/").to_string();
        // Through the Service's ClusterIP, as the aggregator does: the kube-proxy stand-in
        // forwards to a ready endpoint.
        let addr = SocketAddr::new(crate::api::aggregator::service_ip(store, ns, name)?, port);
        return Ok(Endpoint { addr, host, path });
    }
    let url = cc["url"].as_str().ok_or("clientConfig has neither service nor url")?;
    let uri: http::Uri = url.parse().map_err(|e| format!("invalid url {url:?}: {e}"))?;
    let host = uri.host().ok_or("url without a host")?.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(443);
    let path = uri.path_and_query().map_or("/".to_string(), ToString::to_string);
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("no address for {host}"))?;
    Ok(Endpoint { addr, host, path })
}

/// TLS settings trusting exactly the PEM certificates of a `caBundle` (base64 in JSON).
fn tls_config(ca_bundle: &str) -> Result<rustls::ClientConfig, String> {
    let pem = base64::engine::general_purpose::STANDARD
        .decode(ca_bundle.as_bytes())
        .map_err(|e| format!("caBundle is not base64: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("caBundle: {e}"))?;
        roots.add(cert).map_err(|e| format!("caBundle: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

type Sender = hyper::client::conn::http1::SendRequest<Full<bytes::Bytes>>;

/// Which connections may serve a call: same address, server name and trusted CAs.
#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    addr: SocketAddr,
    host: String,
    ca_bundle: String,
}

/// Open webhook connections and TLS settings, kept between calls as kube-apiserver keeps its
/// webhook clients: under load (hundreds of DataVolumes created at once) a TLS handshake and
/// a CA parse per admission would cost more than the webhook's answer.
#[derive(Default)]
struct Pool {
    idle: HashMap<PoolKey, Vec<Sender>>,
    /// One config per caBundle; sharing it also shares rustls's session cache (resumption).
    configs: HashMap<String, Arc<rustls::ClientConfig>>,
}

/// Idle connections kept per webhook endpoint, and TLS configs kept in all.
const MAX_IDLE: usize = 8;
const MAX_CONFIGS: usize = 32;

static POOL: LazyLock<Mutex<Pool>> = LazyLock::new(Mutex::default);

fn pool() -> std::sync::MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn config_for(ca_bundle: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    if let Some(config) = pool().configs.get(ca_bundle) {
        return Ok(config.clone());
    }
    let config = Arc::new(tls_config(ca_bundle)?);
    let mut pool = pool();
    if pool.configs.len() >= MAX_CONFIGS {
        // Rotated bundles leave stale entries; dropping them all is simplest and rare.
        pool.configs.clear();
    }
    pool.configs.insert(ca_bundle.to_string(), config.clone());
    Ok(config)
}

/// An idle connection to `key` that is still open (`true`: reused), else a new one.
async fn connection(ep: &Endpoint, key: &PoolKey, reuse: bool) -> Result<(Sender, bool), String> {
    while let Some(sender) = reuse.then(|| pool().idle.get_mut(key).and_then(Vec::pop)).flatten() {
        if !sender.is_closed() {
            return Ok((sender, true));
        }
    }
    let config = config_for(&key.ca_bundle)?;
    let name = ServerName::try_from(ep.host.clone()).map_err(|e| format!("server name {}: {e}", ep.host))?;
    let tcp = tokio::net::TcpStream::connect(ep.addr).await.map_err(|e| format!("dial tcp {}: {e}", ep.addr))?;
    let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| format!("tls: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
    // The connection task ends by itself once its sender is dropped (or the peer closes).
    tokio::spawn(conn);
    Ok((sender, false))
}

fn give_back(key: PoolKey, sender: Sender) {
    let mut pool = pool();
    let idle = pool.idle.entry(key).or_default();
    if idle.len() < MAX_IDLE {
        idle.push(sender);
    }
}

/// POSTs `review` to the endpoint over HTTPS and returns the decoded answer, all within
/// `timeout`. Errors are worded like Go's client errors, after `failed to call webhook: `.
pub async fn call(ep: &Endpoint, ca_bundle: &str, review: &Value, timeout: Duration) -> Result<Value, String> {
    let url = format!("https://{}:{}{}", ep.host, ep.addr.port(), ep.path);
    match tokio::time::timeout(timeout, post(ep, ca_bundle, review)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("Post \"{url}\": {e}")),
        Err(_) => Err(format!("Post \"{url}\": context deadline exceeded")),
    }
}

async fn post(ep: &Endpoint, ca_bundle: &str, review: &Value) -> Result<Value, String> {
    let key = PoolKey { addr: ep.addr, host: ep.host.clone(), ca_bundle: ca_bundle.to_string() };
    let body = bytes::Bytes::from(serde_json::to_vec(review).map_err(|e| e.to_string())?);
    let request = || {
        http::Request::post(&ep.path)
            .header(http::header::HOST, format!("{}:{}", ep.host, ep.addr.port()))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "kube-apiserver-admission")
            .body(Full::new(body.clone()))
            .map_err(|e| e.to_string())
    };
    let (mut sender, reused) = connection(ep, &key, true).await?;
    let sent = match sender.ready().await {
        Ok(()) => sender.send_request(request()?).await,
        Err(e) => Err(e),
    };
    let resp = match sent {
        Ok(resp) => resp,
        // A kept connection the server closed while idle: once more on a new one, as Go's
        // transport does for a request it could not deliver.
        Err(_) if reused => {
            (sender, _) = connection(ep, &key, false).await?;
            sender.ready().await.map_err(|e| e.to_string())?;
            sender.send_request(request()?).await.map_err(|e| e.to_string())?
        }
        Err(e) => return Err(e.to_string()),
    };
    let status = resp.status();
    let limited = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE);
    let bytes = limited.collect().await.map_err(|e| e.to_string())?.to_bytes();
    // Only a connection whose exchange completed goes back; a failed one is dropped (closed).
    give_back(key, sender);
    if !status.is_success() {
        return Err(format!(
            "the server responded with status {}: {}",
            status.as_u16(),
            String::from_utf8_lossy(&bytes).chars().take(200).collect::<String>()
        ));
    }
    serde_json::from_slice::<Value>(&bytes).map_err(|e| format!("the response is not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A webhook stand-in over TLS: answers every POST with `{"ok":true}`, counts the
    /// connections it accepts, and when `one_shot` drops a connection, unanswered, when a
    /// second request arrives on it (a server that timed the connection out as it was reused).
    async fn server(one_shot: bool) -> (Endpoint, String, Arc<AtomicUsize>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["hook.test.svc".to_string()]).unwrap().self_signed(&key).unwrap();
        let ca_bundle = base64::engine::general_purpose::STANDARD.encode(cert.pem());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let mut tls = acceptor.accept(tcp).await.unwrap();
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    let mut answered = 0;
                    loop {
                        let n = tls.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        // Each review is one small request; answer once headers and body arrived.
                        let text = String::from_utf8_lossy(&seen).to_string();
                        let Some((head, body)) = text.split_once("\r\n\r\n") else { continue };
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                            })
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        if body.len() < len {
                            continue;
                        }
                        seen.clear();
                        if one_shot && answered == 1 {
                            return;
                        }
                        answered += 1;
                        let answer = r#"{"ok":true}"#;
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                            answer.len()
                        );
                        tls.write_all(resp.as_bytes()).await.unwrap();
                        tls.flush().await.unwrap();
                    }
                });
            }
        });
        (Endpoint { addr, host: "hook.test.svc".into(), path: "/validate".into() }, ca_bundle, accepted)
    }

    #[tokio::test]
    async fn calls_share_one_connection() {
        let (ep, ca, accepted) = server(false).await;
        for _ in 0..5 {
            let v = call(&ep, &ca, &serde_json::json!({"n": 1}), Duration::from_secs(10)).await.unwrap();
            assert_eq!(v["ok"], true);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "five calls in a row should use one kept connection");
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced_not_reported() {
        let (ep, ca, accepted) = server(true).await;
        for _ in 0..3 {
            let v = call(&ep, &ca, &serde_json::json!({"n": 1}), Duration::from_secs(10)).await.unwrap();
            assert_eq!(v["ok"], true);
        }
        // Call 1 opens a connection; calls 2 and 3 each meet a dead kept one and open anew.
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }
}

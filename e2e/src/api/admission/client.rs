//! Calling one webhook: where its `clientConfig` points (a Service resolved to a ready pod,
//! or a URL), HTTPS verified against its `caBundle`, one `AdmissionReview` POST.

use std::net::SocketAddr;
use std::sync::Arc;
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
    let config = tls_config(ca_bundle)?;
    let name = ServerName::try_from(ep.host.clone()).map_err(|e| format!("server name {}: {e}", ep.host))?;
    let tcp = tokio::net::TcpStream::connect(ep.addr).await.map_err(|e| format!("dial tcp {}: {e}", ep.addr))?;
    let tls =
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| format!("tls: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let body = serde_json::to_vec(review).map_err(|e| e.to_string())?;
    let request = http::Request::post(&ep.path)
        .header(http::header::HOST, format!("{}:{}", ep.host, ep.addr.port()))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, "kube-apiserver-admission")
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let result = async {
        let resp = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let limited = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE);
        let bytes = limited.collect().await.map_err(|e| e.to_string())?.to_bytes();
        if !status.is_success() {
            return Err(format!(
                "the server responded with status {}: {}",
                status.as_u16(),
                String::from_utf8_lossy(&bytes).chars().take(200).collect::<String>()
            ));
        }
        serde_json::from_slice::<Value>(&bytes).map_err(|e| format!("the response is not JSON: {e}"))
    }
    .await;
    driver.abort();
    result
}

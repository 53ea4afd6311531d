//! kube-aggregator: `apiregistration.k8s.io/v1` APIServices whose `spec.service` names a
//! Service get every request under `/apis/<group>/<version>` proxied to that Service over
//! HTTPS, after authentication and RBAC, with the caller's identity in `X-Remote-User`,
//! `X-Remote-Group` and `X-Remote-Extra-*` and a front-proxy client certificate proving the
//! headers come from the API server. The front-proxy CA and the header names are published
//! in ConfigMap `kube-system/extension-apiserver-authentication`, where extension API
//! servers read them. A loop checks each backend (`Available` condition) and keeps its
//! resource list for discovery (`/apis`, aggregated discovery).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use http::{HeaderName, HeaderValue, Method};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::{Value, json};

use super::auth::UserInfo;
use super::error::ApiError;
use super::store::{PatchType, Query, Store, Sub, WriteOptions};
use super::util::{meta_str, now};

/// The front-proxy client certificate's common name, the one allowed name published.
pub const FRONT_PROXY_CLIENT: &str = "front-proxy-client";
const CONFIGMAP: &str = "extension-apiserver-authentication";
const AVAILABLE: &str = "Available";

/// The front-proxy credentials and what the availability loop learnt of each backend.
pub struct Aggregator {
    store: Arc<Store>,
    /// The cluster CA (PEM), published as `client-ca-file`.
    cluster_ca_pem: String,
    front_proxy_ca_pem: String,
    client_chain: Vec<CertificateDer<'static>>,
    client_key: PrivateKeyDer<'static>,
    /// APIService name → the backend's `APIResourceList`, while it is available.
    discovered: Mutex<HashMap<String, Value>>,
}

impl std::fmt::Debug for Aggregator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregator").finish_non_exhaustive()
    }
}

/// Error of a backend round trip, for the `Available` condition's message.
struct Unavailable {
    reason: &'static str,
    message: String,
}

impl Aggregator {
    /// A fresh front-proxy CA and client certificate for one cluster.
    ///
    /// # Errors
    /// Only if key generation or signing fails.
    pub fn generate(store: Arc<Store>, cluster_ca_pem: &str) -> anyhow::Result<Aggregator> {
        let ca_key = KeyPair::generate().context("front-proxy CA key")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "front-proxy-ca");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca = ca_params.self_signed(&ca_key).context("self-signing the front-proxy CA")?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().context("front-proxy client key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, FRONT_PROXY_CLIENT);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer).context("signing the front-proxy client certificate")?;
        Ok(Aggregator {
            store,
            cluster_ca_pem: cluster_ca_pem.to_string(),
            front_proxy_ca_pem: ca.pem(),
            client_chain: vec![cert.der().clone()],
            client_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            discovered: Mutex::new(HashMap::new()),
        })
    }

    /// The front-proxy CA (PEM) backends verify the client certificate with.
    pub fn front_proxy_ca_pem(&self) -> &str {
        &self.front_proxy_ca_pem
    }

    /// Writes `kube-system/extension-apiserver-authentication` as kube-apiserver does.
    ///
    /// # Errors
    /// When the ConfigMap cannot be created.
    pub fn publish(&self) -> anyhow::Result<()> {
        let cm = json!({
            "metadata": {"name": CONFIGMAP, "namespace": "kube-system"},
            "data": {
                "client-ca-file": self.cluster_ca_pem,
                "requestheader-client-ca-file": self.front_proxy_ca_pem,
                "requestheader-allowed-names": json!([FRONT_PROXY_CLIENT]).to_string(),
                "requestheader-username-headers": json!(["X-Remote-User"]).to_string(),
                "requestheader-uid-headers": json!(["X-Remote-Uid"]).to_string(),
                "requestheader-group-headers": json!(["X-Remote-Group"]).to_string(),
                "requestheader-extra-headers-prefix": json!(["X-Remote-Extra-"]).to_string(),
            },
        });
        let opts = WriteOptions { field_manager: "kube-apiserver".into(), ..Default::default() };
        self.store.create(&self.store.rt("", "configmaps"), "kube-system", cm, &opts)?;
        Ok(())
    }

    /// The APIService serving `path` from a Service, if any (`/apis/<group>/<version>…`).
    fn backend_for(&self, path: &str) -> Option<Value> {
        let rest = path.strip_prefix("/apis/")?;
        let mut parts = rest.split('/');
        let (group, version) = (parts.next()?, parts.next()?);
        let name = format!("{version}.{group}");
        let rt = self.store.rt("apiregistration.k8s.io", "apiservices");
        self.store.get(&rt, "", &name).ok().filter(|a| a["spec"]["service"].is_object())
    }

    /// The middleware's last step: proxies requests for aggregated APIs, adds the aggregated
    /// groups to discovery, and hands everything else on to dispatch.
    ///
    /// # Errors
    /// 503 when the backend cannot be reached.
    pub async fn handle(&self, user: &UserInfo, req: Request, next: Next) -> Result<Response, ApiError> {
        let path = req.uri().path().to_string();
        if let Some(apisvc) = self.backend_for(&path) {
            return self.proxy(&apisvc, user, req).await;
        }
        if req.method() == Method::GET
            && let Some(group) = path.strip_prefix("/apis/").map(|g| g.trim_end_matches('/'))
            && !group.is_empty()
            && !group.contains('/')
            && let Some((_, versions)) = self.groups().into_iter().find(|(g, _)| g == group)
        {
            let vs: Vec<Value> =
                versions.iter().map(|(v, _)| json!({"groupVersion": format!("{group}/{v}"), "version": v})).collect();
            let body = json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": vs,
                              "preferredVersion": vs[0]});
            return Ok((
                [(http::header::CONTENT_TYPE, "application/json")],
                serde_json::to_vec(&body).unwrap_or_default(),
            )
                .into_response());
        }
        let discovery = req.method() == Method::GET && (path == "/apis" || path == "/apis/");
        let resp = next.run(req).await;
        if !discovery || !resp.status().is_success() {
            return Ok(resp);
        }
        Ok(self.add_to_discovery(resp).await)
    }

    async fn proxy(&self, apisvc: &Value, user: &UserInfo, req: Request) -> Result<Response, ApiError> {
        let (mut parts, body) = req.into_parts();
        let headers = &mut parts.headers;
        let drop: Vec<HeaderName> = headers
            .keys()
            .filter(|k| {
                let k = k.as_str();
                k == "authorization" || k.starts_with("impersonate-") || k.starts_with("x-remote-")
            })
            .cloned()
            .collect();
        for k in drop {
            headers.remove(k);
        }
        let value = |s: &str| {
            HeaderValue::from_str(s).map_err(|_| ApiError::bad_request(format!("{s:?} cannot be sent as a header")))
        };
        headers.insert("x-remote-user", value(&user.name)?);
        if !user.uid.is_empty() {
            headers.insert("x-remote-uid", value(&user.uid)?);
        }
        for g in &user.groups {
            headers.append("x-remote-group", value(g)?);
        }
        for (k, vs) in &user.extra {
            let name = HeaderName::try_from(format!("x-remote-extra-{}", escape_key(k)))
                .map_err(|_| ApiError::bad_request(format!("user extra key {k:?} cannot be sent as a header")))?;
            for v in vs {
                headers.append(name.clone(), value(v)?);
            }
        }
        let req = http::Request::from_parts(parts, body);
        match self.send(apisvc, req).await {
            Ok(resp) => Ok(resp.map(Body::new)),
            Err(e) => {
                tracing::debug!(apiservice = meta_str(apisvc, "name"), error = %e.message, "aggregated API unreachable");
                Err(service_unavailable())
            }
        }
    }

    /// One request to the APIService's Service over HTTPS with the front-proxy certificate.
    async fn send(
        &self,
        apisvc: &Value,
        mut req: http::Request<Body>,
    ) -> Result<http::Response<hyper::body::Incoming>, Unavailable> {
        let spec = &apisvc["spec"];
        let (ns, name) = (
            spec["service"]["namespace"].as_str().unwrap_or_default(),
            spec["service"]["name"].as_str().unwrap_or_default(),
        );
        let port = spec["service"]["port"].as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or(443);
        let ip =
            service_ip(&self.store, ns, name).map_err(|message| Unavailable { reason: "ServiceNotFound", message })?;
        let fail = |reason: &'static str| move |e: String| Unavailable { reason, message: e };
        let tls = self.client_config(spec).map_err(|e| fail("FailedDiscoveryCheck")(e.to_string()))?;
        let host = format!("{name}.{ns}.svc");
        let server_name =
            ServerName::try_from(host.clone()).map_err(|e| fail("FailedDiscoveryCheck")(e.to_string()))?;
        let connect = async {
            let tcp = tokio::net::TcpStream::connect((ip, port)).await.map_err(|e| e.to_string())?;
            tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(server_name, tcp).await.map_err(|e| e.to_string())
        };
        let stream = tokio::time::timeout(Duration::from_secs(5), connect)
            .await
            .map_err(|_| "connecting timed out".to_string())
            .and_then(|r| r)
            .map_err(|e| {
                fail("FailedDiscoveryCheck")(format!("failing or missing response from https://{ip}:{port}: {e}"))
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| fail("FailedDiscoveryCheck")(e.to_string()))?;
        // Ends with the connection: when the response (a watch, too) has been read.
        tokio::spawn(conn);
        req.headers_mut().insert(
            http::header::HOST,
            HeaderValue::from_str(&format!("{host}:{port}"))
                .map_err(|e| fail("FailedDiscoveryCheck")(e.to_string()))?,
        );
        sender.send_request(req).await.map_err(|e| fail("FailedDiscoveryCheck")(e.to_string()))
    }

    fn client_config(&self, spec: &Value) -> anyhow::Result<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder =
            rustls::ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
        let builder = if spec["insecureSkipTLSVerify"] == true {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(SkipVerify(provider)))
        } else {
            let pem = spec["caBundle"]
                .as_str()
                .and_then(|b| {
                    use base64::Engine as _;
                    base64::engine::general_purpose::STANDARD.decode(b).ok()
                })
                .context("spec.caBundle is missing or not base64")?;
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&pem) {
                roots.add(c.context("spec.caBundle holds no PEM certificate")?)?;
            }
            builder.with_root_certificates(roots)
        };
        Ok(builder.with_client_auth_cert(self.client_chain.clone(), self.client_key.clone_key())?)
    }

    /// Checks every APIService's backend: `Available` and the resource list for discovery.
    ///
    /// # Errors
    /// When the APIServices cannot be listed.
    pub async fn sweep(&self) -> anyhow::Result<()> {
        let rt = self.store.rt("apiregistration.k8s.io", "apiservices");
        let all = self.store.list(&rt, &Query::default(), None, None)?.items;
        let mut found = HashMap::new();
        for a in &all {
            let name = meta_str(a, "name").to_string();
            let (status, reason, message) = if a["spec"]["service"].is_object() {
                let group = a["spec"]["group"].as_str().unwrap_or_default();
                let version = a["spec"]["version"].as_str().unwrap_or_default();
                let req = http::Request::get(format!("/apis/{group}/{version}"))
                    .header(http::header::ACCEPT, "application/json")
                    .header("x-remote-user", "system:kube-aggregator")
                    .header("x-remote-group", "system:masters")
                    .body(Body::empty());
                let result = match req {
                    Ok(req) => self.discover(a, req).await,
                    Err(e) => Err(Unavailable { reason: "FailedDiscoveryCheck", message: e.to_string() }),
                };
                match result {
                    Ok(list) => {
                        found.insert(name.clone(), list);
                        ("True", "Passed", "all checks passed".to_string())
                    }
                    Err(u) => ("False", u.reason, u.message),
                }
            } else {
                ("True", "Local", "Local APIServices are always available".to_string())
            };
            let current = a["status"]["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == AVAILABLE));
            if current
                .is_some_and(|c| c["status"] == status && c["reason"] == reason && c["message"] == message.as_str())
            {
                continue;
            }
            let cond = json!({"type": AVAILABLE, "status": status, "reason": reason, "message": message,
                              "lastTransitionTime": now()});
            let opts = WriteOptions { field_manager: "kube-aggregator".into(), ..Default::default() };
            let patch = json!({"status": {"conditions": [cond]}});
            let _ = self.store.patch(&rt, "", &name, PatchType::Merge, &patch, Sub::Status, &opts);
        }
        *self.discovered.lock().unwrap_or_else(|e| e.into_inner()) = found;
        Ok(())
    }

    async fn discover(&self, apisvc: &Value, req: http::Request<Body>) -> Result<Value, Unavailable> {
        use http_body_util::BodyExt as _;
        let resp = self.send(apisvc, req).await?;
        let status = resp.status();
        let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
            .await
            .map_err(|_| "reading timed out".to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(|e| Unavailable { reason: "FailedDiscoveryCheck", message: e })?
            .to_bytes();
        if !status.is_success() {
            return Err(Unavailable {
                reason: "FailedDiscoveryCheck",
                message: format!("failing or missing response: bad status from the backend: {}", status.as_u16()),
            });
        }
        serde_json::from_slice(&body).map_err(|e| Unavailable {
            reason: "FailedDiscoveryCheck",
            message: format!("not an APIResourceList: {e}"),
        })
    }

    /// The aggregated groups whose backends answered, each with its versions (highest
    /// versionPriority first) and their resource lists.
    fn groups(&self) -> Vec<(String, Vec<(String, Value)>)> {
        let rt = self.store.rt("apiregistration.k8s.io", "apiservices");
        let mut apisvcs: Vec<Arc<Value>> =
            self.store.list(&rt, &Query::default(), None, None).map(|l| l.items).unwrap_or_default();
        apisvcs.sort_by_key(|a| std::cmp::Reverse(a["spec"]["versionPriority"].as_i64().unwrap_or(0)));
        let discovered = self.discovered.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut groups: Vec<(String, Vec<(String, Value)>)> = Vec::new();
        for a in &apisvcs {
            let Some(list) = discovered.get(meta_str(a, "name")) else { continue };
            let group = a["spec"]["group"].as_str().unwrap_or_default().to_string();
            let version = a["spec"]["version"].as_str().unwrap_or_default().to_string();
            match groups.iter_mut().find(|(g, _)| *g == group) {
                Some((_, vs)) => vs.push((version, list.clone())),
                None => groups.push((group, vec![(version, list.clone())])),
            }
        }
        groups
    }

    /// The available aggregated groups added to `/apis` (APIGroupList or the aggregated
    /// APIGroupDiscoveryList, whichever dispatch answered with).
    async fn add_to_discovery(&self, resp: Response) -> Response {
        let (parts, body) = resp.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, 64 << 20).await else {
            return Response::from_parts(parts, Body::empty());
        };
        let Ok(mut v) = serde_json::from_slice::<Value>(&bytes) else {
            // Protobuf or anything else passes unchanged.
            return Response::from_parts(parts, Body::from(bytes));
        };
        let groups = self.groups();
        match v["kind"].as_str() {
            Some("APIGroupList") => {
                if let Some(list) = v["groups"].as_array_mut() {
                    for (group, versions) in &groups {
                        let vs: Vec<Value> = versions
                            .iter()
                            .map(|(ver, _)| json!({"groupVersion": format!("{group}/{ver}"), "version": ver}))
                            .collect();
                        list.retain(|g| g["name"] != group.as_str());
                        list.push(json!({"name": group, "versions": vs, "preferredVersion": vs[0]}));
                    }
                }
            }
            Some("APIGroupDiscoveryList") => {
                if let Some(list) = v["items"].as_array_mut() {
                    for (group, versions) in &groups {
                        let vs: Vec<Value> =
                            versions.iter().map(|(ver, l)| json!({"version": ver, "resources": aggregated_resources(l), "freshness": "Current"})).collect();
                        list.retain(|g| g["metadata"]["name"] != group.as_str());
                        list.push(json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": vs}));
                    }
                }
            }
            _ => {}
        }
        let mut parts = parts;
        parts.headers.remove(http::header::CONTENT_LENGTH);
        Response::from_parts(parts, Body::from(serde_json::to_vec(&v).unwrap_or_default()))
    }
}

/// An `APIResourceList`'s resources as aggregated discovery (`apidiscovery.k8s.io/v2`)
/// writes them; subresources (`pods/log`) fold into their parent.
fn aggregated_resources(list: &Value) -> Vec<Value> {
    let all = list["resources"].as_array().cloned().unwrap_or_default();
    let mut out: Vec<Value> = Vec::new();
    for r in &all {
        let name = r["name"].as_str().unwrap_or_default();
        let scope = if r["namespaced"] == true { "Namespaced" } else { "Cluster" };
        if let Some((parent, sub)) = name.split_once('/') {
            if let Some(p) = out.iter_mut().find(|p| p["resource"] == parent)
                && let Some(subs) = p["subresources"].as_array_mut()
            {
                subs.push(json!({"subresource": sub, "responseKind": {"group": "", "version": "", "kind": r["kind"]}, "verbs": r["verbs"]}));
            }
            continue;
        }
        let mut entry = json!({
            "resource": name, "responseKind": {"group": "", "version": "", "kind": r["kind"]},
            "scope": scope, "singularResource": r["singularName"], "verbs": r["verbs"], "subresources": [],
        });
        if let Some(s) = r["shortNames"].as_array() {
            entry["shortNames"] = json!(s);
        }
        out.push(entry);
    }
    out
}

/// `X-Remote-Extra-` keys are percent-encoded (what is not a token character of HTTP).
fn escape_key(k: &str) -> String {
    k.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-!#$&'*+.^_`|~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Where the API server reaches Service `ns/name` itself (webhooks and aggregated APIs): its
/// ClusterIP, on which the proxy stand-in listens.
///
/// # Errors
/// Kubernetes' message when the Service is missing or has no ClusterIP.
pub fn service_ip(store: &Store, ns: &str, name: &str) -> Result<std::net::IpAddr, String> {
    let svc = store
        .get(&store.rt("", "services"), ns, name)
        .map_err(|_| format!("service/{name} in \"{ns}\" is not present"))?;
    svc["spec"]["clusterIP"]
        .as_str()
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| format!("service/{name} in \"{ns}\" has no ClusterIP"))
}

fn service_unavailable() -> ApiError {
    ApiError { code: 503, reason: "ServiceUnavailable", message: "service unavailable".into(), details: None }
}

/// `insecureSkipTLSVerify: true`: the backend's certificate is not checked (its signature
/// still is, so the handshake stays a real one).
#[derive(Debug)]
struct SkipVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

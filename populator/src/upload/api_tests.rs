//! The upload API over real TLS on 127.0.0.1: the aggregator's front-proxy certificate and
//! headers get a token; anything else is refused. Claims are held in memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::ObjectMeta;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::api::{self, ClaimLookup, Ctx, KeyStore, Peer};
use super::api_auth::{FrontProxy, FrontProxyConfig};
use super::token::SigningKey;
use crate::api::names::annotations::reserved::UPLOAD_TARGET;
use crate::certs::ServingCert;
use crate::webhook::tls::{CertStore, TlsListener};

const SERVER_NAME: &str = "cdi-api.cdi-rs.svc";
const COLLECTION: &str = "/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/ns/uploadtokenrequests";

#[derive(Default)]
struct MemClaims(HashMap<(String, String), PersistentVolumeClaim>);

impl ClaimLookup for MemClaims {
    async fn claim(&self, namespace: &str, name: &str) -> Result<Option<PersistentVolumeClaim>, kube::Error> {
        Ok(self.0.get(&(namespace.to_string(), name.to_string())).cloned())
    }
}

fn claim(name: &str, annotations: &[(&str, &str)]) -> ((String, String), PersistentVolumeClaim) {
    let pvc = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            annotations: Some(
                annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        },
        ..Default::default()
    };
    (("ns".to_string(), name.to_string()), pvc)
}

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    Ca { pem: cert.pem(), issuer: Issuer::new(params, key) }
}

/// A leaf certificate (PEM cert, PEM key) for `cn`, with `names` as SANs.
fn leaf(ca: &Ca, cn: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![usage];
    (params.signed_by(&key, &ca.issuer).unwrap().pem(), key.serialize_pem())
}

struct Server {
    addr: std::net::SocketAddr,
    serving_ca: String,
    front_proxy_ca: Ca,
    key: Arc<KeyStore>,
    verifying: super::token::VerifyingKey,
    _task: tokio::task::JoinHandle<()>,
}

async fn start(with_key: bool) -> Server {
    let serving_ca = ca("cdi-rs CA");
    let (cert, key) = leaf(&serving_ca, SERVER_NAME, &[SERVER_NAME], ExtendedKeyUsagePurpose::ServerAuth);
    let certs = Arc::new(CertStore::default());
    certs.set(&ServingCert { cert: cert.into_bytes(), key: key.into_bytes() }).unwrap();
    let front_proxy_ca = ca("front-proxy-ca");
    let front_proxy = Arc::new(FrontProxy::default());
    front_proxy
        .set(FrontProxyConfig {
            ca_pem: front_proxy_ca.pem.clone().into_bytes(),
            allowed_names: vec!["front-proxy-client".into()],
            username_headers: vec!["X-Remote-User".into()],
            group_headers: vec!["X-Remote-Group".into()],
        })
        .unwrap();
    let signing = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
    let verifying = signing.public_key();
    let keys = Arc::new(KeyStore::default());
    if with_key {
        keys.set(signing);
    }
    let claims = MemClaims(HashMap::from([claim("disk", &[(UPLOAD_TARGET, "")]), claim("plain", &[("other", "x")])]));
    let ctx = Ctx { claims, key: keys.clone(), front_proxy: front_proxy.clone(), key_secret: "cdi-rs/key".into() };
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = TlsListener::new(tcp, api::server_config(certs, front_proxy).unwrap()).unwrap();
    let app = api::router(Arc::new(ctx)).into_make_service_with_connect_info::<Peer>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server { addr, serving_ca: serving_ca.pem, front_proxy_ca, key: keys, verifying, _task: task }
}

/// One HTTP/1.1 request over TLS (trusting the serving CA, presenting `client` if given):
/// the status code and the JSON body (Null if not JSON).
async fn call(
    server: &Server,
    client: Option<&(String, String)>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, Value), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(server.serving_ca.as_bytes()).unwrap()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(server.addr).await.map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {SERVER_NAME}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    tls.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    tls.read_to_end(&mut response).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no HTTP response: {text:?}"))?;
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("status line: {head}"))?;
    Ok((code, serde_json::from_str(body).unwrap_or(Value::Null)))
}

fn front_proxy_client(server: &Server) -> (String, String) {
    leaf(&server.front_proxy_ca, "front-proxy-client", &[], ExtendedKeyUsagePurpose::ClientAuth)
}

const USER: &[(&str, &str)] = &[("X-Remote-User", "alice"), ("X-Remote-Group", "system:authenticated")];

fn token_request(pvc: &str) -> String {
    json!({"apiVersion": "upload.cdi.kubevirt.io/v1beta1", "kind": "UploadTokenRequest",
           "metadata": {"generateName": "token-"}, "spec": {"pvcName": pvc}})
    .to_string()
}

#[tokio::test]
async fn the_aggregator_gets_a_token_for_an_upload_claim() {
    let server = start(true).await;
    let client = front_proxy_client(&server);
    let (code, body) = call(&server, Some(&client), "POST", COLLECTION, USER, &token_request("disk")).await.unwrap();
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["kind"], "UploadTokenRequest");
    assert_eq!(body["metadata"]["namespace"], "ns");
    let name = body["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("token-") && name.len() == "token-".len() + 5, "{name}");
    assert!(body["metadata"]["creationTimestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(body["spec"]["pvcName"], "disk");
    let token = body["status"]["token"].as_str().unwrap();
    let claims = server.verifying.verify(token, jiff::Timestamp::now().as_second()).unwrap();
    assert_eq!((claims.namespace.as_str(), claims.name.as_str()), ("ns", "disk"));

    // virtctl names its request; that name is kept.
    let named = json!({"metadata": {"name": "token-for-virtctl", "namespace": "ns"}, "spec": {"pvcName": "disk"}});
    let (code, body) = call(&server, Some(&client), "POST", COLLECTION, USER, &named.to_string()).await.unwrap();
    assert_eq!((code, body["metadata"]["name"].as_str()), (201, Some("token-for-virtctl")));
}

#[tokio::test]
async fn discovery_answers_what_the_aggregator_checks() {
    let server = start(true).await;
    let client = front_proxy_client(&server);
    let aggregator = [("X-Remote-User", "system:kube-aggregator"), ("X-Remote-Group", "system:masters")];
    let (code, body) =
        call(&server, Some(&client), "GET", "/apis/upload.cdi.kubevirt.io/v1beta1", &aggregator, "").await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(body, api::resource_list());
    assert_eq!(body["resources"][0]["verbs"], json!(["create"]));
    let (code, body) =
        call(&server, Some(&client), "GET", "/apis/upload.cdi.kubevirt.io", &aggregator, "").await.unwrap();
    assert_eq!((code, body["kind"].as_str()), (200, Some("APIGroup")));
    assert_eq!(body["preferredVersion"]["groupVersion"], "upload.cdi.kubevirt.io/v1beta1");
    let (code, body) = call(&server, Some(&client), "GET", "/apis", &aggregator, "").await.unwrap();
    assert_eq!((code, body["groups"][0]["name"].as_str()), (200, Some("upload.cdi.kubevirt.io")));
    // Probes come without a certificate.
    assert_eq!(call(&server, None, "GET", "/healthz", &[], "").await.unwrap().0, 200);
}

#[tokio::test]
async fn callers_other_than_the_aggregator_are_refused() {
    let server = start(true).await;
    // No client certificate: 401, even with the headers.
    let (code, body) = call(&server, None, "POST", COLLECTION, USER, &token_request("disk")).await.unwrap();
    assert_eq!((code, body["reason"].as_str()), (401, Some("Unauthorized")), "{body}");
    assert_eq!(body["kind"], "Status");
    // A certificate from another CA: the handshake fails.
    let stranger = leaf(&ca("other CA"), "front-proxy-client", &[], ExtendedKeyUsagePurpose::ClientAuth);
    let result = call(&server, Some(&stranger), "POST", COLLECTION, USER, &token_request("disk")).await;
    assert!(result.is_err(), "a foreign client certificate got {result:?}");
    // The front-proxy CA but a name not allowed.
    let other_name = leaf(&server.front_proxy_ca, "someone", &[], ExtendedKeyUsagePurpose::ClientAuth);
    let (code, _) = call(&server, Some(&other_name), "POST", COLLECTION, USER, &token_request("disk")).await.unwrap();
    assert_eq!(code, 401);
    // The right certificate but no user.
    let client = front_proxy_client(&server);
    let (code, _) = call(&server, Some(&client), "POST", COLLECTION, &[], &token_request("disk")).await.unwrap();
    assert_eq!(code, 401);
}

#[tokio::test]
async fn bad_requests_get_kubernetes_status_objects() {
    let server = start(true).await;
    let client = front_proxy_client(&server);
    let post = |body: String| {
        let client = client.clone();
        let server = &server;
        async move { call(server, Some(&client), "POST", COLLECTION, USER, &body).await.unwrap() }
    };
    let (code, body) = post(token_request("missing")).await;
    assert_eq!((code, body["reason"].as_str()), (404, Some("NotFound")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("\"missing\" not found"));
    let (code, body) = post(token_request("plain")).await;
    assert_eq!((code, body["reason"].as_str()), (400, Some("BadRequest")), "{body}");
    assert!(body["message"].as_str().unwrap().contains(UPLOAD_TARGET));
    let (code, body) = post(json!({"metadata": {"name": "t"}, "spec": {}}).to_string()).await;
    assert_eq!(code, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("spec.pvcName"));
    let (code, body) = post(json!({"spec": {"pvcName": "disk"}}).to_string()).await;
    assert_eq!((code, body["reason"].as_str()), (422, Some("Invalid")), "{body}");
    let (code, _) =
        post(json!({"metadata": {"name": "t", "namespace": "elsewhere"}, "spec": {"pvcName": "disk"}}).to_string())
            .await;
    assert_eq!(code, 400);
    let (code, _) = post("not json".into()).await;
    assert_eq!(code, 400);
    // Only create exists.
    for (method, path) in
        [("GET", COLLECTION.to_string()), ("DELETE", format!("{COLLECTION}/t")), ("GET", format!("{COLLECTION}/t"))]
    {
        let (code, body) = call(&server, Some(&client), method, &path, USER, "").await.unwrap();
        assert_eq!((code, body["reason"].as_str()), (405, Some("MethodNotAllowed")), "{method} {path}");
    }
}

#[tokio::test]
async fn without_the_key_the_api_asks_to_retry() {
    let server = start(false).await;
    let client = front_proxy_client(&server);
    let (code, body) = call(&server, Some(&client), "POST", COLLECTION, USER, &token_request("disk")).await.unwrap();
    assert_eq!((code, body["reason"].as_str()), (503, Some("ServiceUnavailable")), "{body}");
    server.key.set(SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap());
    let (code, _) = call(&server, Some(&client), "POST", COLLECTION, USER, &token_request("disk")).await.unwrap();
    assert_eq!(code, 201);
}

#[test]
fn the_ca_bundle_is_patched_only_on_our_apiservice_and_only_when_stale() {
    let apiservice = |bundle: Option<&str>, service: &str| {
        let mut v = json!({"metadata": {"name": api::API_SERVICE},
                           "spec": {"service": {"namespace": "cdi-rs", "name": service, "port": 443},
                                    "group": "upload.cdi.kubevirt.io", "version": "v1beta1"}});
        if let Some(b) = bundle {
            v["spec"]["caBundle"] = json!(b);
        }
        v
    };
    assert_eq!(
        api::ca_bundle_patch(&apiservice(None, "cdi-api"), b"CA", "cdi-rs", "cdi-api"),
        Ok(Some(json!({"spec": {"caBundle": "Q0E="}})))
    );
    assert_eq!(
        api::ca_bundle_patch(&apiservice(Some("b2xk"), "cdi-api"), b"CA", "cdi-rs", "cdi-api"),
        Ok(Some(json!({"spec": {"caBundle": "Q0E="}})))
    );
    assert_eq!(api::ca_bundle_patch(&apiservice(Some("Q0E="), "cdi-api"), b"CA", "cdi-rs", "cdi-api"), Ok(None));
    assert_eq!(api::ca_bundle_patch(&apiservice(None, "someone"), b"CA", "cdi-rs", "cdi-api"), Err(()));
}

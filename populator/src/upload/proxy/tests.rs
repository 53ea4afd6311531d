//! The proxy over real HTTPS on 127.0.0.1, in front of a fake mover (a tonic server with
//! mutual TLS implementing `Upload`) and an in-memory cluster.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use cdi_proto::v1::mover_server::{Mover, MoverServer};
use cdi_proto::v1::{self as pb, Completed, UploadResponse};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};
use tonic::{Status, Streaming};

use super::*;
use crate::api::names::annotations as ann;
use crate::certs::MOVER_SERVER_NAME;
use crate::upload::token::{Claims, SigningKey};

// ---- certificates ----

struct Pki {
    ca: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let ca_pem = params.self_signed(&key).unwrap().pem();
        Pki { ca: Issuer::new(params, key), ca_pem }
    }

    fn issue(&self, name: &str, usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.extended_key_usages = vec![usage];
        (params.signed_by(&key, &self.ca).unwrap().pem(), key.serialize_pem())
    }
}

// ---- the fake mover ----

/// What one Upload call received.
#[derive(Debug)]
struct Seen {
    start: Option<pb::UploadStart>,
    data: Vec<u8>,
    end: Option<u64>,
}

#[derive(Clone)]
struct FakeMover {
    seen: mpsc::UnboundedSender<Seen>,
    /// Refuse every call with this code, after the start message.
    refuse: Option<Code>,
}

#[tonic::async_trait]
impl Mover for FakeMover {
    type PopulateStream = futures_util::stream::Empty<Result<pb::PopulateEvent, Status>>;
    type ReadVolumeStream = futures_util::stream::Empty<Result<pb::VolumeChunk, Status>>;

    async fn populate(
        &self,
        _: tonic::Request<pb::PopulateRequest>,
    ) -> Result<tonic::Response<Self::PopulateStream>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_task(&self, _: tonic::Request<pb::GetTaskRequest>) -> Result<tonic::Response<pb::Task>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_tasks(
        &self,
        _: tonic::Request<pb::ListTasksRequest>,
    ) -> Result<tonic::Response<pb::ListTasksResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn cancel_task(&self, _: tonic::Request<pb::CancelTaskRequest>) -> Result<tonic::Response<pb::Task>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn read_volume(
        &self,
        _: tonic::Request<pb::ReadVolumeRequest>,
    ) -> Result<tonic::Response<Self::ReadVolumeStream>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn write_volume(
        &self,
        _: tonic::Request<Streaming<pb::WriteVolumeRequest>>,
    ) -> Result<tonic::Response<pb::WriteVolumeResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn capabilities(
        &self,
        _: tonic::Request<pb::CapabilitiesRequest>,
    ) -> Result<tonic::Response<pb::CapabilitiesResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn upload(
        &self,
        request: tonic::Request<Streaming<UploadRequest>>,
    ) -> Result<tonic::Response<UploadResponse>, Status> {
        let mut stream = request.into_inner();
        let mut seen = Seen { start: None, data: Vec::new(), end: None };
        let mut refused = None;
        // Reads to the end of the stream (clean or cut), then reports what it got.
        while let Some(message) = stream.next().await {
            let Ok(message) = message else { break };
            match message.request {
                Some(upload_request::Request::Start(s)) => {
                    seen.start = Some(s);
                    if let Some(code) = self.refuse {
                        refused = Some(Status::new(code, "refused by the fake mover"));
                        break;
                    }
                }
                Some(upload_request::Request::Data(d)) => seen.data.extend_from_slice(&d),
                Some(upload_request::Request::End(e)) => seen.end = Some(e.length),
                None => {}
            }
        }
        let answer = match (refused, seen.end) {
            (Some(status), _) => Err(status),
            (None, Some(n)) if n == seen.data.len() as u64 => Ok(tonic::Response::new(UploadResponse {
                completed: Some(Completed { bytes_written: n, ..Default::default() }),
            })),
            (None, _) => Err(Status::invalid_argument("the upload ended without a matching end")),
        };
        let _ = self.seen.send(seen);
        answer
    }
}

// ---- the in-memory cluster ----

struct FakeCluster {
    pvcs: Mutex<HashMap<String, PersistentVolumeClaim>>,
    pods: HashMap<String, Pod>,
    mover: Channel,
}

impl Cluster for FakeCluster {
    async fn pvc(&self, namespace: &str, name: &str) -> Result<Option<PersistentVolumeClaim>, String> {
        let mut pvcs = self.pvcs.lock().unwrap();
        let key = format!("{namespace}/{name}");
        // `late` turns ready on its third read, as the controller would annotate it while
        // a request waits.
        if let Some(late) = pvcs.get_mut(&key).filter(|_| name == "late") {
            let annotations = late.metadata.annotations.get_or_insert_default();
            let reads: u32 = annotations.get("test/reads").and_then(|r| r.parse().ok()).unwrap_or(0) + 1;
            annotations.insert("test/reads".into(), reads.to_string());
            if reads >= 3 {
                annotations.insert(ann::POD_READY.into(), "true".into());
            }
        }
        Ok(pvcs.get(&key).cloned())
    }
    async fn pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>, String> {
        Ok(self.pods.get(&format!("{namespace}/{name}")).cloned())
    }
    async fn mover(&self, node: &str) -> Result<Channel, String> {
        if node == "node-1" { Ok(self.mover.clone()) } else { Err(format!("no mover on {node}")) }
    }
}

fn pvc(name: &str, uid: &str, annotations: &[(&str, &str)]) -> PersistentVolumeClaim {
    let annotations: std::collections::BTreeMap<String, String> =
        annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "ns", "uid": uid, "annotations": annotations}
    }))
    .unwrap()
}

/// The claims of the tests: `golden` (its own volume on node-1), `dv` (through its prime,
/// whose holder pod is on node-1), `waiting` (not ready), `done` (succeeded), `plain` (no
/// upload target), `elsewhere` (on a node without a mover).
fn claims() -> (Vec<PersistentVolumeClaim>, Vec<Pod>) {
    let up = (ann::reserved::UPLOAD_TARGET, "");
    let ready = (ann::POD_READY, "true");
    let node = (ann::SELECTED_NODE, "node-1");
    let pvcs = vec![
        pvc("golden", "u-golden", &[up, ready, node]),
        pvc("dv", "u-dv", &[up, ready, (ann::POPULATOR_PVC_PRIME, "prime-u-dv")]),
        pvc("prime-u-dv", "u-prime", &[]),
        pvc("waiting", "u-waiting", &[up, (ann::POD_READY, "false"), node]),
        pvc("late", "u-late", &[up, node]),
        pvc("done", "u-done", &[up, ready, node, (ann::POD_PHASE, "Succeeded")]),
        pvc("plain", "u-plain", &[ready, node]),
        pvc("elsewhere", "u-elsewhere", &[up, ready, (ann::SELECTED_NODE, "node-9")]),
    ];
    let holder: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "importer-prime-u-dv", "namespace": "ns"},
        "spec": {"nodeName": "node-1", "containers": []}
    }))
    .unwrap();
    (pvcs, vec![holder])
}

// ---- the harness ----

struct Harness {
    addr: SocketAddr,
    ca_pem: String,
    key: SigningKey,
    seen: mpsc::UnboundedReceiver<Seen>,
}

async fn start(refuse: Option<Code>) -> Harness {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = Pki::new();

    // The fake mover, with mutual TLS as the real one.
    let (mover_cert, mover_key) = pki.issue(MOVER_SERVER_NAME, ExtendedKeyUsagePurpose::ServerAuth);
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mover_addr = tcp.local_addr().unwrap();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&mover_cert, &mover_key))
        .client_ca_root(Certificate::from_pem(&pki.ca_pem));
    let server = Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(MoverServer::new(FakeMover { seen: seen_tx, refuse }))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(tcp));
    tokio::spawn(server);

    // The proxy's client identity, as Movers builds its channels.
    let (client_cert, client_key) = pki.issue("cdi-uploadproxy", ExtendedKeyUsagePurpose::ClientAuth);
    let channel = Endpoint::from_shared(format!("https://{mover_addr}"))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&pki.ca_pem))
                .identity(Identity::from_pem(&client_cert, &client_key))
                .domain_name(MOVER_SERVER_NAME),
        )
        .unwrap()
        .connect_lazy();
    let (pvcs, pods) = claims();
    let cluster = FakeCluster {
        pvcs: Mutex::new(pvcs.into_iter().map(|p| (format!("ns/{}", p.metadata.name.clone().unwrap()), p)).collect()),
        pods: pods.into_iter().map(|p| (format!("ns/{}", p.metadata.name.clone().unwrap()), p)).collect(),
        mover: channel,
    };

    let key = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
    let cfg = ProxyConfig {
        verify_key: key.public_key(),
        ready_timeout: Duration::from_millis(300),
        ready_poll: Duration::from_millis(50),
    };
    let (cert, key_pem) = pki.issue("localhost", ExtendedKeyUsagePurpose::ServerAuth);
    let certs = Arc::new(CertStore::default());
    certs.set(&ServingCert { cert: cert.into_bytes(), key: key_pem.into_bytes() }).unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = TlsListener::new(tcp, tls::server_config(certs).unwrap()).unwrap();
    tokio::spawn(async move { axum::serve(listener, router(Arc::new(Proxy { cluster, cfg }))).await });
    Harness { addr, ca_pem: pki.ca_pem, key, seen }
}

impl Harness {
    fn token(&self, name: &str) -> String {
        self.key.sign(&Claims::upload("ns", name, unix_now())).unwrap()
    }

    async fn connect(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    }

    /// Sends `head` (request line and headers, without the blank line) and `body`; reads the
    /// whole answer (the request asks the server to close).
    async fn send(&self, head: &str, body: &[u8]) -> Answer {
        let mut tls = self.connect().await;
        let head = format!("{head}Host: localhost\r\nConnection: close\r\n\r\n");
        // The proxy may answer before reading the body: a write error is then expected.
        let _ = async {
            tls.write_all(head.as_bytes()).await?;
            tls.write_all(body).await?;
            tls.flush().await
        }
        .await;
        let mut raw = Vec::new();
        let _ = tls.read_to_end(&mut raw).await;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        Answer { status, head: head.to_ascii_lowercase(), body: body.to_string() }
    }

    async fn post(&self, path: &str, token: Option<&str>, content_type: &str, body: &[u8]) -> Answer {
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let head =
            format!("POST {path} HTTP/1.1\r\n{auth}Content-Type: {content_type}\r\nContent-Length: {}\r\n", body.len());
        self.send(&head, body).await
    }

    async fn next_seen(&mut self) -> Seen {
        tokio::time::timeout(Duration::from_secs(20), self.seen.recv())
            .await
            .expect("the fake mover saw an Upload call")
            .expect("the fake mover is running")
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    /// Status line and headers, lower-cased.
    head: String,
    body: String,
}

/// Bytes that are not all alike (xorshift), so a reordering or loss shows.
fn image(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

const OCTETS: &str = "application/octet-stream";

// ---- the tests ----

#[tokio::test]
async fn a_raw_body_arrives_byte_identical_with_its_length_and_an_end() {
    let mut h = start(None).await;
    let data = image(3 * 1024 * 1024 + 17);
    let answer = h.post("/v1beta1/upload", Some(&h.token("golden")), OCTETS, &data).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.head.contains("access-control-allow-origin: *"), "{answer:?}");
    let seen = h.next_seen().await;
    let start = seen.start.expect("a start message");
    assert_eq!((start.task_id.as_str(), start.content_length), ("u-golden", data.len() as u64));
    assert!(seen.data == data, "the mover got {} bytes, not the {} sent", seen.data.len(), data.len());
    assert_eq!(seen.end, Some(data.len() as u64));
}

#[tokio::test]
async fn a_client_preferring_aes_256_is_served_aes_128_as_a_go_server_would() {
    // The harness's client offers ring's order, AES-256-GCM first, as curl (OpenSSL) does.
    let h = start(None).await;
    let tls = h.connect().await;
    let suite = tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite());
    assert_eq!(suite, Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));
}

#[tokio::test]
async fn a_chunked_body_without_a_length_gets_its_end_too() {
    let mut h = start(None).await;
    let data = image(700 * 1024);
    let mut body = Vec::new();
    for piece in data.chunks(100 * 1024) {
        body.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        body.extend_from_slice(piece);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let head = format!(
        "POST /v1beta1/upload HTTP/1.1\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\n",
        h.token("golden")
    );
    let answer = h.send(&head, &body).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let seen = h.next_seen().await;
    assert_eq!(seen.start.unwrap().content_length, 0, "no length announced");
    assert!(seen.data == data);
    assert_eq!(seen.end, Some(data.len() as u64));
}

#[tokio::test]
async fn a_request_waits_for_a_claim_that_becomes_ready() {
    let mut h = start(None).await;
    let answer = h.post("/v1beta1/upload", Some(&h.token("late")), OCTETS, b"late bytes").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let seen = h.next_seen().await;
    assert_eq!((seen.start.unwrap().task_id.as_str(), seen.data.as_slice()), ("u-late", &b"late bytes"[..]));
}

#[tokio::test]
async fn a_populated_claim_uploads_into_its_prime_on_the_holders_node() {
    let mut h = start(None).await;
    let data = image(1000);
    let answer = h.post("/v1alpha1/upload-async", Some(&h.token("dv")), OCTETS, &data).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let seen = h.next_seen().await;
    assert_eq!(seen.start.unwrap().task_id, "u-prime");
    assert!(seen.data == data);
    assert_eq!(seen.end, Some(1000));
}

#[tokio::test]
async fn a_client_that_breaks_off_leaves_the_mover_without_an_end() {
    let mut h = start(None).await;
    let data = image(1024 * 1024);
    let mut tls = h.connect().await;
    let head = format!(
        "POST /v1beta1/upload HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
        h.token("golden"),
        data.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    // More than one data message's worth, so bytes did reach the mover.
    tls.write_all(&data[..300 * 1024]).await.unwrap();
    tls.flush().await.unwrap();
    drop(tls);
    let seen = h.next_seen().await;
    assert_eq!(seen.end, None, "no end after a cut body");
    assert!(seen.data.len() < data.len());
    assert!(seen.data == data[..seen.data.len()], "what arrived is the body's beginning");
}

#[tokio::test]
async fn the_file_part_of_a_form_is_streamed_and_other_parts_skipped() {
    let mut h = start(None).await;
    let data = image(600 * 1024);
    let boundary = "cdi-rs-test-boundary-7e3f";
    let mut form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nnot the image\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"disk.img\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    form.extend_from_slice(&data);
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let answer = h.post("/v1beta1/upload-form", Some(&h.token("golden")), &content_type, &form).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let seen = h.next_seen().await;
    assert_eq!(seen.start.unwrap().content_length, 0, "a form's length is not the image's");
    assert!(seen.data == data, "the mover got {} bytes of the {}-byte file", seen.data.len(), data.len());
    assert_eq!(seen.end, Some(data.len() as u64));

    // A form without a `file` part commits nothing.
    let form = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nx\r\n--{boundary}--\r\n");
    let answer = h.post("/v1beta1/upload-form-async", Some(&h.token("golden")), &content_type, form.as_bytes()).await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(answer.body.contains("no part named \"file\""), "{answer:?}");
    assert_eq!(h.next_seen().await.end, None);
}

#[tokio::test]
async fn missing_malformed_forged_and_expired_tokens_are_refused() {
    let h = start(None).await;
    let answer = h.post("/v1beta1/upload", None, OCTETS, b"x").await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(answer.body.contains("Authorization"), "{answer:?}");
    let head = "POST /v1beta1/upload HTTP/1.1\r\nAuthorization: Basic dXNlcjpwdw==\r\nContent-Length: 1\r\n";
    assert_eq!(h.send(head, b"x").await.status, 400);

    let other = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
    let forged = other.sign(&Claims::upload("ns", "golden", unix_now())).unwrap();
    let answer = h.post("/v1beta1/upload", Some(&forged), OCTETS, b"x").await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert!(answer.body.contains("signature"), "{answer:?}");

    let expired = h.key.sign(&Claims::upload("ns", "golden", unix_now() - 3600)).unwrap();
    let answer = h.post("/v1beta1/upload", Some(&expired), OCTETS, b"x").await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert!(answer.body.contains("expired"), "{answer:?}");

    assert_eq!(h.post("/v1beta1/upload", Some("not.a.jwt"), OCTETS, b"x").await.status, 401);
}

#[tokio::test]
async fn claims_that_take_no_upload_are_refused_with_cdis_statuses() {
    let h = start(None).await;
    let answer = h.post("/v1beta1/upload", Some(&h.token("plain")), OCTETS, b"x").await;
    assert_eq!(answer.status, 403, "a token for a claim that is not an upload target: {answer:?}");
    let answer = h.post("/v1beta1/upload", Some(&h.token("gone")), OCTETS, b"x").await;
    assert_eq!(answer.status, 404, "{answer:?}");
    let answer = h.post("/v1beta1/upload", Some(&h.token("done")), OCTETS, b"x").await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(answer.body.contains("already succeeded"), "{answer:?}");
    assert!(!answer.head.contains("retry-after"), "no point retrying: {answer:?}");
}

#[tokio::test]
async fn a_claim_not_ready_is_503_with_retry_after_after_waiting() {
    let h = start(None).await;
    let started = Instant::now();
    let answer = h.post("/v1beta1/upload", Some(&h.token("waiting")), OCTETS, b"x").await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(answer.head.contains("retry-after: 5"), "{answer:?}");
    assert!(answer.body.contains("not ready"), "{answer:?}");
    assert!(started.elapsed() >= Duration::from_millis(250), "it waited for readiness first");

    let answer = h.post("/v1beta1/upload", Some(&h.token("elsewhere")), OCTETS, b"x").await;
    assert_eq!(answer.status, 503, "no mover on the node: {answer:?}");
    assert!(answer.head.contains("retry-after: 5") && answer.body.contains("node-9"), "{answer:?}");
}

#[tokio::test]
async fn mover_refusals_map_to_cdis_statuses() {
    for (code, status, text) in [
        (Code::Aborted, 503, "another upload"),
        (Code::FailedPrecondition, 409, "refused by the fake mover"),
        (Code::ResourceExhausted, 400, "effective image size is larger than the reported available storage"),
        (Code::InvalidArgument, 400, "refused by the fake mover"),
        (Code::Unavailable, 503, "retry"),
        (Code::Internal, 500, "refused by the fake mover"),
    ] {
        let h = start(Some(code)).await;
        let answer = h.post("/v1beta1/upload", Some(&h.token("golden")), OCTETS, &image(100)).await;
        assert_eq!(answer.status, status, "{code:?}: {answer:?}");
        assert!(answer.body.contains(text) || answer.head.contains(text), "{code:?}: {answer:?}");
    }
}

#[tokio::test]
async fn head_probes_preflights_and_health_answer() {
    let h = start(None).await;
    for path in ["/v1beta1/upload-async", "/v1alpha1/upload", "/v1beta1/upload-form-async"] {
        let answer = h.send(&format!("HEAD {path} HTTP/1.1\r\n"), b"").await;
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
    }
    let preflight = "OPTIONS /v1beta1/upload HTTP/1.1\r\nOrigin: https://ui.example\r\n\
                     Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization\r\n";
    let answer = h.send(preflight, b"").await;
    assert_eq!(answer.status, 204, "{answer:?}");
    assert!(answer.head.contains("access-control-allow-origin: *"), "{answer:?}");
    assert!(answer.head.contains("access-control-allow-headers: authorization"), "{answer:?}");
    let answer = h.send("GET /healthz HTTP/1.1\r\n", b"").await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "ok\n"));
}

// ---- our client against the proxy ----

/// Hands out the tokens given, in order.
struct Tokens(Vec<String>);

impl crate::upload::client::TokenSource for Tokens {
    async fn token(&mut self) -> anyhow::Result<String> {
        if self.0.is_empty() { anyhow::bail!("no more tokens") } else { Ok(self.0.remove(0)) }
    }
}

#[tokio::test]
async fn the_upload_client_streams_a_file_and_asks_again_after_a_401() {
    use crate::upload::client;
    let mut h = start(None).await;
    let data = image(2 * 1024 * 1024 + 5);
    let path = std::env::temp_dir().join(format!("cdi-upload-test-{}.img", std::process::id()));
    std::fs::write(&path, &data).unwrap();
    let http = client::http_client(Some(h.ca_pem.as_bytes()), false).unwrap();
    let expired = h.key.sign(&Claims::upload("ns", "golden", unix_now() - 3600)).unwrap();
    let mut tokens = Tokens(vec![expired, h.token("golden")]);
    let base = client::proxy_base(&format!("localhost:{}", h.addr.port()));
    let bar = indicatif::ProgressBar::hidden();
    let sent = client::upload_file(&http, &base, &path, &mut tokens, &bar).await;
    let _ = std::fs::remove_file(&path);
    assert_eq!(sent.unwrap(), data.len() as u64);
    assert!(tokens.0.is_empty(), "the 401 got a second token");
    // The first attempt (expired token) never reached the mover.
    let seen = h.next_seen().await;
    assert_eq!(seen.start.unwrap().content_length, data.len() as u64);
    assert!(seen.data == data);
    assert_eq!(seen.end, Some(data.len() as u64));
    assert_eq!(bar.position(), data.len() as u64);

    // A refusal the client cannot cure is reported with the proxy's reason.
    let mut tokens = Tokens(vec![h.token("plain")]);
    std::fs::write(&path, b"x").unwrap();
    let err = client::upload_file(&http, &base, &path, &mut tokens, &bar).await.unwrap_err();
    let _ = std::fs::remove_file(&path);
    assert!(err.to_string().contains("403") && err.to_string().contains("not an upload target"), "{err}");
}

// ---- body chunks into data messages ----

#[tokio::test]
async fn body_chunks_become_messages_large_ones_as_they_are_small_ones_collected() {
    let (tx, mut rx) = mpsc::channel(64);
    let sizes = [100, 70_000, 10, 20, CHUNK - 10, 40_000, 3 * MAX_MESSAGE + 5, 1, 300_000, 7];
    let mut body = Vec::new();
    let mut out = Sender::new(tx);
    for (i, n) in sizes.into_iter().enumerate() {
        let chunk: Vec<u8> = (0..n).map(|j| (i * 31 + j) as u8).collect();
        body.extend_from_slice(&chunk);
        out.push(Bytes::from(chunk)).await.unwrap();
    }
    let sent = tokio::spawn(out.finish());
    // Read back as the mover reads them.
    let (mut decoder, mut pieces) = (upload_wire::Decoder::default(), Vec::new());
    while let Some(frame) = rx.recv().await {
        decoder.feed(frame, &mut pieces).unwrap();
    }
    decoder.finish().unwrap();
    let (mut seen, mut messages) = (Vec::new(), Vec::new());
    for piece in pieces {
        match piece.into_request().request {
            Some(upload_request::Request::Data(d)) => {
                seen.extend_from_slice(&d);
                messages.push(d.len());
            }
            Some(upload_request::Request::End(end)) => assert_eq!(end.length, body.len() as u64),
            other => panic!("unexpected message {other:?}"),
        }
    }
    assert_eq!(sent.await.unwrap().unwrap(), body.len() as u64);
    assert!(seen == body, "the messages do not carry the body in order");
    assert!(messages.iter().all(|&n| n > 0 && n <= MAX_MESSAGE), "message sizes {messages:?}");
    // 100, 70 000, 10 and 20 collected (they fit in CHUNK); CHUNK - 10 does not fit: the
    // collected ones go, then it as is; 40 000 collected; the large one in pieces; 1
    // collected; 300 000 as is; 7 at the end.
    assert_eq!(messages, [70_130, CHUNK - 10, 40_000, MAX_MESSAGE, MAX_MESSAGE, MAX_MESSAGE, 5, 1, 300_000, 7]);
}

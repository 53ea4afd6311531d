//! `cdi-mover serve` as a user meets it: real processes over TCP with mutual TLS, driven by
//! the CLI client, by a Rust client, and by a client generated for another language.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cdi_proto::v1 as pb;
use cdi_proto::v1::mover_client::MoverClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::peers_proxy::Tinyproxy;
use crate::support::*;

/// A CA that signs the mover's certificate and its clients'.
pub(crate) struct Pki {
    dir: PathBuf,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub(crate) ca_pem: String,
}

impl Pki {
    pub(crate) fn new(dir: &Path, name: &str) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} CA"));
        let cert = params.self_signed(&key).unwrap();
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        Pki { ca: rcgen::Issuer::new(params, key), ca_pem: cert.pem(), dir }
    }

    pub(crate) fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for the mover (`server`) or a client; returns (cert, key) paths.
    pub(crate) fn issue(&self, name: &str, server: bool) -> (PathBuf, PathBuf) {
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        self.issue_for(name, &[if server { ServerAuth } else { ClientAuth }])
    }

    /// A certificate for `name` with these extended key usages; returns (cert, key) paths.
    pub(crate) fn issue_for(&self, name: &str, usages: &[rcgen::ExtendedKeyUsagePurpose]) -> (PathBuf, PathBuf) {
        use rcgen::{CertificateParams, KeyPair, SanType};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string(), "localhost".to_string()]).unwrap();
        params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.extended_key_usages = usages.to_vec();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (c, k) = (self.dir.join(format!("{name}.pem")), self.dir.join(format!("{name}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

/// A running `cdi-mover serve`, stopped (SIGTERM) on drop.
pub(crate) struct Serve {
    child: Child,
    pub(crate) addr: String,
    metrics: String,
    stderr: PathBuf,
}

impl Serve {
    pub(crate) fn start(dir: &Path, extra: &[&str]) -> Serve {
        let stderr = dir.join(format!("serve-{}.log", std::process::id() ^ rand_u32()));
        let mut child = Command::new(mover_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let bound: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| {
            panic!(
                "serve did not report its address: {:?} {}",
                line,
                std::fs::read_to_string(&stderr).unwrap_or_default()
            )
        });
        Serve {
            child,
            addr: bound["listening"].as_str().unwrap().to_string(),
            metrics: bound["metrics"].as_str().unwrap().to_string(),
            stderr,
        }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits (10 s at most) until the log holds `text`: the server logs what it saw on its own
    /// time, which can be after the client has already seen the outcome.
    pub(crate) async fn await_log(&self, text: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().contains(text) {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// SIGKILL, as a node or a crashing mover goes away: no drain, no goodbye.
    pub(crate) fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then the exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "serve did not stop within 30s of SIGTERM: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.stop();
        }
    }
}

fn rand_u32() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
}

pub(crate) fn tls_args<'a>(cert: &'a Path, key: &'a Path, ca: &'a Path) -> Vec<&'a str> {
    vec!["--tls-cert", s(cert), "--tls-key", s(key), "--client-ca", s(ca)]
}

pub(crate) async fn client_tls(
    addr: &str,
    ca_pem: &str,
    identity: Option<(&Path, &Path)>,
) -> Result<MoverClient<Channel>, String> {
    cdi_mover::tls::install_crypto_provider();
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("cdi-mover");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(std::fs::read(cert).unwrap(), std::fs::read(key).unwrap()));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let mut client = MoverClient::new(channel);
    // The handshake's verdict on the client certificate shows on the first call.
    client.capabilities(pb::CapabilitiesRequest {}).await.map_err(|e| format!("{e:?}"))?;
    Ok(client)
}

pub(crate) async fn client_plain(addr: &str) -> MoverClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    MoverClient::new(channel)
}

/// Starts (or re-attaches to) a populate and follows its events until bytes have moved;
/// returns the stream, positioned after that progress event.
pub(crate) async fn populate_until_bytes_move(
    client: &mut MoverClient<Channel>,
    req: pb::PopulateRequest,
) -> tonic::Streaming<pb::PopulateEvent> {
    let mut events = within("populate", client.populate(req)).await.unwrap().into_inner();
    loop {
        let ev = within("progress", events.message()).await.unwrap().expect("stream ended early");
        if let Some(pb::populate_event::Event::Progress(p)) = ev.event
            && p.bytes_done > 0
        {
            return events;
        }
    }
}

fn http_source(url: &str) -> Option<pb::Source> {
    Some(pb::Source { kind: Some(pb::source::Kind::Http(pb::HttpSource { url: url.into(), ..Default::default() })) })
}

pub(crate) fn host_target(p: &Path) -> Option<pb::Target> {
    Some(pb::Target { kind: Some(pb::target::Kind::HostPath(pb::HostPath { path: s(p).into() })) })
}

/// A served qcow2 of a known raw disk; `slow` throttles nginx so tasks last a while.
struct Image {
    dir: tempfile::TempDir,
    raw: PathBuf,
    nginx: Nginx,
}

fn image(size: u64, nginx_conf: &str) -> Image {
    let dir = tempdir();
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    let raw = dir.path().join("disk.raw");
    make_raw(&raw, size, 31);
    qemu_img(&["convert", "-O", "qcow2", s(&raw), s(&www.join("disk.qcow2"))]);
    let nginx = Nginx::start(dir.path(), &www, nginx_conf, "");
    Image { dir, raw, nginx }
}

pub(crate) async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 60s (hung?)"))
}

/// Follows a Populate stream to its end: (accepted.reattached, progress events, outcome).
pub(crate) async fn follow(
    stream: &mut tonic::Streaming<pb::PopulateEvent>,
) -> (bool, usize, Result<pb::Completed, pb::Failed>) {
    let (mut reattached, mut progress) = (false, 0);
    while let Some(ev) = within("the event stream", stream.message()).await.unwrap() {
        match ev.event.unwrap() {
            pb::populate_event::Event::Accepted(a) => reattached = a.reattached,
            pb::populate_event::Event::Progress(_) => progress += 1,
            pb::populate_event::Event::Completed(c) => return (reattached, progress, Ok(c)),
            pb::populate_event::Event::Failed(f) => return (reattached, progress, Err(f)),
        }
    }
    panic!("the stream ended without an outcome");
}

#[test]
fn populate_over_mutual_tls_with_the_cli_client_into_a_file_and_a_loop_device() {
    let img = image(24 * MIB, "");
    let pki = Pki::new(img.dir.path(), "main");
    let (scert, skey) = pki.issue("cdi-mover", true);
    let (ccert, ckey) = pki.issue("populator", false);
    let _serve = Serve::start(img.dir.path(), &tls_args(&scert, &skey, &pki.ca_path()));
    let url = img.nginx.url("http", "disk.qcow2");
    let client = |target: &str, id: &str| {
        let mut c = Command::new(mover_bin());
        c.args([
            "client",
            "--address",
            &_serve.addr,
            "--tls-cert",
            s(&ccert),
            "--tls-key",
            s(&ckey),
            "--ca",
            s(&pki.ca_path()),
        ])
        .args(["populate", "--task-id", id, &url, target, "--progress", "json"]);
        with_timeout(c, Duration::from_secs(120))
    };
    let out = img.dir.path().join("out.raw");
    let res = client(s(&out), "to-file");
    assert_ok(&res);
    assert_same(&img.raw, "raw", &out);
    let last = String::from_utf8_lossy(&res.stdout).lines().last().unwrap().to_string();
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(v["phase"], "complete");
    assert_eq!(v["virtual_size"], 24 * MIB);

    let dev = LoopDev::new(img.dir.path(), 24 * MIB, 8);
    assert_ok(&client(s(&dev.path), "to-loop"));
    assert_same(&img.raw, "raw", &dev.path);
}

/// CDIConfig's importProxy as the populator sends it: every request of the import goes
/// through the proxy (nginx as a forward proxy here), except to hosts it lists as direct.
#[test]
fn an_import_proxy_in_the_request_carries_the_download_unless_the_host_is_direct() {
    let img = image(8 * MIB, "");
    let www = img.dir.path().join("proxy-www");
    std::fs::create_dir(&www).unwrap();
    // A forward proxy: requests arrive in absolute form and are passed to the host they name.
    let proxy = Nginx::start(img.dir.path(), &www, "location / { proxy_pass http://$http_host$request_uri; }", "");
    let serve = Serve::start(img.dir.path(), &["--insecure-plaintext"]);
    let url = img.nginx.url("http", "disk.qcow2");
    let populate = |id: &str, out: &Path, extra: &[&str]| {
        let mut c = Command::new(mover_bin());
        c.args(["client", "--address", &serve.addr, "--insecure-plaintext", "populate", "--task-id", id, &url])
            .args([s(out), "--progress", "none"])
            .args(["--import-http-proxy", &format!("http://127.0.0.1:{}", proxy.port)])
            .args(extra);
        with_timeout(c, Duration::from_secs(120))
    };
    let through = |log: &str| log.lines().filter(|l| l.starts_with(&format!("GET {url}"))).count();

    let out = img.dir.path().join("proxied.raw");
    assert_ok(&populate("proxied", &out, &[]));
    assert_same(&img.raw, "raw", &out);
    let proxied = through(&proxy.detail_log());
    assert!(proxied >= 1, "no request went through the proxy: {}", proxy.detail_log());

    let out = img.dir.path().join("direct.raw");
    assert_ok(&populate("direct", &out, &["--import-no-proxy", "example.com,127.0.0.1"]));
    assert_same(&img.raw, "raw", &out);
    assert_eq!(through(&proxy.detail_log()), proxied, "a host listed as direct went through the proxy");

    // A proxy URL that is not one fails the call, without echoing what may be a password.
    let out = img.dir.path().join("refused.raw");
    let res = populate("refused", &out, &["--import-https-proxy", "proxyuser:pw-9x@"]);
    let line = assert_refused(&res, &["import_proxy.https_proxy"]);
    assert!(!line.contains("pw-9x") && !out.exists(), "{line}");
}

/// An https source through the import proxy's CONNECT tunnel (tinyproxy), its server's CA
/// trusted as the import proxy's own (CDIConfig's trustedCAProxy).
#[tokio::test(flavor = "multi_thread")]
async fn an_https_import_tunnels_through_the_import_proxy_trusting_its_ca() {
    let img = image(8 * MIB, "");
    let ca = make_ca(img.dir.path());
    let tls = format!("ssl_certificate {}; ssl_certificate_key {};", s(&ca.cert_pem), s(&ca.key_pem));
    let origin = Nginx::start(img.dir.path(), &img.dir.path().join("www"), &tls, "ssl");
    let proxy = Tinyproxy::start(img.dir.path(), origin.port);
    let serve = Serve::start(img.dir.path(), &["--insecure-plaintext"]);
    let mut client = client_plain(&serve.addr).await;
    let request = |id: &str, ca_pem: Vec<u8>| pb::PopulateRequest {
        task_id: id.into(),
        source: http_source(&origin.url("https", "disk.qcow2")),
        target: host_target(&img.dir.path().join(format!("{id}.raw"))),
        import_proxy: Some(pb::ImportProxy {
            https_proxy: format!("http://127.0.0.1:{}", proxy.port),
            ca_pem,
            ..Default::default()
        }),
        ..Default::default()
    };
    // Without the CA, the origin's certificate is refused through the tunnel as anywhere.
    let (_, _, refused) =
        follow(&mut client.populate(request("untrusted", Vec::new())).await.unwrap().into_inner()).await;
    let failed = refused.expect_err("an unknown issuer was trusted");
    assert!(failed.message.to_lowercase().contains("certificate"), "{}", failed.message);

    let ca_pem = std::fs::read(&ca.ca_pem).unwrap();
    let (_, _, outcome) = follow(&mut client.populate(request("tunnelled", ca_pem)).await.unwrap().into_inner()).await;
    outcome.expect("imported through the tunnel");
    assert_same(&img.raw, "raw", &img.dir.path().join("tunnelled.raw"));
    let log = proxy.log();
    assert!(log.contains(&format!("CONNECT 127.0.0.1:{}", origin.port)), "tinyproxy logged: {log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_without_a_certificate_from_the_ca_are_refused() {
    let dir = tempdir();
    let pki = Pki::new(dir.path(), "main");
    let other = Pki::new(dir.path(), "other");
    let (scert, skey) = pki.issue("cdi-mover", true);
    let (good_c, good_k) = pki.issue("populator", false);
    let (bad_c, bad_k) = other.issue("intruder", false);
    let serve = Serve::start(dir.path(), &tls_args(&scert, &skey, &pki.ca_path()));

    assert!(client_tls(&serve.addr, &pki.ca_pem, Some((&good_c, &good_k))).await.is_ok());
    let wrong_ca = client_tls(&serve.addr, &pki.ca_pem, Some((&bad_c, &bad_k))).await;
    assert!(wrong_ca.is_err(), "a certificate from another CA was accepted");
    let anonymous = client_tls(&serve.addr, &pki.ca_pem, None).await;
    assert!(anonymous.is_err(), "a client without a certificate was accepted");
    // Plaintext gets nowhere either.
    let plain = Endpoint::from_shared(format!("http://{}", serve.addr)).unwrap().connect().await;
    if let Ok(channel) = plain {
        assert!(MoverClient::new(channel).capabilities(pb::CapabilitiesRequest {}).await.is_err());
    }
    assert!(serve.await_log("TLS handshake refused").await, "refusals are logged: {}", serve.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mover_chooses_aes_128_gcm_over_a_clients_aes_256_preference() {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let dir = tempdir();
    let pki = Pki::new(dir.path(), "main");
    let (scert, skey) = pki.issue("cdi-mover", true);
    let (ccert, ckey) = pki.issue("populator", false);
    let serve = Serve::start(dir.path(), &tls_args(&scert, &skey, &pki.ca_path()));

    // ring's own order, AES-256-GCM first, as a client other than ours may offer.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap()).unwrap();
    let chain = vec![CertificateDer::from_pem_file(&ccert).unwrap()];
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(&ckey).unwrap())
            .unwrap();
    let tcp = tokio::net::TcpStream::connect(&serve.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("cdi-mover").unwrap(), tcp)
        .await
        .unwrap();
    let suite = tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite());
    assert_eq!(suite, Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));
}

#[tokio::test(flavor = "multi_thread")]
async fn rotated_certificates_are_picked_up_without_a_restart() {
    let dir = tempdir();
    let old = Pki::new(dir.path(), "old");
    let new = Pki::new(dir.path(), "new");
    let live = dir.path().join("live");
    std::fs::create_dir(&live).unwrap();
    let (lc, lk, lca) = (live.join("tls.crt"), live.join("tls.key"), live.join("ca.crt"));
    let install = |pki: &Pki| {
        let (c, k) = pki.issue("cdi-mover", true);
        // As a kubelet updates a projected Secret: each file replaced atomically.
        for (from, to) in [(c, &lc), (k, &lk), (pki.ca_path(), &lca)] {
            let tmp = to.with_extension("tmp");
            std::fs::copy(&from, &tmp).unwrap();
            std::fs::rename(&tmp, to).unwrap();
        }
    };
    install(&old);
    let serve = Serve::start(dir.path(), &tls_args(&lc, &lk, &lca));
    let (oc, ok) = old.issue("populator", false);
    let (nc, nk) = new.issue("populator", false);
    assert!(client_tls(&serve.addr, &old.ca_pem, Some((&oc, &ok))).await.is_ok());
    assert!(client_tls(&serve.addr, &new.ca_pem, Some((&nc, &nk))).await.is_err());

    install(&new);
    assert!(client_tls(&serve.addr, &new.ca_pem, Some((&nc, &nk))).await.is_ok(), "new certificates not picked up");
    assert!(client_tls(&serve.addr, &old.ca_pem, Some((&oc, &ok))).await.is_err(), "the old CA still trusted");
    assert!(serve.log().contains("reloaded"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_comes_back_re_attaches_to_the_same_download() {
    // No ranges, throttled: one GET that lasts a few seconds.
    let img = image(24 * MIB, "max_ranges 0; limit_rate 6m;");
    let serve = Serve::start(img.dir.path(), &["--insecure-plaintext"]);
    let mut client = client_plain(&serve.addr).await;
    let out = img.dir.path().join("out.raw");
    let req = pb::PopulateRequest {
        task_id: "reattach-1".into(),
        source: http_source(&img.nginx.url("http", "disk.qcow2")),
        target: host_target(&out),
        ..Default::default()
    };
    // Follow until bytes move, then walk away.
    drop(populate_until_bytes_move(&mut client, req.clone()).await);
    let task = client.get_task(pb::GetTaskRequest { task_id: "reattach-1".into() }).await.unwrap().into_inner();
    assert_eq!(task.state, pb::TaskState::Running as i32, "the task stops when its client leaves");

    let mut again = within("populate again", client.populate(req.clone())).await.unwrap().into_inner();
    let (reattached, _, outcome) = follow(&mut again).await;
    assert!(reattached);
    let done = outcome.expect("completed");
    assert_eq!(done.virtual_size, 24 * MIB);
    assert_same(&img.raw, "raw", &out);
    // A third call after the end replays the result.
    let (reattached, _, outcome) = follow(&mut client.populate(req).await.unwrap().into_inner()).await;
    assert!(reattached && outcome.is_ok());
    let gets = img.nginx.detail_log().lines().filter(|l| l.starts_with("GET /disk.qcow2")).count();
    assert_eq!(gets, 1, "one download: {}", img.nginx.detail_log());
    let list = client.list_tasks(pb::ListTasksRequest {}).await.unwrap().into_inner().tasks;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].state, pb::TaskState::Succeeded as i32);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_a_task_within_a_second_and_leaves_no_image() {
    let img = image(32 * MIB, "max_ranges 0; limit_rate 2m;");
    let serve = Serve::start(img.dir.path(), &["--insecure-plaintext"]);
    let mut client = client_plain(&serve.addr).await;
    let out = img.dir.path().join("out.raw");
    let req = pb::PopulateRequest {
        task_id: "cancel-me".into(),
        source: http_source(&img.nginx.url("http", "disk.qcow2")),
        target: host_target(&out),
        ..Default::default()
    };
    let mut events = populate_until_bytes_move(&mut client, req).await;
    let asked = Instant::now();
    let task = client.cancel_task(pb::CancelTaskRequest { task_id: "cancel-me".into() }).await.unwrap().into_inner();
    assert!(asked.elapsed() < Duration::from_secs(2), "cancel took {:?}", asked.elapsed());
    assert_eq!(task.state, pb::TaskState::Cancelled as i32);
    let (_, _, outcome) = follow(&mut events).await;
    let failed = outcome.unwrap_err();
    // Typed for new clients, spelled out for old ones.
    assert_eq!((failed.reason_code(), failed.reason.as_str()), (pb::FailureReason::Cancelled, "Cancelled"));
    assert!(!failed.retryable, "the caller's own cancel is the end of the task");
    assert!(!out.exists() && !img.dir.path().join("out.raw.partial").exists(), "a cancelled task left an image");
}

/// The first message of a WriteVolume stream, naming its target.
fn write_volume_target(target: Option<pb::Target>) -> pb::WriteVolumeRequest {
    pb::WriteVolumeRequest {
        request: Some(pb::write_volume_request::Request::Target(pb::WriteVolumeTarget {
            target,
            ..Default::default()
        })),
    }
}

/// The first event of a Populate stream, which must be `accepted`.
async fn accepted(events: &mut tonic::Streaming<pb::PopulateEvent>) -> pb::Accepted {
    match within("accepted", events.message()).await.unwrap().and_then(|e| e.event) {
        Some(pb::populate_event::Event::Accepted(a)) => a,
        other => panic!("first event {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_target_takes_one_writer_however_it_is_named() {
    let img = image(32 * MIB, "max_ranges 0; limit_rate 2m;");
    let root = img.dir.path().join("kubelet");
    let vol = root.join("pods/uid-1/volumes/kubernetes.io~csi/pv-1/mount");
    std::fs::create_dir_all(&vol).unwrap();
    // The same volume as a host path, through a symlink outside the kubelet root.
    let link = img.dir.path().join("same-volume");
    std::os::unix::fs::symlink(&vol, &link).unwrap();
    let serve = Serve::start(img.dir.path(), &["--insecure-plaintext", "--kubelet-root", s(&root)]);
    let mut client = client_plain(&serve.addr).await;
    let pod_volume = Some(pb::Target {
        kind: Some(pb::target::Kind::PodVolume(pb::PodVolume {
            pod_uid: "uid-1".into(),
            pv_name: "pv-1".into(),
            mode: pb::VolumeMode::Filesystem as i32,
            ..Default::default()
        })),
    });
    let first = pb::PopulateRequest {
        task_id: "first".into(),
        source: http_source(&img.nginx.url("http", "disk.qcow2")),
        target: pod_volume,
        ..Default::default()
    };
    let mut events = populate_until_bytes_move(&mut client, first.clone()).await;

    let busy = |what: &str, status: tonic::Status| {
        assert_eq!(status.code(), tonic::Code::Aborted, "{what}: {status:?}");
        assert!(status.message().contains("in use by task first"), "{what}: {}", status.message());
    };
    let second = pb::PopulateRequest { task_id: "second".into(), target: host_target(&link), ..first.clone() };
    busy("another task", client.populate(second.clone()).await.expect_err("a second writer was accepted"));
    let inside =
        pb::PopulateRequest { task_id: "inside".into(), target: host_target(&link.join("disk.img")), ..first.clone() };
    busy("a file inside the volume", client.populate(inside).await.expect_err("a writer inside was accepted"));
    let write = client.write_volume(tokio_stream::iter(vec![write_volume_target(host_target(&link))])).await;
    busy("WriteVolume", write.expect_err("WriteVolume was accepted"));
    let read = pb::ReadVolumeRequest { target: host_target(&link), format: pb::VolumeFormat::Tar as i32 };
    busy("ReadVolume", client.read_volume(read.clone()).await.expect_err("ReadVolume was accepted"));
    // Calling again with the task's own id re-attaches: that is not a second writer.
    let mut again = within("re-attach", client.populate(first)).await.unwrap().into_inner();
    assert!(accepted(&mut again).await.reattached);

    // Once the task is over, its cleanup done, the target is free.
    client.cancel_task(pb::CancelTaskRequest { task_id: "first".into() }).await.unwrap();
    let (_, _, outcome) = follow(&mut events).await;
    assert_eq!(outcome.unwrap_err().reason, "Cancelled");
    // Read to its end: a stream merely dropped holds the target until the server notices.
    let mut stream = within("ReadVolume once free", client.read_volume(read)).await.expect("the target is still held");
    while within("ReadVolume to its end", stream.get_mut().message()).await.unwrap().is_some() {}
    let mut later = within("populate once free", client.populate(second)).await.expect("the target is still held");
    assert!(!accepted(later.get_mut()).await.reattached);
    client.cancel_task(pb::CancelTaskRequest { task_id: "second".into() }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_block_device_is_one_target_through_any_of_its_device_nodes() {
    use std::os::unix::fs::MetadataExt;
    let img = image(32 * MIB, "max_ranges 0; limit_rate 2m;");
    let dev = LoopDev::new(img.dir.path(), 32 * MIB, 9);
    // The kubelet publishes a block volume to a pod as a device node of its own.
    let root = img.dir.path().join("kubelet");
    let nodes = root.join("pods/uid-b/volumeDevices/kubernetes.io~csi");
    std::fs::create_dir_all(&nodes).unwrap();
    let rdev = std::fs::metadata(&dev.path).unwrap().rdev();
    use nix::sys::stat::{Mode, SFlag, mknod};
    mknod(&nodes.join("pv-b"), SFlag::S_IFBLK, Mode::from_bits_truncate(0o660), rdev).unwrap();
    let serve = Serve::start(img.dir.path(), &["--insecure-plaintext", "--kubelet-root", s(&root)]);
    let mut client = client_plain(&serve.addr).await;
    let req = pb::PopulateRequest {
        task_id: "on-device".into(),
        source: http_source(&img.nginx.url("http", "disk.qcow2")),
        target: host_target(&dev.path),
        ..Default::default()
    };
    let mut events = populate_until_bytes_move(&mut client, req).await;
    let pod_volume = Some(pb::Target {
        kind: Some(pb::target::Kind::PodVolume(pb::PodVolume {
            pod_uid: "uid-b".into(),
            pv_name: "pv-b".into(),
            mode: pb::VolumeMode::Block as i32,
            ..Default::default()
        })),
    });
    let read = pb::ReadVolumeRequest { target: pod_volume, format: pb::VolumeFormat::Raw as i32 };
    let status = client.read_volume(read).await.expect_err("a volume being written was read");
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    assert!(status.message().contains("in use by task on-device"), "{}", status.message());
    client.cancel_task(pb::CancelTaskRequest { task_id: "on-device".into() }).await.unwrap();
    assert_eq!(follow(&mut events).await.2.unwrap_err().reason, "Cancelled");
}

#[tokio::test(flavor = "multi_thread")]
async fn max_concurrent_queues_the_rest() {
    let img = image(16 * MIB, "max_ranges 0; limit_rate 2m;");
    let serve = Serve::start(img.dir.path(), &["--insecure-plaintext", "--max-concurrent", "1"]);
    let mut client = client_plain(&serve.addr).await;
    let start = |id: &str| pb::PopulateRequest {
        task_id: id.into(),
        source: http_source(&img.nginx.url("http", "disk.qcow2")),
        target: host_target(&img.dir.path().join(format!("{id}.raw"))),
        ..Default::default()
    };
    let mut a = client.populate(start("a")).await.unwrap().into_inner();
    let mut b = client.populate(start("b")).await.unwrap().into_inner();
    let accepted = |ev: pb::PopulateEvent| match ev.event {
        Some(pb::populate_event::Event::Accepted(acc)) => acc.state,
        other => panic!("first event {other:?}"),
    };
    let sa = accepted(within("a", a.message()).await.unwrap().unwrap());
    let sb = accepted(within("b", b.message()).await.unwrap().unwrap());
    let states = [sa, sb];
    let get = |id: &'static str| {
        let mut c = client.clone();
        async move { c.get_task(pb::GetTaskRequest { task_id: id.into() }).await.unwrap().into_inner().state }
    };
    let (ga, gb) = (get("a").await, get("b").await);
    assert!(
        [ga, gb].contains(&(pb::TaskState::Queued as i32)),
        "with one slot, one of two tasks waits (accepted as {states:?}, now {ga} {gb})"
    );
    assert!(!(ga == pb::TaskState::Running as i32 && gb == pb::TaskState::Running as i32));
    let (_, _, ra) = follow(&mut a).await;
    let (_, _, rb) = follow(&mut b).await;
    assert!(ra.is_ok() && rb.is_ok(), "both complete in turn");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_invalid_arguments_that_name_the_field() {
    let dir = tempdir();
    let serve = Serve::start(dir.path(), &["--insecure-plaintext", "--kubelet-root", s(dir.path())]);
    let mut client = client_plain(&serve.addr).await;
    let good = pb::PopulateRequest {
        task_id: "t".into(),
        source: http_source("http://127.0.0.1:9/x.qcow2"),
        target: host_target(&dir.path().join("x.raw")),
        ..Default::default()
    };
    let cases = vec![
        (pb::PopulateRequest { task_id: String::new(), ..good.clone() }, "task_id"),
        (pb::PopulateRequest { source: None, ..good.clone() }, "source"),
        (pb::PopulateRequest { target: None, ..good.clone() }, "target"),
        (pb::PopulateRequest { source: http_source("ftp://h/x"), ..good.clone() }, "source.http.url"),
        (pb::PopulateRequest { checksum: "sha256:xyz".into(), ..good.clone() }, "checksum"),
        (
            pb::PopulateRequest {
                target: Some(pb::Target {
                    kind: Some(pb::target::Kind::PodVolume(pb::PodVolume {
                        pod_uid: "..".into(),
                        pv_name: "pv".into(),
                        ..Default::default()
                    })),
                }),
                ..good.clone()
            },
            "target.pod_volume",
        ),
        (
            pb::PopulateRequest {
                target: Some(pb::Target {
                    kind: Some(pb::target::Kind::PodVolume(pb::PodVolume {
                        pod_uid: "uid".into(),
                        pv_name: "../../../etc".into(),
                        ..Default::default()
                    })),
                }),
                ..good.clone()
            },
            "pv_name",
        ),
    ];
    for (req, field) in cases {
        let Err(status) = client.populate(req).await else { panic!("a bad request ({field}) was accepted") };
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(field), "{field}: {}", status.message());
    }
    // The same id for another import is a conflict, not a silent re-attach.
    let _ = client.populate(good.clone()).await.unwrap();
    let other = pb::PopulateRequest { target: host_target(&dir.path().join("y.raw")), ..good };
    assert_eq!(client.populate(other).await.err().unwrap().code(), tonic::Code::AlreadyExists);
    let caps = client.capabilities(pb::CapabilitiesRequest {}).await.unwrap().into_inner();
    assert_eq!(caps.api, "cdi.mover.v1");
    assert!(caps.formats.contains(&"qcow2".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_cancels_running_tasks_and_exits() {
    let img = image(32 * MIB, "max_ranges 0; limit_rate 2m;");
    let mut serve = Serve::start(img.dir.path(), &["--insecure-plaintext"]);
    cdi_mover::tls::install_crypto_provider();
    let metrics = reqwest::get(format!("http://{}/healthz", serve.metrics)).await.unwrap().text().await.unwrap();
    assert_eq!(metrics.trim(), "ok");
    let mut client = client_plain(&serve.addr).await;
    let out = img.dir.path().join("out.raw");
    let req = pb::PopulateRequest {
        task_id: "drained".into(),
        source: http_source(&img.nginx.url("http", "disk.qcow2")),
        target: host_target(&out),
        ..Default::default()
    };
    let mut events = populate_until_bytes_move(&mut client, req).await;
    let text = reqwest::get(format!("http://{}/metrics", serve.metrics)).await.unwrap().text().await.unwrap();
    assert!(text.contains("cdi_mover_tasks_running 1"), "{text}");
    let status = tokio::task::spawn_blocking(move || {
        let st = serve.stop();
        (st, serve)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "serve exited with {:?}: {}", status.0, status.1.log());
    let (_, _, outcome) = follow(&mut events).await;
    let failed = outcome.unwrap_err();
    assert_eq!(failed.reason, "Cancelled");
    // A rolling update or a node drain interrupts the import; the caller tries again.
    assert!(failed.retryable, "a task interrupted by the mover's shutdown is retryable: {failed:?}");
    assert!(!out.exists() && !img.dir.path().join("out.raw.partial").exists());
}

/// Another language: a Python client generated from the same .proto drives a Populate.
#[test]
fn a_python_client_generated_from_the_proto_drives_a_populate() {
    let img = image(16 * MIB, "");
    ensure_python_grpc();
    let py_dir = img.dir.path().join("py");
    std::fs::create_dir(&py_dir).unwrap();
    let proto_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    run(Command::new("python3").args([
        "-m",
        "grpc_tools.protoc",
        "-I",
        s(&proto_root),
        "--python_out",
        s(&py_dir),
        "--grpc_python_out",
        s(&py_dir),
        "cdi/mover/v1/mover.proto",
    ]));
    let pki = Pki::new(img.dir.path(), "py");
    let (scert, skey) = pki.issue("cdi-mover", true);
    let (ccert, ckey) = pki.issue("python", false);
    let serve = Serve::start(img.dir.path(), &tls_args(&scert, &skey, &pki.ca_path()));
    let out = img.dir.path().join("py.raw");
    let script = format!(
        r#"
import json, sys
sys.path.insert(0, {py:?})
import grpc
from cdi.mover.v1 import mover_pb2 as pb, mover_pb2_grpc as rpc
creds = grpc.ssl_channel_credentials(open({ca:?}, 'rb').read(), open({key:?}, 'rb').read(), open({cert:?}, 'rb').read())
chan = grpc.secure_channel({addr:?}, creds, options=[('grpc.ssl_target_name_override', 'cdi-mover')])
stub = rpc.MoverStub(chan)
req = pb.PopulateRequest(task_id='from-python', source=pb.Source(http=pb.HttpSource(url={url:?})), target=pb.Target(host_path=pb.HostPath(path={out:?})))
seen = []
for ev in stub.Populate(req, timeout=120):
    kind = ev.WhichOneof('event')
    seen.append(kind)
    if kind == 'completed':
        print(json.dumps({{'events': seen, 'virtual_size': ev.completed.virtual_size, 'formats': list(ev.completed.formats)}}))
    if kind == 'failed':
        print(json.dumps({{'events': seen, 'failed': ev.failed.message}}))
"#,
        py = s(&py_dir),
        ca = s(&pki.ca_path()),
        key = s(&ckey),
        cert = s(&ccert),
        addr = serve.addr,
        url = img.nginx.url("http", "disk.qcow2"),
        out = s(&out),
    );
    let script_path = img.dir.path().join("client.py");
    std::fs::write(&script_path, script).unwrap();
    let res = with_timeout(
        {
            let mut c = Command::new("python3");
            c.arg(&script_path);
            c
        },
        Duration::from_secs(120),
    );
    assert!(res.status.success(), "python client failed: {}", String::from_utf8_lossy(&res.stderr));
    let v: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&res.stdout).trim()).unwrap();
    assert_eq!(v["virtual_size"], 16 * MIB, "{v}");
    assert_eq!(v["events"][0], "accepted");
    assert_eq!(v["events"].as_array().unwrap().last().unwrap(), "completed");
    assert_same(&img.raw, "raw", &out);
}

/// grpcio-tools from PyPI, installed once for all test processes.
fn ensure_python_grpc() {
    let have = || Command::new("python3").args(["-c", "import grpc_tools, grpc"]).status().is_ok_and(|s| s.success());
    if have() {
        return;
    }
    let status = Command::new("flock")
        .args([
            "/tmp/cdi-rs-pip.lock",
            "sh",
            "-c",
            "python3 -c 'import grpc_tools, grpc' 2>/dev/null || python3 -m pip install -q grpcio-tools",
        ])
        .status()
        .unwrap();
    assert!(status.success() && have(), "could not install grpcio-tools from PyPI");
}

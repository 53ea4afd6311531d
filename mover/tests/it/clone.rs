//! Populate from another mover's volume: a host-assisted clone driven by the mover that
//! writes. Two real `cdi-mover serve` processes with mutual TLS, sharing one certificate
//! (serverAuth + clientAuth, as the DaemonSet's pods share one Secret): the writing mover
//! reads its peer's volume presenting that certificate. qemu-img is the oracle.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cdi_proto::v1 as pb;
use cdi_proto::v1::mover_client::MoverClient;
use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::Channel;

use crate::service::{Pki, Serve, client_tls, follow, host_target, populate_until_bytes_move, tls_args, within};
use crate::support::*;
use crate::volume::{inventory, mk_tree};

/// Two movers, as on two nodes, and the test's client certificate (it plays the populator).
struct Nodes {
    dir: tempfile::TempDir,
    pki: Pki,
    /// The mover holding the source volume.
    from: Serve,
    /// The mover that populates its target from `from`.
    to: Serve,
    client: (PathBuf, PathBuf),
}

impl Nodes {
    fn start() -> Nodes {
        let dir = tempdir();
        let pki = Pki::new(dir.path(), "cluster");
        Nodes::start_with(dir, pki, None)
    }

    /// `to_identity`: the certificate and key the populating mover serves with (and so
    /// presents to its peer); `None`: the shared mover certificate.
    fn start_with(dir: tempfile::TempDir, pki: Pki, to_identity: Option<(PathBuf, PathBuf)>) -> Nodes {
        let (cert, key) = pki.issue_for("cdi-mover", &[ServerAuth, ClientAuth]);
        let client = pki.issue("populator", false);
        let from = Serve::start(dir.path(), &tls_args(&cert, &key, &pki.ca_path()));
        let (to_cert, to_key) = to_identity.unwrap_or((cert, key));
        let to = Serve::start(dir.path(), &tls_args(&to_cert, &to_key, &pki.ca_path()));
        Nodes { dir, pki, from, to, client }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn client(&self) -> MoverClient<Channel> {
        let (cert, key) = &self.client;
        client_tls(&self.to.addr, &self.pki.ca_pem, Some((cert, key))).await.unwrap()
    }
}

/// A populate of `target` (on `to`) from the volume at `volume` on the mover at `address`.
fn clone_request(id: &str, address: &str, volume: &Path, target: &Path) -> pb::PopulateRequest {
    pb::PopulateRequest {
        task_id: id.into(),
        source: Some(pb::Source {
            kind: Some(pb::source::Kind::Volume(pb::VolumeSource {
                address: address.into(),
                volume: host_target(volume),
                server_name: String::new(),
            })),
        }),
        target: host_target(target),
        ..Default::default()
    }
}

async fn run(client: &mut MoverClient<Channel>, req: pb::PopulateRequest) -> Result<pb::Completed, pb::Failed> {
    let mut events = within("populate", client.populate(req)).await.unwrap().into_inner();
    follow(&mut events).await.2
}

async fn task(client: &mut MoverClient<Channel>, id: &str) -> pb::Task {
    client.get_task(pb::GetTaskRequest { task_id: id.into() }).await.unwrap().into_inner()
}

/// A raw disk as a user's qcow2 becomes one: made by qemu-img from a qcow2 of `size`
/// bytes, in `dir/disk.img` (a filesystem volume). Returns the qcow2, the oracle.
fn disk_img_from_qcow2(nodes: &Nodes, dir: &Path, size: u64, seed: u64) -> PathBuf {
    let raw = nodes.path(&format!("made-{seed}.raw"));
    make_raw(&raw, size, seed);
    let qcow2 = nodes.path(&format!("image-{seed}.qcow2"));
    qemu_img(&["convert", "-O", "qcow2", s(&raw), s(&qcow2)]);
    std::fs::create_dir_all(dir).unwrap();
    qemu_img(&["convert", "-O", "raw", s(&qcow2), s(&dir.join("disk.img"))]);
    qcow2
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<_> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disk_img_is_cloned_into_a_volume_sized_as_an_import_of_the_same_raw_image() {
    let nodes = Nodes::start();
    let size = 40 * MIB;
    let src = nodes.path("src");
    let qcow2 = disk_img_from_qcow2(&nodes, &src, size, 81);
    let dst = nodes.path("dst");
    std::fs::create_dir(&dst).unwrap();
    let mut client = nodes.client().await;
    let requested = 64 * MIB;
    let req =
        pb::PopulateRequest { requested_size: requested, ..clone_request("clone-a", &nodes.from.addr, &src, &dst) };

    let done = run(&mut client, req.clone()).await.expect("the clone completes");
    // Calling again with the task's id re-attaches to it: no second copy.
    let (reattached, _, again) = follow(&mut client.populate(req).await.unwrap().into_inner()).await;
    assert!(reattached && again.as_ref().is_ok_and(|c| c == &done), "{again:?}");
    let disk = dst.join("disk.img");
    assert_same(&qcow2, "qcow2", &disk);
    assert_eq!((done.virtual_size, done.formats.as_slice()), (size, &["raw".to_string()][..]));
    assert_eq!(done.target_path, s(&disk));
    assert_eq!(listing(&dst), ["disk.img"]);
    // The same raw image imported into a volume of the same request: the same disk.img.
    let imported = nodes.path("imported");
    std::fs::create_dir(&imported).unwrap();
    assert_ok(&import(s(&src.join("disk.img")), &imported, &["--size", &requested.to_string()]));
    let import_len = std::fs::metadata(imported.join("disk.img")).unwrap().len();
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), import_len, "a clone is sized as an import");
    assert!(import_len > size, "the volume is larger than the image");
    assert_eq!(done.target_size, import_len);
    assert!(allocated(&disk) <= allocated(&src.join("disk.img")) + MIB, "zero extents stay holes");

    let t = task(&mut client, "clone-a").await;
    assert_eq!(t.source, format!("volume {} {}", nodes.from.addr, s(&src)));
    let p = t.progress.unwrap();
    assert_eq!((p.bytes_done, p.bytes_total), (size, size), "progress counts data and zero extents");

    // A volume whose usable space is smaller than the source is refused as an import is.
    let small = nodes.path("small");
    std::fs::create_dir(&small).unwrap();
    let req = pb::PopulateRequest {
        requested_size: 32 * MIB,
        ..clone_request("clone-small", &nodes.from.addr, &src, &small)
    };
    let failed = run(&mut client, req).await.unwrap_err();
    assert_eq!(failed.reason_code(), pb::FailureReason::TooLarge, "{failed:?}");
    assert!(!failed.retryable && failed.message.contains("larger volume is required"), "{failed:?}");
    assert!(listing(&small).is_empty(), "a refused clone left {:?}", listing(&small));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_volume_is_cloned_onto_a_block_device_and_a_block_device_into_a_volume() {
    let nodes = Nodes::start();
    let size = 32 * MIB;
    let src = nodes.path("src");
    let qcow2 = disk_img_from_qcow2(&nodes, &src, size, 82);
    // Full of old random bytes, which must not survive where the image is zero.
    let dev = LoopDev::new(nodes.dir.path(), size, 6);
    let mut client = nodes.client().await;

    let done = run(&mut client, clone_request("to-block", &nodes.from.addr, &src, &dev.path)).await.unwrap();
    assert_same(&qcow2, "qcow2", &dev.path);
    assert_eq!((done.target_path.as_str(), done.target_size), (s(&dev.path), size));

    // Back: the device (on the source's node now) into a volume.
    let dst = nodes.path("dst");
    std::fs::create_dir(&dst).unwrap();
    run(&mut client, clone_request("from-block", &nodes.from.addr, &dev.path, &dst)).await.unwrap();
    assert_same(&qcow2, "qcow2", &dst.join("disk.img"));
    assert_eq!(listing(&dst), ["disk.img"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_archive_clone_extracts_the_peers_tree() {
    let nodes = Nodes::start();
    let src = nodes.path("tree");
    mk_tree(&src);
    let dst = nodes.path("dst");
    std::fs::create_dir(&dst).unwrap();
    let mut client = nodes.client().await;
    let req = pb::PopulateRequest {
        content_type: pb::ContentType::Archive as i32,
        ..clone_request("tree", &nodes.from.addr, &src, &dst)
    };
    let done = run(&mut client, req).await.expect("the tree is copied");
    assert_eq!(done.formats, ["tar"]);
    let mut expected = inventory(&src);
    // A FIFO is not streamed.
    expected.retain(|(_, kind, _, _)| *kind != "special");
    assert_eq!(inventory(&dst), expected, "the trees differ");
    let content: u64 = expected.iter().map(|(_, _, _, bytes)| bytes.len() as u64).sum::<u64>();
    assert!(done.virtual_size >= content - 64, "{done:?}: the content extracted");
    let (a, b) = (src.join("data/sparse.img"), dst.join("data/sparse.img"));
    assert!(allocated(&b) <= allocated(&a) + MIB, "the copy is not sparse: {} vs {}", allocated(&b), allocated(&a));
    // The archive's length, once known: the stream's extents, data and zeros.
    let p = task(&mut client, "tree").await.progress.unwrap();
    assert!(p.bytes_done > 0 && p.bytes_done == p.bytes_total, "{p:?}");
}

/// `cdi-mover client populate volume://…`, as a script clones by hand.
#[test]
fn the_cli_client_populates_from_a_peers_volume() {
    let nodes = Nodes::start();
    let src = nodes.path("src");
    let qcow2 = disk_img_from_qcow2(&nodes, &src, 8 * MIB, 85);
    let dst = nodes.path("dst");
    std::fs::create_dir(&dst).unwrap();
    let (cert, key) = &nodes.client;
    let mut cmd = std::process::Command::new(mover_bin());
    cmd.args(["client", "--address", &nodes.to.addr, "--tls-cert", s(cert), "--tls-key", s(key)])
        .args(["--ca", s(&nodes.pki.ca_path()), "populate", "--progress", "json"])
        .arg(format!("volume://{}{}", nodes.from.addr, s(&src)))
        .arg(&dst);
    let out = with_timeout(cmd, Duration::from_secs(120));
    assert_ok(&out);
    let last = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string();
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!((v["phase"].as_str(), v["virtual_size"].as_u64()), (Some("complete"), Some(8 * MIB)), "{v}");
    assert_same(&qcow2, "qcow2", &dst.join("disk.img"));
}

/// A TCP relay to `upstream` passing what upstream sends at about `rate` bytes a second,
/// so that a stream lasts long enough to be cut or cancelled half way. A connection ends
/// when either side ends it. Returns the relay's address.
async fn throttled(upstream: String, rate: u64) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((down, _)) = listener.accept().await {
            let Ok(up) = TcpStream::connect(&upstream).await else { continue };
            tokio::spawn(async move {
                let (mut down_read, mut down_write) = down.into_split();
                let (mut up_read, mut up_write) = up.into_split();
                let requests = tokio::io::copy(&mut down_read, &mut up_write);
                let answers = async {
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        let n = up_read.read(&mut buf).await?;
                        if n == 0 {
                            return down_write.shutdown().await;
                        }
                        down_write.write_all(&buf[..n]).await?;
                        // Pacing, not synchronisation: the relay's bandwidth.
                        tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
                    }
                };
                tokio::select! {
                    _ = requests => {}
                    _ = answers => {}
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clone_cut_by_cancel_or_by_the_peer_going_away_leaves_nothing_complete() {
    let mut nodes = Nodes::start();
    let src = nodes.path("src");
    std::fs::create_dir(&src).unwrap();
    make_raw(&src.join("disk.img"), 48 * MIB, 83);
    let relay = throttled(nodes.from.addr.clone(), 4 << 20).await;
    let mut client = nodes.client().await;
    let volume = |name: &str| {
        let dir = nodes.path(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("keep"), b"theirs").unwrap();
        dir
    };

    // Cancelled mid-stream: within a chunk, nothing left.
    let cancelled = volume("cancelled");
    let mut events = populate_until_bytes_move(&mut client, clone_request("cancel-me", &relay, &src, &cancelled)).await;
    let asked = Instant::now();
    let t = client.cancel_task(pb::CancelTaskRequest { task_id: "cancel-me".into() }).await.unwrap().into_inner();
    assert!(asked.elapsed() < Duration::from_secs(2), "cancel took {:?}", asked.elapsed());
    assert_eq!(t.state, pb::TaskState::Cancelled as i32, "{t:?}");
    let failed = follow(&mut events).await.2.unwrap_err();
    assert_eq!(failed.reason_code(), pb::FailureReason::Cancelled, "{failed:?}");
    assert_eq!(listing(&cancelled), ["keep"], "a cancelled clone left something behind");

    // The peer dies mid-stream (SIGKILL: no drain, no end message).
    let cut = volume("cut");
    let mut events = populate_until_bytes_move(&mut client, clone_request("cut", &relay, &src, &cut)).await;
    nodes.from.kill();
    let failed = follow(&mut events).await.2.unwrap_err();
    assert!(failed.retryable, "a broken stream is worth another try: {failed:?}");
    assert_eq!(failed.reason_code(), pb::FailureReason::SourceUnavailable, "{failed:?}");
    assert!(failed.message.contains("broke off at offset"), "{failed:?}");
    assert!(failed.message.contains(&relay), "the peer is named: {failed:?}");
    assert_eq!(listing(&cut), ["keep"], "a cut clone left something behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn what_the_peer_refuses_fails_terminally_with_its_message_and_an_absent_peer_retryably() {
    let nodes = Nodes::start();
    let mut client = nodes.client().await;
    let caps = client.capabilities(pb::CapabilitiesRequest {}).await.unwrap().into_inner();
    assert!(caps.sources.contains(&"volume".to_string()), "{caps:?}");
    let dst = nodes.path("dst");
    std::fs::create_dir(&dst).unwrap();

    let missing = run(&mut client, clone_request("missing", &nodes.from.addr, &nodes.path("nope"), &dst)).await;
    let failed = missing.unwrap_err();
    assert_eq!(failed.reason_code(), pb::FailureReason::NotFound, "{failed:?}");
    assert!(!failed.retryable && failed.message.contains("does not exist"), "{failed:?}");

    // A disk image is asked of a directory without one: the peer's FAILED_PRECONDITION.
    let empty = nodes.path("empty");
    std::fs::create_dir(&empty).unwrap();
    let failed = run(&mut client, clone_request("no-disk", &nodes.from.addr, &empty, &dst)).await.unwrap_err();
    assert!(!failed.retryable, "{failed:?}");
    assert!(failed.message.contains("FailedPrecondition") && failed.message.contains("no disk.img"), "{failed:?}");

    // Nothing listens there (any more).
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().to_string();
    let failed = run(&mut client, clone_request("unreachable", &gone, &empty, &dst)).await.unwrap_err();
    assert!(failed.retryable, "{failed:?}");
    assert_eq!(failed.reason_code(), pb::FailureReason::SourceUnavailable, "{failed:?}");
    assert!(failed.message.contains(&format!("cannot reach the mover at {gone}")), "{failed:?}");
    assert_eq!(listing(&dst), Vec::<String>::new());

    // The peer's certificate is checked against the name the request gives.
    let req = clone_request("wrong-name", &nodes.from.addr, &empty, &dst);
    let Some(pb::source::Kind::Volume(mut v)) = req.source.clone().and_then(|s| s.kind) else { unreachable!() };
    v.server_name = "another-mover".into();
    let req = pb::PopulateRequest { source: Some(pb::Source { kind: Some(pb::source::Kind::Volume(v)) }), ..req };
    let failed = run(&mut client, req).await.unwrap_err();
    assert!(failed.message.contains("was refused for the name \"another-mover\""), "{failed:?}");

    // A checksum cannot be checked against extents.
    let req = pb::PopulateRequest {
        checksum: format!("sha256:{}", "0".repeat(64)),
        ..clone_request("sum", &nodes.from.addr, &empty, &dst)
    };
    let status = client.populate(req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("checksum"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mover_certificate_without_client_auth_is_refused_by_the_peer() {
    // Made by the cluster's CA, for the movers' name, but for serving only (as movers'
    // certificates were before they read each other's volumes).
    let dir = tempdir();
    let pki = Pki::new(dir.path(), "cluster");
    let (cert, key) = pki.issue_for("cdi-mover", &[ServerAuth]);
    // Out of the way of the shared certificate, which has the same name.
    let kept = (dir.path().join("server-only.pem"), dir.path().join("server-only.key"));
    std::fs::rename(&cert, &kept.0).unwrap();
    std::fs::rename(&key, &kept.1).unwrap();
    let nodes = Nodes::start_with(dir, pki, Some(kept));
    let src = nodes.path("src");
    std::fs::create_dir(&src).unwrap();
    make_raw(&src.join("disk.img"), 4 * MIB, 84);
    let dst = nodes.path("dst");
    std::fs::create_dir(&dst).unwrap();
    let mut client = nodes.client().await;

    let failed = run(&mut client, clone_request("no-client-auth", &nodes.from.addr, &src, &dst)).await.unwrap_err();
    assert!(failed.message.contains("refused this mover's client certificate"), "{failed:?}");
    assert!(failed.message.contains("clientAuth"), "the message says what to fix: {failed:?}");
    assert!(nodes.from.await_log("TLS handshake refused").await, "{}", nodes.from.log());
    assert_eq!(listing(&dst), Vec::<String>::new());
}

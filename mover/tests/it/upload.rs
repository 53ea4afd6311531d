//! Upload tasks on a served mover: a Populate whose source is `upload` waits for bytes, and
//! Upload calls feed it through the same pipeline an HTTP stream takes. qemu-img is the
//! oracle; interrupted, inconsistent and bad uploads leave nothing that looks complete and
//! the task waiting for another try.

use std::path::{Path, PathBuf};
use std::process::Command;

use cdi_proto::v1 as pb;
use cdi_proto::v1::mover_client::MoverClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

use crate::service::{Pki, Serve, client_plain, client_tls, host_target, tls_args, within};
use crate::support::*;

const CHUNK: usize = 256 << 10;

fn upload_req(id: &str, target: &Path, requested_size: u64) -> pb::PopulateRequest {
    pb::PopulateRequest {
        task_id: id.into(),
        source: Some(pb::Source { kind: Some(pb::source::Kind::Upload(pb::UploadSource {})) }),
        target: host_target(target),
        requested_size,
        ..Default::default()
    }
}

/// Starts an upload task and checks it waits: Accepted (running), then AWAITING_UPLOAD.
async fn start(client: &mut MoverClient<Channel>, req: pb::PopulateRequest) -> tonic::Streaming<pb::PopulateEvent> {
    let mut events = within("populate", client.populate(req)).await.unwrap().into_inner();
    let first = within("accepted", events.message()).await.unwrap().unwrap().event.unwrap();
    assert!(
        matches!(first, pb::populate_event::Event::Accepted(a) if a.state == pb::TaskState::Running as i32),
        "{first:?}"
    );
    let p = next_progress(&mut events).await;
    assert_eq!(p.phase, pb::Phase::AwaitingUpload as i32, "{p:?}");
    events
}

/// The next progress event (a re-attached stream's Accepted skipped).
async fn next_progress(events: &mut tonic::Streaming<pb::PopulateEvent>) -> pb::Progress {
    loop {
        match within("progress", events.message()).await.unwrap().expect("the stream ended").event.unwrap() {
            pb::populate_event::Event::Progress(p) => return p,
            pb::populate_event::Event::Accepted(_) => {}
            other => panic!("expected progress, got {other:?}"),
        }
    }
}

/// Follows the events until `until` holds for a progress event.
async fn wait_progress(events: &mut tonic::Streaming<pb::PopulateEvent>, until: impl Fn(&pb::Progress) -> bool) {
    while !until(&next_progress(events).await) {}
}

/// Follows the events to the outcome, which must be Completed.
async fn completed(events: &mut tonic::Streaming<pb::PopulateEvent>) -> pb::Completed {
    while let Some(ev) = within("events", events.message()).await.unwrap() {
        match ev.event.unwrap() {
            pb::populate_event::Event::Completed(c) => return c,
            pb::populate_event::Event::Failed(f) => panic!("the task failed: {f:?}"),
            _ => {}
        }
    }
    panic!("the stream ended without an outcome");
}

fn start_msg(id: &str, content_length: u64) -> pb::UploadRequest {
    let start = pb::UploadStart { task_id: id.into(), content_length };
    pb::UploadRequest { request: Some(pb::upload_request::Request::Start(start)) }
}

fn data_msgs(bytes: &[u8]) -> impl Iterator<Item = pb::UploadRequest> + '_ {
    bytes
        .chunks(CHUNK)
        .map(|c| pb::UploadRequest { request: Some(pb::upload_request::Request::Data(c.to_vec().into())) })
}

fn end_msg(length: u64) -> pb::UploadRequest {
    pb::UploadRequest { request: Some(pb::upload_request::Request::End(pb::UploadEnd { length })) }
}

/// One whole upload: start (with the length), the bytes, an end claiming `end_len`.
async fn upload_with_end(
    client: &mut MoverClient<Channel>,
    id: &str,
    bytes: &[u8],
    end_len: u64,
) -> Result<pb::Completed, tonic::Status> {
    let mut msgs = vec![start_msg(id, 0)];
    msgs.extend(data_msgs(bytes));
    msgs.push(end_msg(end_len));
    let resp = within("upload", client.upload(tokio_stream::iter(msgs))).await?;
    Ok(resp.into_inner().completed.expect("a completed upload says what it made"))
}

async fn upload(client: &mut MoverClient<Channel>, id: &str, bytes: &[u8]) -> Result<pb::Completed, tonic::Status> {
    let mut msgs = vec![start_msg(id, bytes.len() as u64)];
    msgs.extend(data_msgs(bytes));
    msgs.push(end_msg(bytes.len() as u64));
    let resp = within("upload", client.upload(tokio_stream::iter(msgs))).await?;
    Ok(resp.into_inner().completed.expect("a completed upload says what it made"))
}

/// An upload whose messages the test sends as it likes; the call runs in the background.
struct Open {
    tx: mpsc::Sender<pb::UploadRequest>,
    call: tokio::task::JoinHandle<Result<tonic::Response<pb::UploadResponse>, tonic::Status>>,
}

fn open_upload(client: &MoverClient<Channel>, id: &str, content_length: u64) -> Open {
    let (tx, rx) = mpsc::channel(4);
    tx.try_send(start_msg(id, content_length)).unwrap();
    let mut c = client.clone();
    let call = tokio::spawn(async move { c.upload(ReceiverStream::new(rx)).await });
    Open { tx, call }
}

impl Open {
    async fn send(&self, bytes: &[u8]) {
        for m in data_msgs(bytes) {
            self.tx.send(m).await.unwrap();
        }
    }

    async fn outcome(self) -> Result<tonic::Response<pb::UploadResponse>, tonic::Status> {
        drop(self.tx);
        within("the upload's answer", self.call).await.unwrap()
    }
}

async fn phase_of(client: &mut MoverClient<Channel>, id: &str) -> (i32, i32) {
    let t = client.get_task(pb::GetTaskRequest { task_id: id.into() }).await.unwrap().into_inner();
    (t.state, t.progress.unwrap().phase)
}

fn awaiting() -> (i32, i32) {
    (pb::TaskState::Running as i32, pb::Phase::AwaitingUpload as i32)
}

/// A 24 MiB raw disk and its qcow2 (the oracle compares against the raw).
struct Images {
    raw: PathBuf,
    qcow2: Vec<u8>,
}

fn images(dir: &Path) -> Images {
    let raw = dir.join("disk.raw");
    make_raw(&raw, 24 * MIB, 77);
    let qcow2 = dir.join("disk.qcow2");
    qemu_img(&["convert", "-O", "qcow2", s(&raw), s(&qcow2)]);
    Images { qcow2: std::fs::read(&qcow2).unwrap(), raw }
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_of_qcow2_gz_xz_over_mutual_tls_land_in_a_filesystem_volume() {
    let dir = tempdir();
    let img = images(dir.path());
    let qcow2_gz = std::fs::read(gzip(&dir.path().join("disk.qcow2"))).unwrap();
    run(Command::new("xz").args(["-k", "-1", "-T1"]).arg(&img.raw));
    let raw_xz = std::fs::read(format!("{}.xz", s(&img.raw))).unwrap();
    let pki = Pki::new(dir.path(), "main");
    let (scert, skey) = pki.issue("cdi-mover", true);
    let (ccert, ckey) = pki.issue("uploadproxy", false);
    let serve = Serve::start(dir.path(), &tls_args(&scert, &skey, &pki.ca_path()));
    let mut client = client_tls(&serve.addr, &pki.ca_pem, Some((&ccert, &ckey))).await.unwrap();
    let caps = client.capabilities(pb::CapabilitiesRequest {}).await.unwrap().into_inner();
    assert!(caps.sources.iter().any(|s| s == "upload"), "{:?}", caps.sources);

    for (name, bytes, formats) in [
        ("qcow2", &img.qcow2, vec!["qcow2"]),
        ("qcow2-gz", &qcow2_gz, vec!["gz", "qcow2"]),
        ("raw-xz", &raw_xz, vec!["xz", "raw"]),
    ] {
        let volume = dir.path().join(format!("vol-{name}"));
        std::fs::create_dir(&volume).unwrap();
        let mut events = start(&mut client, upload_req(name, &volume, 32 * MIB)).await;
        let task = client.get_task(pb::GetTaskRequest { task_id: name.into() }).await.unwrap().into_inner();
        assert_eq!(task.source, "upload");
        let done = upload(&mut client, name, bytes).await.unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(done.formats, formats, "{name}");
        assert_eq!(done.virtual_size, 24 * MIB);
        let followed = completed(&mut events).await;
        assert_eq!(followed.target_path, done.target_path);
        assert_same(&img.raw, "raw", &volume.join("disk.img"));
        let (state, _) = phase_of(&mut client, name).await;
        assert_eq!(state, pb::TaskState::Succeeded as i32);
        // Done is done: no second image over the first.
        let again = upload(&mut client, name, bytes).await.unwrap_err();
        assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_into_a_block_device_cut_midway_wipes_its_ends_and_the_next_one_succeeds() {
    let dir = tempdir();
    let img = images(dir.path());
    let raw = std::fs::read(&img.raw).unwrap();
    let serve = Serve::start(dir.path(), &["--insecure-plaintext"]);
    let mut client = client_plain(&serve.addr).await;
    let dev = LoopDev::new(dir.path(), 24 * MIB, 41);
    let read = |at: u64| peek(&dev.path, at, MIB as usize);
    // The old data: what an attempt that wrote nothing leaves.
    let (old_head, old_tail) = (read(0), read(23 * MIB));
    let mut events = start(&mut client, upload_req("blk", &dev.path, 0)).await;

    // The uploader goes away (its call dropped: a reset stream) after a third of a raw disk.
    let open = open_upload(&client, "blk", raw.len() as u64);
    open.send(&raw[..8 * MIB as usize]).await;
    wait_progress(&mut events, |p| p.phase == pb::Phase::Transferring as i32 && p.bytes_done >= 8 * MIB).await;
    open.call.abort();
    drop(open.tx);
    wait_progress(&mut events, |p| p.phase == pb::Phase::AwaitingUpload as i32).await;
    assert_eq!(phase_of(&mut client, "blk").await, awaiting());
    // Wiped if anything was written, else untouched: never the image's head.
    let (head, tail) = (read(0), read(23 * MIB));
    let zero = |b: &[u8]| b.iter().all(|&b| b == 0);
    assert!(zero(&head) || head == old_head, "the head of the cut upload was not wiped");
    assert!(zero(&tail) || tail == old_tail, "the tail of the cut upload was not wiped");
    assert!(zero(&head) == zero(&tail), "one end wiped, not the other");

    // Cut again, and retried at once: the retry waits for the cut attempt's wipe, it is not
    // refused as a second uploader would be.
    let open = open_upload(&client, "blk", raw.len() as u64);
    open.send(&raw[..8 * MIB as usize]).await;
    wait_progress(&mut events, |p| p.phase == pb::Phase::Transferring as i32 && p.bytes_done >= 8 * MIB).await;
    open.call.abort();
    drop(open.tx);
    let done = upload(&mut client, "blk", &img.qcow2).await.unwrap();
    assert_eq!(done.formats, ["qcow2"]);
    completed(&mut events).await;
    assert_same(&img.raw, "raw", &dev.path);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_archive_upload_is_extracted_into_the_volume() {
    let dir = tempdir();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a.txt"), b"alpha\n").unwrap();
    let mut big = vec![0u8; 3 * MIB as usize];
    Rng::new(5).fill(&mut big);
    std::fs::write(tree.join("sub/b.bin"), &big).unwrap();
    let tar = dir.path().join("tree.tar");
    run(Command::new("tar").arg("-cf").arg(&tar).arg("-C").arg(&tree).args(["a.txt", "sub"]));
    let serve = Serve::start(dir.path(), &["--insecure-plaintext"]);
    let mut client = client_plain(&serve.addr).await;
    let volume = dir.path().join("vol");
    std::fs::create_dir(&volume).unwrap();
    let req = pb::PopulateRequest { content_type: pb::ContentType::Archive as i32, ..upload_req("tar", &volume, 0) };
    let mut events = start(&mut client, req).await;
    let done = upload(&mut client, "tar", &std::fs::read(&tar).unwrap()).await.unwrap();
    assert_eq!(done.formats, ["tar"]);
    completed(&mut events).await;
    assert_eq!(std::fs::read(volume.join("a.txt")).unwrap(), b"alpha\n");
    assert!(std::fs::read(volume.join("sub/b.bin")).unwrap() == big, "sub/b.bin differs");
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_uploads_leave_nothing_and_the_task_waiting_for_another() {
    let dir = tempdir();
    let img = images(dir.path());
    let serve = Serve::start(dir.path(), &["--insecure-plaintext"]);
    let mut client = client_plain(&serve.addr).await;
    let volume = dir.path().join("vol");
    std::fs::create_dir(&volume).unwrap();
    let disk = volume.join("disk.img");
    let mut events = start(&mut client, upload_req("t", &volume, 32 * MIB)).await;
    let half = &img.qcow2[..img.qcow2.len() / 2];

    // Half-closed without an end.
    let open = open_upload(&client, "t", 0);
    open.send(half).await;
    let e = open.outcome().await.unwrap_err();
    assert_eq!(e.code(), Code::Cancelled, "{e:?}");
    assert!(e.message().contains("without an end"), "{e:?}");
    assert_eq!(phase_of(&mut client, "t").await, awaiting());
    assert!(!disk.exists(), "a cut upload left a disk.img");

    // An end that disagrees with the bytes.
    let e = upload_with_end(&mut client, "t", &img.qcow2, img.qcow2.len() as u64 + 1).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("end says"), "{e:?}");
    assert_eq!(phase_of(&mut client, "t").await, awaiting());
    assert!(!disk.exists(), "an upload with a wrong end left a disk.img");

    // A Content-Length the body does not match.
    let mut msgs = vec![start_msg("t", img.qcow2.len() as u64 + 10)];
    msgs.extend(data_msgs(&img.qcow2));
    msgs.push(end_msg(img.qcow2.len() as u64));
    let e = client.upload(tokio_stream::iter(msgs)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(!disk.exists());

    // Garbage behind a gzip magic: not an image.
    let mut garbage = vec![0x1f, 0x8b, 0x08, 0x00];
    let mut noise = vec![0u8; 2 * MIB as usize];
    Rng::new(9).fill(&mut noise);
    garbage.extend_from_slice(&noise);
    let e = upload(&mut client, "t", &garbage).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("waits for another upload"), "{e:?}");
    assert!(!disk.exists());

    // An image larger than the volume.
    let huge = dir.path().join("huge.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&huge), "1G"]);
    let e = upload(&mut client, "t", &std::fs::read(&huge).unwrap()).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(phase_of(&mut client, "t").await, awaiting());

    // One attempt at a time: a second Upload while one feeds the task is refused.
    let open = open_upload(&client, "t", img.qcow2.len() as u64);
    let (head, tail) = img.qcow2.split_at(img.qcow2.len() / 3);
    open.send(head).await;
    // A fresh follower (re-attached): no events of the earlier attempts queued in it.
    let mut now = within("populate", client.populate(upload_req("t", &volume, 32 * MIB))).await.unwrap().into_inner();
    wait_progress(&mut now, |p| p.phase == pb::Phase::Transferring as i32 && p.bytes_done > 0).await;
    let e = upload(&mut client, "t", &img.qcow2).await.unwrap_err();
    assert_eq!(e.code(), Code::Aborted, "{e:?}");
    // The first goes on undisturbed.
    open.send(tail).await;
    open.tx.send(end_msg(img.qcow2.len() as u64)).await.unwrap();
    let done = open.outcome().await.unwrap().into_inner().completed.unwrap();
    assert_eq!(done.virtual_size, 24 * MIB);
    completed(&mut events).await;
    assert_same(&img.raw, "raw", &disk);
    let e = upload(&mut client, "t", &img.qcow2).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_to_tasks_that_cannot_take_them_are_refused() {
    let dir = tempdir();
    let serve = Serve::start(dir.path(), &["--insecure-plaintext"]);
    let mut client = client_plain(&serve.addr).await;
    let e = upload(&mut client, "nobody", b"x").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // Not an upload task.
    let blank = pb::PopulateRequest {
        task_id: "blank".into(),
        source: Some(pb::Source { kind: Some(pb::source::Kind::Blank(pb::BlankSource {})) }),
        target: host_target(&dir.path().join("blank.raw")),
        requested_size: MIB,
        ..Default::default()
    };
    let mut events = client.populate(blank).await.unwrap().into_inner();
    completed(&mut events).await;
    let e = upload(&mut client, "blank", b"x").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    // No checksum to check an upload against.
    let with_sum = pb::PopulateRequest {
        checksum: format!("sha256:{}", "0".repeat(64)),
        ..upload_req("sum", &dir.path().join("sum.raw"), 0)
    };
    let e = client.populate(with_sum).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("checksum"), "{e:?}");

    // A waiting upload task is cancelled like any other, and then takes no uploads.
    let volume = dir.path().join("vol");
    std::fs::create_dir(&volume).unwrap();
    let mut events = start(&mut client, upload_req("c", &volume, 8 * MIB)).await;
    let t = client.cancel_task(pb::CancelTaskRequest { task_id: "c".into() }).await.unwrap().into_inner();
    assert_eq!(t.state, pb::TaskState::Cancelled as i32, "{t:?}");
    loop {
        match within("events", events.message()).await.unwrap().expect("an outcome").event.unwrap() {
            pb::populate_event::Event::Failed(f) => {
                assert_eq!(f.reason_code, pb::FailureReason::Cancelled as i32, "{f:?}");
                break;
            }
            pb::populate_event::Event::Completed(c) => panic!("a cancelled upload task completed: {c:?}"),
            _ => {}
        }
    }
    let e = upload(&mut client, "c", b"x").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_client_starts_an_upload_task_and_feeds_it_a_file() {
    let dir = tempdir();
    let img = images(dir.path());
    let serve = Serve::start(dir.path(), &["--insecure-plaintext"]);
    let mut client = client_plain(&serve.addr).await;
    let out = dir.path().join("out.raw");
    let cli = |args: &[&str]| {
        let mut c = Command::new(mover_bin());
        c.args(["client", "--address", &serve.addr, "--insecure-plaintext"]).args(args);
        c
    };
    let populate = cli(&["populate", "--task-id", "cli-up", "upload:", s(&out), "--progress", "json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Whichever Populate comes first starts the task; the other re-attaches to it.
    let mut events = start(&mut client, upload_req("cli-up", &out, 0)).await;
    let qcow2 = dir.path().join("disk.qcow2");
    let up = with_timeout(cli(&["upload", "--task-id", "cli-up", s(&qcow2)]), std::time::Duration::from_secs(120));
    assert_ok(&up);
    let report: serde_json::Value = serde_json::from_slice(&up.stdout).unwrap();
    assert_eq!(report["bytes_sent"], img.qcow2.len() as u64);
    assert_eq!(report["virtual_size"], 24 * MIB);
    completed(&mut events).await;
    let followed =
        within("the CLI's populate", tokio::task::spawn_blocking(move || populate.wait_with_output().unwrap()))
            .await
            .unwrap();
    assert_ok(&followed);
    let last = String::from_utf8_lossy(&followed.stdout).lines().last().unwrap().to_string();
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(v["phase"], "complete", "{last}");
    assert_same(&img.raw, "raw", &out);
}

//! The blank source: an empty raw disk of the target's usable size, through the CLI, the
//! library and the gRPC service; qemu-img says what it is, loop devices show zeroing.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use cdi_mover::disk::{TargetOptions, sizing};
use cdi_mover::source::SourceSpec;
use cdi_proto::v1 as pb;

use crate::support::*;

const REQUEST: u64 = 64 * MIB;

/// Whether every byte of `path` (its first `len` bytes) reads as zero.
fn reads_zeros(path: &Path, len: u64) -> bool {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(MIB) as usize;
        f.read_exact(&mut buf[..n]).unwrap();
        if buf[..n].iter().any(|&b| b != 0) {
            return false;
        }
        left -= n as u64;
    }
    true
}

/// `qemu-img info` of a file: (format, virtual size).
fn qemu_info(path: &Path) -> (String, u64) {
    let out = qemu_img(&["info", "--output=json", s(path)]);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (info["format"].as_str().unwrap().to_string(), info["virtual-size"].as_u64().unwrap())
}

/// The JSON result line of `cdi-mover import --progress json`.
fn result_line(out: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_else(|| panic!("no output: {stdout}"));
    serde_json::from_str(last).unwrap()
}

#[test]
fn a_filesystem_volume_gets_a_sparse_disk_img_of_the_size_an_image_would_grow_to() {
    let dir = tempdir();
    let volume = dir.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    let out = import("blank:", &volume, &["--size", &REQUEST.to_string(), "--progress", "json"]);
    assert_ok(&out);
    let disk = volume.join("disk.img");

    // The same size a raw image imported into an identical volume is grown to.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let raw = dir.path().join("small.raw");
    make_raw(&raw, MIB, 5);
    assert_ok(&import(s(&raw), &other, &["--size", &REQUEST.to_string()]));
    let image_size = std::fs::metadata(other.join("disk.img")).unwrap().len();
    let size = std::fs::metadata(&disk).unwrap().len();
    assert_eq!(size, image_size, "a blank disk.img differs in size from an imported image's");
    assert_eq!(size, sizing::usable_space(sizing::DEFAULT_OVERHEAD, REQUEST));
    assert_eq!(size, 60 * MIB, "CDI's arithmetic: round_down(ceil(64 MiB / 1.06), 1 MiB)");

    assert!(allocated(&disk) <= 64 << 10, "a blank disk.img holds {} allocated bytes", allocated(&disk));
    assert!(reads_zeros(&disk, size));
    assert_eq!(qemu_info(&disk), ("raw".to_string(), size));
    assert_eq!(std::fs::metadata(&disk).unwrap().permissions().mode() & 0o777, 0o660);
    let left: Vec<_> = std::fs::read_dir(&volume).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["disk.img"], "besides disk.img: {left:?}");

    let result = result_line(&out);
    assert_eq!(result["phase"], "complete");
    assert_eq!(result["formats"], serde_json::json!(["blank"]));
    assert_eq!(result["virtual_size"], size);
    assert_eq!(result["target_size"], size);
    assert_eq!(result["bytes_written"], 0);
}

#[test]
fn a_blank_import_replaces_an_existing_disk_img() {
    let dir = tempdir();
    let raw = dir.path().join("old.raw");
    make_raw(&raw, 8 * MIB, 9);
    assert_ok(&import(s(&raw), dir.path(), &["--size", &REQUEST.to_string()]));
    let disk = dir.path().join("disk.img");
    assert!(!reads_zeros(&disk, 8 * MIB), "the fixture holds data");

    assert_ok(&import("blank:", dir.path(), &["--size", &REQUEST.to_string()]));
    let size = std::fs::metadata(&disk).unwrap().len();
    assert_eq!(size, 60 * MIB);
    assert!(reads_zeros(&disk, size), "the old image shows through the blank disk");
    assert!(allocated(&disk) <= 64 << 10, "the old image's blocks are still allocated");
    assert!(!dir.path().join("disk.img.partial").exists());
}

#[test]
fn preallocation_allocates_the_whole_blank_disk_img() {
    let dir = tempdir();
    assert_ok(&import("blank:", dir.path(), &["--size", &REQUEST.to_string(), "--preallocate"]));
    let disk = dir.path().join("disk.img");
    let size = std::fs::metadata(&disk).unwrap().len();
    assert_eq!(size, 60 * MIB);
    assert!(allocated(&disk) >= size, "preallocated blank disk.img: {} of {size} bytes allocated", allocated(&disk));
    assert!(reads_zeros(&disk, size));
}

#[test]
fn a_block_device_that_held_data_reads_zeros_end_to_end() {
    let dir = tempdir();
    let size = 16 * MIB;
    let dev = LoopDev::new(dir.path(), size, 41);
    assert!(!reads_zeros(&dev.path, size), "the fixture holds old data");
    let out = import("blank:", &dev.path, &["--progress", "json"]);
    assert_ok(&out);
    assert!(reads_zeros(&dev.path, size), "old data survived a blank import");
    let result = result_line(&out);
    assert_eq!((result["virtual_size"].as_u64(), result["target_size"].as_u64()), (Some(size), Some(size)));
    // Zeroed without writing: the loop device's file gave its blocks back.
    assert!(allocated(dev.backing()) < MIB, "{} bytes still allocated behind the device", allocated(dev.backing()));
}

#[test]
fn a_preallocated_blank_block_device_keeps_every_block() {
    let dir = tempdir();
    let size = 16 * MIB;
    let dev = LoopDev::new(dir.path(), size, 43);
    assert_ok(&import("blank:", &dev.path, &["--preallocate"]));
    assert!(reads_zeros(&dev.path, size), "old data survived a preallocated blank import");
    assert!(allocated(dev.backing()) >= size, "only {} bytes allocated behind the device", allocated(dev.backing()));
}

#[test]
fn a_file_target_needs_a_size_and_then_is_sparse() {
    let dir = tempdir();
    let out = dir.path().join("blank.raw");
    assert_refused(&import("blank:", &out, &[]), &["blank", "--size"]);
    assert!(!out.exists());
    assert_ok(&import("blank:", &out, &["--size", &(10 * MIB).to_string()]));
    assert_eq!(qemu_info(&out), ("raw".to_string(), 10 * MIB));
    assert!(allocated(&out) <= 64 << 10);
}

#[test]
fn archives_and_checksums_are_refused_for_a_blank_disk() {
    let dir = tempdir();
    assert_refused(&import("blank:", dir.path(), &["--content-type", "archive"]), &["blank", "archive"]);
    let sha = format!("sha256:{}", "0".repeat(64));
    assert_refused(&import("blank:", dir.path(), &["--checksum", &sha]), &["blank", "checksum"]);
    assert!(!dir.path().join("disk.img").exists());
}

#[test]
fn progress_reaches_the_whole_disk_in_process() {
    let dir = tempdir();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut req = cdi_mover::ImportRequest::new(SourceSpec::Blank, dir.path().to_path_buf());
    req.target_options = TargetOptions { requested_size: Some(REQUEST), ..TargetOptions::default() };
    let progress = cdi_mover::progress::Progress::new();
    let result = cdi_mover::import(&req, rt.handle(), &progress, Arc::new(AtomicBool::new(false))).unwrap();
    assert_eq!((result.virtual_size, result.target_size), (60 * MIB, 60 * MIB));
    assert_eq!(result.formats, ["blank"]);
    let snap = progress.snapshot();
    assert_eq!(snap.percent(), Some(100.0));
    assert_eq!(snap.bytes_total, Some(60 * MIB));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_service_makes_a_blank_disk_and_says_it_can() {
    use crate::service::{Serve, client_plain, host_target, within};
    let dir = tempdir();
    let serve = Serve::start(dir.path(), &["--insecure-plaintext"]);
    let mut client = client_plain(&serve.addr).await;
    let caps = client.capabilities(pb::CapabilitiesRequest {}).await.unwrap().into_inner();
    assert!(caps.sources.iter().any(|s| s == "blank"), "{:?}", caps.sources);

    let volume = dir.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    let req = pb::PopulateRequest {
        task_id: "blank-1".into(),
        source: Some(pb::Source { kind: Some(pb::source::Kind::Blank(pb::BlankSource {})) }),
        target: host_target(&volume),
        requested_size: REQUEST,
        ..Default::default()
    };
    let mut events = within("populate", client.populate(req)).await.unwrap().into_inner();
    let mut last_progress = None;
    let completed = loop {
        let ev = within("an event", events.message()).await.unwrap().expect("the stream ended without an outcome");
        match ev.event.unwrap() {
            pb::populate_event::Event::Progress(p) => last_progress = Some(p),
            pb::populate_event::Event::Completed(c) => break c,
            pb::populate_event::Event::Failed(f) => panic!("blank populate failed: {f:?}\n{}", serve.log()),
            pb::populate_event::Event::Accepted(_) => {}
        }
    };
    assert_eq!((completed.virtual_size, completed.target_size), (60 * MIB, 60 * MIB));
    assert_eq!(completed.formats, ["blank"]);
    assert_eq!(completed.target_path, s(&volume.join("disk.img")));
    if let Some(p) = last_progress {
        assert!(p.bytes_done <= p.bytes_total || p.bytes_total == 0, "{p:?}");
    }
    let task = client.get_task(pb::GetTaskRequest { task_id: "blank-1".into() }).await.unwrap().into_inner();
    let progress = task.progress.unwrap();
    assert_eq!((progress.bytes_done, progress.bytes_total), (60 * MIB, 60 * MIB), "progress short of 100 %");
    assert_eq!(task.source, "blank");
    assert!(reads_zeros(&volume.join("disk.img"), 60 * MIB));
}

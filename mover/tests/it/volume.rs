//! ReadVolume → WriteVolume between two real `cdi-mover serve` processes: a host-assisted
//! clone. A small client in the test reads from one mover and writes to the other, counting
//! what crosses the wire: the data, not the volume's size.

use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cdi_proto::v1 as pb;
use cdi_proto::v1::mover_client::MoverClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::service::{Serve, client_plain, host_target, within};
use crate::support::*;

/// Two movers, as on two nodes.
struct Pair {
    dir: tempfile::TempDir,
    from: Serve,
    to: Serve,
}

fn mk_pair() -> Pair {
    let dir = tempdir();
    let from = Serve::start(dir.path(), &["--insecure-plaintext"]);
    let to = Serve::start(dir.path(), &["--insecure-plaintext"]);
    Pair { dir, from, to }
}

/// What the test client saw cross the wire.
#[derive(Debug, Default)]
struct Wire {
    /// Bytes carried by data extents.
    data_bytes: u64,
    /// Bytes described by zero extents.
    zero_bytes: u64,
    /// Encoded size of every chunk message.
    message_bytes: u64,
    header: Option<pb::VolumeHeader>,
}

fn read_request(path: &Path, format: pb::VolumeFormat) -> pb::ReadVolumeRequest {
    pb::ReadVolumeRequest { target: host_target(path), format: format as i32 }
}

fn write_target(path: &Path) -> pb::WriteVolumeRequest {
    pb::WriteVolumeRequest {
        request: Some(pb::write_volume_request::Request::Target(pb::WriteVolumeTarget {
            target: host_target(path),
            ..Default::default()
        })),
    }
}

fn chunk(c: pb::volume_chunk::Chunk) -> pb::WriteVolumeRequest {
    pb::WriteVolumeRequest {
        request: Some(pb::write_volume_request::Request::Chunk(pb::VolumeChunk { chunk: Some(c) })),
    }
}

/// Reads from one mover and writes to the other, forwarding every chunk as it comes (the
/// end included: without it the writer commits nothing). `keep` decides which chunks are
/// forwarded, to play a client that loses some.
async fn copy_filtered(
    from: &mut MoverClient<Channel>,
    request: pb::ReadVolumeRequest,
    to: &mut MoverClient<Channel>,
    target: pb::WriteVolumeRequest,
    keep: impl Fn(&pb::VolumeChunk) -> bool,
) -> Result<(Wire, pb::WriteVolumeResponse), tonic::Status> {
    let mut reading = from.read_volume(request).await?.into_inner();
    let (tx, rx) = mpsc::channel(4);
    tx.send(target).await.unwrap();
    let mut call = Box::pin(to.write_volume(ReceiverStream::new(rx)));
    let mut wire = Wire::default();
    let pump = async {
        while let Some(c) = reading.message().await? {
            wire.message_bytes += prost::Message::encoded_len(&c) as u64;
            match &c.chunk {
                Some(pb::volume_chunk::Chunk::Data(d)) => wire.data_bytes += d.data.len() as u64,
                Some(pb::volume_chunk::Chunk::Zero(z)) => wire.zero_bytes += z.length,
                Some(pb::volume_chunk::Chunk::Header(h)) => wire.header = Some(*h),
                _ => {}
            }
            if !keep(&c) {
                continue;
            }
            let msg = pb::WriteVolumeRequest { request: Some(pb::write_volume_request::Request::Chunk(c)) };
            if tx.send(msg).await.is_err() {
                break;
            }
        }
        drop(tx);
        Ok::<(), tonic::Status>(())
    };
    tokio::select! {
        pumped = pump => pumped?,
        // The writer answered before the read ended: it refused the stream.
        response = &mut call => return response.map(|r| (Wire::default(), r.into_inner())),
    };
    let response = call.await?.into_inner();
    Ok((wire, response))
}

async fn copy(
    from: &mut MoverClient<Channel>,
    request: pb::ReadVolumeRequest,
    to: &mut MoverClient<Channel>,
    target: pb::WriteVolumeRequest,
) -> Result<(Wire, pb::WriteVolumeResponse), tonic::Status> {
    copy_filtered(from, request, to, target, |_| true).await
}

/// Bytes of `path` in whole 4 KiB blocks that are not all zeros (the tail block counted
/// whole): what a sparse stream of it must carry.
fn nonzero_bytes(path: &Path, size: u64) -> u64 {
    let f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut total = 0;
    let mut off = 0;
    while off < size {
        let n = (size - off).min(MIB) as usize;
        f.read_exact_at(&mut buf[..n], off).unwrap();
        for block in buf[..n].chunks(4096) {
            if block.iter().any(|&b| b != 0) {
                total += block.len() as u64;
            }
        }
        off += n as u64;
    }
    total
}

/// A loop device holding the raw image `image` (zeros written as zeros, as on a used disk).
fn loop_with(dir: &Path, image: &Path, seed: u64) -> LoopDev {
    let size = std::fs::metadata(image).unwrap().len();
    let dev = LoopDev::new(dir, size, seed);
    let mut src = std::fs::File::open(image).unwrap();
    let mut dst = std::fs::OpenOptions::new().write(true).open(&dev.path).unwrap();
    std::io::copy(&mut src, &mut dst).unwrap();
    dst.sync_all().unwrap();
    dev
}

#[tokio::test(flavor = "multi_thread")]
async fn block_to_block_moves_only_the_data_and_leaves_no_stale_bytes() {
    let pair = mk_pair();
    let size = 48 * MIB;
    let image = pair.dir.path().join("image.raw");
    make_raw(&image, size, 71);
    let src = loop_with(pair.dir.path(), &image, 1);
    // The destination is full of random bytes that must not survive where the image is zero.
    let dst = LoopDev::new(pair.dir.path(), size, 2);
    let (mut from, mut to) = (client_plain(&pair.from.addr).await, client_plain(&pair.to.addr).await);
    let (wire, response) = within(
        "block to block copy",
        copy(&mut from, read_request(&src.path, pb::VolumeFormat::Unspecified), &mut to, write_target(&dst.path)),
    )
    .await
    .unwrap();
    assert_same(&image, "raw", &dst.path);
    assert_eq!(wire.header, Some(pb::VolumeHeader { format: pb::VolumeFormat::Raw as i32, size }));
    let data = nonzero_bytes(&image, size);
    assert_eq!(wire.data_bytes, data, "the stream carries exactly the non-zero blocks");
    assert!(data < size * 3 / 4, "the fixture should have zeros to skip ({data} of {size})");
    assert!(wire.message_bytes < data + 64 * 1024, "{wire:?}: framing costs next to nothing");
    assert_eq!(response.bytes_written, wire.data_bytes);
    assert_eq!(response.zero_bytes, size - wire.data_bytes);
    assert_eq!(response.target_path, s(&dst.path));
    // The old random bytes were punched out where the image is zero, not overwritten.
    let dst_alloc = allocated(dst.backing());
    assert!(
        dst_alloc <= allocated(&image) + 4 * MIB,
        "the destination holds {dst_alloc} bytes, the image {}: zero ranges were written",
        allocated(&image)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn block_to_filesystem_lands_in_a_sparse_disk_img() {
    let pair = mk_pair();
    let size = 40 * MIB;
    let image = pair.dir.path().join("image.raw");
    make_raw(&image, size, 72);
    let src = loop_with(pair.dir.path(), &image, 3);
    let volume = pair.dir.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    let (mut from, mut to) = (client_plain(&pair.from.addr).await, client_plain(&pair.to.addr).await);
    let (wire, response) = within(
        "block to filesystem copy",
        copy(&mut from, read_request(&src.path, pb::VolumeFormat::Raw), &mut to, write_target(&volume)),
    )
    .await
    .unwrap();
    let disk = volume.join("disk.img");
    assert_eq!(response.target_path, s(&disk));
    // disk.img is grown to the volume's usable space, as CDI sizes it; the image is its head.
    assert!(std::fs::metadata(&disk).unwrap().len() >= size);
    assert_same_prefix(&image, "raw", &disk, size);
    assert_eq!(std::fs::metadata(&disk).unwrap().mode() & 0o777, 0o660);
    assert_eq!(wire.data_bytes, nonzero_bytes(&image, size));
    assert!(
        allocated(&disk) <= allocated(&image) + MIB,
        "disk.img is not sparse: {} allocated, the image {}",
        allocated(&disk),
        allocated(&image)
    );
    let left: Vec<_> = std::fs::read_dir(&volume).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["disk.img"], "nothing else is left in the volume");
}

/// Bytes read from block device `dev` since boot, as its queue counts them.
fn bytes_read(dev: &Path) -> u64 {
    let name = dev.file_name().unwrap().to_str().unwrap();
    let stat = std::fs::read_to_string(format!("/sys/block/{name}/stat")).unwrap();
    let sectors: u64 = stat.split_whitespace().nth(2).unwrap().parse().unwrap();
    sectors * 512
}

#[tokio::test(flavor = "multi_thread")]
async fn a_loop_device_is_read_only_where_its_backing_file_holds_data() {
    let pair = mk_pair();
    let size = 64 * MIB;
    let image = pair.dir.path().join("image.raw");
    make_raw(&image, size, 73);
    // The backing file: 1 MiB of someone else's bytes, then the image with its zero blocks
    // left as holes; the device starts at the image (`losetup --offset`).
    let backing = pair.dir.path().join("backing.img");
    let mut head = vec![0u8; MIB as usize];
    Rng::new(74).fill(&mut head);
    std::fs::write(&backing, &head).unwrap();
    let dd = format!("of={}", s(&backing));
    run(Command::new("dd").args([&format!("if={}", s(&image)), &dd, "bs=4k", "seek=256", "conv=sparse,notrunc"]));
    let dev = LoopDev::over(backing, &["--offset", "1048576", "--sizelimit", &size.to_string()]);
    // A write through the device into one of the backing file's holes, still in the
    // device's page cache when the read starts (the writer keeps it open: the last close
    // would flush it): it must be in the clone all the same.
    let hole = (0..size / 4096).map(|b| b * 4096).find(|&at| peek(&image, at, 4096).iter().all(|&b| b == 0)).unwrap();
    let fresh = b"written through the device a moment ago";
    let writer = std::fs::OpenOptions::new().write(true).open(&dev.path).unwrap();
    writer.write_all_at(fresh, hole + 100).unwrap();
    poke(&image, hole + 100, fresh);

    let volume = pair.dir.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    let (mut from, mut to) = (client_plain(&pair.from.addr).await, client_plain(&pair.to.addr).await);
    let before = bytes_read(&dev.path);
    let (wire, _) = within(
        "loop device to filesystem copy",
        copy(&mut from, read_request(&dev.path, pb::VolumeFormat::Raw), &mut to, write_target(&volume)),
    )
    .await
    .unwrap();
    let read = bytes_read(&dev.path) - before;
    drop(writer);
    assert_same_prefix(&image, "raw", &volume.join("disk.img"), size);
    let data = nonzero_bytes(&image, size);
    assert_eq!(wire.data_bytes, data);
    assert!(data < size * 3 / 4, "the fixture should have holes to skip ({data} of {size})");
    assert!(read <= data + MIB, "{read} bytes of the device were read for {data} bytes of data: its holes were read");
}

/// A tree like a filesystem volume's: nested directories, a large sparse file with data,
/// zeros written as data and holes, small files with their own modes, an empty file, a
/// symlink, and a FIFO (which is not streamed).
pub(crate) fn mk_tree(root: &Path) {
    std::fs::create_dir_all(root.join("etc/conf.d")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/empty-dir")).unwrap();
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::write(root.join("etc/conf.d/app.conf"), b"key = value\n").unwrap();
    std::fs::write(root.join("etc/secret"), b"s3cr3t").unwrap();
    std::fs::set_permissions(root.join("etc/secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    make_raw(&root.join("data/sparse.img"), 96 * MIB, 73);
    std::os::unix::fs::symlink("../etc/conf.d/app.conf", root.join("data/link")).unwrap();
    nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
}

/// Every entry under `root`: (relative path, kind, mode, content or link target).
pub(crate) fn inventory(root: &Path) -> Vec<(String, &'static str, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let mode = meta.mode() & 0o7777;
            if meta.is_dir() {
                out.push((rel, "dir", mode, vec![]));
                todo.push(path);
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap().into_os_string().into_encoded_bytes();
                out.push((rel, "symlink", 0, target));
            } else if meta.is_file() {
                out.push((rel, "file", mode, std::fs::read(&path).unwrap()));
            } else {
                out.push((rel, "special", mode, vec![]));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn filesystem_to_filesystem_copies_the_tree_as_tar_holes_and_all() {
    let pair = mk_pair();
    let src = pair.dir.path().join("src");
    mk_tree(&src);
    let dst = pair.dir.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let (mut from, mut to) = (client_plain(&pair.from.addr).await, client_plain(&pair.to.addr).await);
    // Unspecified: a directory without a disk.img streams as TAR.
    let (wire, response) = within(
        "filesystem to filesystem copy",
        copy(&mut from, read_request(&src, pb::VolumeFormat::Unspecified), &mut to, write_target(&dst)),
    )
    .await
    .unwrap();
    assert_eq!(wire.header, Some(pb::VolumeHeader { format: pb::VolumeFormat::Tar as i32, size: 0 }));
    assert_eq!(response.target_path, s(&dst));

    let mut expected = inventory(&src);
    expected.retain(|(_, kind, _, _)| *kind != "special");
    assert_eq!(inventory(&dst), expected, "the trees differ");

    let (a, b) = (src.join("data/sparse.img"), dst.join("data/sparse.img"));
    // The sparse file's holes are not on the wire: data plus a little tar framing.
    let allocated_src: u64 = allocated(&a) + 64 * 1024;
    assert!(wire.data_bytes <= allocated_src, "{wire:?} carries more than the {allocated_src} bytes allocated");
    assert!(wire.data_bytes >= nonzero_bytes(&a, 96 * MIB), "{wire:?}");
    assert!(allocated(&b) <= allocated(&a) + MIB, "the copy is not sparse: {} vs {}", allocated(&b), allocated(&a));
    assert!(!dst.join(".cdi-archive.partial").exists(), "the staging directory was left behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_that_stops_before_its_end_commits_nothing() {
    let pair = mk_pair();
    let image = pair.dir.path().join("image.raw");
    make_raw(&image, 8 * MIB, 75);
    let volume = pair.dir.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    std::fs::write(volume.join("keep"), b"old").unwrap();
    let listing = || {
        let mut v: Vec<_> = std::fs::read_dir(&volume).unwrap().map(|e| e.unwrap().file_name()).collect();
        v.sort();
        v
    };
    let (mut from, mut to) = (client_plain(&pair.from.addr).await, client_plain(&pair.to.addr).await);

    // A client that forwards every extent but loses the end, then finishes its stream
    // cleanly (as a naive forwarder of a failed read would).
    let no_end = |c: &pb::VolumeChunk| !matches!(c.chunk, Some(pb::volume_chunk::Chunk::End(_)));
    let status = within(
        "a forwarder that lost the end",
        copy_filtered(&mut from, read_request(&image, pb::VolumeFormat::Raw), &mut to, write_target(&volume), no_end),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("without its end message"), "{status:?}");
    assert_eq!(listing(), ["keep"], "a stream without its end left something behind");

    // A client that goes away mid-stream.
    let (tx, rx) = mpsc::channel(8);
    tx.send(write_target(&volume)).await.unwrap();
    let header = pb::VolumeHeader { format: pb::VolumeFormat::Raw as i32, size: 8 * MIB };
    tx.send(chunk(pb::volume_chunk::Chunk::Header(header))).await.unwrap();
    tx.send(chunk(pb::volume_chunk::Chunk::Data(pb::DataExtent { offset: 0, data: vec![7; MIB as usize].into() })))
        .await
        .unwrap();
    let call = tokio::spawn(async move { to.write_volume(ReceiverStream::new(rx)).await });
    within("the writer to start", async {
        while !volume.join("disk.img.partial").exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(30);
    while pair.to.log().matches("volume write failed").count() < 2 {
        assert!(Instant::now() < deadline, "the mover did not notice the client leaving: {}", pair.to.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(listing(), ["keep"], "a cut-off stream left something behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_streams_are_invalid_arguments_and_leave_nothing() {
    let pair = mk_pair();
    let mut to = client_plain(&pair.to.addr).await;
    let out = pair.dir.path().join("out.raw");
    let header = |size| chunk(pb::volume_chunk::Chunk::Header(pb::VolumeHeader { format: 1, size }));
    let end = |length| chunk(pb::volume_chunk::Chunk::End(pb::VolumeEnd { length }));
    let data = |offset, len| chunk(pb::volume_chunk::Chunk::Data(pb::DataExtent { offset, data: vec![1; len].into() }));
    let zero = |offset, length| chunk(pb::volume_chunk::Chunk::Zero(pb::ZeroExtent { offset, length }));
    let cases: Vec<(Vec<pb::WriteVolumeRequest>, &str)> = vec![
        (vec![data(0, 10)], "must start with a header"),
        (vec![header(100), data(0, 10), data(20, 10)], "the next extent must start at 10"),
        (vec![header(100), data(0, 10), zero(5, 95)], "the next extent must start at 10"),
        (vec![header(100), zero(0, 101)], "ends beyond the volume size 100"),
        (vec![header(100), data(0, 10), end(10)], "short of the volume size 100"),
        (vec![header(100), zero(0, 100)], "stopped at offset 100 without its end message"),
        (vec![header(100), zero(0, 100), end(50)], "says it is 50 bytes long"),
        (vec![header(100), zero(0, 100), end(100), zero(100, 1)], "goes on after its end"),
        (vec![header(100), header(100)], "second header"),
        (vec![header(100), write_target(&out)], "only the first message names the target"),
        (vec![chunk(pb::volume_chunk::Chunk::Header(pb::VolumeHeader { format: 2, size: 5 }))], "size 0"),
    ];
    for (chunks, needle) in cases {
        let msgs: Vec<_> = std::iter::once(write_target(&out)).chain(chunks).collect();
        let status = within("a refusal", to.write_volume(tokio_stream::iter(msgs))).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{needle}: {status:?}");
        assert!(status.message().contains(needle), "{:?} lacks {needle:?}", status.message());
        assert!(!out.exists() && !pair.dir.path().join("out.raw.partial").exists(), "{needle}: left a file");
    }
}

/// A client may cut its stream anywhere: extents that start and end inside blocks, data
/// longer than the writer's buffers, zeros shorter than a block. Written by several workers
/// at once, every byte must still land where it belongs, on a device (direct I/O, old bytes
/// to wipe) and in a file.
#[tokio::test(flavor = "multi_thread")]
async fn extents_off_block_boundaries_land_byte_for_byte() {
    let pair = mk_pair();
    let mut to = client_plain(&pair.to.addr).await;
    let size = 8 * MIB;
    // (data?, length): tiles [0, size).
    let mut layout: Vec<(bool, u64)> = vec![(true, 100), (false, 5000), (true, 3), (false, 200 << 10), (true, 3 * MIB)];
    layout.extend([(false, 1), (true, 4095), (false, 4097)]);
    for _ in 0..40 {
        layout.extend([(true, 1000), (false, 96)]);
    }
    layout.push((true, 70 << 10));
    let used: u64 = layout.iter().map(|(_, len)| len).sum();
    layout.push((false, size - used - 7));
    layout.push((true, 7));
    let mut expected = vec![0u8; size as usize];
    let mut msgs = vec![chunk(pb::volume_chunk::Chunk::Header(pb::VolumeHeader { format: 1, size }))];
    let (mut offset, mut rng) = (0u64, Rng::new(9));
    for (data, len) in layout {
        let c = if data {
            let bytes = &mut expected[offset as usize..][..len as usize];
            rng.fill(bytes);
            pb::volume_chunk::Chunk::Data(pb::DataExtent { offset, data: bytes.to_vec().into() })
        } else {
            pb::volume_chunk::Chunk::Zero(pb::ZeroExtent { offset, length: len })
        };
        msgs.push(chunk(c));
        offset += len;
    }
    assert_eq!(offset, size);
    msgs.push(chunk(pb::volume_chunk::Chunk::End(pb::VolumeEnd { length: size })));
    let dev = LoopDev::new(pair.dir.path(), size, 6);
    let file = pair.dir.path().join("out.raw");
    for target in [&dev.path, &file] {
        let stream: Vec<_> = std::iter::once(write_target(target)).chain(msgs.iter().cloned()).collect();
        within("a write", to.write_volume(tokio_stream::iter(stream))).await.unwrap();
        let got = std::fs::read(target).unwrap();
        assert_eq!(got.len(), expected.len(), "{}", target.display());
        let first = got.iter().zip(&expected).position(|(a, b)| a != b);
        assert_eq!(first, None, "{}: the first wrong byte", target.display());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn what_cannot_be_read_is_refused_before_streaming() {
    let pair = mk_pair();
    let mut from = client_plain(&pair.from.addr).await;
    let missing = pair.dir.path().join("missing");
    let status = from.read_volume(read_request(&missing, pb::VolumeFormat::Unspecified)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    let empty_dir = pair.dir.path().join("empty");
    std::fs::create_dir(&empty_dir).unwrap();
    let status = from.read_volume(read_request(&empty_dir, pb::VolumeFormat::Raw)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("no disk.img"), "{status:?}");
    let dev = LoopDev::new(pair.dir.path(), MIB, 4);
    let status = from.read_volume(read_request(&dev.path, pb::VolumeFormat::Tar)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    // A TAR stream is only extracted into a directory.
    let mut to = client_plain(&pair.to.addr).await;
    let tar = read_request(&empty_dir, pb::VolumeFormat::Tar);
    let status = within("a refusal", copy(&mut from, tar, &mut to, write_target(&dev.path))).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("extracted into a directory"), "{status:?}");
}

/// `cdi-mover client` as a script uses it: copy-volume between the movers, then
/// read-volume into a local file and write-volume back from it.
#[test]
fn the_cli_copies_reads_and_writes_volumes() {
    let pair = mk_pair();
    let size = 24 * MIB;
    let image = pair.dir.path().join("image.raw");
    make_raw(&image, size, 74);
    let src = loop_with(pair.dir.path(), &image, 5);
    let client = |addr: &str, args: &[&str]| {
        let mut c = Command::new(mover_bin());
        c.args(["client", "--insecure-plaintext", "--address", addr]).args(args);
        let out = with_timeout(c, Duration::from_secs(120));
        assert_ok(&out);
        let line = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string();
        serde_json::from_str::<serde_json::Value>(&line).unwrap_or_else(|_| panic!("not a JSON report: {line:?}"))
    };
    let volume = pair.dir.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    let copied = client(&pair.from.addr, &["copy-volume", s(&src.path), s(&volume), "--to", &pair.to.addr]);
    assert_eq!(copied["format"], "raw");
    assert_eq!(copied["data_bytes"], nonzero_bytes(&image, size));
    assert_same_prefix(&image, "raw", &volume.join("disk.img"), size);

    // The volume's disk.img, read back here, then written to a file on the other node.
    let local = pair.dir.path().join("local.raw");
    let read = client(&pair.to.addr, &["read-volume", s(&src.path), s(&local)]);
    assert_eq!(read["target"], s(&local));
    assert_same(&image, "raw", &local);
    assert!(allocated(&local) <= allocated(&image) + MIB);
    let remote = pair.dir.path().join("remote.raw");
    let written = client(&pair.from.addr, &["write-volume", s(&local), s(&remote)]);
    assert_eq!(written["zero_bytes"].as_u64().unwrap() + written["data_bytes"].as_u64().unwrap(), size);
    assert_same(&image, "raw", &remote);

    // A tree goes as TAR, and a tar file saved here goes back as TAR.
    let tree = pair.dir.path().join("tree");
    std::fs::create_dir_all(tree.join("a/b")).unwrap();
    std::fs::write(tree.join("a/b/f"), b"hello").unwrap();
    let tar = pair.dir.path().join("tree.tar");
    assert_eq!(client(&pair.from.addr, &["read-volume", s(&tree), s(&tar)])["format"], "tar");
    let again = pair.dir.path().join("again");
    std::fs::create_dir(&again).unwrap();
    assert_eq!(client(&pair.to.addr, &["write-volume", s(&tar), s(&again)])["format"], "tar");
    assert_eq!(std::fs::read(again.join("a/b/f")).unwrap(), b"hello");
}

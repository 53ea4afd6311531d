//! The copy engine and both qcow2 decoders (random access and streaming) writing to a
//! storage that fails on request (`disk::mem`): a failure at any step is a typed error and
//! the image is never marked complete; cancellation mid-extent stops within the jobs
//! already running. Images are made by qemu-img, which is also the oracle of what a
//! conversion that succeeds must hold.

use std::io::Cursor;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use super::{Header, StreamLimits, random, stream};
use crate::copy::{self, CopyConfig, Counters};
use crate::disk::mem::{Fault, Life, MemHandle, MemStorage};
use crate::disk::{Storage, TargetError};
use crate::error::ImportError;
use crate::progress::Progress;
use crate::source::MemSource;

/// Small chunks and two workers: many steps from a small image, and real concurrency.
const CFG: CopyConfig = CopyConfig { workers: 2, chunk: 64 << 10, buffers: 4 };
/// Room past the image for the streaming decoder's spool.
const SPOOL: u64 = 8 << 20;
const KIB: u64 = 1024;

/// A qcow2 image in memory, and the raw disk it converts to.
#[derive(Debug)]
struct Image {
    name: &'static str,
    qcow2: Arc<Vec<u8>>,
    raw: Vec<u8>,
    header: Header,
}

/// `size` bytes of disk: pseudo-random 4 KiB blocks, every seventh one zero, and a zero
/// run of 64 KiB a quarter of the way in (zero clusters, zero jobs).
fn mk_raw(size: u64, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut raw = vec![0u8; size as usize];
    for (i, block) in raw.chunks_mut(4096).enumerate() {
        let at = i as u64 * 4096;
        if i % 7 == 3 || (size / 4..size / 4 + 64 * KIB).contains(&at) {
            continue;
        }
        for b in block.iter_mut() {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            *b = (state >> 56) as u8;
        }
    }
    raw
}

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("qemu-img is needed for these tests (apt-get install qemu-utils): {e}"));
    assert!(out.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `raw` converted by qemu-img with `opts`; `grow_to` then resizes it, which moves the L1
/// table past the data (the streaming decoder must spool everything before it).
fn mk_image(name: &'static str, raw: Vec<u8>, opts: &[&str], grow_to: Option<u64>) -> Image {
    let dir = tempfile::tempdir().unwrap();
    let (raw_path, img) = (dir.path().join("disk.raw"), dir.path().join("disk.qcow2"));
    std::fs::write(&raw_path, &raw).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let mut args = vec!["convert".to_string(), "-O".into(), "qcow2".into()];
    args.extend(opts.iter().map(|o| o.to_string()));
    args.extend([s(&raw_path), s(&img)]);
    qemu_img(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut raw = raw;
    if let Some(size) = grow_to {
        qemu_img(&["resize", &s(&img), &size.to_string()]);
        raw.resize(size as usize, 0);
    }
    let qcow2 = std::fs::read(&img).unwrap();
    let header = Header::parse(&qcow2).unwrap();
    assert_eq!(header.virtual_size, raw.len() as u64);
    Image { name, qcow2: Arc::new(qcow2), raw, header }
}

fn images() -> Vec<Arc<Image>> {
    let small = |seed| mk_raw(512 * KIB, seed);
    vec![
        Arc::new(mk_image("plain", small(1), &["-o", "cluster_size=4096"], None)),
        Arc::new(mk_image("compressed", small(2), &["-c", "-o", "cluster_size=4096"], None)),
        Arc::new(mk_image("l1-at-the-end", small(3), &["-o", "cluster_size=4096"], Some(4 << 20))),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoder {
    Random,
    Stream,
}

const DECODERS: [Decoder; 2] = [Decoder::Random, Decoder::Stream];

/// The storages the engine meets: a sparse file, a file written directly (allocation in
/// job order), a block device (zero ranges written).
/// A storage kind's name, and how to make one for an image of the given size.
type MkStorage = (&'static str, fn(u64) -> MemStorage);

fn storages() -> Vec<MkStorage> {
    vec![
        ("file", |size| MemStorage::new(size, SPOOL)),
        ("direct file", |size| MemStorage::new(size, SPOOL).ordered()),
        ("block", |size| MemStorage::new(size, SPOOL).block_like()),
    ]
}

/// Converts `image` into `storage` and finishes it as an import does (`import::finish`), on
/// a thread of its own so that a deadlock fails the test instead of hanging it.
fn convert(
    image: &Arc<Image>,
    decoder: Decoder,
    storage: MemStorage,
    cancel: Arc<AtomicBool>,
) -> Result<(), ImportError> {
    let image = image.clone();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(run(&image, decoder, storage, cancel));
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("the conversion did not end within 60 s: a worker or the producer probably deadlocked")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the conversion panicked"),
    }
}

fn run(image: &Image, decoder: Decoder, storage: MemStorage, cancel: Arc<AtomicBool>) -> Result<(), ImportError> {
    let h = &image.header;
    let need_zero = !storage.unwritten_reads_zero();
    let counters = Counters::default();
    let copied = match decoder {
        Decoder::Random => {
            let src = MemSource(image.qcow2.clone());
            copy::run(CFG, &storage, Some(&src), &counters, cancel, |sink| random::convert(h, &src, sink, need_zero))
        }
        Decoder::Stream => {
            let mut input = Cursor::new(&image.qcow2[..]);
            // Nothing spooled in memory: what waits for its metadata goes to the storage.
            let limits = StreamLimits { spool_bytes: 0, ..StreamLimits::default() };
            copy::run(CFG, &storage, None, &counters, cancel, |sink| {
                stream::convert(h, &mut input, sink, need_zero, limits, Some(&storage))
            })
        }
    };
    crate::import::finish(storage, copied.map(|()| h.virtual_size), vec!["qcow2"], None, &Progress::new()).map(|_| ())
}

/// Runs without faults; returns the handle and how many steps a conversion takes.
fn clean_run(image: &Arc<Image>, decoder: Decoder, storage: MemStorage) -> (MemHandle, u64) {
    let handle = storage.handle();
    let what = format!("{} image, {decoder:?} decoder", image.name);
    convert(image, decoder, storage, Arc::default()).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(handle.life(), Life::Complete, "{what}");
    let steps = handle.steps();
    (handle, steps)
}

#[test]
fn both_decoders_convert_into_every_kind_of_storage_as_qemu_img_does() {
    for image in images() {
        for decoder in DECODERS {
            for (kind, mk) in storages() {
                let (handle, _) = clean_run(&image, decoder, mk(image.header.virtual_size));
                let got = handle.read(0, image.raw.len() as u64);
                assert!(got == image.raw, "{} image, {decoder:?} decoder, {kind} storage: wrong bytes", image.name);
            }
        }
    }
}

#[test]
fn the_streaming_decoder_parks_on_the_storage_what_waits_for_an_l1_table_at_the_end() {
    let image = images().into_iter().find(|i| i.name == "l1-at-the-end").unwrap();
    let (_, stream_steps) = clean_run(&image, Decoder::Stream, MemStorage::new(image.header.virtual_size, SPOOL));
    let (_, random_steps) = clean_run(&image, Decoder::Random, MemStorage::new(image.header.virtual_size, SPOOL));
    // Each cluster parked is a spool write and a spool read on top of its own write.
    assert!(stream_steps > random_steps + 100, "stream {stream_steps} steps, random {random_steps}");
}

/// What a fault must surface as.
fn assert_typed(err: &ImportError, fault: Fault, what: &str) {
    let source = match err {
        ImportError::Target(TargetError::Io { source, .. } | TargetError::Finish { source, .. }) => source,
        other => panic!("{what}: {fault:?} surfaced as {other:?}, not as the target's I/O error"),
    };
    let expected = match fault {
        Fault::Eio => source.raw_os_error() == Some(libc::EIO),
        Fault::NoSpace => source.kind() == std::io::ErrorKind::StorageFull,
        Fault::ShortWrite => source.kind() == std::io::ErrorKind::WriteZero,
        Fault::Slow(_) | Fault::Hold => false,
    };
    assert!(expected, "{what}: {fault:?} surfaced as {source:?}");
    assert_eq!(err.reason(), crate::error::Reason::TargetFailed, "{what}");
}

#[test]
fn a_failure_at_any_step_is_a_typed_error_and_the_image_is_never_complete() {
    const FAULTS: [Fault; 3] = [Fault::Eio, Fault::NoSpace, Fault::ShortWrite];
    for image in images() {
        for decoder in DECODERS {
            for (kind, mk) in storages() {
                let size = image.header.virtual_size;
                let (_, steps) = clean_run(&image, decoder, mk(size));
                // The last step is the flush in `finish`: a failed fsync is one of them.
                for step in 0..steps {
                    let fault = FAULTS[step as usize % FAULTS.len()];
                    let what =
                        format!("{} image, {decoder:?} decoder, {kind} storage, {fault:?} at step {step}", image.name);
                    let storage = mk(size).fault_at(step, fault);
                    let handle = storage.handle();
                    let err = convert(&image, decoder, storage, Arc::default())
                        .err()
                        .unwrap_or_else(|| panic!("{what}: the conversion succeeded"));
                    assert_typed(&err, fault, &what);
                    assert_eq!(handle.life(), Life::Discarded, "{what}");
                }
            }
        }
    }
}

#[test]
fn slow_storage_is_waited_for_and_the_image_is_right() {
    let image = images().into_iter().next().unwrap();
    for decoder in DECODERS {
        let storage =
            MemStorage::new(image.header.virtual_size, SPOOL).fault_from(0, Fault::Slow(Duration::from_millis(2)));
        let (handle, _) = clean_run(&image, decoder, storage);
        assert!(handle.read(0, image.raw.len() as u64) == image.raw, "{decoder:?}: wrong bytes");
    }
}

#[test]
fn cancellation_mid_extent_stops_within_the_jobs_already_running() {
    // One long data extent: 4 MiB of 64 KiB clusters, coalesced into chunk-sized jobs.
    let mut raw = vec![0u8; 4 << 20];
    let mut state = 7u64;
    for b in raw.iter_mut() {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *b = (state >> 56) as u8 | 1;
    }
    let image = Arc::new(mk_image("one extent", raw, &[], None));
    const HELD: u64 = 5;
    for decoder in DECODERS {
        // Every step from HELD on waits: whatever each worker does next is held until the
        // cancellation is in place, so nothing races past it.
        let storage = MemStorage::new(image.header.virtual_size, SPOOL).fault_from(HELD, Fault::Hold);
        let handle = storage.handle();
        let cancel = Arc::new(AtomicBool::new(false));
        let (image2, cancel2) = (image.clone(), cancel.clone());
        let running = std::thread::spawn(move || convert(&image2, decoder, storage, cancel2));
        handle.wait_held(Duration::from_secs(60));
        cancel.store(true, Ordering::SeqCst);
        handle.release();
        let result = running.join().expect("the conversion thread panicked");
        assert!(matches!(result, Err(ImportError::Cancelled)), "{decoder:?}: {result:?}");
        assert_eq!(handle.life(), Life::Discarded, "{decoder:?}");
        // Each worker finishes the one write it was held in (its job's only one), no more.
        let steps = handle.steps();
        assert!(steps <= HELD + CFG.workers as u64, "{decoder:?}: {steps} steps after cancelling at {HELD}");
        let chunks_in_extent = image.raw.len() as u64 / CFG.chunk as u64;
        assert!(steps < chunks_in_extent, "{decoder:?}: the extent was not cut short");
    }
}

//! The writer's promise on real storage: a disk that is not finished is cleaned up, however
//! it goes away (an early return, a panic, a failed flush), on a loop device and on a thin
//! volume that runs out of space under its filesystem; and what a file import leaves in the
//! page cache.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cdi_mover::disk::{TargetError, TargetOptions, TargetPlan};

use crate::support::*;

/// An ext2 filesystem on a loop device whose backing file lives on a tmpfs far smaller than
/// the device: a thin LUN that runs out of space. Buffered writes land in the page cache;
/// their writeback fails, and `fsync` reports it.
struct ThinFs {
    pub mount: PathBuf,
    pool: PathBuf,
    dev: String,
}

impl ThinFs {
    fn new(dir: &Path, pool: u64, device: u64) -> ThinFs {
        ensure_tool("mkfs.ext2", "e2fsprogs");
        let pool_dir = dir.join("pool");
        let mount = dir.join("fs");
        std::fs::create_dir_all(&pool_dir).unwrap();
        std::fs::create_dir_all(&mount).unwrap();
        run(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={pool}")]).arg("tmpfs").arg(&pool_dir));
        let backing = pool_dir.join("lun");
        std::fs::File::create(&backing).unwrap().set_len(device).unwrap();
        let out = run(Command::new("losetup").args(["-f", "--show"]).arg(&backing));
        let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let thin = ThinFs { mount, pool: pool_dir, dev };
        run(Command::new("mkfs.ext2").args(["-q", &thin.dev]));
        run(Command::new("mount").arg(&thin.dev).arg(&thin.mount));
        thin
    }
}

impl Drop for ThinFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        let _ = Command::new("umount").arg(&self.pool).status();
    }
}

#[test]
fn a_failed_flush_on_a_thin_volume_out_of_space_leaves_no_partial_file() {
    let dir = tempdir();
    let thin = ThinFs::new(dir.path(), 8 * MIB, 64 * MIB);
    let out = thin.mount.join("out.raw");
    let size = 24 * MIB;
    // Buffered (no O_DIRECT): the writes succeed into the page cache, the flush fails.
    let disk = TargetPlan::inspect(&out, TargetOptions::default()).unwrap().open(Some(size), false).unwrap();
    let mut rng = Rng::new(5);
    let mut buf = vec![0u8; MIB as usize];
    for i in 0..size / MIB {
        rng.fill(&mut buf);
        disk.write(&buf, i * MIB).unwrap();
    }
    let err = disk.finish(size).expect_err("the pool is smaller than the data: the flush must fail");
    assert!(matches!(err, TargetError::Finish { op: "flush", .. }), "{err}");
    assert!(!thin.mount.join("out.raw.partial").exists(), "a failed flush left the partial image behind");
    assert!(!out.exists());
}

#[test]
fn a_block_device_dropped_unfinished_has_both_ends_wiped() {
    let dir = tempdir();
    let dev = LoopDev::new(dir.path(), 8 * MIB, 3);
    let read = |at: u64, len: u64| {
        let mut b = vec![0u8; len as usize];
        std::fs::File::open(&dev.path).unwrap().read_exact_at(&mut b, at).unwrap();
        b
    };
    let middle = read(4 * MIB, MIB);
    {
        let disk = TargetPlan::inspect(&dev.path, TargetOptions::default()).unwrap().open(Some(6 * MIB), true).unwrap();
        let mut data = cdi_mover::direct_io::AlignedBuf::new(MIB as usize);
        data.set_len(MIB as usize);
        data.fill(0xab);
        disk.write(&data, 0).unwrap();
        // Gone without finish or abort: an early return, or a panic unwinding.
    }
    assert!(read(0, MIB).iter().all(|&b| b == 0), "the head still holds the half-written image");
    assert!(read(7 * MIB, MIB).iter().all(|&b| b == 0), "the tail was not wiped");
    assert_eq!(read(4 * MIB, MIB), middle, "only the ends are wiped");
}

/// Files are written behind through the page cache, which the finished import leaves
/// without the image: a pod is not charged for the image it wrote.
#[test]
fn a_finished_file_import_leaves_the_image_out_of_the_page_cache() {
    let dir = tempdir();
    let image = dir.path().join("image.raw");
    let size = 320 << 20;
    make_raw(&image, size, 11);
    let out = dir.path().join("out.raw");
    assert_ok(&import(s(&image), &out, &[]));
    // Before anything reads the output back into the cache.
    let fincore = run(Command::new("fincore").args(["--bytes", "--noheadings", "--output", "RES"]).arg(&out));
    let cached: u64 = String::from_utf8_lossy(&fincore.stdout).trim().parse().expect("fincore prints bytes");
    let data = allocated(&out);
    assert!(data > 128 << 20, "the image holds more data than the write-behind windows ({data} bytes)");
    assert!(cached <= 1 << 20, "{cached} bytes of the {data} written are still in the page cache");
    assert_same(&image, "raw", &out);
}

/// Bytes of the first `len` of `path` in the page cache (`mincore` over a mapping of it:
/// `fincore` reads a device's size as 0 and reports nothing).
fn resident(path: &Path, len: u64) -> u64 {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).unwrap();
    let page = 4096usize;
    let len = len as usize;
    let mut pages = vec![0u8; len.div_ceil(page)];
    // SAFETY: a fresh read-only shared mapping of an open file, only passed to `mincore` (never
    // read through) and unmapped before `file` is dropped; `pages` has one byte per page.
    unsafe {
        let map = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0);
        assert_ne!(map, libc::MAP_FAILED, "mmap of {}: {}", path.display(), std::io::Error::last_os_error());
        let rc = libc::mincore(map, len, pages.as_mut_ptr());
        let err = std::io::Error::last_os_error();
        libc::munmap(map, len);
        assert_eq!(rc, 0, "mincore of {}: {err}", path.display());
    }
    pages.iter().filter(|&&p| p & 1 == 1).count() as u64 * page as u64
}

/// A block device written from a stream is flushed a stretch at a time, not only at the end,
/// holds the image after (written directly, or parked in the page cache while a flush ran),
/// and never has more than a few windows of it cached. Flushes are counted by the device
/// itself: the flush requests it completed (`stat`, field 16).
#[test]
fn a_streamed_block_import_flushes_the_device_while_it_writes() {
    streamed_block_import(true);
}

/// The same through the page cache, as for a device that takes no `O_DIRECT`: written behind.
#[test]
fn a_streamed_block_import_without_direct_io_is_written_behind_and_flushed() {
    streamed_block_import(false);
}

fn streamed_block_import(direct: bool) {
    let dir = tempdir();
    let size = 640 * MIB;
    let backing = dir.path().join("device.img");
    std::fs::File::create(&backing).unwrap().set_len(size).unwrap();
    let dev = LoopDev::over(backing, &[]);
    let stat = Path::new("/sys/block").join(dev.path.file_name().unwrap()).join("stat");
    let flushes = || -> u64 {
        let text = std::fs::read_to_string(&stat).unwrap();
        text.split_whitespace().nth(15).expect("a kernel that counts flushes").parse().unwrap()
    };
    let before = flushes();
    let plan = TargetPlan::inspect(&dev.path, TargetOptions::default()).unwrap();
    let disk = plan.open_stream(Some(size), direct).unwrap();
    let mut data = cdi_mover::direct_io::AlignedBuf::new(2 * MIB as usize);
    data.set_len(2 * MIB as usize);
    for i in 0..size / (2 * MIB) {
        data.fill(i as u8 | 1);
        disk.write(&data, i * 2 * MIB).unwrap();
    }
    // Before the device is closed: its last close drops its page cache whatever we did.
    let cached = resident(&dev.path, size);
    assert!(cached <= 160 * MIB, "{cached} bytes of the 640 MiB written are in the page cache: not written behind");
    disk.finish(size).unwrap();
    let made = flushes() - before;
    // Twenty stretches of 32 MiB: at least one flush behind (requests made while one runs are
    // folded into the next), and the final one.
    assert!(made >= 2, "{made} flush(es) while 640 MiB were written: none behind the writes");
    // Every chunk: with direct I/O some went through the page cache (parked while a flush
    // ran), the rest not.
    let mut got = vec![0u8; 2 * MIB as usize];
    let device = std::fs::File::open(&dev.path).unwrap();
    for i in 0..size / (2 * MIB) {
        device.read_exact_at(&mut got, i * 2 * MIB).unwrap();
        assert!(got.iter().all(|&b| b == i as u8 | 1), "chunk {i} does not hold what was written");
    }
}

//! The open disk being written: positioned writes, zeroing, the spool, and the end of it
//! all, finished (fsync'd, renamed) or aborted (removed, wiped).

use std::fs::File;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::TargetError;
use super::flush_behind::FlushBehind;
use super::write_behind::WriteBehind;
use crate::direct_io::{self, AlignedBuf, IoMode};

/// Mode of `disk.img`, as CDI leaves it.
const DISK_IMAGE_MODE: u32 = 0o660;
/// How much of each end of a block device is zeroed when an import fails after writing.
const WIPE_ON_FAILURE: u64 = 1 << 20;

/// An open target being written. Shared by the copy workers (`&Disk` is `Sync`).
#[derive(Debug)]
pub struct Disk {
    /// The file being written (`.partial` for files, the device itself for block).
    path: PathBuf,
    /// Where the file goes once complete (files only).
    final_path: Option<PathBuf>,
    file: File,
    mode: IoMode,
    /// Writes must end at or before this offset.
    limit: u64,
    is_block: bool,
    preallocate: bool,
    /// The length the file has while written (files; the image's size when known up
    /// front), or the device size.
    size: Option<u64>,
    /// The length a file ends with whatever the image's size: a volume's usable space, or
    /// the size asked for.
    fixed_len: Option<u64>,
    touched: AtomicBool,
    bytes_written: AtomicU64,
    /// Room past the image for a streaming decoder's spool: (start, length).
    spool: Option<(u64, u64)>,
    /// End of the spool bytes written, to clean them up.
    spool_end: AtomicU64,
    /// Writes through the page cache (files; block devices written from a stream without
    /// `O_DIRECT`): their write-back, started early and bounded.
    write_behind: Option<WriteBehind>,
    /// Block devices written from a stream: their write cache flushed a stretch at a time.
    flush_behind: Option<FlushBehind>,
    /// A block device written with `O_DIRECT` from a stream: a second handle, through the
    /// page cache, for the writes parked while a flush runs (see `flush_behind`).
    cache: Option<File>,
    /// Until a successful [`Disk::finish`]: dropping the disk cleans up (see `Drop`).
    armed: bool,
}

/// Where and how a [`Disk`] writes, as its [`super::TargetPlan`] decided.
#[derive(Debug)]
pub(super) struct Layout {
    /// The file being written (`.partial` for files, the device itself for block).
    pub path: PathBuf,
    /// Where the file goes once complete (files only).
    pub final_path: Option<PathBuf>,
    pub is_block: bool,
    /// Writes must end at or before this offset.
    pub limit: u64,
    pub preallocate: bool,
    /// The length the file has while written, or the device size.
    pub size: Option<u64>,
    /// The length a file ends with whatever the image's size.
    pub fixed_len: Option<u64>,
    /// Room past the image for a streaming decoder's spool: (start, length).
    pub spool: Option<(u64, u64)>,
}

/// What [`Disk::finish`] reports.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Where the image is now.
    pub path: PathBuf,
    /// Final length of the file or size of the device.
    pub size: u64,
    /// Data bytes written (zero ranges excluded).
    pub bytes_written: u64,
}

impl Disk {
    pub(super) fn new(file: File, mode: IoMode, layout: Layout) -> Disk {
        let Layout { path, final_path, is_block, limit, preallocate, size, fixed_len, spool } = layout;
        Disk {
            path,
            final_path,
            file,
            mode,
            limit,
            is_block,
            preallocate,
            size,
            fixed_len,
            touched: AtomicBool::new(false),
            bytes_written: AtomicU64::new(0),
            spool,
            spool_end: AtomicU64::new(0),
            write_behind: (!is_block && mode == IoMode::Buffered).then(WriteBehind::default),
            flush_behind: None,
            cache: None,
            armed: true,
        }
    }

    /// For a block device taking a stream: its write cache is flushed a stretch at a time on
    /// a helper thread (see `flush_behind`), so little is left for [`Disk::finish`] to wait
    /// for, and a flush holds no writer up: with `O_DIRECT`, writes made while it runs are
    /// parked in the page cache; through the page cache, they are written back behind, as a
    /// file's. Without the helper (it could not start) only the end is slower.
    pub(super) fn stream_behind(&mut self) {
        if !self.is_block || self.flush_behind.is_some() {
            return;
        }
        match self.mode {
            IoMode::Buffered => self.write_behind = Some(WriteBehind::default()),
            IoMode::Direct { .. } => match std::fs::OpenOptions::new().write(true).open(&self.path) {
                Ok(cache) => self.cache = Some(cache),
                Err(e) => tracing::debug!(error = %e, "no parking: writes wait out each flush"),
            },
        }
        match FlushBehind::start(&self.file) {
            Ok(fb) => self.flush_behind = Some(fb),
            Err(e) => tracing::debug!(error = %e, "no flush-behind"),
        }
    }

    /// Room past the image where a streaming decoder may park bytes: `(start, length)`.
    pub fn spool_region(&self) -> Option<(u64, u64)> {
        self.spool
    }

    /// Parks `data` at `offset` inside [`Disk::spool_region`].
    pub fn spool_write(&self, data: &[u8], offset: u64) -> Result<(), TargetError> {
        let (start, len) =
            self.spool.ok_or(TargetError::NoSpace { path: self.path.clone(), needed: offset, available: 0 })?;
        let end = offset + data.len() as u64;
        if offset < start || end > start + len {
            return Err(TargetError::NoSpace { path: self.path.clone(), needed: end, available: start + len });
        }
        self.touched.store(true, Ordering::Relaxed);
        self.spool_end.fetch_max(end, Ordering::Relaxed);
        let result = match self.mode {
            IoMode::Direct { align } if !direct_io::is_aligned(data, offset, align) => {
                self.write_bounced(data, offset, align)
            }
            _ => direct_io::write_all_at(&self.file, data, offset),
        };
        result.map_err(|source| TargetError::Io { op: "spool to", path: self.path.clone(), offset, source })?;
        self.count_for_flush(data.len());
        Ok(())
    }

    fn count_for_flush(&self, len: usize) {
        if let Some(fb) = &self.flush_behind {
            fb.wrote(len as u64);
        }
    }

    /// Reads back `len` parked bytes from `offset`.
    pub fn spool_read(&self, offset: u64, len: usize) -> Result<Vec<u8>, TargetError> {
        let align = match self.mode {
            IoMode::Direct { align } => align as u64,
            IoMode::Buffered => 1,
        };
        let start = offset / align * align;
        let span = (offset + len as u64).next_multiple_of(align) - start;
        let mut buf = AlignedBuf::new(span as usize);
        buf.set_len(span as usize);
        self.read_into(&mut buf, start).map_err(|source| TargetError::Io {
            op: "read the spool of",
            path: self.path.clone(),
            offset,
            source,
        })?;
        let from = (offset - start) as usize;
        Ok(buf[from..from + len].to_vec())
    }

    /// Whether ranges never written read as zero (a fresh file, sparse or preallocated).
    /// When false, every zero range of the image must go through [`Disk::zero`].
    pub fn unwritten_reads_zero(&self) -> bool {
        !self.is_block
    }

    /// Whether jobs should write one after another, in image order (files: their layout
    /// follows the image, and write-behind keeps one mark; see `copy::Turns`).
    pub fn wants_ordered_writes(&self) -> bool {
        !self.is_block
    }

    /// Gives back the blocks of `[offset, offset + len)` of a file target: it reads as zero
    /// again, like a range never written.
    pub fn deallocate(&self, offset: u64, len: u64) -> Result<(), TargetError> {
        direct_io::punch_file_range(&self.file, offset, len).map_err(|source| TargetError::Io {
            op: "punch a hole in",
            path: self.path.clone(),
            offset,
            source,
        })
    }

    pub fn io_mode(&self) -> IoMode {
        self.mode
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The unit in which [`Disk::zero`] works without writing: logical blocks for devices.
    pub(super) fn zero_granularity(&self) -> u64 {
        match self.mode {
            IoMode::Direct { align } => align as u64,
            IoMode::Buffered if self.is_block => 4096,
            IoMode::Buffered => 1,
        }
    }

    fn check_limit(&self, offset: u64, len: u64) -> Result<(), TargetError> {
        let end = offset.saturating_add(len);
        if end > self.limit {
            return Err(TargetError::NoSpace { path: self.path.clone(), needed: end, available: self.limit });
        }
        Ok(())
    }

    /// Writes `data` at `offset`. Direct I/O needs aligned memory, offset and length; other
    /// writes (the image's last partial block, odd sources) go through an aligned bounce
    /// buffer that first reads the partial blocks it covers. That read-modify-write is why
    /// callers must never have two writes touching the same aligned block in flight at once.
    pub fn write(&self, data: &[u8], offset: u64) -> Result<(), TargetError> {
        if data.is_empty() {
            return Ok(());
        }
        self.check_limit(offset, data.len() as u64)?;
        self.touched.store(true, Ordering::Relaxed);
        let result = if let Some(cache) = self.parking(offset, data.len() as u64) {
            direct_io::write_all_at(cache, data, offset)
                .and_then(|()| direct_io::start_writeback(cache, offset, data.len() as u64))
        } else {
            match self.mode {
                IoMode::Direct { align } if !direct_io::is_aligned(data, offset, align) => {
                    self.write_bounced(data, offset, align)
                }
                _ => direct_io::write_all_at(&self.file, data, offset),
            }
        };
        result.map_err(|source| TargetError::Io { op: "write", path: self.path.clone(), offset, source })?;
        if let Some(wb) = &self.write_behind {
            wb.wrote(&self.file, offset, data.len() as u64).map_err(|source| TargetError::Io {
                op: "write back",
                path: self.path.clone(),
                offset,
                source,
            })?;
        }
        self.count_for_flush(data.len());
        self.bytes_written.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The page-cache handle, when a write of `[offset, offset + len)` is to be parked there.
    fn parking(&self, offset: u64, len: u64) -> Option<&File> {
        let (cache, fb) = (self.cache.as_ref()?, self.flush_behind.as_ref()?);
        fb.park(offset, len).then_some(cache)
    }

    fn write_bounced(&self, data: &[u8], offset: u64, align: usize) -> io::Result<()> {
        let a = align as u64;
        let start = offset / a * a;
        let head = (offset - start) as usize;
        let len = (head + data.len()).next_multiple_of(align);
        let mut bounce = AlignedBuf::new(len);
        bounce.set_len(len);
        if head > 0 {
            // Keep what the first block already holds in front of our bytes.
            self.read_into(&mut bounce[..align], start)?;
        }
        if !(head + data.len()).is_multiple_of(align) && (head == 0 || len > align) {
            // Keep what the last block already holds behind our bytes (zeros past the end).
            self.read_into(&mut bounce[len - align..], start + (len - align) as u64)?;
        }
        bounce[head..head + data.len()].copy_from_slice(data);
        direct_io::write_all_at(&self.file, &bounce, start)
    }

    fn read_into(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match direct_io::read_exact_at(&self.file, buf, offset) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(()),
            other => other,
        }
    }

    /// Makes `[offset, offset + len)` read as zero. On files this is a no-op unless data was
    /// written there (we never write twice); on block devices it punches or zeroes the range,
    /// writing zeros only for partial blocks at its ends.
    pub fn zero(&self, offset: u64, len: u64) -> Result<(), TargetError> {
        if len == 0 || !self.is_block {
            return Ok(());
        }
        let end = offset.saturating_add(len);
        if let Some(size) = self.size
            && end > size
        {
            return Err(TargetError::NoSpace { path: self.path.clone(), needed: end, available: size });
        }
        self.touched.store(true, Ordering::Relaxed);
        let g = self.zero_granularity();
        let inner_start = offset.next_multiple_of(g);
        let inner_end = end / g * g;
        let io_err = |source| TargetError::Io { op: "zero", path: self.path.clone(), offset, source };
        if inner_start >= inner_end {
            return self.write_zeros(offset, len);
        }
        if inner_start > offset {
            self.write_zeros(offset, inner_start - offset)?;
        }
        if self.preallocate {
            // Zeroing with BLKZEROOUT keeps the blocks allocated (REQ_NOUNMAP).
            direct_io::zero_out(&self.file, inner_start, inner_end - inner_start).map_err(io_err)?;
        } else {
            direct_io::zero_block_range(&self.file, inner_start, inner_end - inner_start).map_err(io_err)?;
        }
        if end > inner_end {
            self.write_zeros(inner_end, end - inner_end)?;
        }
        Ok(())
    }

    fn write_zeros(&self, offset: u64, len: u64) -> Result<(), TargetError> {
        let zeros = vec![0u8; len as usize];
        let result = match self.mode {
            IoMode::Direct { align } => self.write_bounced(&zeros, offset, align),
            IoMode::Buffered => direct_io::write_all_at(&self.file, &zeros, offset),
        };
        result.map_err(|source| TargetError::Io { op: "zero", path: self.path.clone(), offset, source })
    }

    pub(super) fn set_len(&self, len: u64) -> Result<(), TargetError> {
        self.file.set_len(len).map_err(|source| TargetError::Io {
            op: "resize",
            path: self.path.clone(),
            offset: len,
            source,
        })
    }

    pub(super) fn preallocate(&self, len: u64) -> Result<(), TargetError> {
        direct_io::allocate_file_range(&self.file, 0, len).map_err(|source| TargetError::Io {
            op: "preallocate",
            path: self.path.clone(),
            offset: 0,
            source,
        })
    }

    /// Flushes everything to stable storage and, for files, gives the image its final size,
    /// mode and name. Only after this returns is the image complete.
    ///
    /// `image_size` is the image's virtual size as the decoder found it: a file without a
    /// fixed length (a volume's `disk.img` has one, so does a file given a size) ends there,
    /// whatever was written or parked past it, and however much of its tail is zeros.
    ///
    /// # Errors
    /// Any failed step (resize, fsync, chmod, rename, the directory's fsync) is returned
    /// after the disk was aborted, as [`Disk::abort`] does: nothing is left that looks
    /// complete, not even a file renamed before its directory could be flushed.
    #[must_use = "an unfinished disk is removed or wiped, never left looking complete"]
    pub fn finish(mut self, image_size: u64) -> Result<Finished, TargetError> {
        let finished = self.complete(image_size)?;
        // Only now is the image complete: the guard stands down.
        self.armed = false;
        Ok(finished)
    }

    /// The steps of [`Disk::finish`]; on error the guard is still armed.
    fn complete(&mut self, image_size: u64) -> Result<Finished, TargetError> {
        let fin = |op, path: &PathBuf, source| TargetError::Finish { op, path: path.clone(), source };
        let bytes_written = self.bytes_written.load(Ordering::Relaxed);
        let Some(final_path) = self.final_path.clone() else {
            self.clear_spool()?;
            if let Some(fb) = &mut self.flush_behind {
                fb.finish().map_err(|e| fin("flush", &self.path, e))?;
            }
            self.file.sync_all().map_err(|e| fin("flush", &self.path, e))?;
            if self.write_behind.is_some() || self.flush_behind.as_ref().is_some_and(FlushBehind::parked_any) {
                self.drop_cached(self.size.unwrap_or(image_size));
            }
            return Ok(Finished { path: self.path.clone(), size: self.size.unwrap_or(image_size), bytes_written });
        };
        let size = self.fixed_len.unwrap_or(image_size);
        self.set_len(size)?;
        if self.preallocate && self.fixed_len.is_none() {
            self.preallocate(size)?;
        }
        self.file.sync_all().map_err(|e| fin("flush", &self.path, e))?;
        if self.write_behind.is_some() {
            self.drop_cached(size);
        }
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(DISK_IMAGE_MODE))
            .map_err(|e| fin("set the mode of", &self.path, e))?;
        std::fs::rename(&self.path, &final_path).map_err(|e| fin("rename", &self.path, e))?;
        // The file is under its final name now: that is what a failure from here removes.
        self.path = final_path.clone();
        if let Some(dir) = final_path.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(|e| fin("flush the directory of", &self.path, e))?;
        }
        Ok(Finished { path: final_path, size, bytes_written })
    }

    /// Drops the first `len` bytes, all clean after the final flush, from the page cache:
    /// nothing of the image stays charged to the pod. Only a hint.
    fn drop_cached(&self, len: u64) {
        if let Err(e) = direct_io::drop_cached(&self.file, 0, len) {
            tracing::debug!(error = %e, "could not drop the image from the page cache");
        }
    }

    /// Zeroes what a spool left in a block device's tail.
    fn clear_spool(&self) -> Result<(), TargetError> {
        if let Some((start, _)) = self.spool {
            let end = self.spool_end.load(Ordering::Relaxed);
            if end > start {
                self.zero(start, end.next_multiple_of(self.zero_granularity()) - start)?;
            }
        }
        Ok(())
    }

    /// Gives up: removes a partial file, or wipes both ends of a block device that was
    /// written to, so that nothing is mistaken for a complete image.
    ///
    /// Dropping a disk that was not finished does the same (an early return, a panic
    /// unwinding through the import); calling this says so where it is meant.
    pub fn abort(self) {
        // The guard in `Drop` does the work.
        drop(self);
    }

    fn clean_up(&self) {
        if self.final_path.is_some() {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "could not remove the partial image");
            }
            return;
        }
        if !self.touched.load(Ordering::Relaxed) {
            return;
        }
        let size = self.size.unwrap_or(0);
        let head = WIPE_ON_FAILURE.min(size);
        let tail_start = size.saturating_sub(WIPE_ON_FAILURE).max(head);
        for (offset, len) in [(0, head), (tail_start, size - tail_start)] {
            if len > 0
                && let Err(e) = self.zero(offset, len)
            {
                tracing::warn!(path = %self.path.display(), error = %e, "could not wipe the partial image");
            }
        }
        if let Err(e) = self.clear_spool() {
            tracing::warn!(path = %self.path.display(), error = %e, "could not clear the spool");
        }
        let _ = self.file.sync_all();
    }
}

/// The guard: a disk that was not finished is cleaned up, whichever way it goes away.
impl Drop for Disk {
    fn drop(&mut self) {
        if self.armed {
            self.armed = false;
            self.clean_up();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::copy::{self, CopyConfig, Counters, Job};
    use crate::disk::{DISK_IMAGE, TargetOptions, TargetPlan};

    const MIB: u64 = 1 << 20;

    /// A fresh file target of one MiB with a block of data written; (disk, final, partial).
    fn mk_written_file(dir: &Path) -> (Disk, PathBuf, PathBuf) {
        let out = dir.join("out.raw");
        let disk = TargetPlan::inspect(&out, TargetOptions::default()).unwrap().open(Some(MIB), false).unwrap();
        disk.write(&[0xab; 4096], 0).unwrap();
        let partial = dir.join("out.raw.partial");
        assert!(partial.exists(), "the image is written under its partial name");
        (disk, out, partial)
    }

    #[test]
    fn a_failed_rename_leaves_no_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, out, partial) = mk_written_file(dir.path());
        // Something took the name meanwhile: rename cannot replace a non-empty directory.
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("theirs"), b"").unwrap();
        let err = disk.finish(MIB).unwrap_err();
        assert!(matches!(err, TargetError::Finish { op: "rename", .. }), "{err}");
        assert!(!partial.exists(), "the partial image was left behind after a failed finish");
        assert!(out.join("theirs").exists(), "what took the name is not ours to remove");
    }

    #[test]
    fn a_disk_dropped_unfinished_removes_its_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, out, partial) = mk_written_file(dir.path());
        // An early return (`?`) between open and finish.
        drop(disk);
        assert!(!partial.exists(), "an early return left the partial image behind");
        assert!(!out.exists());
    }

    #[test]
    fn a_volume_disk_dropped_unfinished_leaves_no_disk_img() {
        let dir = tempfile::tempdir().unwrap();
        let disk = TargetPlan::inspect(dir.path(), TargetOptions::default()).unwrap().open(Some(MIB), false).unwrap();
        disk.write(&[1; 4096], 0).unwrap();
        drop(disk);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "left in the volume: {left:?}");
        assert!(!dir.path().join(DISK_IMAGE).exists());
    }

    #[test]
    fn a_panic_mid_copy_removes_the_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.raw");
        let plan = TargetPlan::inspect(&out, TargetOptions::default()).unwrap();
        let panicked = std::panic::catch_unwind(|| {
            let disk = plan.open(Some(MIB), false).unwrap();
            let cancel = Arc::new(AtomicBool::new(false));
            copy::run::<_, ()>(CopyConfig::default(), &disk, None, &Counters::default(), cancel, |sink| {
                let mut buf = sink.buffer()?;
                buf.set_len(4096);
                buf.fill(7);
                sink.submit(Job::Data { offset: 0, buf })?;
                panic!("a decoder bug")
            })
        });
        assert!(panicked.is_err());
        assert!(!dir.path().join("out.raw.partial").exists(), "a panic left the partial image behind");
        assert!(!out.exists());
    }

    #[test]
    fn a_finished_disk_stays() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, out, partial) = mk_written_file(dir.path());
        let finished = disk.finish(MIB).unwrap();
        assert_eq!((finished.path, finished.size), (out.clone(), MIB));
        assert!(!partial.exists());
        assert_eq!(std::fs::read(&out).unwrap()[..4096], [0xab; 4096]);
    }
}

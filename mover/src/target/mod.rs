//! Where the raw disk goes: a block device, a filesystem volume (`disk.img` in a directory)
//! or a plain file.
//!
//! # Guarantees
//! * Nothing looks complete before it is: files are written as `NAME.partial`, fsync'd, and
//!   only then renamed (and the directory fsync'd); a failed import removes the partial
//!   file, or, on a block device, zeroes its first and last MiB so no half image boots.
//! * Regions that are zero in the image read back as zero: fresh files are sparse (holes);
//!   block devices get every zero range punched or zeroed, never left holding stale data.
//! * Sizes follow CDI ([`sizing`]): a volume's `disk.img` grows (never shrinks) to the usable
//!   space; an image larger than the space available is refused before anything is written.

pub mod sizing;

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::direct_io::{self, AlignedBuf, IoMode};
use crate::error::ImportError;

/// The file CDI keeps the disk in, at the root of a filesystem volume.
pub const DISK_IMAGE: &str = "disk.img";
/// Mode of `disk.img`, as CDI leaves it.
const DISK_IMAGE_MODE: u32 = 0o660;
/// How much of each end of a block device is zeroed when an import fails after writing.
const WIPE_ON_FAILURE: u64 = 1 << 20;
/// Alignment of the spool region (above any cluster size and logical block size).
const SPOOL_ALIGN: u64 = 2 << 20;

/// What the target path turned out to be.
#[derive(Debug, Clone)]
pub enum Destination {
    /// Written in place.
    Block { device: PathBuf, size: u64 },
    /// A filesystem volume: `disk.img` inside the directory.
    Volume { dir: PathBuf, free: u64 },
    /// A raw output file of the image's size (or the requested size).
    File { path: PathBuf },
}

#[derive(Debug, Clone)]
pub struct TargetOptions {
    /// The volume's requested size; defaults to the target's capacity.
    pub requested_size: Option<u64>,
    pub filesystem_overhead: f64,
    pub preallocate: bool,
}

impl Default for TargetOptions {
    fn default() -> TargetOptions {
        TargetOptions { requested_size: None, filesystem_overhead: sizing::DEFAULT_OVERHEAD, preallocate: false }
    }
}

/// A target inspected but not yet touched.
#[derive(Debug)]
pub struct TargetPlan {
    pub destination: Destination,
    opts: TargetOptions,
}

impl TargetPlan {
    /// Works out what `path` is and how much space it offers, without changing anything.
    pub fn inspect(path: &Path, opts: TargetOptions) -> Result<TargetPlan, TargetError> {
        let open_err = |source| TargetError::Open { path: path.to_path_buf(), source };
        let destination = match std::fs::metadata(path) {
            Ok(meta) if meta.file_type().is_block_device() => {
                let device = File::open(path).map_err(open_err)?;
                let size = direct_io::BlockInfo::query(&device).map_err(open_err)?.size;
                Destination::Block { device: path.to_path_buf(), size }
            }
            Ok(meta) if meta.is_dir() => {
                let stat = nix::sys::statvfs::statvfs(path).map_err(|e| open_err(e.into()))?;
                let mut free = stat.blocks_available() as u64 * stat.fragment_size() as u64;
                // An existing disk.img is replaced (CDI deletes it before converting): its
                // blocks are ours to reuse.
                if let Ok(old) = std::fs::symlink_metadata(path.join(DISK_IMAGE))
                    && old.is_file()
                {
                    free += old.blocks() * 512;
                }
                Destination::Volume { dir: path.to_path_buf(), free }
            }
            Ok(meta) if meta.is_file() => Destination::File { path: path.to_path_buf() },
            Ok(_) => return Err(TargetError::Unsupported { path: path.to_path_buf() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
                if !parent.is_dir() {
                    return Err(TargetError::NoParent { path: path.to_path_buf(), parent: parent.to_path_buf() });
                }
                Destination::File { path: path.to_path_buf() }
            }
            Err(e) => return Err(open_err(e)),
        };
        Ok(TargetPlan { destination, opts })
    }

    pub fn is_directory(&self) -> bool {
        matches!(self.destination, Destination::Volume { .. })
    }

    /// The most bytes of image the target can take: the device size (capped by the requested
    /// size), CDI's usable space of a volume, or the requested size of a file.
    pub fn available(&self) -> u64 {
        let requested = self.opts.requested_size;
        match &self.destination {
            Destination::Block { size, .. } => requested.map_or(*size, |r| r.min(*size)),
            Destination::Volume { free, .. } => {
                let avail = requested.map_or(*free, |r| r.min(*free));
                sizing::usable_space(self.opts.filesystem_overhead, avail)
            }
            Destination::File { .. } => requested.unwrap_or(u64::MAX),
        }
    }

    /// Refuses an image whose virtual size exceeds [`TargetPlan::available`].
    pub fn check_fits(&self, virtual_size: u64) -> Result<(), ImportError> {
        let available = self.available();
        if virtual_size > available {
            return Err(ImportError::TooLarge { virtual_size, available });
        }
        Ok(())
    }

    /// Opens the target for writing an image of `virtual_size` bytes (`None`: not known until
    /// the stream ends). `direct` asks for `O_DIRECT`; the caller only asks when every write
    /// it will make is aligned to [`direct_io::BUF_ALIGN`] except at the image's end.
    pub fn open(self, virtual_size: Option<u64>, direct: bool) -> Result<Disk, TargetError> {
        let limit = self.available();
        let preallocate = self.opts.preallocate;
        match &self.destination {
            Destination::Block { device, size } => {
                let (file, mode) = direct_io::open(device, direct, false)
                    .map_err(|source| TargetError::Open { path: device.clone(), source })?;
                // Beyond the image, the device's tail can hold a streamed image's spool.
                let spool_start = virtual_size.unwrap_or(*size).next_multiple_of(SPOOL_ALIGN);
                let spool = (spool_start < *size).then(|| (spool_start, *size - spool_start));
                let disk = Disk {
                    limit,
                    preallocate,
                    size: Some(*size),
                    spool,
                    ..Disk::new(device.clone(), None, file, mode, true)
                };
                if preallocate {
                    // Everything beyond the image is written too: the device ends up fully
                    // allocated, as CDI's dd of zeros leaves it.
                    let start = virtual_size.unwrap_or(0).next_multiple_of(disk.zero_granularity());
                    if start < *size {
                        disk.zero(start, *size - start)?;
                    }
                }
                Ok(disk)
            }
            Destination::Volume { dir, .. } => {
                let final_path = dir.join(DISK_IMAGE);
                // Replaced, as CDI does: never left beside a new image that failed.
                match std::fs::remove_file(&final_path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => return Err(TargetError::Finish { op: "remove the old", path: final_path, source }),
                }
                self.open_file(final_path, Some(limit), Some(limit), direct)
            }
            Destination::File { path } => {
                let fixed = self.opts.requested_size;
                self.open_file(path.clone(), fixed.or(virtual_size), fixed, direct)
            }
        }
    }

    /// `final_len`: the length to give the file now (when known); `fixed_len`: the length
    /// it must end with whatever the image's size.
    fn open_file(
        &self,
        final_path: PathBuf,
        final_len: Option<u64>,
        fixed_len: Option<u64>,
        direct: bool,
    ) -> Result<Disk, TargetError> {
        let limit = self.available();
        let partial = partial_path(&final_path);
        let _ = std::fs::remove_file(&partial);
        let (file, mode) = direct_io::open(&partial, direct, true)
            .map_err(|source| TargetError::Open { path: partial.clone(), source })?;
        // A file can grow past its final length while a streamed image's spool needs room;
        // it is cut back when finished. Room: the free space the image itself leaves.
        let spool = final_len.and_then(|len| {
            let stat = nix::sys::statvfs::statvfs(&partial).ok()?;
            let free = stat.blocks_available() as u64 * stat.fragment_size() as u64;
            let room = free.saturating_sub(len);
            (room > 0).then_some((len.next_multiple_of(SPOOL_ALIGN), room))
        });
        let disk = Disk {
            limit,
            preallocate: self.opts.preallocate,
            size: final_len,
            fixed_len,
            spool,
            ..Disk::new(partial, Some(final_path), file, mode, false)
        };
        if let Some(len) = final_len {
            disk.set_len(len)?;
            if self.opts.preallocate {
                disk.preallocate(len)?;
            }
        }
        Ok(disk)
    }
}

/// `dir/name` → `dir/name.partial`.
fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".partial");
    path.with_file_name(name)
}

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
    fn new(path: PathBuf, final_path: Option<PathBuf>, file: File, mode: IoMode, is_block: bool) -> Disk {
        Disk {
            path,
            final_path,
            file,
            mode,
            limit: u64::MAX,
            is_block,
            preallocate: false,
            size: None,
            fixed_len: None,
            touched: AtomicBool::new(false),
            bytes_written: AtomicU64::new(0),
            spool: None,
            spool_end: AtomicU64::new(0),
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
        result.map_err(|source| TargetError::Io { op: "spool to", path: self.path.clone(), offset, source })
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

    /// Whether writers should allocate their data runs in image order before writing them
    /// (files written directly; see `copy::Turns`).
    pub fn wants_ordered_allocation(&self) -> bool {
        !self.is_block && matches!(self.mode, IoMode::Direct { .. })
    }

    /// Allocates `[offset, offset + len)` of a file target ahead of writing it.
    pub fn allocate(&self, offset: u64, len: u64) -> Result<(), TargetError> {
        self.check_limit(offset, len)?;
        direct_io::allocate_file_range(&self.file, offset, len).map_err(|source| TargetError::Io {
            op: "allocate",
            path: self.path.clone(),
            offset,
            source,
        })
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
    fn zero_granularity(&self) -> u64 {
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
        let result = match self.mode {
            IoMode::Direct { align } if !direct_io::is_aligned(data, offset, align) => {
                self.write_bounced(data, offset, align)
            }
            _ => direct_io::write_all_at(&self.file, data, offset),
        };
        result.map_err(|source| TargetError::Io { op: "write", path: self.path.clone(), offset, source })?;
        self.bytes_written.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
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

    fn set_len(&self, len: u64) -> Result<(), TargetError> {
        self.file.set_len(len).map_err(|source| TargetError::Io {
            op: "resize",
            path: self.path.clone(),
            offset: len,
            source,
        })
    }

    fn preallocate(&self, len: u64) -> Result<(), TargetError> {
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
    #[must_use = "an unfinished disk is removed or wiped, never left looking complete"]
    pub fn finish(self, image_size: u64) -> Result<Finished, TargetError> {
        let fin = |op, source| TargetError::Finish { op, path: self.path.clone(), source };
        let bytes_written = self.bytes_written.load(Ordering::Relaxed);
        let Some(final_path) = self.final_path.clone() else {
            self.clear_spool()?;
            self.file.sync_all().map_err(|e| fin("flush", e))?;
            return Ok(Finished { path: self.path.clone(), size: self.size.unwrap_or(image_size), bytes_written });
        };
        let size = self.fixed_len.unwrap_or(image_size);
        self.set_len(size)?;
        if self.preallocate && self.fixed_len.is_none() {
            self.preallocate(size)?;
        }
        self.file.sync_all().map_err(|e| fin("flush", e))?;
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(DISK_IMAGE_MODE))
            .map_err(|e| fin("set the mode of", e))?;
        std::fs::rename(&self.path, &final_path).map_err(|e| fin("rename", e))?;
        if let Some(dir) = final_path.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(|e| fin("flush the directory of", e))?;
        }
        Ok(Finished { path: final_path, size, bytes_written })
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
    pub fn abort(self) {
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

/// Why writing the target failed.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot open target {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("target {path} does not exist and neither does its directory {parent}")]
    NoParent { path: PathBuf, parent: PathBuf },
    #[error("target {path} is not a block device, a directory or a regular file")]
    Unsupported { path: PathBuf },
    #[error("cannot {op} target {path} at offset {offset}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("cannot {op} target {path}: {source}")]
    Finish {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "virtual image size is at least {needed}, larger than the reported available storage {available} \
         of target {path}; a larger volume is required"
    )]
    NoSpace { path: PathBuf, needed: u64, available: u64 },
}

impl TargetError {
    pub fn is_retryable(&self) -> bool {
        let io = match self {
            TargetError::Open { source, .. } | TargetError::Io { source, .. } | TargetError::Finish { source, .. } => {
                source
            }
            _ => return false,
        };
        !matches!(
            io.kind(),
            io::ErrorKind::NotFound
                | io::ErrorKind::PermissionDenied
                | io::ErrorKind::ReadOnlyFilesystem
                | io::ErrorKind::StorageFull
                | io::ErrorKind::QuotaExceeded
                | io::ErrorKind::InvalidInput
                | io::ErrorKind::FileTooLarge
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_names() {
        assert_eq!(partial_path(Path::new("/v/disk.img")), PathBuf::from("/v/disk.img.partial"));
        assert_eq!(partial_path(Path::new("out.raw")), PathBuf::from("out.raw.partial"));
    }

    #[test]
    fn volume_space_follows_cdi() {
        let plan = TargetPlan {
            destination: Destination::Volume { dir: "/v".into(), free: 100 << 30 },
            opts: TargetOptions { requested_size: Some(1 << 30), ..Default::default() },
        };
        assert_eq!(plan.available(), 966 << 20);
        assert!(plan.check_fits(966 << 20).is_ok());
        let err = plan.check_fits((966 << 20) + 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "virtual image size 1012924417 is larger than the reported available storage 1012924416; \
             a larger volume is required"
        );
    }

    #[test]
    fn file_and_block_space() {
        let file = TargetPlan { destination: Destination::File { path: "x".into() }, opts: Default::default() };
        assert_eq!(file.available(), u64::MAX);
        let block = TargetPlan {
            destination: Destination::Block { device: "/dev/x".into(), size: 1 << 30 },
            opts: TargetOptions { requested_size: Some(2 << 30), ..Default::default() },
        };
        assert_eq!(block.available(), 1 << 30);
    }

    #[test]
    fn a_missing_parent_is_named() {
        let err = TargetPlan::inspect(Path::new("/nonexistent-dir-xyz/out.raw"), Default::default()).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-dir-xyz"), "{err}");
    }
}

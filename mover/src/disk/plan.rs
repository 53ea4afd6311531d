//! Inspecting a target before anything is written: what it is, how much it holds, and
//! opening it as a [`Disk`].

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::writer::{Disk, Layout};
use super::{DISK_IMAGE, TargetError, sizing};
use crate::direct_io;
use crate::error::ImportError;

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
                // An existing disk.img is replaced (CDI deletes it before converting), and a
                // disk.img.partial is what an import killed mid-write left (no cleanup runs
                // on SIGKILL): the blocks of both are ours to reuse. Counting the partial as
                // used would size the re-run's disk.img smaller, or refuse the image as too
                // large, after every crash.
                let image = path.join(DISK_IMAGE);
                for ours in [partial_path(&image), image] {
                    if let Ok(old) = std::fs::symlink_metadata(&ours)
                        && old.is_file()
                    {
                        free += old.blocks() * 512;
                    }
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
    /// the stream ends). `direct` asks for `O_DIRECT` on a block device; the caller only asks
    /// when every write it will make is aligned to [`direct_io::BUF_ALIGN`] except at the
    /// image's end. Files are written behind through the page cache (`disk/write_behind.rs`).
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
                let layout = Layout {
                    path: device.clone(),
                    final_path: None,
                    is_block: true,
                    limit,
                    preallocate,
                    size: Some(*size),
                    fixed_len: None,
                    spool,
                };
                let disk = Disk::new(file, mode, layout);
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
                self.open_file(final_path, Some(limit), Some(limit))
            }
            Destination::File { path } => {
                let fixed = self.opts.requested_size;
                self.open_file(path.clone(), fixed.or(virtual_size), fixed)
            }
        }
    }

    /// Opens the target for an image that arrives as a stream (an upload, a download without
    /// ranges, a decompression), as [`TargetPlan::open`] does, and has a block device flushed
    /// a stretch at a time while it is written (see `Disk::stream_behind`). Not for
    /// random-access copies: they keep the device busy on their own, and each flush would
    /// hold some of their writes up.
    pub fn open_stream(self, virtual_size: Option<u64>, direct: bool) -> Result<Disk, TargetError> {
        let mut disk = self.open(virtual_size, direct)?;
        disk.stream_behind();
        Ok(disk)
    }

    /// `final_len`: the length to give the file now (when known); `fixed_len`: the length
    /// it must end with whatever the image's size.
    fn open_file(
        &self,
        final_path: PathBuf,
        final_len: Option<u64>,
        fixed_len: Option<u64>,
    ) -> Result<Disk, TargetError> {
        let limit = self.available();
        let partial = partial_path(&final_path);
        let _ = std::fs::remove_file(&partial);
        let (file, mode) = direct_io::open(&partial, false, true)
            .map_err(|source| TargetError::Open { path: partial.clone(), source })?;
        // A file can grow past its final length while a streamed image's spool needs room;
        // it is cut back when finished. Room: the free space the image itself leaves.
        let spool = final_len.and_then(|len| {
            let stat = nix::sys::statvfs::statvfs(&partial).ok()?;
            let free = stat.blocks_available() as u64 * stat.fragment_size() as u64;
            let room = free.saturating_sub(len);
            (room > 0).then_some((len.next_multiple_of(SPOOL_ALIGN), room))
        });
        let layout = Layout {
            path: partial,
            final_path: Some(final_path),
            is_block: false,
            limit,
            preallocate: self.opts.preallocate,
            size: final_len,
            fixed_len,
            spool,
        };
        let disk = Disk::new(file, mode, layout);
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

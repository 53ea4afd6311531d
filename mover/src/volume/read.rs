//! Reading a volume as a stream of extents.
//!
//! * A block device is read in 4 MiB chunks (`O_DIRECT` where possible, so a large volume
//!   does not wash out the node's page cache); zero blocks become zero extents. A device
//!   has no map of its holes, except a loop device: its backing file's holes are its own,
//!   so those are skipped unread, as in a file.
//! * A regular file or `disk.img` is read region by region with `SEEK_DATA`/`SEEK_HOLE`:
//!   holes are never read, and zero blocks inside data become zero extents too.
//! * A directory streams as a tar archive of its tree, built by `tar::Builder` into an
//!   [`ExtentCutter`]: regular files (sparse ones as GNU sparse members, so their holes are
//!   not even in the archive), directories and symlinks. Device nodes, FIFOs and sockets are
//!   skipped. The tree is walked with descriptors (`openat` with `O_NOFOLLOW`), so a symlink
//!   swapped in while we read can never make us archive anything outside the volume.
//!
//! # Guarantees
//! * Memory is bounded whatever the volume's size: six 4 MiB read buffers and one
//!   pending extent of at most [`MAX_DATA_EXTENT`](super::MAX_DATA_EXTENT) bytes (for a
//!   tree, plus one sorted listing per directory level).
//! * Names inside a volume are its users' to choose: `disk.img` and the tree's entries are
//!   opened without following symlinks and checked to be what they claimed after opening.
//! * A file that changes size while it is archived fails the stream
//!   ([`VolumeError::Changed`]) rather than producing an archive whose members disagree
//!   with their headers.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};

use super::{Chunk, ExtentCutter, Format, Header, VolumeError};
use crate::direct_io::{self, AlignedBuf, IoMode};
use crate::disk::DISK_IMAGE;

/// Size of each read: a few extents' worth, so that devices see large requests.
const READ_CHUNK: usize = 4 << 20;

/// What a finished read sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Bytes sent in data extents.
    pub data_bytes: u64,
    /// Bytes described by zero extents.
    pub zero_bytes: u64,
    /// The stream's length (RAW: the volume's size; TAR: the archive's).
    pub length: u64,
}

/// Where a raw source's holes are known from, so they need not be read.
#[derive(Debug)]
enum Holes {
    /// Nowhere: everything is read, and zero blocks found as they pass.
    Unknown,
    /// The file's own `SEEK_DATA`.
    OwnMap,
    /// A loop device's backing file: the device's byte `x` is the file's `x + offset`.
    Backing(direct_io::LoopBacking),
}

impl Holes {
    /// The next data region `[start, end)` at or after `pos` of `file`, clipped to `size`;
    /// `(size, size)` past the last one.
    fn next_data(&self, file: &File, pos: u64, size: u64) -> (u64, u64) {
        let found = match self {
            Holes::Unknown => return (pos, size),
            Holes::OwnMap => direct_io::next_data(file, pos),
            Holes::Backing(b) => direct_io::next_data(&b.file, pos + b.offset)
                .map(|r| r.map(|(start, end)| (start - b.offset, end - b.offset))),
        };
        match found {
            Ok(Some((start, end))) => (start.min(size), end.min(size)),
            Ok(None) => (size, size),
            // Cannot tell where the holes are: read everything.
            Err(_) => (pos, size),
        }
    }
}

/// A volume opened for streaming, not read yet.
#[derive(Debug)]
pub struct VolumeReader {
    path: PathBuf,
    source: Source,
}

#[derive(Debug)]
enum Source {
    /// A block device, `disk.img` or file, sent as it is.
    Raw { file: File, size: u64, mode: IoMode, holes: Holes },
    /// A directory, sent as a tar of its tree.
    Tree { dir: OwnedFd },
    /// A file that already holds a tar archive, sent as it is (the CLI's `write-volume`).
    TarFile { file: File, size: u64 },
}

impl VolumeReader {
    /// Opens what `path` holds for streaming in `format` (`None`: RAW for block devices and
    /// files; for a directory, RAW of its `disk.img` when it has one, TAR of the tree
    /// otherwise).
    ///
    /// # Errors
    /// [`VolumeError::NotFound`] for a missing path; [`VolumeError::WrongFormat`] when the
    /// format does not fit what is there (TAR of a block device, RAW of a directory without
    /// a `disk.img`); [`VolumeError::Unsupported`] for sockets and the like.
    pub fn open(path: &Path, format: Option<Format>) -> Result<VolumeReader, VolumeError> {
        let io_err = |op, source: io::Error| match source.kind() {
            io::ErrorKind::NotFound => VolumeError::NotFound { path: path.to_path_buf() },
            _ => VolumeError::Io { op, path: path.to_path_buf(), source },
        };
        let wrong = |why| VolumeError::WrongFormat { path: path.to_path_buf(), format: Format::Tar, why };
        let meta = std::fs::metadata(path).map_err(|e| io_err("inspect", e))?;
        let source = if meta.file_type().is_block_device() {
            if format == Some(Format::Tar) {
                return Err(wrong("a block volume holds raw bytes; read it as RAW"));
            }
            let (file, mode) = direct_io::open_read(path, true, false).map_err(|e| io_err("open", e))?;
            let size = direct_io::BlockInfo::query(&file).map_err(|e| io_err("query the size of", e))?.size;
            // Whole chunks only under O_DIRECT; a device of odd size is read through the cache.
            let (file, mode) = match mode {
                IoMode::Direct { align } if !size.is_multiple_of(align as u64) => {
                    direct_io::open_read(path, false, false).map_err(|e| io_err("open", e))?
                }
                _ => (file, mode),
            };
            // The device's own writes still in its page cache reach the backing file first,
            // so the file's map covers them.
            let holes = match direct_io::loop_backing(&file) {
                Some(backing) if file.sync_all().is_ok() => Holes::Backing(backing),
                _ => Holes::Unknown,
            };
            Source::Raw { file, size, mode, holes }
        } else if meta.is_dir() {
            let image = path.join(DISK_IMAGE);
            // A symlink named disk.img is not a disk image: following it could read anything
            // on the node.
            let has_image = std::fs::symlink_metadata(&image).is_ok_and(|m| m.is_file());
            match format {
                Some(Format::Raw) | None if has_image => return VolumeReader::open_raw_file(&image, true),
                Some(Format::Raw) => {
                    return Err(VolumeError::WrongFormat {
                        path: path.to_path_buf(),
                        format: Format::Raw,
                        why: "the directory holds no disk.img (a regular file); read it as TAR",
                    });
                }
                Some(Format::Tar) | None => {
                    let dir = File::open(path).map_err(|e| io_err("open", e))?;
                    Source::Tree { dir: dir.into() }
                }
            }
        } else if meta.is_file() {
            if format == Some(Format::Tar) {
                return Err(wrong("a file holds raw bytes; TAR streams are read from directories"));
            }
            return VolumeReader::open_raw_file(path, false);
        } else {
            return Err(VolumeError::Unsupported { path: path.to_path_buf() });
        };
        Ok(VolumeReader { path: path.to_path_buf(), source })
    }

    /// `untrusted`: a name inside a volume (its `disk.img`), which may be swapped for a
    /// symlink or a FIFO at any time.
    fn open_raw_file(path: &Path, untrusted: bool) -> Result<VolumeReader, VolumeError> {
        let io_err = |op, source| VolumeError::Io { op, path: path.to_path_buf(), source };
        let (file, mode) = direct_io::open_read(path, false, untrusted).map_err(|e| io_err("open", e))?;
        let meta = file.metadata().map_err(|e| io_err("inspect", e))?;
        if !meta.is_file() {
            return Err(VolumeError::Changed {
                path: path.to_path_buf(),
                what: "it is no longer a regular file".into(),
            });
        }
        let size = meta.len();
        Ok(VolumeReader { path: path.to_path_buf(), source: Source::Raw { file, size, mode, holes: Holes::OwnMap } })
    }

    /// Opens a regular file holding a tar archive, to stream its bytes as a TAR stream.
    pub fn open_tar_file(path: &Path) -> Result<VolumeReader, VolumeError> {
        let io_err = |op, source: io::Error| match source.kind() {
            io::ErrorKind::NotFound => VolumeError::NotFound { path: path.to_path_buf() },
            _ => VolumeError::Io { op, path: path.to_path_buf(), source },
        };
        let file = File::open(path).map_err(|e| io_err("open", e))?;
        let meta = file.metadata().map_err(|e| io_err("inspect", e))?;
        if !meta.is_file() {
            return Err(VolumeError::WrongFormat {
                path: path.to_path_buf(),
                format: Format::Tar,
                why: "only a regular file can hold a tar archive",
            });
        }
        Ok(VolumeReader { path: path.to_path_buf(), source: Source::TarFile { file, size: meta.len() } })
    }

    /// The stream's header.
    pub fn header(&self) -> Header {
        match &self.source {
            Source::Raw { size, .. } => Header { format: Format::Raw, size: *size },
            Source::Tree { .. } | Source::TarFile { .. } => Header { format: Format::Tar, size: 0 },
        }
    }

    /// What is streamed: the device, the `disk.img`, the file or the directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Streams the header, the extents, then the end, to `emit`. An error from `emit` (the
    /// receiver went away) stops the read and is returned as it is. A failed read sends no
    /// end, so no writer commits what it got.
    pub fn run(self, mut emit: impl FnMut(Chunk) -> Result<(), VolumeError>) -> Result<ReadStats, VolumeError> {
        emit(Chunk::Header(self.header()))?;
        let mut stats = ReadStats::default();
        let mut cutter = ExtentCutter::new(|extent: super::Extent| {
            match &extent {
                super::Extent::Data { data, .. } => stats.data_bytes += data.len() as u64,
                super::Extent::Zero { len, .. } => stats.zero_bytes += len,
            }
            emit(Chunk::Extent(extent))
        });
        let path = self.path;
        let length = match self.source {
            Source::Raw { file, size, mode, holes } => {
                read_raw(&path, &file, size, mode, &holes, &mut cutter)?;
                cutter.finish()?
            }
            Source::TarFile { file, size } => {
                read_raw(&path, &file, size, IoMode::Buffered, &Holes::OwnMap, &mut cutter)?;
                cutter.finish()?
            }
            Source::Tree { dir } => read_tree(&path, dir, cutter)?,
        };
        emit(Chunk::End { length })?;
        Ok(ReadStats { length, ..stats })
    }
}

/// Reads `[0, size)` of `file` into the cutter, skipping what `holes` says is a hole. A
/// planner thread walks the file and hands each chunk to one of [`READERS`] reader threads,
/// so that the device has several reads in flight while the previous chunks are scanned and
/// sent; the chunks reach the cutter in order.
fn read_raw<F: FnMut(super::Extent) -> Result<(), VolumeError>>(
    path: &Path,
    file: &File,
    size: u64,
    mode: IoMode,
    holes: &Holes,
    cutter: &mut ExtentCutter<F>,
) -> Result<(), VolumeError> {
    std::thread::scope(|scope| {
        let (full_tx, full_rx) = crossbeam_channel::bounded(READ_BUFFERS);
        let (empty_tx, empty_rx) = crossbeam_channel::bounded(READ_BUFFERS);
        let (job_tx, job_rx) = crossbeam_channel::bounded::<ReadJob>(READ_BUFFERS);
        for _ in 0..READ_BUFFERS {
            let mut buf = AlignedBuf::new(READ_CHUNK);
            buf.set_len(READ_CHUNK);
            let _ = empty_tx.send(buf);
        }
        for _ in 0..READERS {
            let job_rx = job_rx.clone();
            scope.spawn(move || {
                for job in job_rx {
                    job.run(path, file, mode);
                }
            });
        }
        drop(job_rx);
        // The planner stops when either channel's other end is gone (dropped below on any
        // return), and the readers once the planner is gone.
        scope.spawn(move || plan_reads(file, size, mode, holes, &empty_rx, &job_tx, &full_tx));
        for piece in &full_rx {
            match piece {
                Piece::Hole(len) => cutter.zero(len)?,
                Piece::Data(read) => {
                    let (buf, len) = read.recv().map_err(|_| VolumeError::Closed)??;
                    cutter.data(&buf[..len])?;
                    let _ = empty_tx.send(buf);
                }
            }
        }
        Ok(())
    })
}

/// Reads in flight at once per stream. A clone's reads share the disks with the target's
/// writes, and a network block device wants depth even more: with four reads (and six
/// writes, see `volume::write`) a block→block clone on one virtual disk took 0.98–1.37× the
/// time the disk needed to read the source with `dd` while `cp` wrote the image (two and
/// three: about 10% slower).
const READERS: usize = 4;
/// Read buffers of [`READ_CHUNK`] bytes per stream: one per reader, and two filled ones
/// waiting to be sent.
const READ_BUFFERS: usize = READERS + 2;

/// A filled buffer and how many of its bytes are the volume's, or why the read failed.
type ReadResult = Result<(AlignedBuf, usize), VolumeError>;

/// What comes next in the volume, in order.
enum Piece {
    Hole(u64),
    /// A chunk being read; its buffer arrives on the channel.
    Data(crossbeam_channel::Receiver<ReadResult>),
}

/// One chunk for a reader thread: `n` bytes at `pos` into `buf`.
struct ReadJob {
    pos: u64,
    n: usize,
    buf: AlignedBuf,
    done: crossbeam_channel::Sender<ReadResult>,
}

impl ReadJob {
    fn run(self, path: &Path, file: &File, mode: IoMode) {
        let ReadJob { pos, n, mut buf, done } = self;
        // Direct reads need whole blocks; the last block of a device is whole.
        let want = match mode {
            IoMode::Direct { align } => n.next_multiple_of(align),
            IoMode::Buffered => n,
        };
        let read = direct_io::read_exact_at(file, &mut buf[..want], pos).map_err(|source| match source.kind() {
            io::ErrorKind::UnexpectedEof => VolumeError::Changed {
                path: path.to_path_buf(),
                what: format!("it ended before offset {}", pos + n as u64),
            },
            _ => VolumeError::Io { op: "read", path: path.to_path_buf(), source },
        });
        // The receiver is gone only when the stream stopped.
        let _ = done.send(read.map(|()| (buf, n)));
    }
}

/// Walks `[0, size)` in order: holes go straight to `full`, data chunks to the readers
/// (with a free buffer each) and, as a place in the order, to `full`.
fn plan_reads(
    file: &File,
    size: u64,
    mode: IoMode,
    holes: &Holes,
    empty: &crossbeam_channel::Receiver<AlignedBuf>,
    jobs: &crossbeam_channel::Sender<ReadJob>,
    full: &crossbeam_channel::Sender<Piece>,
) {
    // A backing file's regions need not fall on the device's blocks (a loop offset of
    // 512 bytes on a 4 KiB filesystem): widen them to whole blocks for direct reads. `pos`
    // stays on a block boundary, so the widened start is never behind it.
    let align = match mode {
        IoMode::Direct { align } => align as u64,
        IoMode::Buffered => 1,
    };
    let mut pos = 0u64;
    while pos < size {
        let (start, end) = holes.next_data(file, pos, size);
        let (start, end) = (start - start % align, end.next_multiple_of(align).min(size));
        if start > pos && full.send(Piece::Hole(start - pos)).is_err() {
            return;
        }
        pos = start.max(pos);
        while pos < end {
            let Ok(buf) = empty.recv() else { return };
            let n = (end - pos).min(READ_CHUNK as u64) as usize;
            let (done, read) = crossbeam_channel::bounded(1);
            if jobs.send(ReadJob { pos, n, buf, done }).is_err() || full.send(Piece::Data(read)).is_err() {
                return;
            }
            pos += n as u64;
        }
    }
}

/// The tar builder's output: cut into extents as it is written.
struct TarSink<F> {
    cutter: ExtentCutter<F>,
    /// Why the last write failed (the receiver went away), to report instead of the
    /// `io::Error` the builder sees.
    failed: Option<VolumeError>,
    /// Set once the stream failed: later writes are dropped.
    closed: bool,
}

impl<F: FnMut(super::Extent) -> Result<(), VolumeError>> io::Write for TarSink<F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.closed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the volume stream stopped"));
        }
        match self.cutter.data(buf) {
            Ok(()) => Ok(buf.len()),
            Err(e) => {
                self.failed = Some(e);
                Err(io::Error::new(io::ErrorKind::BrokenPipe, "the volume stream stopped"))
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One directory being archived.
struct Level {
    dir: Dir,
    /// Its path in the archive ("" for the root).
    rel: PathBuf,
    /// Its entries, sorted, and the next one to archive.
    names: Vec<OsString>,
    next: usize,
}

/// Archives the tree under `root` into the cutter; returns the archive's length.
fn read_tree<F: FnMut(super::Extent) -> Result<(), VolumeError>>(
    root_path: &Path,
    root: OwnedFd,
    cutter: ExtentCutter<F>,
) -> Result<u64, VolumeError> {
    let mut builder = tar::Builder::new(TarSink { cutter, failed: None, closed: false });
    builder.mode(tar::HeaderMode::Complete);
    builder.follow_symlinks(false);
    builder.sparse(true);
    let walked = walk(root_path, root, &mut builder).and_then(|()| {
        builder.finish().map_err(|source| VolumeError::Io { op: "archive", path: root_path.into(), source })
    });
    let sink = builder.get_mut();
    if let Err(e) = walked {
        // The builder writes the archive's end when dropped: not into a failed stream.
        sink.closed = true;
        return Err(sink.failed.take().unwrap_or(e));
    }
    let sink =
        builder.into_inner().map_err(|source| VolumeError::Io { op: "archive", path: root_path.into(), source })?;
    sink.cutter.finish()
}

/// Appends every member of the tree, depth first, parents before their children.
fn walk<W: io::Write>(root_path: &Path, root: OwnedFd, builder: &mut tar::Builder<W>) -> Result<(), VolumeError> {
    let list_err = |path: &Path, source| VolumeError::Io { op: "list", path: path.to_path_buf(), source };
    let mut root = Dir::from_fd(root).map_err(|e| list_err(root_path, e.into()))?;
    let names = list(&mut root, true).map_err(|e| list_err(root_path, e))?;
    let mut stack = vec![Level { dir: root, rel: PathBuf::new(), names, next: 0 }];
    while let Some(level) = stack.last_mut() {
        let Some(name) = level.names.get(level.next).cloned() else {
            stack.pop();
            continue;
        };
        level.next += 1;
        let rel = level.rel.join(&name);
        let shown = || root_path.join(&rel);
        let io_err = |op, source: io::Error| VolumeError::Io { op, path: shown(), source };
        let stat = match nix::sys::stat::fstatat(&level.dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(s) => s,
            // Removed since it was listed: nothing to archive.
            Err(nix::errno::Errno::ENOENT) => continue,
            Err(e) => return Err(io_err("inspect", e.into())),
        };
        let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
        let appended = if kind == SFlag::S_IFDIR {
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let fd = nix::fcntl::openat(&level.dir, name.as_os_str(), flags, Mode::empty())
                .map_err(|e| io_err("open", e.into()))?;
            let stat = nix::sys::stat::fstat(&fd).map_err(|e| io_err("inspect", e.into()))?;
            let mut header = header_of(&stat, tar::EntryType::Directory);
            let appended = builder.append_data(&mut header, &rel, io::empty());
            let mut dir = Dir::from_fd(fd).map_err(|e| io_err("list", e.into()))?;
            let names = list(&mut dir, false).map_err(|e| io_err("list", e))?;
            stack.push(Level { dir, rel: rel.clone(), names, next: 0 });
            appended
        } else if kind == SFlag::S_IFREG {
            // Non-blocking: a FIFO swapped in under the name must not hang us.
            let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK;
            let fd = nix::fcntl::openat(&level.dir, name.as_os_str(), flags, Mode::empty())
                .map_err(|e| io_err("open", e.into()))?;
            let mut file = File::from(fd);
            let before = file.metadata().map_err(|e| io_err("inspect", e))?;
            if !before.is_file() {
                return Err(VolumeError::Changed { path: shown(), what: "it was replaced".into() });
            }
            let appended = builder.append_file(&rel, &mut file);
            let after = file.metadata().map_err(|e| io_err("inspect", e))?;
            let same = after.len() == before.len()
                && after.mtime() == before.mtime()
                && after.mtime_nsec() == before.mtime_nsec();
            if appended.is_ok() && !same {
                return Err(VolumeError::Changed { path: shown(), what: "it was written to".into() });
            }
            appended
        } else if kind == SFlag::S_IFLNK {
            let target = nix::fcntl::readlinkat(&level.dir, name.as_os_str())
                .map_err(|e| io_err("read the symlink", e.into()))?;
            let mut header = header_of(&stat, tar::EntryType::Symlink);
            builder.append_link(&mut header, &rel, &target)
        } else {
            tracing::warn!(path = %shown().display(), "not archived: device nodes, FIFOs and sockets are not streamed");
            Ok(())
        };
        appended.map_err(|source| io_err("archive", source))?;
    }
    Ok(())
}

/// A directory's entries, sorted so the archive is the same for the same tree. The root
/// leaves out the staging directory of an extraction in progress.
fn list(dir: &mut Dir, is_root: bool) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name == "." || name == ".." || (is_root && name == crate::archive::STAGING) {
            continue;
        }
        names.push(name.to_os_string());
    }
    names.sort();
    Ok(names)
}

/// A tar header carrying what `HeaderMode::Complete` keeps: mode, owner, mtime.
fn header_of(stat: &FileStat, kind: tar::EntryType) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(stat.st_mode & 0o7777);
    header.set_uid(stat.st_uid.into());
    header.set_gid(stat.st_gid.into());
    header.set_mtime(stat.st_mtime.max(0) as u64);
    header.set_size(0);
    header
}

//! Writing a volume from a stream of extents.
//!
//! * RAW goes through [`TargetPlan`]/[`Disk`] like an import: into a block device (direct
//!   I/O, zero extents zeroed so no stale bytes survive), a directory's `disk.img` (sized as
//!   CDI sizes a volume) or a file; zero extents on a fresh file are holes and cost nothing.
//! * TAR is extracted into a directory by [`archive::extract`], fed by a reader that turns
//!   zero extents back into zeros, with every safety rule of an archive import.
//!
//! # Guarantees
//! * The stream is checked as it arrives ([`StreamCheck`]): header first, extents in order,
//!   no gap or overlap, RAW extents within the header's size, and a RAW stream must cover the
//!   whole size.
//! * Nothing looks complete unless the stream's end ([`Chunk::End`]) arrived: a RAW target is
//!   finished (fsync'd, renamed) only then, and aborted otherwise (a partial file removed, a
//!   block device's ends wiped); a TAR tree is moved into place only then, and the directory
//!   is left as it was otherwise.

use std::cell::RefCell;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::{Chunk, Extent, Format, Header, StreamCheck, StreamError, VolumeError};
use crate::archive;
use crate::copy::{self, CopyConfig, Counters, Job, JobSink, PooledBuf, ZERO_BLOCK};
use crate::disk::{Destination, Storage, TargetOptions, TargetPlan};
use crate::error::ImportError;

/// What a finished write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub format: Format,
    /// Bytes received in data extents (and written).
    pub data_bytes: u64,
    /// Bytes described by zero extents (not written to fresh files).
    pub zero_bytes: u64,
    /// Where the volume is now: the device, the `disk.img`, the file or the directory.
    pub path: PathBuf,
    /// RAW: the target's final size (a device's size; a `disk.img` grown to the volume's
    /// usable space). TAR: the content bytes extracted (kept as a file: its length).
    pub size: u64,
}

/// Where a TAR stream may go besides a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TarInto {
    /// Only extracted into a directory (what the service does).
    #[default]
    Directory,
    /// Into a directory, or kept as a tar file when the target is a (new) file: the CLI's
    /// `read-volume` saving a TAR stream.
    DirectoryOrFile,
}

/// Writes the stream pulled from `next` to `path`. `next` returns `None` once the stream
/// stopped, whether after its end or not.
///
/// # Errors
/// [`VolumeError::Stream`] for a malformed stream (one that stopped without its end
/// included), [`VolumeError::WrongFormat`] for a TAR stream aimed at anything but a
/// directory; target and archive errors otherwise. In every case the target is left without
/// anything that looks complete.
pub fn write_volume(
    path: &Path,
    opts: TargetOptions,
    tar_into: TarInto,
    mut next: impl FnMut() -> Option<Chunk>,
) -> Result<Written, VolumeError> {
    let mut check = StreamCheck::default();
    let header = match next() {
        None => return Err(StreamError::Empty.into()),
        Some(chunk) => {
            check.check(&chunk)?;
            match chunk {
                Chunk::Header(h) => h,
                // Refused by the check already.
                Chunk::Extent(_) | Chunk::End { .. } => return Err(StreamError::Empty.into()),
            }
        }
    };
    let plan = TargetPlan::inspect(path, opts)?;
    match (header.format, &plan.destination) {
        (Format::Raw, _) => write_raw(plan, header, check, next),
        (Format::Tar, Destination::Volume { dir, .. }) => {
            let dir = dir.clone();
            write_tar(&dir, check, Box::new(next))
        }
        (Format::Tar, Destination::File { path }) if tar_into == TarInto::DirectoryOrFile => {
            let path = path.clone();
            write_tar_file(&path, check, next)
        }
        (Format::Tar, _) => Err(VolumeError::WrongFormat {
            path: path.to_path_buf(),
            format: Format::Tar,
            why: "TAR streams are extracted into a directory (a filesystem volume)",
        }),
    }
}

/// Pulls the next extent, checked; `None` once the stream stopped after its end.
fn pull(check: &mut StreamCheck, next: &mut dyn FnMut() -> Option<Chunk>) -> Result<Option<Extent>, VolumeError> {
    loop {
        let Some(chunk) = next() else {
            check.finish()?;
            return Ok(None);
        };
        check.check(&chunk)?;
        match chunk {
            Chunk::Extent(e) => return Ok(Some(e)),
            // Whatever follows the end is refused by the check; the stream must stop.
            Chunk::End { .. } => {}
            Chunk::Header(_) => return Err(StreamError::SecondHeader.into()),
        }
    }
}

fn write_raw(
    plan: TargetPlan,
    header: Header,
    mut check: StreamCheck,
    mut next: impl FnMut() -> Option<Chunk>,
) -> Result<Written, VolumeError> {
    plan.check_fits(header.size)?;
    let disk = plan.open(Some(header.size), true)?;
    let copied = copy_extents(&disk, header.size, &mut check, &mut next);
    if let Err(e) = copied {
        disk.abort();
        return Err(e);
    }
    let finished = disk.finish(header.size)?;
    Ok(Written {
        format: Format::Raw,
        data_bytes: check.data_bytes(),
        zero_bytes: check.zero_bytes(),
        path: finished.path,
        size: finished.size,
    })
}

/// Writes the extents through the copy engine, as an import writes: several writes in flight
/// (a device serves small scattered writes far better that way), in image order on files
/// written directly.
fn copy_extents(
    disk: &dyn Storage,
    size: u64,
    check: &mut StreamCheck,
    next: &mut dyn FnMut() -> Option<Chunk>,
) -> Result<(), VolumeError> {
    let counters = Counters::default();
    // Nothing cancels a write from outside: a stream that stops fails it.
    let cancel = Arc::new(AtomicBool::new(false));
    let reads_zero = disk.unwritten_reads_zero();
    copy::run(WRITE_ENGINE, disk, None, &counters, cancel, |sink| {
        let mut gather = Gather { sink, size, reads_zero, pending: None, zeros: Vec::new() };
        let fed = (|| {
            while let Some(extent) = pull(check, next)? {
                match extent {
                    Extent::Data { offset, data } => gather.data(offset, &data)?,
                    Extent::Zero { offset, len } => gather.zero(offset, len)?,
                }
            }
            gather.flush()?;
            gather.flush_zeros()
        })();
        // A stream error is the producer's to report (the engine's workers stop when the
        // sink goes); an engine error unwinds the producer and is reported by `run`.
        match fed {
            Err(VolumeError::Import(e)) if matches!(*e, ImportError::Cancelled) => Err(ImportError::Cancelled),
            other => Ok(other),
        }
    })?
}

/// Six writes in flight, one buffer filling: 14 MiB of buffers per stream (a writing mover
/// peaked at 59 MiB resident over five block clones, one buffer more at 61).
/// Many of an image's extents are small (64 KiB), and a direct write is one request: depth
/// is what keeps a device busy while the clone's reads compete for it.
const WRITE_ENGINE: CopyConfig = CopyConfig { workers: 6, chunk: 2 << 20, buffers: 7 };

/// On targets that do not read zeros where nothing was written (block devices), zero
/// extents shorter than this between data are written as zeros rather than zeroed one by one.
const MIN_PUNCH: u64 = 64 << 10;

/// Gathers consecutive extents into the engine's jobs: data into pooled buffers (so devices
/// see large writes), long zero extents as zero jobs.
///
/// The engine needs that no two jobs share a [`ZERO_BLOCK`]-aligned block: every job starts
/// and ends on a block boundary (the image's end excepted). A zero extent's partial blocks
/// are written as zeros with the data around them.
struct Gather<'a, 's> {
    sink: &'a JobSink<'s>,
    /// The image's size: the one place a job may end off a block boundary.
    size: u64,
    reads_zero: bool,
    /// Data waiting to be written, and where it starts (on a block boundary).
    pending: Option<(u64, PooledBuf)>,
    /// Whole-block zero ranges not handed out yet (see [`DEFERRED_ZEROS`]).
    zeros: Vec<(u64, u64)>,
}

/// Zero ranges are handed to the engine in batches of up to this many, after the data
/// around them: zeroing a range of a loop device punches its backing file, which waits for
/// every direct write in flight to that file and holds new ones back, so punches mixed
/// with the writes would leave one write in flight at a time.
const DEFERRED_ZEROS: usize = 4096;

impl Gather<'_, '_> {
    fn data(&mut self, mut offset: u64, mut data: &[u8]) -> Result<(), VolumeError> {
        while !data.is_empty() {
            let n = self.append(offset, data.len(), |buf| buf.copy_from_slice(&data[..buf.len()]))?;
            offset += n as u64;
            data = &data[n..];
        }
        Ok(())
    }

    fn zero(&mut self, mut offset: u64, mut len: u64) -> Result<(), VolumeError> {
        let block = ZERO_BLOCK as u64;
        if let Some((start, buf)) = &self.pending {
            let room = (self.sink.chunk() - buf.len()) as u64;
            let short = !self.reads_zero && len < MIN_PUNCH && len <= room;
            // A short gap between data on a block device: cheaper to write the zeros than to
            // zero the range on its own. Otherwise only up to the next block boundary.
            let take = if short { len } else { len.min(offset.next_multiple_of(block) - offset) };
            debug_assert_eq!(start + buf.len() as u64, offset);
            self.append(offset, take as usize, |b| b.fill(0))?;
            offset += take;
            len -= take;
            if len == 0 {
                return Ok(());
            }
            self.flush()?;
        }
        // Here `offset` is on a block boundary: every job before it ended on one.
        let end = offset + len;
        let whole_end = if end == self.size { end } else { (end / block * block).max(offset) };
        if whole_end > offset {
            self.zeros.push((offset, whole_end - offset));
            if self.zeros.len() == DEFERRED_ZEROS {
                self.flush_zeros()?;
            }
        }
        // What is left of a block that data continues: zeros ahead of that data.
        if end > whole_end {
            self.append(whole_end, (end - whole_end) as usize, |b| b.fill(0))?;
        }
        Ok(())
    }

    /// Adds up to `len` bytes at `offset` (right after the pending ones) with `fill`; returns
    /// how many fitted. A full buffer goes to the engine.
    fn append(&mut self, offset: u64, len: usize, fill: impl FnOnce(&mut [u8])) -> Result<usize, VolumeError> {
        if self.pending.is_none() {
            self.pending = Some((offset, self.sink.buffer()?));
        }
        let (_, buf) = self.pending.as_mut().expect("a pending buffer");
        let at = buf.len();
        let n = len.min(self.sink.chunk() - at);
        buf.set_len(at + n);
        fill(&mut buf[at..]);
        if buf.len() == self.sink.chunk() {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> Result<(), VolumeError> {
        if let Some((offset, buf)) = self.pending.take() {
            self.sink.submit(Job::Data { offset, buf })?;
        }
        Ok(())
    }

    fn flush_zeros(&mut self) -> Result<(), VolumeError> {
        for (offset, len) in self.zeros.drain(..) {
            self.sink.submit(Job::Zero { offset, len })?;
        }
        Ok(())
    }
}

/// The extents of a TAR stream as a byte stream, for [`archive::extract`]. Shared with the
/// extraction's commit hook, which drains what follows the archive's end.
struct Feed<'a> {
    next: Box<dyn FnMut() -> Option<Chunk> + 'a>,
    check: StreamCheck,
    /// The extent being read, and how much of it was read.
    current: Option<(Extent, u64)>,
    ended: bool,
    /// Why the stream failed, to report rather than the archive error it caused.
    failed: Option<VolumeError>,
}

impl Feed<'_> {
    /// Pulls the next extent into `current`; false at the stream's end.
    fn advance(&mut self) -> Result<bool, VolumeError> {
        if self.ended {
            return Ok(false);
        }
        match pull(&mut self.check, &mut *self.next)? {
            Some(e) => {
                self.current = Some((e, 0));
                Ok(true)
            }
            None => {
                self.ended = true;
                Ok(false)
            }
        }
    }

    /// Skips the rest of the stream (after the archive's end), checking its shape. Zero
    /// extents are skipped whole, never expanded.
    fn drain(&mut self) -> Result<(), VolumeError> {
        self.current = None;
        while self.advance()? {
            self.current = None;
        }
        Ok(())
    }

    fn fail(&mut self, e: VolumeError) -> io::Error {
        let message = e.to_string();
        self.failed = Some(e);
        io::Error::other(message)
    }
}

struct FeedReader<'a>(Rc<RefCell<Feed<'a>>>);

impl Read for FeedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut feed = self.0.borrow_mut();
        loop {
            if let Some((extent, done)) = &mut feed.current {
                let left = extent.len() - *done;
                if left > 0 {
                    let n = left.min(buf.len() as u64) as usize;
                    match extent {
                        Extent::Data { data, .. } => buf[..n].copy_from_slice(&data[*done as usize..][..n]),
                        Extent::Zero { .. } => buf[..n].fill(0),
                    }
                    *done += n as u64;
                    return Ok(n);
                }
            }
            feed.current = None;
            match feed.advance() {
                Ok(true) => {}
                Ok(false) => return Ok(0),
                Err(e) => return Err(feed.fail(e)),
            }
        }
    }
}

fn write_tar<'a>(
    dir: &Path,
    check: StreamCheck,
    next: Box<dyn FnMut() -> Option<Chunk> + 'a>,
) -> Result<Written, VolumeError> {
    let feed = Rc::new(RefCell::new(Feed { next, check, current: None, ended: false, failed: None }));
    let mut reader = FeedReader(feed.clone());
    // Nothing cancels an extraction from outside: a stream that stops fails it.
    let cancel = Arc::new(AtomicBool::new(false));
    let extracted = archive::extract(&mut reader, dir, &cancel, |_rest| {
        // The tree is moved into place only once the whole stream arrived intact.
        let mut feed = feed.borrow_mut();
        feed.drain().map_err(|e| {
            let message = e.to_string();
            feed.failed = Some(e);
            crate::ImportError::InvalidRequest(message)
        })
    });
    let mut feed = feed.borrow_mut();
    if let Some(e) = feed.failed.take() {
        return Err(e);
    }
    let extracted = extracted?;
    crate::import::sync_dir(dir)?;
    Ok(Written {
        format: Format::Tar,
        data_bytes: feed.check.data_bytes(),
        zero_bytes: feed.check.zero_bytes(),
        path: dir.to_path_buf(),
        size: extracted.bytes,
    })
}

/// Keeps a TAR stream as a tar file: data written at its offsets, zero extents left as
/// holes, under a `.partial` name until the stream's end.
fn write_tar_file(
    path: &Path,
    mut check: StreamCheck,
    mut next: impl FnMut() -> Option<Chunk>,
) -> Result<Written, VolumeError> {
    let mut partial = path.as_os_str().to_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let io_err = |op, source| VolumeError::Io { op, path: partial.clone(), source };
    let file = std::fs::File::create(&partial).map_err(|e| io_err("create", e))?;
    let written = (|| {
        while let Some(extent) = pull(&mut check, &mut next)? {
            if let Extent::Data { offset, data } = extent {
                crate::direct_io::write_all_at(&file, &data, offset).map_err(|e| io_err("write", e))?;
            }
        }
        file.set_len(check.position()).map_err(|e| io_err("resize", e))?;
        file.sync_all().map_err(|e| io_err("flush", e))?;
        std::fs::rename(&partial, path).map_err(|e| io_err("rename", e))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    Ok(Written {
        format: Format::Tar,
        data_bytes: check.data_bytes(),
        zero_bytes: check.zero_bytes(),
        path: path.to_path_buf(),
        size: check.position(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::mem::MemStorage;

    /// More zero ranges than one deferred batch, on a device full of stale bytes: every one
    /// of them is zeroed, and the data between them is written.
    #[test]
    fn zero_ranges_beyond_a_deferred_batch_are_all_zeroed() {
        const DATA: u64 = ZERO_BLOCK as u64;
        let (n, stride) = (DEFERRED_ZEROS as u64 + 100, DATA + MIN_PUNCH);
        let size = n * stride;
        let mem = MemStorage::new(size, 0).block_like();
        let handle = mem.handle();
        let stale = vec![0xee; ZERO_BLOCK];
        for i in 0..n {
            // Each zero range's first and last blocks hold old bytes.
            mem.write(&stale, i * stride + DATA).unwrap();
            mem.write(&stale, (i + 1) * stride - DATA).unwrap();
        }
        let header = Chunk::Header(Header { format: Format::Raw, size });
        let mut check = StreamCheck::default();
        check.check(&header).unwrap();
        let mut chunks = (0..n).flat_map(|i| {
            let at = i * stride;
            [
                Chunk::Extent(Extent::Data { offset: at, data: vec![7; DATA as usize].into() }),
                Chunk::Extent(Extent::Zero { offset: at + DATA, len: MIN_PUNCH }),
            ]
        });
        let mut ended = false;
        let mut next =
            || chunks.next().or_else(|| (!std::mem::replace(&mut ended, true)).then_some(Chunk::End { length: size }));
        copy_extents(&mem, size, &mut check, &mut next).unwrap();
        for i in 0..n {
            let at = i * stride;
            assert_eq!(handle.read(at, DATA), vec![7; DATA as usize], "data at {at}");
            assert!(handle.read(at + DATA, MIN_PUNCH).iter().all(|&b| b == 0), "zero range at {}", at + DATA);
        }
    }
}

//! An in-memory [`Storage`] that fails on request, for the copy engine's and the decoders'
//! unit tests (imago's `mem_storage` is the model).
//!
//! Every call is a numbered step, counted from 0 across all threads in the order they
//! start: `write`, `zero`, `spool_write`, `spool_read` and the flush of
//! `finish`. A step can be given a [`Fault`]: fail (EIO, ENOSPC, a short write), go slowly,
//! or be held until the test releases it. A [`MemHandle`] outlives the storage (which
//! `finish` and `abort` consume) to show what happened: steps taken, the bytes, and whether
//! the image was ever marked complete.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{Finished, Storage, TargetError};

/// Granularity of the in-memory bytes (only blocks ever written are kept).
const BLOCK: u64 = 4096;

/// What happens at a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The device reports an I/O error; nothing is written.
    Eio,
    /// The filesystem is full (ENOSPC); nothing is written.
    NoSpace,
    /// The first half of the bytes lands, then the write stops (what `write_all_at`
    /// reports when `pwrite` writes nothing more: `WriteZero`).
    ShortWrite,
    /// The step takes this long, then succeeds.
    Slow(Duration),
    /// The step waits until [`MemHandle::release`], then succeeds.
    Hold,
}

impl Fault {
    /// The error a failing fault returns, as the real disk would report it.
    fn error(self) -> Option<io::Error> {
        match self {
            Fault::Eio => Some(io::Error::from_raw_os_error(libc::EIO)),
            Fault::NoSpace => Some(io::Error::from_raw_os_error(libc::ENOSPC)),
            Fault::ShortWrite => Some(io::Error::new(io::ErrorKind::WriteZero, "failed to write whole buffer")),
            Fault::Slow(_) | Fault::Hold => None,
        }
    }
}

/// Where the storage is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    Open,
    /// `finish` succeeded: the image is complete.
    Complete,
    /// Aborted or dropped unfinished (a failed `finish` included).
    Discarded,
}

#[derive(Debug)]
struct Inner {
    /// Only blocks ever written, by index; ordered so zeroing a range visits only those.
    blocks: Mutex<BTreeMap<u64, Box<[u8]>>>,
    steps: AtomicU64,
    faults: BTreeMap<u64, Fault>,
    /// Applied to every step from this one on that has no fault of its own.
    from: Option<(u64, Fault)>,
    life: Mutex<Life>,
    /// Steps being held, and whether they were released.
    gate: Mutex<Gate>,
    moved: Condvar,
}

#[derive(Debug, Default)]
struct Gate {
    held: u64,
    released: bool,
}

/// An in-memory disk; see the module docs.
#[derive(Debug)]
pub struct MemStorage {
    inner: Arc<Inner>,
    reads_zero: bool,
    ordered: bool,
    spool: Option<(u64, u64)>,
}

/// The test's view of a [`MemStorage`], valid after it was finished or dropped.
#[derive(Debug, Clone)]
pub struct MemHandle(Arc<Inner>);

impl MemStorage {
    /// A file-like disk for an image of `size` bytes: unwritten ranges read as zero, and
    /// `spool` bytes of room past the image.
    pub fn new(size: u64, spool: u64) -> MemStorage {
        MemStorage {
            inner: Arc::new(Inner {
                blocks: Mutex::new(BTreeMap::new()),
                steps: AtomicU64::new(0),
                faults: BTreeMap::new(),
                from: None,
                life: Mutex::new(Life::Open),
                gate: Mutex::new(Gate::default()),
                moved: Condvar::new(),
            }),
            reads_zero: true,
            ordered: false,
            spool: (spool > 0).then(|| (size.next_multiple_of(2 << 20), spool)),
        }
    }

    /// Like a block device: zero ranges must be written (the engine sends `zero` steps).
    pub fn block_like(mut self) -> MemStorage {
        self.reads_zero = false;
        self
    }

    /// Like a file written directly: the engine writes in job order.
    pub fn ordered(mut self) -> MemStorage {
        self.ordered = true;
        self
    }

    /// Step `step` meets `fault`.
    pub fn fault_at(mut self, step: u64, fault: Fault) -> MemStorage {
        self.inner_mut().faults.insert(step, fault);
        self
    }

    /// Every step from `step` on meets `fault` (unless given its own).
    pub fn fault_from(mut self, step: u64, fault: Fault) -> MemStorage {
        self.inner_mut().from = Some((step, fault));
        self
    }

    fn inner_mut(&mut self) -> &mut Inner {
        Arc::get_mut(&mut self.inner).expect("faults are set before the storage is shared")
    }

    pub fn handle(&self) -> MemHandle {
        MemHandle(self.inner.clone())
    }

    /// Counts a step and applies its fault; `Err` when the step must fail.
    fn step(&self) -> Result<(), (u64, Fault, io::Error)> {
        let n = self.inner.steps.fetch_add(1, Ordering::SeqCst);
        let from = self.inner.from.filter(|&(first, _)| n >= first).map(|(_, f)| f);
        let Some(fault) = self.inner.faults.get(&n).copied().or(from) else { return Ok(()) };
        match fault {
            Fault::Slow(d) => std::thread::sleep(d),
            Fault::Hold => {
                let mut gate = self.inner.gate.lock().expect("gate lock");
                gate.held += 1;
                self.inner.moved.notify_all();
                while !gate.released {
                    gate = self.inner.moved.wait(gate).expect("gate lock");
                }
            }
            _ => {}
        }
        match fault.error() {
            Some(e) => Err((n, fault, e)),
            None => Ok(()),
        }
    }

    fn put(&self, data: &[u8], offset: u64) {
        let mut blocks = self.inner.blocks.lock().expect("blocks lock");
        let mut at = 0usize;
        while at < data.len() {
            let pos = offset + at as u64;
            let (index, within) = (pos / BLOCK, (pos % BLOCK) as usize);
            let n = (BLOCK as usize - within).min(data.len() - at);
            let block = blocks.entry(index).or_insert_with(|| vec![0u8; BLOCK as usize].into_boxed_slice());
            block[within..within + n].copy_from_slice(&data[at..at + n]);
            at += n;
        }
    }

    fn io_error(op: &'static str, offset: u64, source: io::Error) -> TargetError {
        TargetError::Io { op, path: PathBuf::from("mem"), offset, source }
    }

    fn discard(&self) {
        let mut life = self.inner.life.lock().expect("life lock");
        if *life == Life::Open {
            *life = Life::Discarded;
        }
    }
}

impl Storage for MemStorage {
    fn write(&self, data: &[u8], offset: u64) -> Result<(), TargetError> {
        if let Err((_, fault, e)) = self.step() {
            if fault == Fault::ShortWrite {
                self.put(&data[..data.len() / 2], offset);
            }
            return Err(Self::io_error("write", offset, e));
        }
        self.put(data, offset);
        Ok(())
    }

    fn zero(&self, offset: u64, len: u64) -> Result<(), TargetError> {
        self.step().map_err(|(_, _, e)| Self::io_error("zero", offset, e))?;
        // Only blocks written so far are visited: zeroing a range of terabytes (a hostile
        // image's virtual size) costs nothing more than zeroing a small one.
        let end = offset.saturating_add(len);
        let mut blocks = self.inner.blocks.lock().expect("blocks lock");
        for (&index, block) in blocks.range_mut(offset / BLOCK..end.div_ceil(BLOCK)) {
            let start = index * BLOCK;
            let from = offset.saturating_sub(start).min(BLOCK) as usize;
            let to = (end - start).min(BLOCK) as usize;
            block[from..to].fill(0);
        }
        Ok(())
    }

    fn unwritten_reads_zero(&self) -> bool {
        self.reads_zero
    }

    fn wants_ordered_writes(&self) -> bool {
        self.ordered
    }

    fn spool_region(&self) -> Option<(u64, u64)> {
        self.spool
    }

    fn spool_write(&self, data: &[u8], offset: u64) -> Result<(), TargetError> {
        let (start, len) = self.spool.expect("spool_write without a spool region");
        assert!(offset >= start && offset + data.len() as u64 <= start + len, "spool_write outside the region");
        self.write(data, offset).map_err(|e| match e {
            TargetError::Io { offset, source, .. } => Self::io_error("spool to", offset, source),
            other => other,
        })
    }

    fn spool_read(&self, offset: u64, len: usize) -> Result<Vec<u8>, TargetError> {
        self.step().map_err(|(_, _, e)| Self::io_error("read the spool of", offset, e))?;
        Ok(self.handle().read(offset, len as u64))
    }

    fn finish(self, image_size: u64) -> Result<Finished, TargetError> {
        if let Err((_, _, source)) = self.step() {
            // Dropped on return: discarded, as the real disk aborts.
            return Err(TargetError::Finish { op: "flush", path: PathBuf::from("mem"), source });
        }
        *self.inner.life.lock().expect("life lock") = Life::Complete;
        Ok(Finished { path: PathBuf::from("mem"), size: image_size, bytes_written: 0 })
    }

    fn abort(self) {
        self.discard();
    }
}

impl Drop for MemStorage {
    fn drop(&mut self) {
        self.discard();
    }
}

impl MemHandle {
    /// Steps started so far.
    pub fn steps(&self) -> u64 {
        self.0.steps.load(Ordering::SeqCst)
    }

    pub fn life(&self) -> Life {
        *self.0.life.lock().expect("life lock")
    }

    /// `len` bytes from `offset` (zeros where nothing was written).
    pub fn read(&self, offset: u64, len: u64) -> Vec<u8> {
        let blocks = self.0.blocks.lock().expect("blocks lock");
        let mut out = vec![0u8; len as usize];
        let mut pos = offset;
        while pos < offset + len {
            let (index, within) = (pos / BLOCK, pos % BLOCK);
            let n = (BLOCK - within).min(offset + len - pos);
            if let Some(block) = blocks.get(&index) {
                let at = (pos - offset) as usize;
                out[at..at + n as usize].copy_from_slice(&block[within as usize..(within + n) as usize]);
            }
            pos += n;
        }
        out
    }

    /// Waits until a held step is reached; panics after `limit` (the step never came).
    pub fn wait_held(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut gate = self.0.gate.lock().expect("gate lock");
        while gate.held == 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no held step was reached within {limit:?}");
            gate = self.0.moved.wait_timeout(gate, left).expect("gate lock").0;
        }
    }

    /// Lets every held step (and any later one) go on.
    pub fn release(&self) {
        self.0.gate.lock().expect("gate lock").released = true;
        self.0.moved.notify_all();
    }
}

//! The copy engine: format decoders describe the image as [`Job`]s ("these guest bytes are
//! here", "this range is zero"), and a few worker threads carry them out — reading from a
//! random-access source, inflating compressed clusters, skipping zero blocks, writing.
//!
//! Memory is fixed by [`CopyConfig`]: `buffers` pooled chunks for the producer plus up to
//! two chunks per worker (allocated by the first job that reads or decodes), whatever the
//! image size.
//!
//! # Invariant for callers
//! No two jobs may touch the same [`ZERO_BLOCK`]-aligned block, except that the image's
//! last block may be partial. Decoders guarantee it by cutting jobs at cluster boundaries
//! (clusters are at least 4 KiB whenever the target uses direct I/O).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::direct_io::AlignedBuf;
use crate::disk::Storage;
use crate::error::ImportError;
use crate::format::FormatError;
use crate::source::RandomAccess;

/// Zero detection granularity: zero runs of whole 4 KiB blocks become holes, like
/// `qemu-img convert`'s default `-S 4k`.
pub const ZERO_BLOCK: usize = 4096;
/// On targets that do not read zeros where nothing was written (block devices), zero runs
/// shorter than this inside data are written as zeros rather than punched one by one.
const MIN_PUNCH: usize = 64 << 10;

#[derive(Debug, Clone, Copy)]
pub struct CopyConfig {
    pub workers: usize,
    /// Size of each buffer: the largest single read or write.
    pub chunk: usize,
    /// Buffers the producer may fill ahead of the workers.
    pub buffers: usize,
}

impl Default for CopyConfig {
    fn default() -> CopyConfig {
        CopyConfig { workers: 3, chunk: 2 << 20, buffers: 6 }
    }
}

/// How compressed clusters (qcow2) or grains (vmdk) are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Raw deflate (no zlib header), qcow2's default.
    Deflate,
    Zstd,
    /// A zlib stream (RFC 1950: header and Adler-32 trailer), as vmdk's streamOptimized grains
    /// are stored. It must end inside the grain, and may end short of it only where the image
    /// ends within the grain (qemu compresses only the bytes up to the end of the disk).
    Zlib,
}

/// Subclusters of a cluster that must read as zero after the cluster is fetched.
#[derive(Debug, Clone, Copy)]
pub struct ZeroMask {
    pub unit: usize,
    pub bits: u32,
}

impl ZeroMask {
    /// Bytes of a `len`-byte cluster that are stored: up to the end of its last allocated
    /// subcluster. qemu leaves a cluster's unwritten tail out of the file when the cluster
    /// ends the image, so nothing past that may be read.
    pub fn stored_len(&self, len: usize) -> usize {
        let allocated = !self.bits;
        if allocated == 0 {
            return 0;
        }
        let last = 31 - allocated.leading_zeros() as usize;
        ((last + 1) * self.unit).min(len)
    }

    /// Zeroes the subclusters that read as zero.
    pub fn apply(&self, cluster: &mut [u8]) {
        for i in 0..32 {
            if self.bits & (1 << i) != 0 {
                let start = (i * self.unit).min(cluster.len());
                let end = ((i + 1) * self.unit).min(cluster.len());
                cluster[start..end].fill(0);
            }
        }
    }
}

/// One compressed cluster within a [`Job::Compressed`] input.
#[derive(Debug, Clone, Copy)]
pub struct CompressedCluster {
    /// Guest offset of the decompressed cluster.
    pub guest: u64,
    /// Where its compressed bytes start within the job's input.
    pub start: usize,
    pub len: usize,
    /// Decompressed bytes to keep (the cluster size, less at the image end).
    pub out_len: usize,
    /// Bytes the cluster decompresses to (the cluster size); with [`Codec::Zlib`], at most
    /// this and at least `out_len`.
    pub cluster_size: usize,
}

/// Compressed bytes: already in memory, or to be read from the source.
#[derive(Debug)]
pub enum Input {
    Inline(PooledBuf),
    At { host: u64, len: usize },
}

/// A unit of work for the engine.
#[derive(Debug)]
pub enum Job {
    /// Guest bytes held in memory, to be placed at `offset`.
    Data { offset: u64, buf: PooledBuf },
    /// `len` source bytes at `host` are the guest bytes at `offset`.
    Copy { offset: u64, host: u64, len: usize, zero_mask: Option<ZeroMask> },
    /// Compressed clusters to inflate and place.
    Compressed { input: Input, clusters: Vec<CompressedCluster>, codec: Codec },
    /// The guest range reads as zero.
    Zero { offset: u64, len: u64 },
    /// One block of a multi-block xz file whose content is a raw disk, decoded and placed
    /// by the worker (blocks decode in parallel).
    XzBlock { layout: Arc<crate::decompress::xz_blocks::Layout>, index: usize },
}

/// A chunk borrowed from the engine's pool; it goes back when dropped.
#[derive(Debug)]
pub struct PooledBuf {
    buf: Option<AlignedBuf>,
    home: Sender<AlignedBuf>,
}

impl std::ops::Deref for PooledBuf {
    type Target = AlignedBuf;
    fn deref(&self) -> &AlignedBuf {
        self.buf.as_ref().expect("pooled buffer present until drop")
    }
}

impl std::ops::DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut AlignedBuf {
        self.buf.as_mut().expect("pooled buffer present until drop")
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if let Some(mut buf) = self.buf.take() {
            buf.set_len(0);
            let _ = self.home.send(buf);
        }
    }
}

/// Counters shared with progress reporting.
#[derive(Debug, Default)]
pub struct Counters {
    /// Source bytes read: by the workers (random access) or from the stream.
    pub source_read: Arc<AtomicU64>,
    /// Guest bytes whose final content is on the target (data and zeros).
    pub guest_done: Arc<AtomicU64>,
}

struct Shared {
    failed: AtomicBool,
    error: std::sync::Mutex<Option<ImportError>>,
    cancel: Arc<AtomicBool>,
}

impl Shared {
    fn fail(&self, e: ImportError) {
        let mut slot = self.error.lock().expect("error slot");
        if slot.is_none() {
            *slot = Some(e);
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.failed.load(Ordering::Relaxed) || self.cancel.load(Ordering::Relaxed)
    }
}

/// The producer's handle: submit jobs and borrow buffers.
pub struct JobSink<'a> {
    tx: Sender<(u64, Job)>,
    /// Number of the next job: workers allocate space in this order.
    seq: std::cell::Cell<u64>,
    pool_rx: Receiver<AlignedBuf>,
    pool_tx: Sender<AlignedBuf>,
    shared: &'a Shared,
    chunk: usize,
}

impl std::fmt::Debug for JobSink<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSink").field("chunk", &self.chunk).finish()
    }
}

impl JobSink<'_> {
    /// The size of pooled buffers and the largest job the engine accepts.
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// Queues a job; blocks while the workers are busy.
    pub fn submit(&self, job: Job) -> Result<(), ImportError> {
        let seq = self.seq.get();
        let mut item = (seq, job);
        loop {
            self.check()?;
            match self.tx.send_timeout(item, Duration::from_millis(100)) {
                Ok(()) => {
                    self.seq.set(seq + 1);
                    return Ok(());
                }
                Err(crossbeam_channel::SendTimeoutError::Timeout(i)) => item = i,
                Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => return Err(self.stopped_error()),
            }
        }
    }

    /// Borrows an empty buffer of [`JobSink::chunk`] bytes; blocks until one is free.
    pub fn buffer(&self) -> Result<PooledBuf, ImportError> {
        loop {
            self.check()?;
            match self.pool_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(buf) => return Ok(PooledBuf { buf: Some(buf), home: self.pool_tx.clone() }),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return Err(self.stopped_error()),
            }
        }
    }

    /// Fails fast once a worker failed or the import was cancelled.
    pub fn check(&self) -> Result<(), ImportError> {
        if self.shared.stopped() { Err(self.stopped_error()) } else { Ok(()) }
    }

    fn stopped_error(&self) -> ImportError {
        // The worker's own error is reported by `run`; this one only unwinds the producer.
        ImportError::Cancelled
    }
}

/// Runs `produce` on the calling thread and the jobs it submits on `cfg.workers` threads.
///
/// # Errors
/// The first worker error wins over the producer's; cancellation via `cancel` yields
/// [`ImportError::Cancelled`].
pub fn run<F, T>(
    cfg: CopyConfig,
    disk: &dyn Storage,
    source: Option<&dyn RandomAccess>,
    counters: &Counters,
    cancel: Arc<AtomicBool>,
    produce: F,
) -> Result<T, ImportError>
where
    F: FnOnce(&JobSink<'_>) -> Result<T, ImportError>,
{
    let shared = Shared { failed: AtomicBool::new(false), error: std::sync::Mutex::new(None), cancel };
    let (tx, rx) = bounded::<(u64, Job)>(cfg.workers * 2);
    let turns = Turns::new(cfg.workers.max(1));
    let turns = disk.wants_ordered_writes().then_some(&turns);
    let (pool_tx, pool_rx) = bounded::<AlignedBuf>(cfg.buffers);
    for _ in 0..cfg.buffers {
        pool_tx.send(AlignedBuf::new(cfg.chunk)).expect("pool has room");
    }
    let produced = std::thread::scope(|scope| {
        for _ in 0..cfg.workers.max(1) {
            let rx = rx.clone();
            let shared = &shared;
            scope.spawn(move || {
                let mut worker = Worker {
                    disk,
                    source,
                    counters,
                    shared,
                    turns,
                    // Grown by the first job that reads or decodes: a writer of data jobs
                    // (a volume stream) never needs one.
                    input: AlignedBuf::new(0),
                    output: None,
                    chunk: cfg.chunk,
                    inflate: None,
                    libdeflate: None,
                    zstd: None,
                };
                for (seq, job) in rx {
                    if shared.stopped() {
                        continue; // drain: dropping the job returns its buffer
                    }
                    match worker.run(seq, job) {
                        Ok(()) => {}
                        // Only a consequence of another failure (or of a cancellation, which
                        // `run` reports itself): the cause is recorded elsewhere.
                        Err(ImportError::Cancelled) => {}
                        Err(e) => shared.fail(e),
                    }
                }
            });
        }
        drop(rx);
        let sink = JobSink { tx, pool_rx, pool_tx, shared: &shared, chunk: cfg.chunk, seq: std::cell::Cell::new(0) };
        let produced = produce(&sink);
        if let Err(e) = &produced
            && !matches!(e, ImportError::Cancelled)
        {
            shared.failed.store(true, Ordering::SeqCst);
        }
        drop(sink);
        produced
    });
    if let Some(e) = shared.error.lock().expect("error slot").take() {
        return Err(e);
    }
    let value = produced?;
    if shared.cancel.load(Ordering::Relaxed) {
        return Err(ImportError::Cancelled);
    }
    Ok(value)
}

/// Hands out the order in which jobs write to a file target written directly.
///
/// Direct writes from several workers allocate blocks in whatever order they land, and
/// blocks allocated ahead of the writes (fallocate) follow the file's holes: either way
/// the file ends up in hundreds of physical pieces and ext4 needs more extent-tree blocks
/// than a sequential writer. Each job therefore writes in its turn, one after another, and
/// the file is laid out as a sequential writer's (as compact as `qemu-img convert`'s).
///
/// A worker done with its job before its turn parks the output instead of waiting
/// ([`Turns::write_in_order`]) and goes on with the next job; the worker whose turn comes
/// first writes the parked outputs after its own. Reading and decoding so go on while one
/// worker writes, and at most `max_parked` outputs wait.
struct Turns {
    state: Mutex<TurnState>,
    moved: Condvar,
    max_parked: usize,
    /// Buffers of parked outputs once written, for workers to decode into again.
    spare: Mutex<Vec<AlignedBuf>>,
}

struct TurnState {
    /// The job whose turn it is.
    next: u64,
    /// Outputs of later jobs, waiting for their turn.
    parked: BTreeMap<u64, Output>,
}

/// A decoded job's bytes and the guest runs in them.
struct Output {
    bytes: Held,
    /// (guest offset, start, end) within `bytes`.
    runs: Vec<(u64, usize, usize)>,
}

/// Bytes of an output: a worker's own buffer, or one borrowed from the producer's pool.
enum Held {
    Own(AlignedBuf),
    Pool(PooledBuf),
}

impl std::ops::Deref for Held {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Held::Own(b) => b,
            Held::Pool(b) => b,
        }
    }
}

/// How outputs are written, by whichever worker's turn reaches them.
type WriteOutput<'w> = dyn Fn(&Output) -> Result<(), ImportError> + 'w;

impl Turns {
    fn new(max_parked: usize) -> Turns {
        Turns {
            state: Mutex::new(TurnState { next: 0, parked: BTreeMap::new() }),
            moved: Condvar::new(),
            max_parked,
            spare: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, TurnState> {
        self.state.lock().expect("turns lock")
    }

    fn wait<'g>(&self, st: MutexGuard<'g, TurnState>) -> MutexGuard<'g, TurnState> {
        self.moved.wait_timeout(st, Duration::from_millis(50)).expect("turns lock").0
    }

    /// Waits until every earlier job has had its turn, then passes the turn on (a job with
    /// nothing to write in order). Gives up when the import stops.
    fn in_order(&self, seq: u64, shared: &Shared, write: &WriteOutput<'_>) -> Result<(), ImportError> {
        let mut st = self.lock();
        while st.next < seq {
            if shared.stopped() {
                return Err(ImportError::Cancelled);
            }
            st = self.wait(st);
        }
        st.next = st.next.max(seq + 1);
        self.pass(st, shared, write);
        Ok(())
    }

    /// Writes job `seq`'s output in its turn: now if the turn is its own, else parked for
    /// the worker whose turn comes before (or, when `max_parked` outputs wait already,
    /// once there is room or it is its turn). Returns the output's buffer when it was
    /// written here, for the worker to decode into again.
    fn write_in_order(
        &self,
        seq: u64,
        out: Output,
        shared: &Shared,
        write: &WriteOutput<'_>,
    ) -> Result<Option<AlignedBuf>, ImportError> {
        let mut st = self.lock();
        while st.next != seq {
            if shared.stopped() {
                return Err(ImportError::Cancelled);
            }
            if st.next > seq {
                return Err(FormatError::Internal("a job's turn passed before it was written").into());
            }
            if st.parked.len() < self.max_parked {
                st.parked.insert(seq, out);
                return Ok(None);
            }
            st = self.wait(st);
        }
        // Written outside the lock: later jobs park or wait meanwhile, as `next` is still ours.
        drop(st);
        let result = write(&out);
        let mut st = self.lock();
        st.next = seq + 1;
        self.pass(st, shared, write);
        result?;
        Ok(match out.bytes {
            Held::Own(buf) => Some(buf),
            Held::Pool(_) => None,
        })
    }

    /// Writes the parked outputs whose turn has come, in order, then wakes the waiters.
    fn pass<'s>(&'s self, mut st: MutexGuard<'s, TurnState>, shared: &Shared, write: &WriteOutput<'_>) {
        while !shared.stopped() {
            let at = st.next;
            let Some(out) = st.parked.remove(&at) else { break };
            drop(st);
            match write(&out) {
                Ok(()) | Err(ImportError::Cancelled) => {}
                Err(e) => shared.fail(e),
            }
            if let Held::Own(buf) = out.bytes {
                self.spare.lock().expect("spare lock").push(buf);
            }
            st = self.lock();
            st.next = at + 1;
        }
        drop(st);
        self.moved.notify_all();
    }

    /// A buffer to decode into: one a parked output left, if any.
    fn spare(&self) -> Option<AlignedBuf> {
        self.spare.lock().expect("spare lock").pop()
    }
}

/// One write or zeroing a job resolves to.
enum Op<'b> {
    Write { offset: u64, data: &'b [u8] },
    Zero { offset: u64, len: u64 },
}

/// A worker's private state: two chunks and the decompressors.
struct Worker<'a> {
    disk: &'a dyn Storage,
    source: Option<&'a dyn RandomAccess>,
    counters: &'a Counters,
    shared: &'a Shared,
    /// Set for file targets written directly: allocation happens in job order.
    turns: Option<&'a Turns>,
    input: AlignedBuf,
    output: Option<AlignedBuf>,
    chunk: usize,
    inflate: Option<flate2::Decompress>,
    libdeflate: Option<libdeflater::Decompressor>,
    zstd: Option<zstd::zstd_safe::DCtx<'static>>,
}

impl<'a> Worker<'a> {
    /// Runs job number `seq`; whatever happens, its allocation turn is passed on.
    fn run(&mut self, seq: u64, job: Job) -> Result<(), ImportError> {
        let mut input = std::mem::replace(&mut self.input, AlignedBuf::new(0));
        let mut output = self.output.take();
        let result = self.run_job(seq, job, &mut input, &mut output);
        self.input = input;
        self.output = output;
        if result.is_err()
            && let Some(turns) = self.turns
        {
            // A job that failed before its turn must not hold up the ones after it.
            let _ = turns.in_order(seq, self.shared, &|o| self.write_output(o));
        }
        result
    }

    fn run_job(
        &mut self,
        seq: u64,
        job: Job,
        input: &mut AlignedBuf,
        output: &mut Option<AlignedBuf>,
    ) -> Result<(), ImportError> {
        match job {
            Job::Data { offset, buf } => {
                let runs = vec![(offset, 0, buf.len())];
                self.commit_output(seq, Output { bytes: Held::Pool(buf), runs }).map(drop)
            }
            Job::Zero { offset, len } => {
                if let Some(turns) = self.turns {
                    turns.in_order(seq, self.shared, &|o| self.write_output(o))?;
                }
                self.disk.zero(offset, len)?;
                self.counters.guest_done.fetch_add(len, Ordering::Relaxed);
                Ok(())
            }
            Job::Copy { offset, host, len, zero_mask } => {
                let stored = zero_mask.map_or(len, |m| m.stored_len(len));
                // Room for the whole cluster: its unstored tail is zeroed in place.
                self.reserve(input, len);
                self.read_source(input, host, stored)?;
                if let Some(mask) = zero_mask {
                    input.set_len(len);
                    input[stored..].fill(0);
                    mask.apply(input);
                }
                if self.turns.is_none() {
                    return self.commit(&[(offset, &input[..])]);
                }
                // A parked output takes its buffer along, and only then does the next job read
                // into another one (a spare, else a new one: allocating a buffer per job costs
                // page faults on every byte).
                let buf = std::mem::replace(input, AlignedBuf::new(0));
                let runs = vec![(offset, 0, buf.len())];
                *input = match self.commit_output(seq, Output { bytes: Held::Own(buf), runs })? {
                    Some(back) => back,
                    None => self.fresh_output(),
                };
                Ok(())
            }
            Job::XzBlock { layout, index } => {
                if let Some(turns) = self.turns {
                    turns.in_order(seq, self.shared, &|o| self.write_output(o))?;
                }
                let source = self.source.ok_or(FormatError::Internal("xz block job without a random-access source"))?;
                let out = output.get_or_insert_with(|| self.fresh_output());
                out.set_len(out.capacity());
                self.reserve(input, self.chunk);
                input.set_len(input.capacity());
                layout.decode(source, index, input, out, None, &mut |offset, data| self.commit(&[(offset, data)]))?;
                self.counters.source_read.fetch_add(layout.blocks[index].total(), Ordering::Relaxed);
                Ok(())
            }
            Job::Compressed { input: compressed, clusters, codec } => {
                let mut out = output.take().unwrap_or_else(|| self.fresh_output());
                let runs = match compressed {
                    Input::Inline(buf) => self.inflate_all(&buf, &clusters, codec, &mut out),
                    Input::At { host, len } => self
                        .read_source(input, host, len)
                        .and_then(|()| self.inflate_all(input, &clusters, codec, &mut out)),
                };
                let runs = match runs {
                    Ok(runs) => runs,
                    Err(e) => {
                        *output = Some(out);
                        return Err(e);
                    }
                };
                // Parked outputs take their buffer along; the next job decodes into a spare.
                *output = self.commit_output(seq, Output { bytes: Held::Own(out), runs })?;
                Ok(())
            }
        }
    }

    /// Makes `buf` hold at least `len` bytes (a whole chunk at least, so that it is
    /// allocated once per worker rather than per job).
    fn reserve(&self, buf: &mut AlignedBuf, len: usize) {
        if buf.capacity() < len {
            *buf = AlignedBuf::new(len.max(self.chunk));
        }
    }

    fn read_source(&self, buf: &mut AlignedBuf, host: u64, len: usize) -> Result<(), ImportError> {
        let source = self.source.ok_or(FormatError::Internal("copy job without a random-access source"))?;
        self.reserve(buf, len);
        buf.set_len(len);
        source.read_exact_at(buf, host)?;
        self.counters.source_read.fetch_add(len as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Inflates every cluster into `out`, back to back. Returns the guest-contiguous runs
    /// as (guest offset, start, end) in `out`.
    fn inflate_all(
        &mut self,
        input: &[u8],
        clusters: &[CompressedCluster],
        codec: Codec,
        out: &mut AlignedBuf,
    ) -> Result<Vec<(u64, usize, usize)>, ImportError> {
        let needed: usize = clusters.iter().map(|c| c.cluster_size).sum();
        if needed > out.capacity() {
            return Err(FormatError::Internal("compressed job larger than a chunk").into());
        }
        out.set_len(needed);
        let mut runs: Vec<(u64, usize, usize)> = Vec::new();
        let mut at = 0;
        for c in clusters {
            let src = input
                .get(c.start..c.start + c.len)
                .ok_or(FormatError::Internal("compressed cluster outside its job input"))?;
            self.inflate_one(codec, src, &mut out[at..at + c.cluster_size], c.out_len, c.guest)?;
            match runs.last_mut() {
                Some((guest, start, end)) if *guest + (*end - *start) as u64 == c.guest && *end == at => {
                    *end = at + c.out_len
                }
                _ => runs.push((c.guest, at, at + c.out_len)),
            }
            at += c.cluster_size;
        }
        Ok(runs)
    }

    /// Inflates one cluster into `dst`; `keep` leading bytes of it are used.
    fn inflate_one(
        &mut self,
        codec: Codec,
        src: &[u8],
        dst: &mut [u8],
        keep: usize,
        guest: u64,
    ) -> Result<(), ImportError> {
        let produced = match codec {
            Codec::Zlib => {
                // As for deflate below: libdeflate first, zlib-rs to decide what it refuses.
                let fast = self.libdeflate.get_or_insert_with(libdeflater::Decompressor::new);
                if let Ok(n) = fast.zlib_decompress(src, dst)
                    && n >= keep
                {
                    return Ok(());
                }
                let d = self.inflate.get_or_insert_with(|| flate2::Decompress::new(true));
                inflate_zlib(d, src, dst, keep, guest)?;
                return Ok(());
            }
            Codec::Deflate => {
                // libdeflate inflates a whole cluster about a fifth faster than zlib-rs. A
                // stream it will not take (cut at the cluster's end, as qemu accepts when the
                // output is full) goes the zlib way, which is qemu's own.
                let fast = self.libdeflate.get_or_insert_with(libdeflater::Decompressor::new);
                if let Ok(n) = fast.deflate_decompress(src, dst)
                    && n == dst.len()
                {
                    return Ok(());
                }
                let d = self.inflate.get_or_insert_with(|| flate2::Decompress::new(false));
                d.reset(false);
                match d.decompress(src, dst, flate2::FlushDecompress::Finish) {
                    Ok(_) => d.total_out() as usize,
                    Err(e) => return Err(FormatError::BadCompressedCluster { guest, reason: e.to_string() }.into()),
                }
            }
            Codec::Zstd => {
                use zstd::zstd_safe::{DCtx, InBuffer, OutBuffer, ResetDirective};
                let d = self.zstd.get_or_insert_with(DCtx::create);
                let _ = d.reset(ResetDirective::SessionOnly);
                let mut input = InBuffer::around(src);
                let mut output = OutBuffer::around(dst);
                // Stop when the cluster is full or the input runs out; bytes after the frame
                // are the padding up to the next 512-byte sector.
                loop {
                    let before = (input.pos(), output.pos());
                    match d.decompress_stream(&mut output, &mut input) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(code) => {
                            return Err(FormatError::BadCompressedCluster {
                                guest,
                                reason: zstd::zstd_safe::get_error_name(code).to_string(),
                            }
                            .into());
                        }
                    }
                    if output.pos() == output.capacity() || (input.pos(), output.pos()) == before {
                        break;
                    }
                }
                output.pos()
            }
        };
        if produced != dst.len() {
            return Err(FormatError::BadCompressedCluster {
                guest,
                reason: format!("decompressed to {produced} bytes instead of {}", dst.len()),
            }
            .into());
        }
        Ok(())
    }

    /// Places a job's output: in its turn on files written directly ([`Turns`]), else at
    /// once. Returns the buffer when the worker may keep it.
    fn commit_output(&self, seq: u64, out: Output) -> Result<Option<AlignedBuf>, ImportError> {
        if let Some(turns) = self.turns {
            return turns.write_in_order(seq, out, self.shared, &|o| self.write_output(o));
        }
        self.write_output(&out)?;
        Ok(match out.bytes {
            Held::Own(buf) => Some(buf),
            Held::Pool(_) => None,
        })
    }

    /// Writes an output's runs.
    fn write_output(&self, out: &Output) -> Result<(), ImportError> {
        let pieces: Vec<(u64, &[u8])> =
            out.runs.iter().map(|&(guest, start, end)| (guest, &out.bytes[start..end])).collect();
        self.commit(&pieces)
    }

    /// A buffer to read or decode into: one a written parked output left, if any.
    fn fresh_output(&self) -> AlignedBuf {
        self.turns.and_then(Turns::spare).unwrap_or_else(|| AlignedBuf::new(self.chunk))
    }

    /// Places guest bytes now: zero blocks become holes (files) or zeroed ranges (block
    /// devices, punched when long enough to be worth an ioctl), data runs are written.
    fn commit(&self, pieces: &[(u64, &[u8])]) -> Result<(), ImportError> {
        let mut ops = Vec::new();
        for &(offset, data) in pieces {
            plan_ops(data, offset, self.disk.unwritten_reads_zero(), &mut ops);
        }
        for op in &ops {
            match op {
                Op::Write { offset, data } => self.disk.write(data, *offset)?,
                Op::Zero { offset, len } => self.disk.zero(*offset, *len)?,
            }
        }
        let done: u64 = pieces.iter().map(|(_, d)| d.len() as u64).sum();
        self.counters.guest_done.fetch_add(done, Ordering::Relaxed);
        Ok(())
    }
}

/// Inflates the zlib stream `src` into `dst` (reusing `d`), as qemu's vmdk reader does:
/// the stream must end within `dst`, having produced at least `keep` bytes. Bytes after the
/// stream's end are ignored (they pad the grain to a sector).
///
/// # Errors
/// [`FormatError::BadCompressedCluster`] naming `guest` when the data is not zlib, is cut
/// short, inflates past `dst`, or inflates to fewer than `keep` bytes.
pub(crate) fn inflate_zlib(
    d: &mut flate2::Decompress,
    src: &[u8],
    dst: &mut [u8],
    keep: usize,
    guest: u64,
) -> Result<usize, FormatError> {
    let bad = |reason: String| FormatError::BadCompressedCluster { guest, reason };
    d.reset(true);
    let status = d.decompress(src, dst, flate2::FlushDecompress::Finish).map_err(|e| bad(e.to_string()))?;
    let produced = d.total_out() as usize;
    match status {
        flate2::Status::StreamEnd if produced >= keep => Ok(produced),
        flate2::Status::StreamEnd => {
            Err(bad(format!("decompressed to {produced} bytes, fewer than the {keep} it holds")))
        }
        _ if produced == dst.len() => Err(bad(format!("decompresses to more than the grain's {} bytes", dst.len()))),
        _ => Err(bad(format!("its zlib stream is cut short after {} compressed bytes", d.total_in()))),
    }
}

/// Splits guest bytes into writes of data runs and zeroings of zero runs. Where unwritten
/// ranges read as zero, zero runs are simply skipped.
fn plan_ops<'b>(data: &'b [u8], offset: u64, reads_zero: bool, ops: &mut Vec<Op<'b>>) {
    let mut pending: Option<(usize, usize)> = None; // a data run: [start, end)
    let mut pos = 0;
    while pos < data.len() {
        let end = (pos + ZERO_BLOCK).min(data.len());
        if !is_zero(&data[pos..end]) {
            pending = Some(pending.map_or((pos, end), |(s, _)| (s, end)));
            pos = end;
            continue;
        }
        let mut zend = end;
        while zend < data.len() {
            let next = (zend + ZERO_BLOCK).min(data.len());
            if !is_zero(&data[zend..next]) {
                break;
            }
            zend = next;
        }
        if !reads_zero && zend - pos < MIN_PUNCH && pending.is_some() && zend < data.len() {
            // A short gap between data on a block device: cheaper to write the zeros.
            pending = pending.map(|(s, _)| (s, zend));
        } else {
            if let Some((s, e)) = pending.take() {
                ops.push(Op::Write { offset: offset + s as u64, data: &data[s..e] });
            }
            if !reads_zero {
                ops.push(Op::Zero { offset: offset + pos as u64, len: (zend - pos) as u64 });
            }
        }
        pos = zend;
    }
    if let Some((s, e)) = pending {
        ops.push(Op::Write { offset: offset + s as u64, data: &data[s..e] });
    }
}

/// Whether every byte is zero; vectorises 64 bytes at a time and exits early on data.
pub fn is_zero(data: &[u8]) -> bool {
    let mut chunks = data.chunks_exact(64);
    for c in &mut chunks {
        if c.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zlib(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn zlib_grains_inflate_full_or_short_only_down_to_what_is_kept() {
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        let mut d = flate2::Decompress::new(true);
        let mut out = vec![0u8; 8192];
        // Whole, and padded with garbage after the stream's end (sector padding).
        let mut z = zlib(&data);
        z.extend_from_slice(&[0xaa; 100]);
        assert_eq!(inflate_zlib(&mut d, &z, &mut out, 8192, 0).unwrap(), 8192);
        assert_eq!(out, data);
        // The image's last grain: compressed short, or whole with only its start kept.
        assert_eq!(inflate_zlib(&mut d, &zlib(&data[..1536]), &mut out, 1536, 0).unwrap(), 1536);
        assert_eq!(inflate_zlib(&mut d, &zlib(&data), &mut out, 1536, 0).unwrap(), 8192);
        let short = inflate_zlib(&mut d, &zlib(&data[..1024]), &mut out, 1536, 7).unwrap_err();
        assert!(short.to_string().contains("guest offset 7") && short.to_string().contains("fewer than"), "{short}");
        let long = inflate_zlib(&mut d, &zlib(&[1u8; 8193]), &mut out, 8192, 0).unwrap_err();
        assert!(long.to_string().contains("more than the grain's 8192 bytes"), "{long}");
        let cut = inflate_zlib(&mut d, &zlib(&data)[..40], &mut out, 8192, 0).unwrap_err();
        assert!(cut.to_string().contains("cut short"), "{cut}");
        assert!(inflate_zlib(&mut d, &[0x55; 64], &mut out, 8192, 0).is_err());
        // Raw deflate (qcow2's) is not zlib.
        let raw = &zlib(&data)[2..];
        assert!(inflate_zlib(&mut d, raw, &mut out, 8192, 0).is_err());
    }

    #[test]
    fn zero_check() {
        assert!(is_zero(&[0u8; 4096]));
        assert!(is_zero(&[]));
        let mut v = vec![0u8; 4099];
        v[4098] = 1;
        assert!(!is_zero(&v));
        v[4098] = 0;
        v[3] = 9;
        assert!(!is_zero(&v));
    }
}

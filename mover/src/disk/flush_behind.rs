//! Flush-behind for block devices written from a stream: every [`STRETCH`] bytes written, a
//! helper thread flushes the device, so its volatile write cache drains while the import
//! goes on.
//!
//! Why: a write completes once the device has the bytes in its write cache (a virtual disk's
//! host page cache, an SSD's DRAM), not once they are stored. Left alone, that cache holds up
//! to the whole image when the last write returns, and the final fsync then waits for all of
//! it: seconds of nothing but I/O wait at the end of every import. Flushed a stretch at a
//! time, the device drains it while the transfer still runs (a network upload, a decoder),
//! and the final fsync waits for the last stretch only.
//!
//! A device may take no writes while it flushes (a loop device runs the flush to completion
//! before anything queued behind it): a direct write made meanwhile would stall the stream
//! for the flush's length. So while a flush runs, writes may be *parked*: written through
//! the page cache instead (up to [`PARK_LIMIT`] bytes), their write-back started at once.
//! The next flush makes them stable; the helper then drops them from the cache. A device
//! whose flushes are quick sees almost no parked writes, and keeps the cheaper direct path.
//!
//! The writers never wait for a flush: a request made while one runs is folded into the
//! next. A flush that fails is kept and reported by [`FlushBehind::finish`]: the failure is
//! reported once per open file, so the final fsync of the same file might not see it again.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Bytes written between two flushes.
pub(super) const STRETCH: u64 = 32 << 20;
/// The most bytes parked in the page cache at a time; a write past it waits for the device.
pub(super) const PARK_LIMIT: u64 = super::write_behind::WINDOW;

/// The flush-behind of one open device.
#[derive(Debug)]
pub(super) struct FlushBehind {
    /// Bytes written so far.
    written: AtomicU64,
    shared: Arc<Shared>,
    helper: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// A flush is running: writes may be parked.
    flushing: AtomicBool,
    parked: Mutex<Parked>,
}

/// Writes parked in the page cache, not known to be stable yet.
#[derive(Debug, Default)]
struct Parked {
    /// (flushes started before the write, offset, length).
    ranges: Vec<(u64, u64, u64)>,
    bytes: u64,
    /// Flushes started so far.
    started: u64,
    /// Bytes ever parked.
    total: u64,
}

#[derive(Debug, Default)]
struct State {
    asked: bool,
    stop: bool,
    /// Flushes done.
    flushes: u64,
    /// The first failed flush.
    failed: Option<io::Error>,
}

impl FlushBehind {
    /// Starts the helper on its own handle of `file`.
    pub(super) fn start(file: &File) -> io::Result<FlushBehind> {
        let file = file.try_clone()?;
        let shared = Arc::new(Shared::default());
        let theirs = Arc::clone(&shared);
        let helper = std::thread::Builder::new().name("flush-behind".into()).spawn(move || theirs.run(&file))?;
        Ok(FlushBehind { written: AtomicU64::new(0), shared, helper: Some(helper) })
    }

    /// Counts `len` more bytes written; a stretch's worth asks the helper for a flush.
    pub(super) fn wrote(&self, len: u64) {
        let before = self.written.fetch_add(len, Ordering::Relaxed);
        if (before + len) / STRETCH > before / STRETCH {
            self.shared.lock().asked = true;
            self.shared.wake.notify_one();
        }
    }

    /// Whether a write of `[offset, offset + len)` may go through the page cache now: a flush
    /// is running and fewer than [`PARK_LIMIT`] bytes are parked. If so, it is counted as
    /// parked from now on; the caller writes it through the cache and starts its write-back.
    pub(super) fn park(&self, offset: u64, len: u64) -> bool {
        if !self.shared.flushing.load(Ordering::Relaxed) {
            return false;
        }
        let mut parked = self.shared.parked();
        if parked.bytes + len > PARK_LIMIT {
            return false;
        }
        let started = parked.started;
        parked.ranges.push((started, offset, len));
        parked.bytes += len;
        parked.total += len;
        true
    }

    /// Stops the helper (after the flush it may have been asked for) and reports the first
    /// flush that failed, if any. Writes still parked become stable with the final flush;
    /// [`FlushBehind::parked_any`] says whether there were any.
    pub(super) fn finish(&mut self) -> io::Result<()> {
        self.stop();
        let mut state = self.shared.lock();
        let parked = self.shared.parked().total;
        let written = self.written.load(Ordering::Relaxed);
        tracing::debug!(flushes = state.flushes, written, parked, "flushed behind");
        state.failed.take().map_or(Ok(()), Err)
    }

    /// Whether any write was ever parked in the page cache.
    pub(super) fn parked_any(&self) -> bool {
        self.shared.parked().total > 0
    }

    fn stop(&mut self) {
        if let Some(helper) = self.helper.take() {
            self.shared.lock().stop = true;
            self.shared.wake.notify_one();
            let _ = helper.join();
        }
    }
}

impl Drop for FlushBehind {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn parked(&self) -> std::sync::MutexGuard<'_, Parked> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self, file: &File) {
        let mut state = self.lock();
        loop {
            while !state.asked && !state.stop {
                state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            if !state.asked {
                return; // stopped
            }
            state.asked = false;
            drop(state);
            let flushed = self.flush(file);
            state = self.lock();
            state.flushes += 1;
            if let Err(e) = flushed {
                state.failed.get_or_insert(e);
            }
        }
    }

    /// One flush, with writes parked meanwhile; then the parked writes it made stable (those
    /// made before it started: one made during it may have missed its write-back) leave the
    /// cache.
    fn flush(&self, file: &File) -> io::Result<()> {
        let this = {
            let mut parked = self.parked();
            parked.started += 1;
            parked.started
        };
        self.flushing.store(true, Ordering::Relaxed);
        let flushed = file.sync_data();
        self.flushing.store(false, Ordering::Relaxed);
        if flushed.is_ok() {
            self.unpark(this, file);
        }
        flushed
    }

    /// Drops from the cache the writes parked before flush number `this` started, which it
    /// made stable.
    fn unpark(&self, this: u64, file: &File) {
        let mut parked = self.parked();
        let mut dropped = 0;
        parked.ranges.retain(|&(before, offset, len)| {
            let stable = before < this;
            if stable {
                // Only a hint: what stays cached is dropped when the disk is finished.
                let _ = crate::direct_io::drop_cached(file, offset, len);
                dropped += len;
            }
            !stable
        });
        parked.bytes -= dropped;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flushes(fb: &FlushBehind) -> u64 {
        fb.shared.lock().flushes
    }

    #[test]
    fn a_flush_comes_per_stretch_written_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        let mut fb = FlushBehind::start(&file).unwrap();
        fb.wrote(STRETCH - 1);
        fb.finish().unwrap();
        assert_eq!(flushes(&fb), 0, "less than a stretch");

        let mut fb = FlushBehind::start(&file).unwrap();
        for _ in 0..5 {
            fb.wrote(STRETCH / 2 + 1);
        }
        fb.finish().unwrap();
        // Two stretches crossed; a request made while a flush runs is folded into the next.
        assert!((1..=2).contains(&flushes(&fb)), "{} flushes", flushes(&fb));
    }

    #[test]
    fn writes_park_only_while_a_flush_runs_up_to_the_limit_and_leave_after_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        let mut fb = FlushBehind::start(&file).unwrap();
        assert!(!fb.park(0, 4096), "no flush runs");

        // As the helper does around its flushes: one write parked beside flush 1, one beside
        // flush 2, then the limit.
        fb.shared.flushing.store(true, Ordering::Relaxed);
        fb.shared.parked().started = 1;
        assert!(fb.park(0, PARK_LIMIT / 2));
        fb.shared.parked().started = 2;
        assert!(fb.park(PARK_LIMIT / 2, PARK_LIMIT / 2));
        assert!(!fb.park(PARK_LIMIT, 1), "past the limit");
        fb.shared.flushing.store(false, Ordering::Relaxed);
        assert_eq!(fb.shared.parked().bytes, PARK_LIMIT);

        // A flush makes stable what was parked before it started, not what ran beside it.
        fb.shared.unpark(2, &file);
        assert_eq!(fb.shared.parked().bytes, PARK_LIMIT / 2, "only the write parked beside flush 1 left");
        assert!(!fb.park(0, 1), "no flush runs");
        fb.shared.unpark(3, &file);
        assert_eq!(fb.shared.parked().bytes, 0);
        assert!(fb.parked_any());
        fb.finish().unwrap();
    }

    #[test]
    fn a_failed_flush_is_reported_at_the_end() {
        // A pipe cannot be flushed (EINVAL): a stand-in for a device that fails its flush.
        let (_reader, writer) = std::io::pipe().unwrap();
        let file = File::from(std::os::fd::OwnedFd::from(writer));
        let mut fb = FlushBehind::start(&file).unwrap();
        fb.wrote(STRETCH);
        let err = fb.finish().expect_err("the flush failed");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(flushes(&fb), 1);
    }
}

//! Flush-behind for block devices written from a stream: every [`STRETCH`] bytes written, a
//! helper thread flushes the device, so its volatile write cache drains while the import
//! goes on.
//!
//! Why: a write completes once the device has the bytes in its write cache (a virtual disk's
//! host page cache, an SSD's DRAM), not once they are stored. Left alone, that cache holds up
//! to the whole image when the last write returns, and the final fsync then waits for all of
//! it: seconds of nothing but I/O wait at the end of every import. Flushed a stretch at a
//! time, the device drains it while the transfer still runs (a network upload, a decoder),
//! and the final fsync waits for the last stretch only. A stretch is two write-behind
//! windows: a device that takes no writes while it flushes (a loop device) is done with a
//! stretch's flush before the writers, a window ahead in the page cache, need it.
//!
//! The writers never wait for a flush: a request made while one runs is folded into the
//! next. A flush that fails is kept and reported by [`FlushBehind::finish`]: the failure is
//! reported once per open file, so the final fsync of the same file might not see it again.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Bytes written between two flushes.
pub(super) const STRETCH: u64 = 2 * super::write_behind::WINDOW;

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

    /// Stops the helper (after the flush it may have been asked for) and reports the first
    /// flush that failed, if any.
    pub(super) fn finish(&mut self) -> io::Result<()> {
        self.stop();
        let mut state = self.shared.lock();
        tracing::debug!(flushes = state.flushes, written = self.written.load(Ordering::Relaxed), "flushed behind");
        state.failed.take().map_or(Ok(()), Err)
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
            let flushed = file.sync_data();
            state = self.lock();
            state.flushes += 1;
            if let Err(e) = flushed {
                state.failed.get_or_insert(e);
            }
        }
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

//! Write-behind for file targets, and for block devices written from a stream that take no
//! `O_DIRECT`: writes go through the page cache, their write-back starts at once, and what
//! lies more than [`WINDOW`] behind the newest write is waited for and dropped from the cache.
//!
//! Why not `O_DIRECT` for files: a direct write is one request in flight at a time, so on
//! storage with any latency (network volumes, a virtual disk) it runs far below the
//! device's speed, while the kernel's write-back keeps many requests in flight. Why not
//! plain buffered writes: the dirty pages would sit until the final fsync (the device idle
//! meanwhile) and be charged to the pod's memory. The window bounds the dirty data: at most
//! about `WINDOW` of the image is not yet on the device. Clean pages are dropped as soon as
//! the kernel lets go of them (some are held a while after their write-back: they are asked
//! for again a window later) and all of them when the disk is finished. Delayed allocation
//! still lays the file out in order, as compact as qemu-img's.

use std::fs::File;
use std::io;
use std::sync::Mutex;

use crate::direct_io;

/// How far behind the newest write data may still be dirty or in flight.
pub(super) const WINDOW: u64 = 32 << 20;

/// The write-behind state of one file.
#[derive(Debug, Default)]
pub(super) struct WriteBehind {
    marks: Mutex<Marks>,
}

#[derive(Debug, Default)]
struct Marks {
    /// Everything before this offset is on the device.
    settled: u64,
    /// Everything before this offset has also been dropped from the cache a second time,
    /// a window after it settled (pages just written back can be held for a moment).
    dropped: u64,
}

impl WriteBehind {
    /// Called after `[offset, offset + len)` was written: starts its write-back and settles
    /// what the window left behind. A file's writes arrive in image order (the copy engine's
    /// turns), a stream's nearly so, so marks are enough; a write below them is flushed by
    /// the next flush (block devices) or the final fsync.
    pub(super) fn wrote(&self, file: &File, offset: u64, len: u64) -> io::Result<()> {
        direct_io::start_writeback(file, offset, len)?;
        let behind = (offset + len).saturating_sub(WINDOW);
        let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        if behind > marks.settled {
            direct_io::settle(file, marks.settled, behind - marks.settled)?;
            marks.settled = behind;
        }
        let late = behind.saturating_sub(WINDOW);
        if late > marks.dropped {
            direct_io::drop_cached(file, marks.dropped, late - marks.dropped)?;
            marks.dropped = late;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marks_follow_the_writes_one_and_two_windows_behind() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        let wb = WriteBehind::default();
        let chunk = vec![7u8; 1 << 20];
        for i in 0..80u64 {
            direct_io::write_all_at(&file, &chunk, i << 20).unwrap();
            wb.wrote(&file, i << 20, 1 << 20).unwrap();
        }
        let end = 80 << 20;
        let marks = |wb: &WriteBehind| {
            let m = wb.marks.lock().unwrap();
            (m.settled, m.dropped)
        };
        assert_eq!(marks(&wb), (end - WINDOW, end - 2 * WINDOW));
        // A write below the marks (the spool, a retried range) leaves them alone.
        wb.wrote(&file, 0, 1 << 20).unwrap();
        assert_eq!(marks(&wb), (end - WINDOW, end - 2 * WINDOW));
    }
}

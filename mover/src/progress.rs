//! Import progress, cheap to update (atomics) and to sample from another thread.
//!
//! Progress counts source bytes: fetched from a stream, or read by the workers with random
//! access. Against the source's length (or the bytes planned) that gives a percentage that
//! only moves forward, whatever order the image is written in.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Instant;

use crate::copy::Counters;

/// What the import is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Opening the source and target, detecting the format.
    Probing,
    /// Moving bytes.
    Transferring,
    /// Flushing the target to stable storage.
    Finishing,
    Complete,
    Failed,
    /// An upload task waiting for an Upload call to bring its bytes (the service's only).
    AwaitingUpload,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Probing,
            1 => Phase::Transferring,
            2 => Phase::Finishing,
            3 => Phase::Complete,
            5 => Phase::AwaitingUpload,
            _ => Phase::Failed,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Phase::Probing => 0,
            Phase::Transferring => 1,
            Phase::Finishing => 2,
            Phase::Complete => 3,
            Phase::Failed => 4,
            Phase::AwaitingUpload => 5,
        }
    }
}

/// Shared progress of one import.
#[derive(Debug)]
pub struct Progress {
    phase: AtomicU8,
    /// Source bytes to transfer; 0 while unknown.
    total: AtomicU64,
    /// Counters the data path updates.
    pub counters: Counters,
    started: Instant,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress {
            phase: AtomicU8::new(Phase::Probing.as_u8()),
            total: AtomicU64::new(0),
            counters: Counters::default(),
            started: Instant::now(),
        }
    }
}

/// A sample of [`Progress`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Snapshot {
    pub phase: Phase,
    pub bytes_done: u64,
    pub bytes_total: Option<u64>,
}

impl Snapshot {
    /// Percent done, when the total is known (CDI shows `"NN.NN%"`).
    pub fn percent(&self) -> Option<f64> {
        self.bytes_total.filter(|&t| t > 0).map(|t| (self.bytes_done.min(t) as f64 * 100.0 / t as f64).min(100.0))
    }
}

impl Progress {
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress::default())
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase.as_u8(), Ordering::Relaxed);
    }

    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    /// Marks the transfer complete: done catches up with the total.
    pub fn complete(&self) {
        let done = self.counters.source_read.load(Ordering::Relaxed);
        self.total.fetch_max(done, Ordering::Relaxed);
        self.counters.source_read.store(self.total.load(Ordering::Relaxed), Ordering::Relaxed);
        self.set_phase(Phase::Complete);
    }

    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    pub fn snapshot(&self) -> Snapshot {
        let total = self.total.load(Ordering::Relaxed);
        Snapshot {
            phase: Phase::from_u8(self.phase.load(Ordering::Relaxed)),
            bytes_done: self.counters.source_read.load(Ordering::Relaxed),
            bytes_total: (total > 0).then_some(total),
        }
    }
}

/// Turns successive snapshots into a throughput (bytes per second), smoothed.
#[derive(Debug)]
pub struct Rate {
    last: Option<(Instant, u64)>,
    rate: f64,
}

impl Default for Rate {
    fn default() -> Rate {
        Rate { last: None, rate: 0.0 }
    }
}

impl Rate {
    pub fn update(&mut self, bytes_done: u64) -> f64 {
        let now = Instant::now();
        if let Some((then, before)) = self.last {
            let dt = now.duration_since(then).as_secs_f64();
            if dt > 0.0 {
                let instant = bytes_done.saturating_sub(before) as f64 / dt;
                // Exponential smoothing: steady readings without hiding stalls for long.
                self.rate = if self.rate == 0.0 { instant } else { 0.6 * self.rate + 0.4 * instant };
            }
        }
        self.last = Some((now, bytes_done));
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_is_bounded_and_needs_a_total() {
        let s = Snapshot { phase: Phase::Transferring, bytes_done: 50, bytes_total: Some(200) };
        assert_eq!(s.percent(), Some(25.0));
        let s = Snapshot { bytes_done: 300, ..s };
        assert_eq!(s.percent(), Some(100.0));
        let s = Snapshot { bytes_total: None, ..s };
        assert_eq!(s.percent(), None);
    }

    #[test]
    fn complete_catches_up() {
        let p = Progress::new();
        p.set_total(100);
        p.counters.source_read.store(40, Ordering::Relaxed);
        p.complete();
        let s = p.snapshot();
        assert_eq!((s.phase, s.bytes_done, s.bytes_total), (Phase::Complete, 100, Some(100)));
    }
}

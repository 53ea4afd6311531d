//! Tuning of glibc's allocator for a process that streams data through short-lived buffers.
//!
//! Every gRPC message of a volume or upload stream arrives in a fresh buffer of up to a few
//! MiB (or, in the upload proxy, leaves in one), and every chunk read is handed on in one.
//! glibc serves such sizes with `mmap` until its adaptive threshold catches up, and gives the
//! top of a heap back to the kernel as soon as more than twice that threshold is free, so the
//! same memory is unmapped and faulted in again message after message: on a 4 GiB block clone
//! that was ~240 000 page faults in the writer, about a tenth of the movers' CPU in a profile,
//! and 12% of the upload proxy's CPU in an upload. Fixed thresholds keep freed buffers for
//! reuse; the memory is given back with [`release_free`] when a stream is over, so an idle
//! process stays small.
//! One arena: a buffer is filled on one thread and freed on another, and every thread's own
//! arena would keep its share of freed buffers (writer peak 56 MiB with one per thread, 44
//! with one in all); small allocations stay per thread in glibc's thread cache.

/// Buffers up to this size come from the heap, never from their own mapping (the largest
/// the mover allocates per message is a few MiB).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;
/// Free memory at the top of a heap kept for reuse while a stream runs.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 256 << 20;

/// All threads allocate from one heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENAS: libc::c_int = 1;

/// Sets the allocator's thresholds for streaming; call once, early in `main`, before
/// threads start.
pub fn tune_for_streaming() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; the values are in the documented range.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// Gives the free memory of every heap back to the kernel; call when a stream is over.
pub fn release_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's own heaps.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    /// Minor page faults of the calling thread so far.
    fn faults() -> u64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("thread stat");
        // Fields after the command name (which ends with the last ')'): minflt is the 10th
        // field of the line, the 8th after it.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        rest.split(' ').nth(7).expect("minflt").parse().expect("a number")
    }

    #[test]
    fn buffers_freed_between_messages_are_reused_not_faulted_in_again() {
        const BUF: usize = 4 << 20;
        super::tune_for_streaming();
        // As a stream does: a few message buffers alive at once, all freed, again and again.
        let round = || {
            let bufs: Vec<Vec<u8>> = (0..4).map(|i| vec![i as u8 + 1; BUF]).collect();
            std::hint::black_box(&bufs);
        };
        round();
        let before = faults();
        for _ in 0..20 {
            round();
        }
        let pages = (faults() - before) / 20;
        // Faulting the buffers in again would be 4 × 1024 pages per round.
        assert!(pages < 256, "{pages} pages faulted in per round: freed buffers went back to the kernel");
        super::release_free();
    }
}

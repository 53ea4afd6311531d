//! What every fuzz target shares: the call into the harness, and an allocator that treats a
//! single huge allocation as a crash.
//!
//! Without a sanitizer libFuzzer cannot see allocations, and a `vec![0; n]` of gigabytes
//! sized by a header field costs no memory until touched, so `-rss_limit_mb` misses it.
//! Every allocation above [`MAX_ALLOC`] aborts the run instead, and libFuzzer keeps the input.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;

/// Largest single allocation a harness may make: the readers' own named limits (tables of at
/// most tens of MiB, 64 MiB of held vhdx BAT) stay below it.
pub const MAX_ALLOC: usize = 256 << 20;

/// The system allocator, refusing sizes above [`MAX_ALLOC`] by aborting.
#[derive(Debug)]
pub struct Capped;

fn check(size: usize) {
    if size > MAX_ALLOC {
        // No formatting: it could allocate.
        let _ = std::io::stderr().write_all(b"cdi-mover-fuzz: an allocation above MAX_ALLOC (256 MiB)\n");
        std::process::abort();
    }
}

// SAFETY: every call is forwarded unchanged to `System`, after a size check that allocates
// nothing.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        // SAFETY: as for `alloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Capped = Capped;

/// Runs one harness on one input. An `Err` is a fine outcome; a panic, a hang or an
/// allocation above [`MAX_ALLOC`] is a crash.
/// With `CDI_FUZZ_VERBOSE` set, the outcome is printed (to see what a seed reaches when the
/// target binary is run on files).
pub fn run(harness: cdi_mover::fuzzing::Harness, data: &[u8]) {
    static VERBOSE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let result = harness(data);
    if *VERBOSE.get_or_init(|| std::env::var_os("CDI_FUZZ_VERBOSE").is_some()) {
        eprintln!("cdi-mover-fuzz: {} bytes: {:?}", data.len(), result.map_err(|e| e.to_string()));
    }
}

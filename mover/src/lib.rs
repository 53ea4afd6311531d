//! cdi-mover: the data path of cdi-rs.
//!
//! Turns a VM image (a local file or an HTTP(S) URL) into a raw disk on a block device, a
//! filesystem volume (`disk.img`) or a plain file, or extracts an archive into a directory.
//! No Kubernetes dependency: the control plane drives this crate over gRPC.
//!
//! ```text
//!  source ─bytes─▶ checksum ─▶ decompress* ─▶ detect ─▶ format decoder ─jobs─▶ copy engine ─▶ target
//!  file, http(s)   md5/sha*    gz, xz, zst    magic     raw, qcow2           N workers:     block device
//!  (random access             (sniffed,      bytes     (random access or     read/inflate,  (O_DIRECT),
//!   when possible)             stackable)              streaming)            zero-detect,   sparse file,
//!                                                                            write          disk.img
//! ```
//!
//! * [`source`] opens the bytes: sequential reads always, random access (`read_at`) when the
//!   transport allows it and nothing (compression, a checksum) forces a single pass.
//! * [`detect`] and [`decompress`] sniff magic bytes and peel compression layers.
//! * [`format`] turns an image into [`copy::Job`]s: "these guest bytes are here / are zero".
//!   qcow2 is read by our own bounds-checked reader, from random access (metadata first, then
//!   data in host order) or while streaming (placing clusters as they pass, spooling the few
//!   that cannot be placed yet, bounded).
//! * [`copy`] runs the jobs on a small pool of workers with a fixed number of buffers, so
//!   memory is bounded by configuration, never by image size.
//! * [`disk`] owns the destination: sizing as CDI computes it, sparse writes, direct I/O,
//!   zeroing that never leaves stale bytes, and the rule that nothing looks complete until it
//!   is (written under a `.partial` name, fsync'd, then renamed).
//! * [`volume`] streams a volume's contents out and in as sparse extents (RAW or TAR): one
//!   mover's `ReadVolume` feeding another's `WriteVolume` is a host-assisted clone.
//! * [`import`] composes the above for one request; the CLI in `main.rs` is a thin shell.

// `unsafe` lives in two modules (O_DIRECT buffers and block-device ioctls; allocator
// tuning), each block with a SAFETY note; library code reports failures as errors, or
// states its invariant in `expect`.
#![deny(unsafe_code, clippy::undocumented_unsafe_blocks)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod archive;
pub mod checksum;
pub mod copy;
pub mod decompress;
pub mod detect;
#[allow(unsafe_code)]
pub mod direct_io;
pub mod disk;
pub mod error;
pub mod format;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
#[allow(unsafe_code)]
pub mod import;
pub mod progress;
pub mod service;
pub mod source;
pub mod tls;
pub mod volume;

pub use error::ImportError;
pub use import::{ContentType, ImportRequest, ImportResult, import};

//! qcow2 (versions 2 and 3), read by our own bounds-checked reader.
//!
//! * [`header`]: the header and extensions, and the refusal policy (backing files,
//!   external data files, encryption, unknown incompatible features).
//! * [`table`]: L1/L2 entries decoded into [`table::Cluster`]: zero, data at a host offset,
//!   partially allocated (extended L2 subclusters), or compressed (zlib or zstd).
//! * [`random`]: conversion with random access, metadata first, data in host order.
//! * [`stream`]: conversion in one pass over a stream.
//!
//! Only the active layer is read: internal snapshots are ignored, as `qemu-img convert`
//! does. The dirty and corrupt bits concern refcounts, which reading never needs.

#[cfg(test)]
mod fault_tests;
pub mod header;
pub mod random;
pub mod stream;
pub mod table;

pub use header::Header;

/// The name this reader gives in messages.
pub(crate) const FORMAT: &str = "qcow2";
pub use stream::StreamLimits;

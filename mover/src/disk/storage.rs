//! The seam between the copy engine and the disk it writes.
//!
//! The copy engine and the decoders write through [`Storage`]; [`Disk`] is the real one (a
//! file, a volume's `disk.img`, a block device). In tests, `MemStorage` (`disk/mem.rs`) holds
//! the bytes in memory and fails, stalls or holds any numbered step on request, so failures
//! at every step and cancellation mid-extent can be shown without a real device.

use std::fmt;

use super::{Disk, Finished, TargetError};

/// What the copy engine and the decoders need of the disk they write.
///
/// Shared by the engine's workers (`&dyn Storage` is `Sync`). The engine guarantees that no
/// two writes in flight touch the same [`crate::copy::ZERO_BLOCK`]-aligned block (see
/// [`crate::copy`]), so implementations may read-modify-write a partial block.
///
/// # Guarantees asked of implementations
/// * Nothing looks complete before [`Storage::finish`] returned `Ok`; a storage dropped or
///   [aborted](Storage::abort) before that leaves nothing that could pass for the image.
/// * Every failure is returned as a [`TargetError`], never swallowed.
pub trait Storage: Sync + fmt::Debug {
    /// Writes `data` at `offset`.
    fn write(&self, data: &[u8], offset: u64) -> Result<(), TargetError>;

    /// Makes `[offset, offset + len)` read as zero.
    fn zero(&self, offset: u64, len: u64) -> Result<(), TargetError>;

    /// Whether ranges never written read as zero; when false, every zero range of the image
    /// must go through [`Storage::zero`].
    fn unwritten_reads_zero(&self) -> bool;

    /// Whether jobs should write one after another, in image order (files written directly:
    /// see `copy::Turns`).
    fn wants_ordered_writes(&self) -> bool;

    /// Room past the image where a streaming decoder may park bytes: `(start, length)`.
    fn spool_region(&self) -> Option<(u64, u64)>;

    /// Parks `data` at `offset` inside [`Storage::spool_region`].
    fn spool_write(&self, data: &[u8], offset: u64) -> Result<(), TargetError>;

    /// Reads back `len` parked bytes from `offset`.
    fn spool_read(&self, offset: u64, len: usize) -> Result<Vec<u8>, TargetError>;

    /// Flushes everything and makes the image complete; only an `Ok` means it is.
    ///
    /// # Errors
    /// Any failed step, after which the storage was cleaned up as by [`Storage::abort`].
    #[must_use = "an unfinished disk is removed or wiped, never left looking complete"]
    fn finish(self, image_size: u64) -> Result<Finished, TargetError>
    where
        Self: Sized;

    /// Gives up: nothing is left that looks complete.
    fn abort(self)
    where
        Self: Sized;
}

/// The real storage: every call goes to [`Disk`]'s own method of the same name.
impl Storage for Disk {
    fn write(&self, data: &[u8], offset: u64) -> Result<(), TargetError> {
        Disk::write(self, data, offset)
    }

    fn zero(&self, offset: u64, len: u64) -> Result<(), TargetError> {
        Disk::zero(self, offset, len)
    }

    fn unwritten_reads_zero(&self) -> bool {
        Disk::unwritten_reads_zero(self)
    }

    fn wants_ordered_writes(&self) -> bool {
        Disk::wants_ordered_writes(self)
    }

    fn spool_region(&self) -> Option<(u64, u64)> {
        Disk::spool_region(self)
    }

    fn spool_write(&self, data: &[u8], offset: u64) -> Result<(), TargetError> {
        Disk::spool_write(self, data, offset)
    }

    fn spool_read(&self, offset: u64, len: usize) -> Result<Vec<u8>, TargetError> {
        Disk::spool_read(self, offset, len)
    }

    fn finish(self, image_size: u64) -> Result<Finished, TargetError> {
        Disk::finish(self, image_size)
    }

    fn abort(self) {
        Disk::abort(self)
    }
}

//! The blank source (CDI's `blank`): no bytes at all, an empty raw disk of the target's
//! usable size, made where it lies.
//!
//! * Filesystem volume: a sparse `disk.img` exactly as large as an imported raw image would
//!   be grown to (CDI's usable space, [`crate::disk::sizing`]), written and replaced like any
//!   other import's `disk.img` (a `.partial` renamed into place, mode 0660).
//! * Block device: the whole device made to read zeros. Unlike CDI, which leaves a block
//!   device as it finds it, we zero it: a recycled device may still hold an earlier tenant's
//!   data, and a guest reading its "empty" disk must not see it. [`Disk::zero`] picks the
//!   cheapest call the device honours (a discard that guarantees zeros, else `BLKZEROOUT`,
//!   which the kernel itself falls back to writing zeros for).
//! * File: a sparse file of the requested size (a size is required).
//!
//! Preallocation is honoured as for images: `fallocate` of the whole file, or every block of
//! the device zeroed and kept allocated.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::disk::{Destination, Disk, TargetPlan, sizing};
use crate::error::ImportError;
use crate::import::{ContentType, ImportRequest, ImportResult, finish};
use crate::progress::{Phase, Progress};

/// How a blank disk is named among the formats of a result.
pub const FORMAT: &str = "blank";

/// How the blank source is spelled on the command line.
pub const SPEC: &str = "blank:";

/// Zeroing of a device goes in steps this large, so a cancellation is noticed and progress
/// moves (a device that cannot discard may write zeros at disk speed).
const ZERO_STEP: u64 = 64 << 20;

/// Refuses what cannot go with a blank disk: there are no bytes to check or extract.
pub fn check_request(content_type: ContentType, has_checksum: bool) -> Result<(), String> {
    if content_type == ContentType::Archive {
        return Err("a blank disk cannot have content type archive; use kubevirt".into());
    }
    if has_checksum {
        return Err("a blank disk has no source bytes to verify a checksum against; remove the checksum".into());
    }
    Ok(())
}

/// The size the blank disk takes on `plan`'s target.
fn disk_size(plan: &TargetPlan) -> Result<u64, ImportError> {
    match &plan.destination {
        // All of it: a block volume is the disk.
        Destination::Block { size, .. } => Ok(*size),
        Destination::Volume { .. } => {
            let usable = plan.available();
            if usable == 0 {
                // Not even one aligned MiB fits once the overhead is set aside.
                return Err(ImportError::TooLarge { virtual_size: sizing::ALIGN, available: 0 });
            }
            Ok(usable)
        }
        Destination::File { path } => match plan.available() {
            u64::MAX => Err(ImportError::InvalidRequest(format!(
                "a blank disk written to the file {} needs a size: give the requested size (--size)",
                path.display()
            ))),
            size => Ok(size),
        },
    }
}

/// Makes the blank disk `req` asks for on the target `plan` inspected.
pub(crate) fn create(
    req: &ImportRequest,
    plan: TargetPlan,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<ImportResult, ImportError> {
    check_request(req.content_type, req.checksum.is_some()).map_err(ImportError::InvalidRequest)?;
    let size = disk_size(&plan)?;
    let block = matches!(plan.destination, Destination::Block { .. });
    // Files get their length (and, preallocated, their blocks) when opened.
    let disk = plan.open(Some(size), true)?;
    progress.set_total(size);
    progress.set_phase(Phase::Transferring);
    let zeroed = if block { zero_device(&disk, size, progress, cancel) } else { Ok(()) };
    finish(disk, zeroed.map(|()| size), vec![FORMAT], None, progress)
}

/// Zeroes `[0, size)` of a block device in steps, counting them as progress.
fn zero_device(disk: &Disk, size: u64, progress: &Progress, cancel: &AtomicBool) -> Result<(), ImportError> {
    let mut offset = 0;
    while offset < size {
        if cancel.load(Ordering::Relaxed) {
            return Err(ImportError::Cancelled);
        }
        let len = ZERO_STEP.min(size - offset);
        disk.zero(offset, len)?;
        offset += len;
        progress.counters.source_read.fetch_add(len, Ordering::Relaxed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_and_checksums_are_refused() {
        assert!(check_request(ContentType::Kubevirt, false).is_ok());
        assert!(check_request(ContentType::Archive, false).unwrap_err().contains("archive"));
        assert!(check_request(ContentType::Kubevirt, true).unwrap_err().contains("checksum"));
    }
}

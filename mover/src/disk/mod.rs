//! Where the raw disk goes: a block device, a filesystem volume (`disk.img` in a directory)
//! or a plain file.
//!
//! * [`plan`]: what a target path is and how much space it offers ([`TargetPlan::inspect`]),
//!   touching nothing; [`TargetPlan::open`] turns it into a [`Disk`].
//! * [`writer`]: the open [`Disk`] the copy engine writes, and the rule that it is either
//!   finished or cleaned up.
//! * [`storage`]: the [`Storage`] trait the copy engine writes through; [`Disk`] is the real
//!   one, an in-memory one that fails on request serves the engine's unit tests.
//! * [`sizing`]: CDI's volume size arithmetic.
//! * `write_behind` (files; block devices written from a stream without `O_DIRECT`) and
//!   `flush_behind` (block devices written from a stream): how the data reaches stable
//!   storage while the import runs, not all at its end.
//!
//! # Guarantees
//! * Nothing looks complete before it is: files are written as `NAME.partial`, fsync'd, and
//!   only then renamed (and the directory fsync'd); a failed import removes the partial
//!   file, or, on a block device, zeroes its first and last MiB so no half image boots.
//! * Regions that are zero in the image read back as zero: fresh files are sparse (holes);
//!   block devices get every zero range punched or zeroed, never left holding stale data.
//! * Sizes follow CDI ([`sizing`]): a volume's `disk.img` grows (never shrinks) to the usable
//!   space; an image larger than the space available is refused before anything is written.

// The fuzzing harnesses write to it too; outside tests most of its fault injection is unused.
mod flush_behind;
#[cfg(any(test, feature = "fuzzing"))]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod mem;
pub mod plan;
pub mod sizing;
pub mod storage;
mod write_behind;
pub mod writer;

use std::io;
use std::path::PathBuf;

pub use plan::{Destination, TargetOptions, TargetPlan};
pub use storage::Storage;
pub use writer::{Disk, Finished};

/// The file CDI keeps the disk in, at the root of a filesystem volume.
pub const DISK_IMAGE: &str = "disk.img";

/// Why writing the target failed.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot open target {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("target {path} does not exist and neither does its directory {parent}")]
    NoParent { path: PathBuf, parent: PathBuf },
    #[error("target {path} is not a block device, a directory or a regular file")]
    Unsupported { path: PathBuf },
    #[error("cannot {op} target {path} at offset {offset}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("cannot {op} target {path}: {source}")]
    Finish {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "virtual image size is at least {needed}, larger than the reported available storage {available} \
         of target {path}; a larger volume is required"
    )]
    NoSpace { path: PathBuf, needed: u64, available: u64 },
}

impl TargetError {
    pub fn is_retryable(&self) -> bool {
        let io = match self {
            TargetError::Open { source, .. } | TargetError::Io { source, .. } | TargetError::Finish { source, .. } => {
                source
            }
            _ => return false,
        };
        !matches!(
            io.kind(),
            io::ErrorKind::NotFound
                | io::ErrorKind::PermissionDenied
                | io::ErrorKind::ReadOnlyFilesystem
                | io::ErrorKind::StorageFull
                | io::ErrorKind::QuotaExceeded
                | io::ErrorKind::InvalidInput
                | io::ErrorKind::FileTooLarge
        )
    }
}

//! VHDX: not read yet (see the vhdx reader's issue); detected and refused.

use super::FormatError;
use super::mapped::{Mapped, Meta};
use crate::error::ImportError;

pub(crate) const FORMAT: &str = "vhdx";

/// Reads the headers, region table, metadata and BAT into the image's map.
pub fn map(_meta: &mut dyn Meta, _head: &[u8]) -> Result<Mapped, ImportError> {
    Err(FormatError::Unsupported { format: FORMAT }.into())
}

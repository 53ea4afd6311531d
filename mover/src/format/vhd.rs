//! VHD (qemu's `vpc`): fixed, dynamic and differencing disks (Microsoft's "Virtual Hard
//! Disk Image Format Specification"; all fields big-endian).
//!
//! * **Fixed**: the disk's bytes, then a 512-byte footer. Nothing at the start says so:
//!   [`Footer::at_end`] recognises the footer (cookie, checksum, disk type) so the disk is not
//!   taken for a raw image with 512 stray bytes.
//! * **Dynamic**: a copy of the footer at 0, a dynamic header ("cxsparse"), the block
//!   allocation table (BAT: one big-endian sector number per block, `0xFFFFFFFF` =
//!   unallocated), then blocks: a sector bitmap followed by the block's data. Read like
//!   qemu-img reads it: an allocated block's data as stored, whatever its bitmap says (the
//!   bitmap only matters with a parent); unallocated blocks read as zero.
//! * **Differencing**: refused; its parent is a path on someone's host.
//!
//! The virtual size follows qemu's rule (the one CDI's qemu-img applies): the CHS geometry
//! for images whose creator sizes by geometry (Virtual PC, old qemu), `current_size` for the
//! others and whenever the geometry is the maximum.

use super::FormatError;
use super::bytes::{be16, be32, be64};
use super::mapped::{ExtentMap, Mapped, Meta};
use crate::error::ImportError;

pub(crate) const FORMAT: &str = "vhd";
pub const FOOTER_LEN: usize = 512;
const COOKIE: &[u8; 8] = b"conectix";
const DYNAMIC_COOKIE: &[u8; 8] = b"cxsparse";
const DYNAMIC_HEADER_LEN: usize = 1024;
const SECTOR: u64 = 512;
/// BAT entry of a block never written.
const UNALLOCATED: u32 = 0xFFFF_FFFF;
/// The geometry Hyper-V and qemu write when the size does not come from CHS.
const MAX_GEOMETRY_SECTORS: u64 = 65535 * 16 * 255;
/// Block sizes accepted: powers of two from a sector to 256 MiB (the spec's default is
/// 2 MiB; qemu needs a power of two).
const MIN_BLOCK: u64 = SECTOR;
const MAX_BLOCK: u64 = 256 << 20;
/// The BAT read at most (16 Mi entries): 32 TiB of 2 MiB blocks.
const MAX_BAT_BYTES: u64 = 64 << 20;
/// Creators whose images are sized by `current_size`, not by their CHS geometry
/// (Hyper-V, qemu since 2.x, disk2vhd, XenConverter, XenServer).
const SIZED_BY_CURRENT_SIZE: [&[u8; 4]; 5] = [b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\0"];

/// The disk types of the footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskType {
    Fixed,
    Dynamic,
    Differencing,
}

/// The footer (and its copy at the start of dynamic disks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    pub disk_type: DiskType,
    /// Where the dynamic header is (dynamic and differencing disks).
    pub data_offset: u64,
    /// The disk's size as qemu-img (and so CDI) sees it.
    pub virtual_size: u64,
}

fn bad(field: &'static str, value: u64, reason: &'static str) -> FormatError {
    FormatError::BadHeader { format: FORMAT, field, value, reason }
}

/// One's complement of the byte sum, the checksum field itself left out.
fn checksum(bytes: &[u8], field: usize) -> u32 {
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !(field..field + 4).contains(i))
        .fold(0u32, |acc, (_, &b)| acc.wrapping_add(b.into()));
    !sum
}

impl Footer {
    /// Parses a footer; `None` when `bytes` is not one (wrong cookie or checksum), so that
    /// detection at the end of a raw disk never errs on data that merely starts alike.
    pub fn parse(bytes: &[u8]) -> Result<Option<Footer>, FormatError> {
        if bytes.len() < FOOTER_LEN || &bytes[..8] != COOKIE {
            return Ok(None);
        }
        let bytes = &bytes[..FOOTER_LEN];
        if be32(bytes, 64) != checksum(bytes, 64) {
            return Ok(None);
        }
        let disk_type = match be32(bytes, 60) {
            2 => DiskType::Fixed,
            3 => DiskType::Dynamic,
            4 => DiskType::Differencing,
            other => return Err(bad("disk type", other.into(), "must be 2 (fixed), 3 (dynamic) or 4 (differencing)")),
        };
        let current_size = be64(bytes, 48);
        let chs = u64::from(be16(bytes, 56)) * u64::from(bytes[58]) * u64::from(bytes[59]);
        let creator: &[u8; 4] = bytes[28..32].try_into().expect("4 bytes");
        let by_size = SIZED_BY_CURRENT_SIZE.contains(&creator) || chs == MAX_GEOMETRY_SECTORS;
        let virtual_size = if by_size { current_size / SECTOR * SECTOR } else { chs * SECTOR };
        Ok(Some(Footer { disk_type, data_offset: be64(bytes, 16), virtual_size }))
    }

    /// Recognises a fixed disk from its last 512 bytes: returns the virtual size, and how
    /// many leading bytes of the image are the disk (`image_len` less the footer).
    pub fn fixed_at_end(tail: &[u8], image_len: u64) -> Result<Option<(u64, u64)>, FormatError> {
        if image_len < FOOTER_LEN as u64 || tail.len() < FOOTER_LEN {
            return Ok(None);
        }
        let Some(footer) = Footer::parse(&tail[tail.len() - FOOTER_LEN..])? else { return Ok(None) };
        let data_len = image_len - FOOTER_LEN as u64;
        match footer.disk_type {
            DiskType::Fixed => Ok(Some((footer.virtual_size, data_len.min(footer.virtual_size)))),
            // A dynamic disk's copy is at its start; one found only at the end is damaged.
            _ => Err(FormatError::corrupt(
                FORMAT,
                "the footer at the end describes a dynamic disk, but the image does not start with its copy",
            )),
        }
    }
}

/// Reads a dynamic disk's header and BAT into its map. `head` holds the image's first
/// bytes (the footer copy at least).
pub fn map(meta: &mut dyn Meta, head: &[u8]) -> Result<Mapped, ImportError> {
    let footer = Footer::parse(head)?
        .ok_or_else(|| FormatError::corrupt(FORMAT, "the footer copy at the start of the image has a bad checksum"))?;
    match footer.disk_type {
        DiskType::Fixed => {
            // A footer copy at the start of a fixed disk is not something any tool writes.
            return Err(FormatError::corrupt(FORMAT, "a fixed disk's footer found at the start of the image").into());
        }
        DiskType::Dynamic | DiskType::Differencing => {}
    }
    if footer.data_offset != FOOTER_LEN as u64 {
        // Every writer puts the dynamic header right after the footer copy; anything else
        // would let a hostile image point us anywhere.
        return Err(
            bad("data offset", footer.data_offset, "the dynamic header must follow the footer copy (512)").into()
        );
    }
    let mut dynamic = vec![0u8; DYNAMIC_HEADER_LEN];
    meta.read_at(&mut dynamic, footer.data_offset, "dynamic header")?;
    if &dynamic[..8] != DYNAMIC_COOKIE {
        return Err(FormatError::corrupt(FORMAT, "the dynamic header has no \"cxsparse\" cookie").into());
    }
    if be32(&dynamic, 36) != checksum(&dynamic, 36) {
        return Err(FormatError::corrupt(FORMAT, "the dynamic header's checksum does not match").into());
    }
    if footer.disk_type == DiskType::Differencing {
        return Err(FormatError::Differencing { format: FORMAT, parent: parent_name(&dynamic) }.into());
    }
    let table_offset = be64(&dynamic, 16);
    let max_entries = u64::from(be32(&dynamic, 28));
    let block = u64::from(be32(&dynamic, 32));
    if !block.is_power_of_two() || !(MIN_BLOCK..=MAX_BLOCK).contains(&block) {
        return Err(bad("block size", block, "must be a power of two from 512 B to 256 MiB").into());
    }
    let blocks = footer.virtual_size.div_ceil(block);
    if blocks > max_entries {
        return Err(bad("max table entries", max_entries, "the BAT is too short for the disk's size").into());
    }
    if blocks * 4 > MAX_BAT_BYTES {
        return Err(bad("max table entries", blocks, "more than 16 Mi blocks: the BAT would exceed 64 MiB").into());
    }
    if !table_offset.is_multiple_of(SECTOR) || table_offset < (FOOTER_LEN + DYNAMIC_HEADER_LEN) as u64 {
        return Err(bad("table offset", table_offset, "the BAT must be sector-aligned and follow the headers").into());
    }
    // The sector bitmap in front of each block: one bit per sector, padded to a sector.
    let bitmap = (block / SECTOR).div_ceil(8).next_multiple_of(SECTOR);
    let mut bat = vec![0u8; (blocks * 4) as usize];
    meta.read_at(&mut bat, table_offset, "block allocation table")?;
    let bat_end = table_offset + (max_entries * 4).next_multiple_of(SECTOR);

    let mut extents = ExtentMap::new(FORMAT, footer.virtual_size, block);
    for (i, entry) in bat.chunks_exact(4).enumerate() {
        let sector = be32(entry, 0);
        if sector == UNALLOCATED {
            continue;
        }
        let start = u64::from(sector) * SECTOR;
        if start < bat_end {
            return Err(FormatError::corrupt(
                FORMAT,
                format!("block {i} is stored at host offset {start}, inside the headers or the BAT"),
            )
            .into());
        }
        extents.add(i as u64 * block, start + bitmap, block)?;
    }
    // The trailing footer ends the file: data must lie before it.
    let file_len = meta.image_len().map(|len| len.saturating_sub(FOOTER_LEN as u64));
    Ok(extents.finish(file_len)?)
}

/// The parent's name from a differencing disk's header (UTF-16BE, up to 256 units).
fn parent_name(dynamic: &[u8]) -> String {
    let units: Vec<u16> = dynamic[64..576].chunks_exact(2).map(|c| be16(c, 0)).take_while(|&u| u != 0).collect();
    let name = String::from_utf16_lossy(&units);
    if name.is_empty() { "unnamed".into() } else { format!("{name:?}") }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A footer as a tool would write it, checksum included.
    pub(crate) fn mk_footer(disk_type: u32, current_size: u64, creator: &[u8; 4], chs: (u16, u8, u8)) -> Vec<u8> {
        let mut f = vec![0u8; FOOTER_LEN];
        f[..8].copy_from_slice(COOKIE);
        f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
        let data_offset = if disk_type == 2 { u64::MAX } else { 512 };
        f[16..24].copy_from_slice(&data_offset.to_be_bytes());
        f[28..32].copy_from_slice(creator);
        f[40..48].copy_from_slice(&current_size.to_be_bytes());
        f[48..56].copy_from_slice(&current_size.to_be_bytes());
        f[56..58].copy_from_slice(&chs.0.to_be_bytes());
        f[58] = chs.1;
        f[59] = chs.2;
        f[60..64].copy_from_slice(&disk_type.to_be_bytes());
        let sum = checksum(&f, 64);
        f[64..68].copy_from_slice(&sum.to_be_bytes());
        f
    }

    #[test]
    fn a_fixed_footer_is_recognised_at_the_end() {
        let footer = mk_footer(2, 1 << 20, b"qem2", (1, 1, 1));
        assert_eq!(Footer::fixed_at_end(&footer, (1 << 20) + 512).unwrap(), Some((1 << 20, 1 << 20)));
    }

    #[test]
    fn a_bad_checksum_or_cookie_is_just_data() {
        let mut footer = mk_footer(2, 1 << 20, b"qem2", (1, 1, 1));
        footer[100] ^= 1;
        assert_eq!(Footer::fixed_at_end(&footer, (1 << 20) + 512).unwrap(), None);
        assert_eq!(Footer::fixed_at_end(&[0u8; 512], 4096).unwrap(), None);
    }

    #[test]
    fn size_follows_geometry_for_virtual_pc_and_current_size_for_hyper_v() {
        // 100 cylinders x 4 heads x 17 sectors = 6800 sectors; current_size says more.
        let vpc = Footer::parse(&mk_footer(2, 4 << 20, b"vpc ", (100, 4, 17))).unwrap().unwrap();
        assert_eq!(vpc.virtual_size, 6800 * 512);
        let hyperv = Footer::parse(&mk_footer(2, 4 << 20, b"win ", (100, 4, 17))).unwrap().unwrap();
        assert_eq!(hyperv.virtual_size, 4 << 20);
        let max = Footer::parse(&mk_footer(2, 4 << 20, b"vpc ", (65535, 16, 255))).unwrap().unwrap();
        assert_eq!(max.virtual_size, 4 << 20);
    }

    #[test]
    fn an_unknown_disk_type_is_refused() {
        let err = Footer::parse(&mk_footer(7, 1 << 20, b"qem2", (1, 1, 1))).unwrap_err();
        assert!(err.to_string().contains("disk type is 7"), "{err}");
    }
}

//! VDI (VirtualBox), header version 1.1: static and dynamic images (all fields
//! little-endian).
//!
//! A 64-byte text banner, the signature at 0x40, the header, then the block map: one
//! little-endian `u32` per block, the block's index in the data area, or
//! `0xFFFFFFFF` (never written) / `0xFFFFFFFE` (discarded): both read as zero. Block `n` of
//! the data area is at `offset_data + n * block_size`. A static image has every block
//! allocated; its map says so like a dynamic one's. Differencing ("diff") and undo images
//! are refused: they need their parent.

use super::FormatError;
use super::bytes::{le32, le64};
use super::mapped::{ExtentMap, Mapped, Meta};
use crate::error::ImportError;

pub(crate) const FORMAT: &str = "vdi";
pub const SIGNATURE_OFFSET: usize = 0x40;
pub const SIGNATURE: u32 = 0xbeda_107f;
/// Version 1.1, the only one VirtualBox and qemu write.
const VERSION_1_1: u32 = 0x0001_0001;
/// Bytes read for the header: banner, pre-header and the 1.1 header's fields up to the
/// parent's UUID.
const HEADER_END: usize = 0x1c8;
/// The 1.1 header's own size field (0x190 as written), at least up to the parent's UUID.
const MIN_HEADER_SIZE: u32 = 0x180;
const MAX_HEADER_SIZE: u32 = 0x400;
const UNALLOCATED: u32 = 0xFFFF_FFFF;
const DISCARDED: u32 = 0xFFFF_FFFE;
const SECTOR: u64 = 512;
/// Block sizes accepted: powers of two from 4 KiB to 256 MiB (VirtualBox and qemu write
/// 1 MiB).
const MIN_BLOCK: u64 = 4 << 10;
const MAX_BLOCK: u64 = 256 << 20;
/// The block map read at most (16 Mi blocks: 16 TiB of 1 MiB blocks).
const MAX_MAP_BYTES: u64 = 64 << 20;

fn bad(field: &'static str, value: u64, reason: &'static str) -> FormatError {
    FormatError::BadHeader { format: FORMAT, field, value, reason }
}

/// Reads the header and block map into the image's map.
pub fn map(meta: &mut dyn Meta, head: &[u8]) -> Result<Mapped, ImportError> {
    let h = head.get(..HEADER_END).ok_or(FormatError::HeaderTruncated {
        format: FORMAT,
        available: head.len(),
        needed: HEADER_END,
    })?;
    if le32(h, SIGNATURE_OFFSET) != SIGNATURE {
        return Err(FormatError::Internal("vdi parser called on non-vdi data").into());
    }
    let version = le32(h, 0x44);
    if version != VERSION_1_1 {
        return Err(bad("version", version.into(), "only version 1.1 (0x00010001) is read").into());
    }
    let header_size = le32(h, 0x48);
    if !(MIN_HEADER_SIZE..=MAX_HEADER_SIZE).contains(&header_size) {
        return Err(bad("header size", header_size.into(), "a version 1.1 header is 384 to 1024 bytes").into());
    }
    match le32(h, 0x4c) {
        1 | 2 => {} // dynamic, static
        3 | 4 => {
            // Undo and diff images: their parent is named by UUID.
            let parent = format!("the image with UUID {}", uuid(&h[0x1a8..0x1b8]));
            return Err(FormatError::Differencing { format: FORMAT, parent }.into());
        }
        other => return Err(bad("image type", other.into(), "must be 1 (dynamic) or 2 (static)").into()),
    }
    let offset_map = u64::from(le32(h, 0x154));
    let offset_data = u64::from(le32(h, 0x158));
    let sector_size = le32(h, 0x168);
    let disk_size = le64(h, 0x170);
    let block = u64::from(le32(h, 0x178));
    let block_extra = le32(h, 0x17c);
    let blocks = u64::from(le32(h, 0x180));
    if sector_size != SECTOR as u32 {
        return Err(bad("sector size", sector_size.into(), "must be 512").into());
    }
    if !block.is_power_of_two() || !(MIN_BLOCK..=MAX_BLOCK).contains(&block) {
        return Err(bad("block size", block, "must be a power of two from 4 KiB to 256 MiB").into());
    }
    if block_extra != 0 {
        return Err(bad("block extra data", block_extra.into(), "images with per-block extra data are not read").into());
    }
    if disk_size.div_ceil(block) > blocks {
        return Err(bad("blocks in image", blocks, "too few blocks for the disk size").into());
    }
    if blocks * 4 > MAX_MAP_BYTES {
        return Err(bad("blocks in image", blocks, "more than 16 Mi blocks: the block map would exceed 64 MiB").into());
    }
    if offset_map < 0x48 + u64::from(header_size) || !offset_map.is_multiple_of(SECTOR) {
        return Err(bad("block map offset", offset_map, "must be sector-aligned and follow the header").into());
    }
    let map_end = offset_map + blocks * 4;
    if offset_data < map_end || !offset_data.is_multiple_of(SECTOR) {
        return Err(bad("data offset", offset_data, "must be sector-aligned and follow the block map").into());
    }
    // Only the blocks holding the disk matter; a map longer than the disk is allowed.
    let used = disk_size.div_ceil(block);
    let mut table = vec![0u8; (used * 4) as usize];
    meta.read_at(&mut table, offset_map, "block map")?;

    let mut extents = ExtentMap::new(FORMAT, disk_size, block);
    for (i, entry) in table.chunks_exact(4).enumerate() {
        let index = le32(entry, 0);
        if index == UNALLOCATED || index == DISCARDED {
            continue;
        }
        if u64::from(index) >= blocks {
            return Err(FormatError::corrupt(
                FORMAT,
                format!("block {i} points at data block {index}, past the {blocks} the image has"),
            )
            .into());
        }
        extents.add(i as u64 * block, offset_data + u64::from(index) * block, block)?;
    }
    Ok(extents.finish(meta.image_len())?)
}

/// A UUID as VirtualBox prints it (its first three fields are little-endian).
fn uuid(b: &[u8]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{}",
        le32(b, 0),
        super::bytes::le16(b, 4),
        super::bytes::le16(b, 6),
        b[8],
        b[9],
        b[10..16].iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::mapped::Forward;

    fn mk_header(kind: u32, disk_size: u64, block: u32, blocks: u32) -> Vec<u8> {
        let mut h = vec![0u8; 0x200];
        h[..40].copy_from_slice(b"<<< Oracle VM VirtualBox Disk Image >>>\n");
        h[0x40..0x44].copy_from_slice(&SIGNATURE.to_le_bytes());
        h[0x44..0x48].copy_from_slice(&VERSION_1_1.to_le_bytes());
        h[0x48..0x4c].copy_from_slice(&0x190u32.to_le_bytes());
        h[0x4c..0x50].copy_from_slice(&kind.to_le_bytes());
        h[0x154..0x158].copy_from_slice(&0x200u32.to_le_bytes());
        let data = (0x200 + blocks * 4).next_multiple_of(512);
        h[0x158..0x15c].copy_from_slice(&data.to_le_bytes());
        h[0x168..0x16c].copy_from_slice(&512u32.to_le_bytes());
        h[0x170..0x178].copy_from_slice(&disk_size.to_le_bytes());
        h[0x178..0x17c].copy_from_slice(&block.to_le_bytes());
        h[0x180..0x184].copy_from_slice(&blocks.to_le_bytes());
        h
    }

    fn parse(image: &[u8]) -> Result<Mapped, ImportError> {
        let mut stream = image;
        let mut fwd = Forward::new(FORMAT, &mut stream, &image[..image.len().min(4096)], Some(image.len() as u64));
        map(&mut fwd, image)
    }

    #[test]
    fn a_dynamic_map_becomes_extents() {
        let mut img = mk_header(1, 3 << 20, 1 << 20, 3);
        img.extend_from_slice(&1u32.to_le_bytes());
        img.extend_from_slice(&UNALLOCATED.to_le_bytes());
        img.extend_from_slice(&0u32.to_le_bytes());
        img.resize(0x400 + (2 << 20), 0);
        let m = parse(&img).unwrap();
        assert_eq!(m.data_bytes(), 2 << 20);
    }

    #[test]
    fn differencing_images_are_refused() {
        let img = mk_header(4, 1 << 20, 1 << 20, 1);
        let err = parse(&img).unwrap_err();
        assert!(err.to_string().contains("differencing"), "{err}");
    }

    #[test]
    fn hostile_fields_are_refused_with_their_name() {
        for (at, value, field) in
            [(0x178, 3u32, "block size"), (0x17c, 8, "block extra data"), (0x180, 1, "blocks in image")]
        {
            let mut img = mk_header(1, 3 << 20, 1 << 20, 3);
            img[at..at + 4].copy_from_slice(&value.to_le_bytes());
            img.resize(0x1000, 0xff);
            let err = parse(&img).unwrap_err();
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn a_block_index_past_the_image_is_refused() {
        let mut img = mk_header(1, 1 << 20, 1 << 20, 1);
        img.extend_from_slice(&7u32.to_le_bytes());
        img.resize(0x400 + (1 << 20), 0);
        let err = parse(&img).unwrap_err();
        assert!(err.to_string().contains("data block 7"), "{err}");
    }
}

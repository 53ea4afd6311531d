//! VHDX (Hyper-V; Microsoft's "VHDX Format Specification" v1.0, all fields little-endian):
//! dynamic and fixed disks, both read through their block allocation table.
//!
//! ```text
//! 0        64 KiB     128 KiB    192 KiB        256 KiB            1 MiB
//! | file id | header 1 | header 2 | region table | its copy | ... | log, BAT, metadata, blocks
//! ```
//!
//! * **Headers**: two 4 KiB copies ("head", CRC-32C); the valid one with the larger sequence
//!   number is current. It says where the log is and whether it may hold anything.
//! * **Log**: writers journal metadata updates there before applying them. Entries never
//!   applied mean the BAT or metadata on disk may be stale: such an image is refused, as qemu
//!   refuses it read-only. A header whose log GUID is zero, or a log with no valid entry of
//!   that GUID, has nothing to replay (qemu-img leaves applied entries behind after writes).
//! * **Region table** ("regi", CRC-32C over 64 KiB, a copy at 256 KiB): where the BAT and the
//!   metadata region are. A region this reader does not know, marked required, is refused.
//! * **Metadata** ("metadata" table): block size, virtual size, logical sector size, and
//!   whether the disk has a parent (a differencing disk: refused, its parent is a path on
//!   someone's host).
//! * **BAT**: one 64-bit entry per payload block (state in bits 0-2, file offset in MiB in
//!   bits 20-63), with a sector-bitmap entry after every `chunk ratio` payload entries (used
//!   only by differencing disks, skipped here). A fixed disk's BAT maps every block too.
//!
//! The log, BAT and metadata are read in increasing host order when the source is a stream
//! (a gzip-wrapped vhdx, an upload), so it decodes in one pass. qemu-img puts the BAT before
//! the metadata that says how to read it, so a stream holds the BAT, bounded, until then;
//! with random access the BAT is read in chunks after the metadata, in bounded memory.

use std::fmt;

use super::FormatError;
use super::bytes::{le16, le32, le64};
use super::mapped::{ExtentMap, Mapped, Meta};
use crate::error::ImportError;

pub(crate) const FORMAT: &str = "vhdx";
const SIGNATURE: &[u8; 8] = b"vhdxfile";
const MIB: u64 = 1 << 20;
/// Everything before this is the header section; the log, regions and blocks lie past it.
const HEADER_SECTION_END: u64 = MIB;

const HEADER_OFFSETS: [u64; 2] = [64 << 10, 128 << 10];
/// A header's checksum covers 4 KiB, though its fields take the first [`HEADER_FIELDS`].
const HEADER_LEN: usize = 4 << 10;
const HEADER_FIELDS: usize = 80;
const HEADER_SIGNATURE: &[u8; 4] = b"head";
/// Where every header, region table and log entry keeps its CRC-32C.
const CHECKSUM_AT: usize = 4;

const REGION_TABLE_OFFSETS: [u64; 2] = [192 << 10, 256 << 10];
const REGION_TABLE_LEN: usize = 64 << 10;
const REGION_SIGNATURE: &[u8; 4] = b"regi";
/// Entries a region table or metadata table holds at most (spec: 2047, filling 64 KiB).
const MAX_TABLE_ENTRIES: u64 = 2047;
const REGION_REQUIRED: u32 = 1;

const METADATA_TABLE_LEN: u64 = 64 << 10;
const METADATA_SIGNATURE: &[u8; 8] = b"metadata";
const ITEM_REQUIRED: u32 = 4;
/// Largest metadata item (spec: 1 MiB).
const MAX_ITEM_LEN: u32 = 1 << 20;
/// Most bytes of the metadata region read: the table and the items used. Writers put them
/// all in its first 64 KiB + a few hundred bytes.
const MAX_METADATA_READ: u64 = 8 << 20;
/// File Parameters flag: the disk has a parent (spec 3.2.1).
const HAS_PARENT: u32 = 2;

/// Block sizes the spec allows: powers of two from 1 MiB to 256 MiB.
const MIN_BLOCK: u64 = MIB;
const MAX_BLOCK: u64 = 256 << 20;
/// Largest virtual disk (spec: 64 TiB).
const MAX_VIRTUAL_SIZE: u64 = 64 << 40;
/// Sectors one sector-bitmap block describes: chunk ratio = this × sector size / block size.
const SECTORS_PER_BITMAP: u64 = 1 << 23;

/// BAT bytes decoded at a time with random access.
const BAT_CHUNK: u64 = MIB;
/// BAT bytes a stream holds while it waits for the metadata behind it: 8 Mi entries, as much
/// as a 64 TiB disk of 8 MiB blocks needs (qemu-img picks 32 MiB or more at that size).
const MAX_HELD_BAT: u64 = 64 << 20;

const LOG_SECTOR: usize = 4 << 10;
const LOG_ENTRY_SIGNATURE: &[u8; 4] = b"loge";
const LOG_HEADER_LEN: usize = 64;
const LOG_DESCRIPTOR_LEN: usize = 32;
/// Largest log checked for entries to replay (qemu-img and Hyper-V write 1 MiB).
const MAX_LOG_LEN: u64 = 32 << 20;

/// BAT payload states (spec 2.5.1.1); 3 is UNMAPPED in the v0.95 draft, read as zero by qemu.
const NOT_PRESENT: u64 = 0;
const UNDEFINED: u64 = 1;
const ZERO: u64 = 2;
const UNMAPPED_V095: u64 = 3;
const UNMAPPED: u64 = 5;
const FULLY_PRESENT: u64 = 6;
const PARTIALLY_PRESENT: u64 = 7;
const STATE_MASK: u64 = 7;
/// The file offset in MiB sits above bit 20 of a BAT entry.
const OFFSET_SHIFT: u32 = 20;

const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// A GUID as the file stores it (Microsoft's layout: the first three fields little-endian).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Guid([u8; 16]);

impl Guid {
    const fn new(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Guid {
        let (a, b, c) = (d1.to_le_bytes(), d2.to_le_bytes(), d3.to_le_bytes());
        Guid([a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5], d4[6], d4[7]])
    }

    fn read(b: &[u8], at: usize) -> Guid {
        Guid(b[at..at + 16].try_into().expect("16 bytes"))
    }

    fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(f, "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-", le32(b, 0), le16(b, 4), le16(b, 6), b[8], b[9])?;
        b[10..].iter().try_for_each(|x| write!(f, "{x:02x}"))
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

// Region and metadata item identifiers (spec 2.3.1.2 and 3.2).
const BAT_REGION: Guid = Guid::new(0x2dc2_7766, 0xf623, 0x4200, [0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08]);
const METADATA_REGION: Guid = Guid::new(0x8b7c_a206, 0x4790, 0x4b9a, [0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e]);
const FILE_PARAMETERS: Guid = Guid::new(0xcaa1_6737, 0xfa36, 0x4d43, [0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b]);
const VIRTUAL_DISK_SIZE: Guid =
    Guid::new(0x2fa5_4224, 0xcd1b, 0x4876, [0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8]);
const PAGE_83_DATA: Guid = Guid::new(0xbeca_12ab, 0xb2e6, 0x4523, [0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46]);
const LOGICAL_SECTOR_SIZE: Guid =
    Guid::new(0x8141_bf1d, 0xa96f, 0x4709, [0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f]);
const PHYSICAL_SECTOR_SIZE: Guid =
    Guid::new(0xcda3_48c7, 0x445d, 0x4471, [0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56]);
const PARENT_LOCATOR: Guid = Guid::new(0xa8d3_5f2d, 0xb30b, 0x454d, [0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c]);

fn bad(field: &'static str, value: u64, reason: &'static str) -> FormatError {
    FormatError::BadHeader { format: FORMAT, field, value, reason }
}

fn corrupt(detail: impl Into<String>) -> FormatError {
    FormatError::corrupt(FORMAT, detail)
}

/// CRC-32C of `parts` in order, the checksum field (`CHECKSUM_AT` of the first part) read
/// as zero.
fn checksum(parts: &[&[u8]]) -> u32 {
    let mut digest = CRC32C.digest();
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            digest.update(&part[..CHECKSUM_AT]);
            digest.update(&[0; 4]);
            digest.update(&part[CHECKSUM_AT + 4..]);
        } else {
            digest.update(part);
        }
    }
    digest.finalize()
}

/// Why a checksummed structure is not valid, if it is not.
fn sealed(b: &[u8], signature: &[u8]) -> Result<(), String> {
    if &b[..signature.len()] != signature {
        return Err(format!("no {:?} signature", String::from_utf8_lossy(signature)));
    }
    let (stored, computed) = (le32(b, CHECKSUM_AT), checksum(&[b]));
    if stored != computed {
        return Err(format!("its checksum {stored:#010x} does not match its contents ({computed:#010x})"));
    }
    Ok(())
}

/// The fields of the current header this reader uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    sequence: u64,
    log_guid: Guid,
    log_version: u16,
    log_length: u32,
    log_offset: u64,
}

/// A header copy, or why it is not usable.
fn parse_header(b: &[u8]) -> Result<Header, String> {
    sealed(b, HEADER_SIGNATURE)?;
    let version = le16(b, 66);
    if version != 1 {
        return Err(format!("its version is {version}, and only version 1 is defined"));
    }
    Ok(Header {
        sequence: le64(b, 8),
        log_guid: Guid::read(b, 48),
        log_version: le16(b, 64),
        log_length: le32(b, 68),
        log_offset: le64(b, 72),
    })
}

/// The current header: the valid copy with the larger sequence number (spec 2.2.2).
fn select_header(first: &[u8], second: &[u8]) -> Result<Header, FormatError> {
    match (parse_header(first), parse_header(second)) {
        (Ok(a), Ok(b)) if a.sequence > b.sequence => Ok(a),
        (Ok(a), Ok(b)) if b.sequence > a.sequence => Ok(b),
        // Disk2VHD writes two identical headers; two different ones with one sequence
        // number cannot be ordered.
        (Ok(a), Ok(_)) if first[..HEADER_FIELDS] == second[..HEADER_FIELDS] => Ok(a),
        (Ok(a), Ok(_)) => Err(corrupt(format!(
            "both headers carry sequence number {} but differ, so which one is current cannot be told",
            a.sequence
        ))),
        (Ok(a), Err(_)) => Ok(a),
        (Err(_), Ok(b)) => Ok(b),
        (Err(a), Err(b)) => Err(corrupt(format!(
            "neither header is usable (header 1 at offset {}: {a}; header 2 at offset {}: {b})",
            HEADER_OFFSETS[0], HEADER_OFFSETS[1]
        ))),
    }
}

/// `len` bytes at host offset `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Region {
    offset: u64,
    len: u64,
}

impl Region {
    /// Checked once when parsed: offset + len does not overflow.
    fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// What the region table says.
#[derive(Debug)]
struct Regions {
    bat: Region,
    metadata: Region,
    /// Every region, known or not, by name: none may overlap another.
    all: Vec<(&'static str, Region)>,
}

/// Parses a region table whose checksum was verified.
fn parse_regions(b: &[u8]) -> Result<Regions, FormatError> {
    let count = u64::from(le32(b, 8));
    if count > MAX_TABLE_ENTRIES {
        return Err(bad("region table entry count", count, "a region table holds at most 2047 entries"));
    }
    let (mut bat, mut metadata) = (None, None);
    let mut all = Vec::new();
    for e in b[16..].chunks_exact(32).take(count as usize) {
        let id = Guid::read(e, 0);
        let region = Region { offset: le64(e, 16), len: u64::from(le32(e, 24)) };
        let (name, slot) = match id {
            BAT_REGION => ("BAT region", Some(&mut bat)),
            METADATA_REGION => ("metadata region", Some(&mut metadata)),
            _ if le32(e, 28) & REGION_REQUIRED != 0 => {
                return Err(FormatError::UnknownRequired { format: FORMAT, what: "region", id: id.to_string() });
            }
            // Optional and unknown: skipped, but it still occupies its bytes.
            _ => ("unknown region", None),
        };
        if region.offset < HEADER_SECTION_END
            || !region.offset.is_multiple_of(MIB)
            || region.offset.checked_add(region.len).is_none()
        {
            return Err(bad(
                "region offset",
                region.offset,
                "regions start on a 1 MiB boundary past the header section",
            ));
        }
        if slot.is_some_and(|slot| slot.replace(region).is_some()) {
            return Err(corrupt(format!("the region table lists the {name} twice")));
        }
        all.push((name, region));
    }
    let bat = bat.ok_or_else(|| corrupt("the region table names no BAT region"))?;
    let metadata = metadata.ok_or_else(|| corrupt("the region table names no metadata region"))?;
    Ok(Regions { bat, metadata, all })
}

/// The ranges of the file that hold structures, not blocks: no two overlap, and no block
/// may lie in one.
#[derive(Debug)]
struct Layout {
    /// (start, end, name), sorted.
    used: Vec<(u64, u64, &'static str)>,
}

impl Layout {
    fn new(header: &Header, regions: &Regions) -> Result<Layout, FormatError> {
        // qemu checks the log's place even when the log is empty; so do we.
        if header.log_offset < HEADER_SECTION_END || !header.log_offset.is_multiple_of(MIB) {
            return Err(bad(
                "log offset",
                header.log_offset,
                "the log starts on a 1 MiB boundary past the header section",
            ));
        }
        if !u64::from(header.log_length).is_multiple_of(MIB) {
            return Err(bad("log length", header.log_length.into(), "must be a multiple of 1 MiB"));
        }
        let mut used = vec![(0, HEADER_SECTION_END, "header section")];
        if header.log_length > 0 {
            let end = header.log_offset.checked_add(header.log_length.into()).ok_or(bad(
                "log offset",
                header.log_offset,
                "the log would end past the largest file offset",
            ))?;
            used.push((header.log_offset, end, "log"));
        }
        used.extend(regions.all.iter().map(|(name, r)| (r.offset, r.end(), *name)));
        used.sort_unstable();
        for pair in used.windows(2) {
            let ((a, a_end, a_name), (b, b_end, b_name)) = (pair[0], pair[1]);
            if a_end > b {
                return Err(corrupt(format!(
                    "the {a_name} (host offsets {a}..{a_end}) overlaps the {b_name} ({b}..{b_end})"
                )));
            }
        }
        Ok(Layout { used })
    }

    /// The structure `[start, end)` overlaps, if any.
    fn overlap(&self, start: u64, end: u64) -> Option<&'static str> {
        self.used.iter().find(|&&(s, e, _)| start < e && s < end).map(|&(_, _, name)| name)
    }
}

/// Refuses a log holding entries that were never applied (qemu's read-only rule).
fn check_log(meta: &mut dyn Meta, header: &Header) -> Result<(), ImportError> {
    if header.log_version != 0 {
        return Err(bad("log version", header.log_version.into(), "only log version 0 is defined").into());
    }
    if header.log_guid.is_zero() || header.log_length == 0 {
        return Ok(());
    }
    if u64::from(header.log_length) > MAX_LOG_LEN {
        return Err(bad(
            "log length",
            header.log_length.into(),
            "a log that may need replaying is checked up to 32 MiB; replay it with qemu-img check -r all",
        )
        .into());
    }
    let mut log = vec![0u8; header.log_length as usize];
    meta.read_at(&mut log, header.log_offset, "log")?;
    if let Some((at, sequence)) = find_log_entry(&log, header.log_guid) {
        tracing::debug!(at, sequence, log_guid = %header.log_guid, "vhdx log entry to replay");
        return Err(FormatError::DirtyLog { format: FORMAT }.into());
    }
    Ok(())
}

/// The first valid entry of log `guid` in the circular `log`, as (offset, sequence number).
fn find_log_entry(log: &[u8], guid: Guid) -> Option<(usize, u64)> {
    (0..log.len()).step_by(LOG_SECTOR).find_map(|at| log_entry_at(log, at, guid).map(|seq| (at, seq)))
}

/// The sequence number of the entry starting at `at`, if one is valid there: qemu's checks
/// (signature, length, sequence, log GUID, descriptors), then the CRC over the whole entry,
/// which may wrap past the log's end.
fn log_entry_at(log: &[u8], at: usize, guid: Guid) -> Option<u64> {
    let h = &log[at..at + LOG_HEADER_LEN];
    let entry_len = le32(h, 8) as usize;
    let sequence = le64(h, 16);
    let descriptors = le32(h, 24) as usize;
    if &h[..4] != LOG_ENTRY_SIGNATURE
        || entry_len > log.len()
        || !entry_len.is_multiple_of(LOG_SECTOR)
        || sequence == 0
        || Guid::read(h, 32) != guid
        || descriptors.checked_mul(LOG_DESCRIPTOR_LEN)? > entry_len
    {
        return None;
    }
    // The header takes the first two descriptor slots of the first sector.
    let descriptor_sectors = (descriptors + 2).div_ceil(LOG_SECTOR / LOG_DESCRIPTOR_LEN);
    let sectors = descriptor_sectors.max(entry_len / LOG_SECTOR);
    if sectors * LOG_SECTOR > log.len() {
        return None;
    }
    let sector = |i: usize| {
        let start = (at + i * LOG_SECTOR) % log.len();
        &log[start..start + LOG_SECTOR]
    };
    for k in 0..descriptors {
        let pos = LOG_HEADER_LEN + k * LOG_DESCRIPTOR_LEN;
        let d = &sector(pos / LOG_SECTOR)[pos % LOG_SECTOR..][..LOG_DESCRIPTOR_LEN];
        let valid = le64(d, 24) == sequence
            && le64(d, 16).is_multiple_of(LOG_SECTOR as u64)
            && match &d[..4] {
                b"zero" => le64(d, 8).is_multiple_of(LOG_SECTOR as u64),
                b"desc" => true,
                _ => false,
            };
        if !valid {
            return None;
        }
    }
    let parts: Vec<&[u8]> = (0..sectors).map(sector).collect();
    (checksum(&parts) == le32(h, CHECKSUM_AT)).then_some(sequence)
}

/// Where a metadata item is, relative to the metadata region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Item {
    offset: u32,
    len: u32,
}

/// The metadata items this reader uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Items {
    file_parameters: Item,
    virtual_size: Item,
    sector_size: Item,
    parent_locator: Option<Item>,
}

/// Parses the metadata table at the start of the metadata region `region`.
fn parse_metadata_table(b: &[u8], region: Region) -> Result<Items, FormatError> {
    if &b[..8] != METADATA_SIGNATURE {
        return Err(corrupt(format!(
            "the metadata region at host offset {} does not start with a \"metadata\" table",
            region.offset
        )));
    }
    let count = u64::from(le16(b, 10));
    if count > MAX_TABLE_ENTRIES {
        return Err(bad("metadata entry count", count, "a metadata table holds at most 2047 entries"));
    }
    let (mut params, mut size, mut sector, mut parent) = (None, None, None, None);
    for e in b[32..].chunks_exact(32).take(count as usize) {
        let id = Guid::read(e, 0);
        let item = Item { offset: le32(e, 16), len: le32(e, 20) };
        let (name, slot, min_len) = match id {
            FILE_PARAMETERS => ("file parameters", &mut params, 8),
            VIRTUAL_DISK_SIZE => ("virtual disk size", &mut size, 8),
            LOGICAL_SECTOR_SIZE => ("logical sector size", &mut sector, 4),
            // Only read to name the parent of a differencing disk: a damaged one names none
            // rather than refusing a disk that may not need it.
            PARENT_LOCATOR => {
                let end = u64::from(item.offset) + u64::from(item.len);
                if item.len >= 20
                    && u64::from(item.offset) >= METADATA_TABLE_LEN
                    && end <= region.len.min(MAX_METADATA_READ)
                {
                    parent = Some(item);
                }
                continue;
            }
            // Known, not needed to read the disk.
            PAGE_83_DATA | PHYSICAL_SECTOR_SIZE => continue,
            _ if le32(e, 24) & ITEM_REQUIRED != 0 => {
                return Err(FormatError::UnknownRequired { format: FORMAT, what: "metadata item", id: id.to_string() });
            }
            _ => continue,
        };
        if item.len < min_len || item.len > MAX_ITEM_LEN {
            return Err(corrupt(format!(
                "the {name} metadata item is {} bytes long; it takes {min_len} to 1 MiB",
                item.len
            )));
        }
        if u64::from(item.offset) < METADATA_TABLE_LEN || u64::from(item.offset) + u64::from(item.len) > region.len {
            return Err(corrupt(format!(
                "the {name} metadata item at offset {} (+{} bytes) lies outside the metadata region's {} bytes \
                 after its 64 KiB table",
                item.offset, item.len, region.len
            )));
        }
        if slot.replace(item).is_some() {
            return Err(corrupt(format!("the metadata table lists the {name} item twice")));
        }
    }
    let missing = |name: &str| corrupt(format!("the metadata table has no {name} item"));
    Ok(Items {
        file_parameters: params.ok_or_else(|| missing("file parameters"))?,
        virtual_size: size.ok_or_else(|| missing("virtual disk size"))?,
        sector_size: sector.ok_or_else(|| missing("logical sector size"))?,
        parent_locator: parent,
    })
}

/// How the disk is cut into blocks and how its BAT is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    block: u64,
    virtual_size: u64,
    /// Payload entries between two sector-bitmap entries of the BAT.
    chunk_ratio: u64,
    /// BAT entries that map the disk, sector-bitmap entries between them included.
    bat_entries: u64,
}

impl Geometry {
    /// From the items' bytes. A differencing disk is refused here, before its other fields
    /// are judged, so the refusal names what matters.
    fn parse(params: &[u8], size: &[u8], sector: &[u8], locator: Option<&[u8]>) -> Result<Geometry, FormatError> {
        let block = u64::from(le32(params, 0));
        if le32(params, 4) & HAS_PARENT != 0 {
            let parent = locator.map_or_else(|| "not named (the image has no parent locator)".into(), parent_path);
            return Err(FormatError::Differencing { format: FORMAT, parent });
        }
        if !block.is_power_of_two() || !(MIN_BLOCK..=MAX_BLOCK).contains(&block) {
            return Err(bad("block size", block, "must be a power of two from 1 MiB to 256 MiB"));
        }
        let sector = u64::from(le32(sector, 0));
        if sector != 512 && sector != 4096 {
            return Err(bad("logical sector size", sector, "must be 512 or 4096"));
        }
        let virtual_size = le64(size, 0);
        if virtual_size > MAX_VIRTUAL_SIZE {
            return Err(bad("virtual disk size", virtual_size, "the format's largest disk is 64 TiB"));
        }
        if !virtual_size.is_multiple_of(sector) {
            return Err(bad("virtual disk size", virtual_size, "must be a multiple of the logical sector size"));
        }
        let chunk_ratio = SECTORS_PER_BITMAP * sector / block;
        let blocks = virtual_size.div_ceil(block);
        let bat_entries = if blocks == 0 { 0 } else { blocks + (blocks - 1) / chunk_ratio };
        Ok(Geometry { block, virtual_size, chunk_ratio, bat_entries })
    }

    /// BAT bytes that map the disk.
    fn bat_bytes(&self) -> u64 {
        self.bat_entries * 8
    }
}

/// The parent's path from a parent locator, for the refusal: its relative path, else its
/// absolute or volume path (UTF-16LE values; spec 3.2.5).
fn parent_path(locator: &[u8]) -> String {
    let count = usize::from(le16(locator, 18));
    let text = |offset: u32, len: u16| -> Option<String> {
        let start = offset as usize;
        let bytes = locator.get(start..start.checked_add(len.into())?)?;
        let units: Vec<u16> = bytes.chunks_exact(2).map(|c| le16(c, 0)).collect();
        Some(String::from_utf16_lossy(&units))
    };
    let pairs: Vec<(String, String)> = locator[20..]
        .chunks_exact(12)
        .take(count)
        .filter_map(|e| Some((text(le32(e, 0), le16(e, 8))?, text(le32(e, 4), le16(e, 10))?)))
        .collect();
    ["relative_path", "absolute_win32_path", "volume_path"]
        .iter()
        .find_map(|key| pairs.iter().find(|(k, _)| k == key))
        .map_or_else(|| "not named in its parent locator".into(), |(_, path)| format!("{path:?}"))
}

/// Reads the metadata table and the items it points at.
fn read_metadata(meta: &mut dyn Meta, region: Region) -> Result<Geometry, ImportError> {
    if region.len < METADATA_TABLE_LEN {
        return Err(bad("metadata region length", region.len, "must hold at least its 64 KiB table").into());
    }
    let mut table = vec![0u8; METADATA_TABLE_LEN as usize];
    meta.read_at(&mut table, region.offset, "metadata table")?;
    let items = parse_metadata_table(&table, region)?;
    // One read past the table for every item used: a stream cannot go back for the next.
    let used = [Some(items.file_parameters), Some(items.virtual_size), Some(items.sector_size), items.parent_locator];
    let end = used.iter().flatten().map(|i| u64::from(i.offset) + u64::from(i.len)).max().unwrap_or(0);
    if end > MAX_METADATA_READ {
        return Err(bad("metadata item offset", end, "items lie within the metadata region's first 8 MiB").into());
    }
    let mut body = vec![0u8; (end - METADATA_TABLE_LEN) as usize];
    meta.read_at(&mut body, region.offset + METADATA_TABLE_LEN, "metadata items")?;
    let item = |i: Item| {
        let start = (u64::from(i.offset) - METADATA_TABLE_LEN) as usize;
        &body[start..start + i.len as usize]
    };
    Ok(Geometry::parse(
        item(items.file_parameters),
        item(items.virtual_size),
        item(items.sector_size),
        items.parent_locator.map(item),
    )?)
}

fn check_bat_len(region: Region, geometry: &Geometry) -> Result<(), FormatError> {
    if geometry.bat_bytes() > region.len {
        return Err(corrupt(format!(
            "its BAT region (host offset {}) holds {} bytes, but a disk of {} bytes in blocks of {} needs {} bytes of \
             BAT entries",
            region.offset,
            region.len,
            geometry.virtual_size,
            geometry.block,
            geometry.bat_bytes()
        )));
    }
    Ok(())
}

/// Reads the BAT in chunks (random access, or a stream past the metadata) into the map.
fn read_bat(
    meta: &mut dyn Meta,
    region: Region,
    geometry: &Geometry,
    layout: &Layout,
) -> Result<ExtentMap, ImportError> {
    check_bat_len(region, geometry)?;
    let mut extents = ExtentMap::new(FORMAT, geometry.virtual_size, geometry.block);
    let total = geometry.bat_bytes();
    let mut buf = vec![0u8; total.min(BAT_CHUNK) as usize];
    let mut at = 0;
    while at < total {
        let n = (total - at).min(BAT_CHUNK) as usize;
        meta.read_at(&mut buf[..n], region.offset + at, "BAT")?;
        decode_bat(&buf[..n], at / 8, geometry, layout, &mut extents)?;
        at += n as u64;
    }
    Ok(extents)
}

/// Holds the BAT of a stream that reaches it before the metadata, as much as may be needed.
fn hold_bat(meta: &mut dyn Meta, region: Region) -> Result<Vec<u8>, ImportError> {
    let mut held = vec![0u8; region.len.min(MAX_HELD_BAT) as usize];
    meta.read_at(&mut held, region.offset, "BAT")?;
    Ok(held)
}

fn decode_held_bat(
    held: &[u8],
    region: Region,
    geometry: &Geometry,
    layout: &Layout,
) -> Result<ExtentMap, ImportError> {
    check_bat_len(region, geometry)?;
    let needed = geometry.bat_bytes();
    if needed > held.len() as u64 {
        return Err(FormatError::NeedsRandomAccess {
            format: FORMAT,
            reason: format!(
                "its BAT ({needed} bytes) comes before the metadata that says how to read it, and a stream holds \
                 at most {MAX_HELD_BAT} bytes of it"
            ),
        }
        .into());
    }
    let mut extents = ExtentMap::new(FORMAT, geometry.virtual_size, geometry.block);
    decode_bat(&held[..needed as usize], 0, geometry, layout, &mut extents)?;
    Ok(extents)
}

/// Adds the blocks mapped by `entries`, BAT entries from index `first`, to `extents`.
fn decode_bat(
    entries: &[u8],
    first: u64,
    geometry: &Geometry,
    layout: &Layout,
    extents: &mut ExtentMap,
) -> Result<(), FormatError> {
    let group = geometry.chunk_ratio + 1;
    for (k, e) in entries.chunks_exact(8).enumerate() {
        let index = first + k as u64;
        if index % group == geometry.chunk_ratio {
            // A sector-bitmap entry: only a differencing disk's reads consult its block.
            continue;
        }
        let block = index - index / group;
        let guest = block * geometry.block;
        let entry = le64(e, 0);
        match entry & STATE_MASK {
            NOT_PRESENT | UNDEFINED | ZERO | UNMAPPED_V095 | UNMAPPED => {}
            FULLY_PRESENT => {
                let host = (entry >> OFFSET_SHIFT) * MIB;
                let len = geometry.block.min(geometry.virtual_size - guest);
                if let Some(what) = layout.overlap(host, host.saturating_add(len)) {
                    return Err(corrupt(format!(
                        "block {block} (guest offset {guest}) is stored at host offset {host}, inside the {what}"
                    )));
                }
                extents.add(guest, host, len)?;
            }
            PARTIALLY_PRESENT => {
                return Err(corrupt(format!(
                    "block {block} (guest offset {guest}) is partially present, a state only a differencing image's \
                     blocks may have, and this image has no parent"
                )));
            }
            state => {
                return Err(corrupt(format!(
                    "BAT entry {index} (block {block}) has state {state}, which the format does not define"
                )));
            }
        }
    }
    Ok(())
}

fn read_header(meta: &mut dyn Meta) -> Result<Header, ImportError> {
    let mut first = vec![0u8; HEADER_LEN];
    meta.read_at(&mut first, HEADER_OFFSETS[0], "header 1")?;
    let mut second = vec![0u8; HEADER_LEN];
    meta.read_at(&mut second, HEADER_OFFSETS[1], "header 2")?;
    Ok(select_header(&first, &second)?)
}

/// The region table, or its copy when the table itself is damaged.
fn read_regions(meta: &mut dyn Meta) -> Result<Regions, ImportError> {
    let mut table = vec![0u8; REGION_TABLE_LEN];
    meta.read_at(&mut table, REGION_TABLE_OFFSETS[0], "region table")?;
    if let Err(why) = sealed(&table, REGION_SIGNATURE) {
        meta.read_at(&mut table, REGION_TABLE_OFFSETS[1], "region table copy")?;
        if let Err(why_copy) = sealed(&table, REGION_SIGNATURE) {
            return Err(corrupt(format!(
                "neither region table is usable (at offset {}: {why}; its copy at offset {}: {why_copy})",
                REGION_TABLE_OFFSETS[0], REGION_TABLE_OFFSETS[1]
            ))
            .into());
        }
        tracing::warn!(offset = REGION_TABLE_OFFSETS[0], %why, "vhdx region table damaged; reading its copy");
    }
    Ok(parse_regions(&table)?)
}

/// The structures read after the region table, in the order they are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Log,
    Metadata,
    Bat,
}

/// Reads the headers, log, region table, metadata and BAT into the image's map.
pub fn map(meta: &mut dyn Meta, head: &[u8]) -> Result<Mapped, ImportError> {
    if !head.starts_with(SIGNATURE) {
        return Err(FormatError::Internal("vhdx parser called on non-vhdx data").into());
    }
    let header = read_header(meta)?;
    let regions = read_regions(meta)?;
    let layout = Layout::new(&header, &regions)?;

    let mut steps =
        [(header.log_offset, Step::Log), (regions.metadata.offset, Step::Metadata), (regions.bat.offset, Step::Bat)];
    if meta.forward_only() {
        steps.sort_unstable_by_key(|&(offset, _)| offset);
    }
    let (mut geometry, mut extents, mut held) = (None, None, None);
    for (_, step) in steps {
        match step {
            Step::Log => check_log(meta, &header)?,
            Step::Metadata => geometry = Some(read_metadata(meta, regions.metadata)?),
            Step::Bat => match &geometry {
                Some(g) => extents = Some(read_bat(meta, regions.bat, g, &layout)?),
                None => held = Some(hold_bat(meta, regions.bat)?),
            },
        }
    }
    let geometry = geometry.ok_or(FormatError::Internal("vhdx metadata never read"))?;
    let extents = match (extents, held) {
        (Some(extents), _) => extents,
        (None, Some(held)) => decode_held_bat(&held, regions.bat, &geometry, &layout)?,
        (None, None) => return Err(FormatError::Internal("vhdx BAT never read").into()),
    };
    Ok(extents.finish(meta.image_len())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::mapped::{Extent, Forward, RandomMeta};
    use std::sync::Arc;

    use crate::source::MemSource;

    // Where the images built here keep things: qemu-img's layout (BAT before metadata).
    const LOG_AT: u64 = MIB;
    const BAT_AT: u64 = 2 * MIB;
    const META_AT: u64 = 3 * MIB;
    const DATA_MB: u64 = 4;
    const LOG_GUID: Guid = Guid::new(0x1234_5678, 0x9abc, 0xdef0, [1, 2, 3, 4, 5, 6, 7, 8]);

    fn put(img: &mut Vec<u8>, at: u64, bytes: &[u8]) {
        let at = at as usize;
        if img.len() < at + bytes.len() {
            img.resize(at + bytes.len(), 0);
        }
        img[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// Recomputes the checksum of the `len`-byte structure at `at`, as a writer would.
    fn reseal(img: &mut [u8], at: u64, len: usize) {
        let s = &mut img[at as usize..at as usize + len];
        let sum = checksum(&[s]);
        s[CHECKSUM_AT..CHECKSUM_AT + 4].copy_from_slice(&sum.to_le_bytes());
    }

    fn mk_header(sequence: u64, log_guid: Guid) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_LEN];
        h[..4].copy_from_slice(HEADER_SIGNATURE);
        h[8..16].copy_from_slice(&sequence.to_le_bytes());
        h[48..64].copy_from_slice(&log_guid.0);
        h[66..68].copy_from_slice(&1u16.to_le_bytes());
        h[68..72].copy_from_slice(&(MIB as u32).to_le_bytes());
        h[72..80].copy_from_slice(&LOG_AT.to_le_bytes());
        reseal(&mut h, 0, HEADER_LEN);
        h
    }

    /// Rewrites header `which` (0 or 1) through `edit`, checksum updated.
    fn edit_header(img: &mut [u8], which: usize, edit: impl FnOnce(&mut [u8])) {
        let at = HEADER_OFFSETS[which];
        edit(&mut img[at as usize..at as usize + HEADER_LEN]);
        reseal(img, at, HEADER_LEN);
    }

    /// Writes both region tables: (id, offset, length, flags) each.
    fn mk_regions(img: &mut Vec<u8>, entries: &[(Guid, u64, u32, u32)]) {
        let mut t = vec![0u8; REGION_TABLE_LEN];
        t[..4].copy_from_slice(REGION_SIGNATURE);
        t[8..12].copy_from_slice(&(entries.len() as u32).to_le_bytes());
        for (i, (id, offset, len, flags)) in entries.iter().enumerate() {
            let e = &mut t[16 + 32 * i..48 + 32 * i];
            e[..16].copy_from_slice(&id.0);
            e[16..24].copy_from_slice(&offset.to_le_bytes());
            e[24..28].copy_from_slice(&len.to_le_bytes());
            e[28..32].copy_from_slice(&flags.to_le_bytes());
        }
        reseal(&mut t, 0, REGION_TABLE_LEN);
        for at in REGION_TABLE_OFFSETS {
            put(img, at, &t);
        }
    }

    /// A metadata region at `at`: the three items read, page 83 and physical sector size as
    /// qemu-img writes them, then `extra` items (id, bytes, flags).
    fn mk_metadata(img: &mut Vec<u8>, at: u64, block: u32, flags: u32, size: u64, extra: &[(Guid, Vec<u8>, u32)]) {
        let mut items: Vec<(Guid, Vec<u8>, u32)> = vec![
            (FILE_PARAMETERS, [block.to_le_bytes(), flags.to_le_bytes()].concat(), ITEM_REQUIRED),
            (VIRTUAL_DISK_SIZE, size.to_le_bytes().to_vec(), ITEM_REQUIRED | 2),
            (PAGE_83_DATA, vec![7; 16], ITEM_REQUIRED | 2),
            (LOGICAL_SECTOR_SIZE, 512u32.to_le_bytes().to_vec(), ITEM_REQUIRED | 2),
            (PHYSICAL_SECTOR_SIZE, 4096u32.to_le_bytes().to_vec(), ITEM_REQUIRED | 2),
        ];
        items.extend_from_slice(extra);
        let mut t = vec![0u8; METADATA_TABLE_LEN as usize];
        t[..8].copy_from_slice(METADATA_SIGNATURE);
        t[10..12].copy_from_slice(&(items.len() as u16).to_le_bytes());
        let mut offset = METADATA_TABLE_LEN as u32;
        for (i, (id, bytes, flags)) in items.iter().enumerate() {
            let e = &mut t[32 + 32 * i..64 + 32 * i];
            e[..16].copy_from_slice(&id.0);
            e[16..20].copy_from_slice(&offset.to_le_bytes());
            e[20..24].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
            e[24..28].copy_from_slice(&flags.to_le_bytes());
            put(img, at + u64::from(offset), bytes);
            offset += bytes.len() as u32;
        }
        put(img, at, &t);
    }

    fn entry(state: u64, mb: u64) -> u64 {
        mb << OFFSET_SHIFT | state
    }

    /// A whole image: 1 MiB log, 1 MiB BAT region holding `bat`, 1 MiB metadata region, and
    /// every FULLY_PRESENT block in the data area (from 4 MiB up to 64 MiB) filled with its
    /// block number; blocks pointing elsewhere are left pointing there.
    fn mk_image(block: u32, size: u64, bat: &[u64]) -> Vec<u8> {
        let mut img = vec![0u8; (DATA_MB * MIB) as usize];
        img[..8].copy_from_slice(SIGNATURE);
        put(&mut img, HEADER_OFFSETS[0], &mk_header(1, Guid([0; 16])));
        put(&mut img, HEADER_OFFSETS[1], &mk_header(2, Guid([0; 16])));
        mk_regions(&mut img, &[(BAT_REGION, BAT_AT, MIB as u32, 1), (METADATA_REGION, META_AT, MIB as u32, 1)]);
        mk_metadata(&mut img, META_AT, block, 0, size, &[]);
        for (i, e) in bat.iter().enumerate() {
            put(&mut img, BAT_AT + 8 * i as u64, &e.to_le_bytes());
            let host = (e >> OFFSET_SHIFT) * MIB;
            if e & STATE_MASK == FULLY_PRESENT && (DATA_MB * MIB..64 * MIB).contains(&host) {
                put(&mut img, host, &vec![i as u8 + 1; block as usize]);
            }
        }
        img
    }

    fn parse_stream(img: &[u8]) -> Result<Mapped, ImportError> {
        let mut stream = img;
        let head = &img[..img.len().min(64 << 10)];
        map(&mut Forward::new(FORMAT, &mut stream, head, Some(img.len() as u64)), head)
    }

    fn parse_random(img: &[u8]) -> Result<Mapped, ImportError> {
        let src = MemSource(Arc::new(img.to_vec()));
        map(&mut RandomMeta { format: FORMAT, src: &src }, &img[..img.len().min(64 << 10)])
    }

    /// Parses both ways; they must agree. The extents, or the error's message.
    fn parse(img: &[u8]) -> Result<Vec<Extent>, String> {
        let random = parse_random(img).map(|m| m.extents().to_vec()).map_err(|e| e.to_string());
        let stream = parse_stream(img).map(|m| m.extents().to_vec()).map_err(|e| e.to_string());
        assert_eq!(random, stream, "random access and stream disagree");
        random
    }

    fn refused(img: &[u8], needle: &str) -> String {
        let err = parse(img).expect_err("the image was accepted");
        assert!(err.contains(needle), "{needle:?} not in {err}");
        err
    }

    #[test]
    fn crc32c_is_castagnoli() {
        assert_eq!(CRC32C.checksum(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn guids_print_as_the_spec_writes_them() {
        assert_eq!(BAT_REGION.to_string(), "2dc27766-f623-4200-9d64-115e9bfd4a08");
        assert_eq!(BAT_REGION.0[..4], [0x66, 0x77, 0xc2, 0x2d]);
    }

    #[test]
    fn the_valid_header_with_the_larger_sequence_number_is_current() {
        let (old, new) = (mk_header(7, Guid([0; 16])), mk_header(9, LOG_GUID));
        assert_eq!(select_header(&old, &new).unwrap().log_guid, LOG_GUID);
        assert_eq!(select_header(&new, &old).unwrap().sequence, 9);
        // A torn write of the newer one: the older still stands.
        let mut torn = new.clone();
        torn[200] ^= 1;
        assert_eq!(select_header(&old, &torn).unwrap().sequence, 7);
        assert_eq!(select_header(&torn, &old).unwrap().sequence, 7);
    }

    #[test]
    fn equal_sequence_numbers_need_identical_headers() {
        let a = mk_header(3, Guid([0; 16]));
        assert_eq!(select_header(&a, &a).unwrap().sequence, 3);
        let err = select_header(&a, &mk_header(3, LOG_GUID)).unwrap_err();
        assert!(err.to_string().contains("both headers carry sequence number 3"), "{err}");
    }

    #[test]
    fn no_usable_header_is_refused_naming_both() {
        let mut bad_sum = mk_header(3, Guid([0; 16]));
        bad_sum[4] ^= 0xff;
        let mut v2 = mk_header(4, Guid([0; 16]));
        v2[66] = 2;
        reseal(&mut v2, 0, HEADER_LEN);
        let err = select_header(&bad_sum, &v2).unwrap_err().to_string();
        assert!(err.contains("header 1 at offset 65536: its checksum"), "{err}");
        assert!(err.contains("header 2 at offset 131072: its version is 2"), "{err}");
        let err = select_header(&[0; HEADER_LEN], &[0; HEADER_LEN]).unwrap_err().to_string();
        assert!(err.contains("no \"head\" signature"), "{err}");
    }

    #[test]
    fn present_blocks_are_data_and_every_other_state_reads_as_zero() {
        let bat = [
            entry(FULLY_PRESENT, DATA_MB),
            entry(NOT_PRESENT, 0),
            entry(ZERO, 0),
            entry(FULLY_PRESENT, DATA_MB + 1),
            entry(UNDEFINED, 77), // offsets of blocks without data mean nothing
            entry(UNMAPPED, 0),
            entry(UNMAPPED_V095, 0),
            entry(FULLY_PRESENT, DATA_MB + 2),
        ];
        let img = mk_image(MIB as u32, 8 * MIB - 512, &bat);
        let m = parse(&img).unwrap();
        assert_eq!(
            m,
            vec![
                Extent { guest: 0, host: DATA_MB * MIB, len: MIB },
                Extent { guest: 3 * MIB, host: (DATA_MB + 1) * MIB, len: MIB },
                // The last block is cut at the virtual size.
                Extent { guest: 7 * MIB, host: (DATA_MB + 2) * MIB, len: MIB - 512 },
            ]
        );
        assert_eq!(parse_random(&img).unwrap().virtual_size, 8 * MIB - 512);
    }

    #[test]
    fn contiguous_blocks_become_one_run() {
        let bat: Vec<u64> = (0..4).map(|i| entry(FULLY_PRESENT, DATA_MB + i)).collect();
        let img = mk_image(MIB as u32, 4 * MIB, &bat);
        assert_eq!(parse(&img).unwrap(), vec![Extent { guest: 0, host: DATA_MB * MIB, len: 4 * MIB }]);
    }

    #[test]
    fn the_chunk_ratio_follows_block_and_sector_size() {
        let g = |block: u32, size: u64, sector: u32| {
            Geometry::parse(&[block.to_le_bytes(), [0; 4]].concat(), &size.to_le_bytes(), &sector.to_le_bytes(), None)
                .unwrap()
        };
        let big = g(256 << 20, 17 * (256 << 20), 512);
        assert_eq!((big.chunk_ratio, big.bat_entries), (16, 18)); // 17 blocks, one bitmap between
        let exact = g(256 << 20, 16 * (256 << 20), 512);
        assert_eq!(exact.bat_entries, 16); // no bitmap entry after the last chunk
        assert_eq!(g(1 << 20, 1 << 30, 4096).chunk_ratio, 32768);
        assert_eq!(g(32 << 20, 0, 512).bat_entries, 0);
    }

    #[test]
    fn sector_bitmap_entries_are_skipped_between_chunks() {
        // A made-up chunk ratio of 2: entries 2 and 5 are sector bitmaps.
        let geometry = Geometry { block: MIB, virtual_size: 5 * MIB, chunk_ratio: 2, bat_entries: 7 };
        let layout = Layout { used: vec![(0, MIB, "header section")] };
        let entries: Vec<u8> = [
            entry(FULLY_PRESENT, 10),
            entry(FULLY_PRESENT, 20),
            entry(FULLY_PRESENT, 99), // bitmap: ignored whatever it says
            entry(FULLY_PRESENT, 30),
            entry(ZERO, 0),
            entry(PARTIALLY_PRESENT, 98), // bitmap
            entry(FULLY_PRESENT, 40),
        ]
        .iter()
        .flat_map(|e| e.to_le_bytes())
        .collect();
        let mut extents = ExtentMap::new(FORMAT, geometry.virtual_size, geometry.block);
        // Decoded in two pieces, as chunks of a large BAT are.
        decode_bat(&entries[..24], 0, &geometry, &layout, &mut extents).unwrap();
        decode_bat(&entries[24..], 3, &geometry, &layout, &mut extents).unwrap();
        let guests: Vec<(u64, u64)> =
            extents.finish(None).unwrap().extents().iter().map(|e| (e.guest / MIB, e.host / MIB)).collect();
        assert_eq!(guests, vec![(0, 10), (1, 20), (2, 30), (4, 40)]);
    }

    #[test]
    fn partially_present_and_undefined_states_are_corrupt() {
        let img = mk_image(MIB as u32, 2 * MIB, &[entry(ZERO, 0), entry(PARTIALLY_PRESENT, DATA_MB)]);
        refused(&img, "block 1 (guest offset 1048576) is partially present");
        let img = mk_image(MIB as u32, 2 * MIB, &[entry(4, DATA_MB)]);
        refused(&img, "BAT entry 0 (block 0) has state 4");
    }

    #[test]
    fn blocks_inside_headers_log_or_tables_are_refused() {
        for (mb, what) in [(0, "header section"), (1, "log"), (2, "BAT region"), (3, "metadata region")] {
            let img = mk_image(MIB as u32, 2 * MIB, &[entry(ZERO, 0), entry(FULLY_PRESENT, mb)]);
            refused(
                &img,
                &format!("block 1 (guest offset 1048576) is stored at host offset {}, inside the {what}", mb * MIB),
            );
        }
    }

    #[test]
    fn blocks_past_the_file_or_the_largest_offset_are_refused() {
        let img = mk_image(MIB as u32, 2 * MIB, &[entry(FULLY_PRESENT, 1 << 30)]);
        refused(&img, "lies beyond the end of the image");
        let img = mk_image(MIB as u32, 2 * MIB, &[entry(FULLY_PRESENT, (1 << 44) - 1)]);
        refused(&img, "beyond the end");
        // A truncated file: its BAT points past the end.
        let mut img =
            mk_image(MIB as u32, 2 * MIB, &[entry(FULLY_PRESENT, DATA_MB), entry(FULLY_PRESENT, DATA_MB + 1)]);
        img.truncate(img.len() - 4096);
        refused(&img, "beyond the end of the image");
        // Cut inside the metadata region.
        img.truncate((META_AT + 100) as usize);
        refused(&img, "metadata table at host offset 3145728");
    }

    #[test]
    fn a_damaged_region_table_is_read_from_its_copy() {
        let mut img = mk_image(MIB as u32, MIB, &[entry(FULLY_PRESENT, DATA_MB)]);
        img[REGION_TABLE_OFFSETS[0] as usize + 100] ^= 1;
        assert_eq!(parse(&img).unwrap().len(), 1);
        img[REGION_TABLE_OFFSETS[1] as usize] = b'R';
        let err = refused(&img, "neither region table is usable");
        assert!(err.contains("at offset 196608: its checksum") && err.contains("no \"regi\" signature"), "{err}");
    }

    #[test]
    fn an_unknown_region_is_skipped_unless_required() {
        let other = Guid::new(0xdead_beef, 1, 2, [3; 8]);
        let mut img = mk_image(MIB as u32, MIB, &[entry(FULLY_PRESENT, DATA_MB)]);
        let known = [(BAT_REGION, BAT_AT, MIB as u32, 1), (METADATA_REGION, META_AT, MIB as u32, 1)];
        mk_regions(&mut img, &[known[0], known[1], (other, 8 * MIB, MIB as u32, 0)]);
        assert_eq!(parse(&img).unwrap().len(), 1);
        mk_regions(&mut img, &[known[0], (other, 8 * MIB, MIB as u32, REGION_REQUIRED), known[1]]);
        let err = refused(&img, "needs a region this reader does not know (deadbeef-0001-0002-0303-030303030303");
        assert!(err.contains("marked required"), "{err}");
        // Even unknown, its bytes are not a block's.
        mk_regions(&mut img, &[known[0], known[1], (other, DATA_MB * MIB, MIB as u32, 0)]);
        refused(&img, "inside the unknown region");
    }

    #[test]
    fn region_tables_that_do_not_add_up_are_refused() {
        let mut img = mk_image(MIB as u32, MIB, &[]);
        let meta = (METADATA_REGION, META_AT, MIB as u32, 1);
        mk_regions(&mut img, &[meta]);
        refused(&img, "names no BAT region");
        mk_regions(&mut img, &[(BAT_REGION, BAT_AT, MIB as u32, 1), meta, (BAT_REGION, 9 * MIB, MIB as u32, 1)]);
        refused(&img, "lists the BAT region twice");
        mk_regions(&mut img, &[(BAT_REGION, BAT_AT + 4096, MIB as u32, 1), meta]);
        refused(&img, "region offset is 2101248");
        mk_regions(&mut img, &[(BAT_REGION, BAT_AT, 2 * MIB as u32, 1), meta]);
        refused(&img, "the BAT region (host offsets 2097152..4194304) overlaps the metadata region");
        mk_regions(&mut img, &[(BAT_REGION, LOG_AT, MIB as u32, 1), meta]);
        refused(&img, "overlaps the log");
    }

    #[test]
    fn an_unknown_metadata_item_is_skipped_unless_required() {
        let other = Guid::new(0xfeed_f00d, 1, 2, [3; 8]);
        let mut img = mk_image(MIB as u32, MIB, &[entry(FULLY_PRESENT, DATA_MB)]);
        mk_metadata(&mut img, META_AT, MIB as u32, 0, MIB, &[(other, vec![1; 40], 0)]);
        assert_eq!(parse(&img).unwrap().len(), 1);
        mk_metadata(&mut img, META_AT, MIB as u32, 0, MIB, &[(other, vec![1; 40], ITEM_REQUIRED)]);
        refused(&img, "needs a metadata item this reader does not know (feedf00d-0001-0002-0303-030303030303");
    }

    #[test]
    fn a_differencing_image_is_refused_naming_its_parent() {
        // A parent locator: type GUID, count, then (key offset, value offset, key len, value len).
        let utf16 = |s: &str| s.encode_utf16().flat_map(u16::to_le_bytes).collect::<Vec<u8>>();
        let pairs = [("parent_linkage", "{0000}"), ("relative_path", ".\\base.vhdx"), ("volume_path", "\\\\?\\Volume")];
        let mut locator = vec![0u8; 20];
        locator[18..20].copy_from_slice(&(pairs.len() as u16).to_le_bytes());
        let mut strings = Vec::new();
        let base = 20 + 12 * pairs.len();
        for (k, v) in pairs {
            let (k, v) = (utf16(k), utf16(v));
            let ko = base + strings.len();
            strings.extend_from_slice(&k);
            let vo = base + strings.len();
            strings.extend_from_slice(&v);
            locator.extend_from_slice(&(ko as u32).to_le_bytes());
            locator.extend_from_slice(&(vo as u32).to_le_bytes());
            locator.extend_from_slice(&(k.len() as u16).to_le_bytes());
            locator.extend_from_slice(&(v.len() as u16).to_le_bytes());
        }
        locator.extend_from_slice(&strings);
        let mut img = mk_image(MIB as u32, MIB, &[]);
        mk_metadata(&mut img, META_AT, MIB as u32, HAS_PARENT, MIB, &[(PARENT_LOCATOR, locator, ITEM_REQUIRED)]);
        let err = refused(&img, "differencing image whose parent is \".\\\\base.vhdx\"");
        assert!(err.contains("Merge-VHD"), "{err}");
        assert_eq!(parse_random(&img).unwrap_err().reason(), crate::error::Reason::UnsupportedImage);
        // Without a locator it is still refused.
        mk_metadata(&mut img, META_AT, MIB as u32, HAS_PARENT, MIB, &[]);
        refused(&img, "parent is not named (the image has no parent locator)");
    }

    #[test]
    fn hostile_metadata_fields_are_refused_with_their_name() {
        let cases: [(u32, u64, &str); 6] = [
            (3 << 20, MIB, "block size is 3145728"),
            (512 << 10, MIB, "block size is 524288"),
            (512 << 20, MIB, "block size is 536870912"),
            (MIB as u32, (64 << 40) + MIB, "virtual disk size is 70368745226240"),
            (MIB as u32, MIB + 100, "must be a multiple of the logical sector size"),
            // 200 GiB of 1 MiB blocks needs more than the 1 MiB BAT region holds.
            (
                MIB as u32,
                200 << 30,
                "holds 1048576 bytes, but a disk of 214748364800 bytes in blocks of 1048576 needs 1638792 bytes",
            ),
        ];
        for (block, size, needle) in cases {
            let mut img = mk_image(MIB as u32, MIB, &[]);
            mk_metadata(&mut img, META_AT, block, 0, size, &[]);
            refused(&img, needle);
        }
        let mut img = mk_image(MIB as u32, MIB, &[]);
        put(&mut img, META_AT + METADATA_TABLE_LEN + 32, &1024u32.to_le_bytes()); // after 8 + 8 + 16 bytes
        refused(&img, "logical sector size is 1024");
        // An item pointing outside its region.
        let mut img = mk_image(MIB as u32, MIB, &[]);
        put(&mut img, META_AT + 32 + 16, &(2 * MIB as u32).to_le_bytes());
        refused(&img, "the file parameters metadata item at offset 2097152 (+8 bytes) lies outside");
        let mut img = mk_image(MIB as u32, MIB, &[]);
        put(&mut img, META_AT, b"METADATA");
        refused(&img, "does not start with a \"metadata\" table");
        let mut img = mk_image(MIB as u32, MIB, &[]);
        put(&mut img, META_AT + 32, &[0; 32]); // the file parameters entry blanked
        refused(&img, "no file parameters item");
    }

    #[test]
    fn hostile_log_fields_are_refused_with_their_name() {
        for (at, value, needle) in [
            (72, (MIB + 4096).to_le_bytes().to_vec(), "log offset is 1052672"),
            (72, 0u64.to_le_bytes().to_vec(), "log offset is 0"),
            (68, 4096u32.to_le_bytes().to_vec(), "log length is 4096"),
            (64, 1u16.to_le_bytes().to_vec(), "log version is 1"),
        ] {
            let mut img = mk_image(MIB as u32, MIB, &[]);
            for which in 0..2 {
                edit_header(&mut img, which, |h| h[at..at + value.len()].copy_from_slice(&value));
            }
            refused(&img, needle);
        }
    }

    /// A log entry of `sectors` data sectors for `guid` at `at` of the log, CRC sealed.
    fn mk_log_entry(log: &mut [u8], at: usize, guid: Guid, sequence: u64, data_sectors: usize) {
        let len = (1 + data_sectors) * LOG_SECTOR;
        let mut e = vec![0u8; len];
        e[..4].copy_from_slice(LOG_ENTRY_SIGNATURE);
        e[8..12].copy_from_slice(&(len as u32).to_le_bytes());
        e[16..24].copy_from_slice(&sequence.to_le_bytes());
        e[24..28].copy_from_slice(&(data_sectors as u32).to_le_bytes());
        e[32..48].copy_from_slice(&guid.0);
        for k in 0..data_sectors {
            let d = &mut e[LOG_HEADER_LEN + 32 * k..LOG_HEADER_LEN + 32 * (k + 1)];
            d[..4].copy_from_slice(b"desc");
            d[16..24].copy_from_slice(&(BAT_AT + 4096 * k as u64).to_le_bytes());
            d[24..32].copy_from_slice(&sequence.to_le_bytes());
            let s = &mut e[LOG_SECTOR * (k + 1)..LOG_SECTOR * (k + 2)];
            s[..4].copy_from_slice(b"data");
        }
        reseal(&mut e, 0, len);
        for (i, sector) in e.chunks(LOG_SECTOR).enumerate() {
            let start = (at + i * LOG_SECTOR) % log.len();
            log[start..start + LOG_SECTOR].copy_from_slice(sector);
        }
    }

    fn with_log(log_guid: Guid, entry_guid: Guid, corrupt_entry: bool) -> Vec<u8> {
        let mut img = mk_image(MIB as u32, MIB, &[entry(FULLY_PRESENT, DATA_MB)]);
        let mut log = vec![0u8; MIB as usize];
        mk_log_entry(&mut log, 8192, entry_guid, 5, 2);
        if corrupt_entry {
            log[8192 + 3 * LOG_SECTOR - 1] ^= 1;
        }
        put(&mut img, LOG_AT, &log);
        edit_header(&mut img, 1, |h| h[48..64].copy_from_slice(&log_guid.0));
        img
    }

    #[test]
    fn a_log_with_an_entry_to_replay_is_refused() {
        let err = refused(&with_log(LOG_GUID, LOG_GUID, false), "has a log that was never replayed");
        assert!(err.contains("qemu-img check -r all"), "{err}");
    }

    #[test]
    fn a_log_with_nothing_of_the_headers_log_guid_is_empty() {
        // What qemu leaves after every write: the header's log GUID zeroed, old entries behind.
        assert_eq!(parse(&with_log(Guid([0; 16]), LOG_GUID, false)).unwrap().len(), 1);
        // Entries of another log GUID, or damaged ones, are not this log's.
        let other = Guid::new(1, 2, 3, [4; 8]);
        assert_eq!(parse(&with_log(other, LOG_GUID, false)).unwrap().len(), 1);
        assert_eq!(parse(&with_log(LOG_GUID, LOG_GUID, true)).unwrap().len(), 1);
    }

    #[test]
    fn log_entries_are_found_anywhere_even_across_the_end() {
        let mut log = vec![0u8; MIB as usize];
        assert_eq!(find_log_entry(&log, LOG_GUID), None);
        let last = MIB as usize - LOG_SECTOR;
        mk_log_entry(&mut log, last, LOG_GUID, 42, 3);
        assert_eq!(find_log_entry(&log, LOG_GUID), Some((last, 42)));
        // A descriptor whose sequence number disagrees makes the entry invalid.
        log[last + LOG_HEADER_LEN + 24] ^= 1;
        assert_eq!(find_log_entry(&log, LOG_GUID), None);
    }

    #[test]
    fn the_metadata_may_come_before_the_bat() {
        // Hyper-V's order; a stream then reads the BAT in chunks instead of holding it.
        let mut img = mk_image(MIB as u32, 2 * MIB, &[]);
        mk_regions(&mut img, &[(BAT_REGION, META_AT, MIB as u32, 1), (METADATA_REGION, BAT_AT, MIB as u32, 1)]);
        mk_metadata(&mut img, BAT_AT, MIB as u32, 0, 2 * MIB, &[]);
        put(&mut img, META_AT, &[0; 16]);
        put(&mut img, META_AT + 8, &entry(FULLY_PRESENT, DATA_MB).to_le_bytes());
        put(&mut img, DATA_MB * MIB, &[9; MIB as usize]);
        assert_eq!(parse(&img).unwrap(), vec![Extent { guest: MIB, host: DATA_MB * MIB, len: MIB }]);
    }

    #[test]
    fn mutated_tables_never_panic() {
        let bat: Vec<u64> = (0..4).map(|i| entry(if i == 2 { ZERO } else { FULLY_PRESENT }, DATA_MB + i)).collect();
        let mut pristine = mk_image(MIB as u32, 4 * MIB - 512, &bat);
        let mut log = vec![0u8; MIB as usize];
        mk_log_entry(&mut log, 0, LOG_GUID, 3, 2);
        put(&mut pristine, LOG_AT, &log);
        // Where the structures' fields are: headers, region table, log entry, BAT, metadata
        // table and items.
        let spots: [(u64, u64); 6] = [
            (HEADER_OFFSETS[1], 80),
            (REGION_TABLE_OFFSETS[0], 80),
            (LOG_AT, 128),
            (BAT_AT, 40),
            (META_AT, 200),
            (META_AT + METADATA_TABLE_LEN, 40),
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut outcomes = [0; 2];
        for _ in 0..300 {
            let mut img = pristine.clone();
            for _ in 0..1 + next() % 4 {
                let (at, len) = spots[(next() % spots.len() as u64) as usize];
                img[(at + next() % len) as usize] = next() as u8;
            }
            if next() % 4 != 0 {
                // Resealed, as a hostile writer would: the damage gets past the checksums.
                for at in HEADER_OFFSETS {
                    reseal(&mut img, at, HEADER_LEN);
                }
                reseal(&mut img, REGION_TABLE_OFFSETS[0], REGION_TABLE_LEN);
            }
            let random = parse_random(&img).map(|m| m.extents().to_vec()).map_err(|e| e.to_string());
            let stream = parse_stream(&img).map(|m| m.extents().to_vec()).map_err(|e| e.to_string());
            match (&random, &stream) {
                (Ok(a), Ok(b)) => assert_eq!(a, b),
                (Err(e), _) | (_, Err(e)) => assert!(!e.is_empty()),
            }
            outcomes[usize::from(random.is_err())] += 1;
        }
        assert!(outcomes[0] > 0 && outcomes[1] > 0, "mutations never reached a parser: {outcomes:?}");
    }

    #[test]
    fn a_held_bat_shorter_than_the_disk_needs_random_access() {
        let geometry = Geometry { block: MIB, virtual_size: 4 * MIB, chunk_ratio: 4096, bat_entries: 4 };
        let layout = Layout { used: vec![] };
        let region = Region { offset: BAT_AT, len: MIB };
        let err = decode_held_bat(&[0; 16], region, &geometry, &layout).unwrap_err();
        assert!(err.to_string().contains("its BAT (32 bytes) comes before the metadata"), "{err}");
        assert!(decode_held_bat(&[0; 32], region, &geometry, &layout).is_ok());
    }
}

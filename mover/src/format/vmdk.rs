//! VMDK hosted sparse extents (VMware's "Virtual Disk Format 5.0"; all fields little-endian):
//! the two layouts that keep a whole disk in one file, monolithicSparse and streamOptimized.
//!
//! A sparse extent starts with a one-sector header ("KDMV"), then an embedded text
//! descriptor, a grain directory (GD: one sector number per grain table) and the grain
//! tables (GT: one sector number per grain, the disk's unit of allocation), then the grains.
//!
//! * **monolithicSparse**: grains stored whole. GTE 0 = never written (reads as zero), GTE 1 =
//!   a zeroed grain when the header's zeroed-grain flag is set, anything else the grain's
//!   sector. Read into an [`ExtentMap`] and converted like the other block-mapped formats.
//! * **streamOptimized** (the disks inside OVAs): each grain zlib-compressed behind a marker
//!   that names its guest sector, so the file decodes front to back without its tables:
//!   [`StreamOptimized::convert`] does, batching grains into jobs the copy workers inflate.
//!   VMware writes the tables after the grains (the header says "at the end"; a footer says
//!   where) and ends the stream with an end-of-stream marker; qemu writes the tables first
//!   and no marker. A stream cut at a grain boundary is told from a complete one by that
//!   marker, or by the grains qemu's tables name.
//!
//! Refused with the reason: descriptors whose data lives in other files (split, flat, vmfs,
//! devices) and sparse extents without a descriptor (a piece of a split disk); differencing
//! disks (their parent is a path on someone's host); versions and compression this reader
//! does not know. The old "COWD" format is refused at detection.

use super::bytes::{le16, le32, le64};
use super::mapped::{ExtentMap, Forward, Mapped, Meta};
use super::{FormatError, ZeroRuns};
use crate::copy::{self, Codec, CompressedCluster, Job, JobSink};
use crate::error::ImportError;
use crate::format::CompressedBatch;

pub(crate) const FORMAT: &str = "vmdk";
const MAGIC: &[u8; 4] = b"KDMV";
const SECTOR: u64 = 512;
/// The header is the first sector.
const HEADER_LEN: usize = SECTOR as usize;

/// Header flags (spec §"Hosted Sparse Extent Header").
const FLAG_NEWLINE_CHECK: u32 = 1 << 0;
const FLAG_ZEROED_GRAIN: u32 = 1 << 2;
const FLAG_MARKERS: u32 = 1 << 17;
/// The four bytes a header carries to detect a text-mode (FTP ASCII) transfer.
const NEWLINE_CHECK: [u8; 4] = *b"\n \r\n";
const COMPRESSION_NONE: u16 = 0;
const COMPRESSION_DEFLATE: u16 = 1;
/// The header's GD offset when the GD follows the grains (streamOptimized as VMware writes it).
const GD_AT_END: u64 = u64::MAX;
const GTE_UNALLOCATED: u32 = 0;
const GTE_ZEROED: u32 = 1;
/// A parentCID meaning "no parent".
const NO_PARENT: u32 = 0xFFFF_FFFF;

/// Versions read: 1, 2 (zeroed grains) and 3 (streamOptimized; change tracking for others).
/// qemu refuses anything above 3 too.
const VERSIONS: std::ops::RangeInclusive<u32> = 1..=3;
/// Grain sizes accepted, in sectors: the spec asks for a power of two of at least 8 sectors
/// (4 KiB); VMware and qemu write 128 (64 KiB). qemu's ceiling is 1 GiB; ours is 1 MiB,
/// so that a grain inflates into one copy chunk at the default chunk size.
const MIN_GRAIN_SECTORS: u64 = 8;
const MAX_GRAIN_SECTORS: u64 = 2048;
/// GTEs per grain table: the spec fixes 512; qemu refuses more.
const MAX_GTES_PER_GT: u32 = 512;
/// Largest disk read (64 TiB): VMware's own ceiling is 62 TB (VMFS), hosted disks 8 TB.
const MAX_CAPACITY_SECTORS: u64 = 1 << 37;
/// Most grains a disk may have (256 Mi: 16 TiB of 64 KiB grains). The streamOptimized
/// decoder keeps a bit per grain, so this bounds its memory at 32 MiB.
const MAX_GRAINS: u64 = 1 << 28;
/// Most GD entries (1 Mi, a 4 MiB GD: 32 TiB of default grain tables). qemu allows 32 Mi.
const MAX_GD_ENTRIES: u64 = 1 << 20;
/// Largest embedded descriptor read, in sectors (1 MiB; qemu reads at most 1 MiB - 1 and
/// writes 20 sectors).
const MAX_DESCRIPTOR_SECTORS: u64 = 2048;
/// Grain tables stored back to back are read together, up to this many bytes at a time
/// (one request for many tables over HTTP).
const TABLE_READ: u64 = 1 << 20;
/// A grain marker: guest sector (u64) and compressed size (u32), then the data.
const GRAIN_MARKER_LEN: usize = 12;
/// A metadata marker: sector count (u64), zero size (u32), type (u32), in a sector of its own.
const MARKER_END_OF_STREAM: u32 = 0;
const MARKER_GRAIN_TABLE: u32 = 1;
const MARKER_GRAIN_DIRECTORY: u32 = 2;
const MARKER_FOOTER: u32 = 3;
/// Descriptor createTypes of a whole disk in one sparse extent.
const SINGLE_FILE_TYPES: [&str; 2] = ["monolithicSparse", "streamOptimized"];
/// Descriptor createTypes whose data lives in other files or devices (also any "vmfs...").
const MULTI_FILE_TYPES: [&str; 7] = [
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
    "seSparse",
    "fullDevice",
    "partitionedDevice",
    "custom",
];

fn bad(field: &'static str, value: u64, reason: &'static str) -> FormatError {
    FormatError::BadHeader { format: FORMAT, field, value, reason }
}

fn corrupt(detail: impl Into<String>) -> FormatError {
    FormatError::corrupt(FORMAT, detail)
}

/// A sector count from the header as a byte offset.
fn bytes_of(field: &'static str, sectors: u64) -> Result<u64, FormatError> {
    sectors.checked_mul(SECTOR).ok_or_else(|| bad(field, sectors, "overflows a 64-bit byte offset"))
}

/// What a hosted sparse extent turned out to be.
#[derive(Debug)]
pub enum Vmdk {
    /// monolithicSparse: grain directory and tables, converted like other block-mapped
    /// images.
    Sparse(Mapped),
    /// streamOptimized: compressed grains, decoded in one pass.
    StreamOptimized(StreamOptimized),
}

/// The header's fields, checked. Offsets and sizes in sectors, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    flags: u32,
    capacity: u64,
    grain: u64,
    desc_offset: u64,
    desc_size: u64,
    gtes_per_gt: u32,
    gd_offset: u64,
    grain_offset: u64,
    compressed: bool,
}

impl Header {
    fn parse(head: &[u8]) -> Result<Header, FormatError> {
        let h = head.get(..HEADER_LEN).ok_or(FormatError::HeaderTruncated {
            format: FORMAT,
            available: head.len(),
            needed: HEADER_LEN,
        })?;
        if &h[..4] != MAGIC {
            return Err(FormatError::Internal("vmdk parser called on non-vmdk data"));
        }
        let version = le32(h, 4);
        if !VERSIONS.contains(&version) {
            return Err(bad("version", version.into(), "this reader knows versions 1 to 3, as qemu does"));
        }
        let flags = le32(h, 8);
        if flags & FLAG_NEWLINE_CHECK != 0 && h[73..77] != NEWLINE_CHECK {
            return Err(corrupt(
                "its header's newline check bytes were altered, as a text-mode (ASCII) transfer does: transfer the \
                 file again in binary mode",
            ));
        }
        let compressed = match le16(h, 77) {
            COMPRESSION_NONE => false,
            COMPRESSION_DEFLATE => true,
            other => {
                return Err(bad("compression algorithm", other.into(), "only 0 (none) and 1 (deflate) are defined"));
            }
        };
        let header = Header {
            flags,
            capacity: le64(h, 12),
            grain: le64(h, 20),
            desc_offset: le64(h, 28),
            desc_size: le64(h, 36),
            gtes_per_gt: le32(h, 44),
            gd_offset: le64(h, 56),
            grain_offset: le64(h, 64),
            compressed,
        };
        header.check()?;
        Ok(header)
    }

    fn check(&self) -> Result<(), FormatError> {
        if self.compressed && self.flags & FLAG_MARKERS == 0 {
            return Err(bad("flags", self.flags.into(), "compressed grains without markers (bit 17) are not read"));
        }
        if !self.compressed && self.gd_offset == GD_AT_END {
            return Err(bad(
                "grain directory offset",
                self.gd_offset,
                "only streamOptimized images keep their grain directory at the end",
            ));
        }
        if self.capacity > MAX_CAPACITY_SECTORS {
            return Err(bad("capacity", self.capacity, "more than 64 TiB, larger than any VMware disk"));
        }
        if !self.grain.is_power_of_two() || !(MIN_GRAIN_SECTORS..=MAX_GRAIN_SECTORS).contains(&self.grain) {
            return Err(bad(
                "grain size",
                self.grain,
                "must be a power of two from 8 to 2048 sectors (4 KiB to 1 MiB)",
            ));
        }
        if !(1..=MAX_GTES_PER_GT).contains(&self.gtes_per_gt) {
            return Err(bad("grain table entries", self.gtes_per_gt.into(), "must be 1 to 512 (the spec writes 512)"));
        }
        if self.grains() > MAX_GRAINS {
            return Err(bad("capacity", self.capacity, "more than 2^28 grains (16 TiB of 64 KiB grains)"));
        }
        if self.gd_entries() > MAX_GD_ENTRIES {
            return Err(bad(
                "grain table entries",
                self.gtes_per_gt.into(),
                "the grain directory would exceed 1 Mi entries",
            ));
        }
        if self.desc_size > MAX_DESCRIPTOR_SECTORS {
            return Err(bad("descriptor size", self.desc_size, "more than 2048 sectors (1 MiB)"));
        }
        if self.desc_size > 0 && self.desc_offset == 0 {
            return Err(bad("descriptor offset", 0, "the header's sector cannot hold the descriptor"));
        }
        if self.grain_offset == 0 {
            return Err(bad("grain offset", 0, "the grains cannot start in the header's sector"));
        }
        // Everything else is in bytes from here on: make sure each conversion fits.
        bytes_of("descriptor offset", self.desc_offset.saturating_add(self.desc_size))?;
        bytes_of("grain offset", self.grain_offset)?;
        if self.gd_offset != GD_AT_END {
            bytes_of("grain directory offset", self.gd_offset.saturating_add(self.gd_entries()))?;
        }
        Ok(())
    }

    fn grain_bytes(&self) -> u64 {
        self.grain * SECTOR
    }

    fn grains(&self) -> u64 {
        self.capacity.div_ceil(self.grain)
    }

    fn gd_entries(&self) -> u64 {
        self.grains().div_ceil(u64::from(self.gtes_per_gt))
    }

    fn gt_bytes(&self) -> u64 {
        u64::from(self.gtes_per_gt) * 4
    }

    /// Where the grains start (the spec's "overHead").
    fn data_start(&self) -> u64 {
        self.grain_offset * SECTOR
    }

    fn gd_start(&self) -> Option<u64> {
        (self.gd_offset != GD_AT_END).then(|| self.gd_offset * SECTOR)
    }

    fn gd_end(&self) -> Option<u64> {
        self.gd_start().map(|start| start + self.gd_entries() * 4)
    }

    fn zeroed_grains(&self) -> bool {
        self.flags & FLAG_ZEROED_GRAIN != 0
    }
}

/// What a descriptor says, as far as deciding whether we can read the disk.
#[derive(Debug, Default, PartialEq, Eq)]
struct Descriptor {
    create_type: Option<String>,
    parent_cid: Option<String>,
    parent_hint: Option<String>,
    /// The first extent line's type and file name.
    first_extent: Option<(String, String)>,
    extents: usize,
}

/// A name from the file, quoted and cut short for messages.
fn quoted(text: &str) -> String {
    let cut: String = text.chars().take(200).collect();
    format!("{cut:?}")
}

impl Descriptor {
    /// Parses descriptor text (up to its first NUL): `key = "value"` lines, extent lines
    /// (`RW 20480 SPARSE "disk.vmdk"`), comments. Unknown lines are ignored, as qemu does.
    fn parse(bytes: &[u8]) -> Result<Descriptor, FormatError> {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let text = String::from_utf8_lossy(&bytes[..end]);
        let mut d = Descriptor::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            if let Some("RW" | "RDONLY" | "NOACCESS") = words.next() {
                let (kind, file) = Descriptor::extent_line(line).ok_or_else(|| {
                    corrupt(format!("descriptor line {} is not an extent line: {}", n + 1, quoted(line)))
                })?;
                d.extents += 1;
                d.first_extent.get_or_insert((kind, file));
                continue;
            }
            let Some((key, value)) = line.split_once('=') else { continue };
            let value = value.trim().trim_matches('"').to_string();
            let key = key.trim();
            if key.eq_ignore_ascii_case("createType") {
                d.create_type = Some(value);
            } else if key.eq_ignore_ascii_case("parentCID") {
                d.parent_cid = Some(value);
            } else if key.eq_ignore_ascii_case("parentFileNameHint") {
                d.parent_hint = Some(value);
            }
        }
        Ok(d)
    }

    /// `ACCESS SECTORS TYPE "FILE" [OFFSET]` → (TYPE, FILE).
    fn extent_line(line: &str) -> Option<(String, String)> {
        let mut rest = line;
        let mut word = || {
            let trimmed = rest.trim_start();
            let end = trimmed.find(char::is_whitespace).unwrap_or(trimmed.len());
            let (w, r) = trimmed.split_at(end);
            rest = r;
            w
        };
        let _access = word();
        word().parse::<u64>().ok()?;
        let kind = word().to_string();
        let quoted_name = rest.trim_start().strip_prefix('"')?;
        let file = &quoted_name[..quoted_name.find('"')?];
        Some((kind, file.to_string()))
    }

    /// Refuses what one file cannot hold: a parent, data in other files, no extent at all.
    fn check(&self) -> Result<(), FormatError> {
        let cid = match &self.parent_cid {
            Some(text) => Some(u32::from_str_radix(text, 16).map_err(|_| {
                corrupt(format!("its descriptor's parentCID {} is not a hexadecimal number", quoted(text)))
            })?),
            None => None,
        };
        let hint = self.parent_hint.as_deref().filter(|h| !h.is_empty());
        if hint.is_some() || cid.is_some_and(|c| c != NO_PARENT) {
            let parent = match (hint, cid) {
                (Some(name), _) => quoted(name),
                (None, cid) => format!("the disk with CID {:08x}", cid.unwrap_or(0)),
            };
            return Err(FormatError::Differencing { format: FORMAT, parent });
        }
        if let Some(kind) = &self.create_type {
            let is = |types: &[&str]| types.iter().any(|t| t.eq_ignore_ascii_case(kind));
            if is(&MULTI_FILE_TYPES) || kind.to_ascii_lowercase().starts_with("vmfs") {
                return Err(FormatError::MultiFile { format: FORMAT, kind: kind.clone() });
            }
            if !is(&SINGLE_FILE_TYPES) {
                return Err(corrupt(format!("its descriptor's createType {} is not a VMDK disk type", quoted(kind))));
            }
        }
        match (&self.first_extent, self.extents) {
            (None, _) => Err(FormatError::MultiFile {
                format: FORMAT,
                kind: "split-disk extent (a sparse extent without a descriptor, like twoGbMaxExtentSparse's \
                       disk-s001.vmdk)"
                    .into(),
            }),
            (Some((kind, _)), 1) if kind == "SPARSE" => Ok(()),
            (Some((kind, file)), 1) => {
                Err(FormatError::MultiFile { format: FORMAT, kind: format!("{kind} extent in {}", quoted(file)) })
            }
            (Some(_), n) => Err(FormatError::MultiFile {
                format: FORMAT,
                kind: format!("{} with {n} extents", self.create_type.as_deref().unwrap_or("descriptor")),
            }),
        }
    }
}

/// Why a VMDK descriptor file (the text kind, detected by its `version=` line) is refused:
/// it names its parent, or the files that hold the data.
pub fn refuse_descriptor(head: &[u8]) -> FormatError {
    let d = match Descriptor::parse(head) {
        Ok(d) => d,
        Err(e) => return e,
    };
    match d.check() {
        Err(e) => e,
        // Even a single sparse extent lives in another file than this one.
        Ok(()) => FormatError::MultiFile {
            format: FORMAT,
            kind: format!("{} (a descriptor file)", d.create_type.as_deref().unwrap_or("descriptor")),
        },
    }
}

/// Reads the header and descriptor, and for monolithicSparse the grain directory and tables.
///
/// # Errors
/// Refusals ([`FormatError::MultiFile`], [`FormatError::Differencing`], a bad header field)
/// and corruption; over a stream, tables that come after what they map.
pub fn open(meta: &mut dyn Meta, head: &[u8]) -> Result<Vmdk, ImportError> {
    let h = Header::parse(head)?;
    let descriptor = if h.desc_size > 0 {
        let mut text = vec![0u8; (h.desc_size * SECTOR) as usize];
        meta.read_at(&mut text, h.desc_offset * SECTOR, "descriptor")?;
        Descriptor::parse(&text)?
    } else {
        Descriptor::default()
    };
    descriptor.check()?;
    if h.capacity == 0 {
        return Err(bad("capacity", 0, "the disk holds no sectors").into());
    }
    if h.compressed {
        return Ok(Vmdk::StreamOptimized(StreamOptimized::open(meta, h)?));
    }
    Ok(Vmdk::Sparse(map_sparse(meta, &h)?))
}

/// Calls `each(grain, gte)` for every grain of the disk that has a grain table, reading the
/// grain directory, then the tables in increasing host order (so a stream can be read
/// forward), several adjacent tables at a time. Returns where the last table read ends.
fn read_tables(
    meta: &mut dyn Meta,
    h: &Header,
    mut each: impl FnMut(u64, u32) -> Result<(), ImportError>,
) -> Result<u64, ImportError> {
    let Some(gd_start) = h.gd_start() else {
        return Err(FormatError::Internal("tables read from a GD at the end").into());
    };
    let mut gd = vec![0u8; (h.gd_entries() * 4) as usize];
    meta.read_at(&mut gd, gd_start, "grain directory")?;
    // (host offset, GD index) of each grain table.
    let mut tables: Vec<(u64, u64)> = gd
        .chunks_exact(4)
        .enumerate()
        .filter_map(|(i, e)| match le32(e, 0) {
            0 => None, // no table: its grains read as zero
            sector => Some((u64::from(sector) * SECTOR, i as u64)),
        })
        .collect();
    tables.sort_unstable();
    if let Some(w) = tables.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(corrupt(format!(
            "grain directory entries {} and {} both name the grain table at host offset {}",
            w[0].1, w[1].1, w[0].0
        ))
        .into());
    }
    let gt_bytes = h.gt_bytes();
    let gt_stride = gt_bytes.next_multiple_of(SECTOR);
    let mut tables_end = gd_start + gd.len() as u64;
    let mut buf = Vec::new();
    let mut i = 0;
    while i < tables.len() {
        // A run of tables one stride apart, read at once.
        let start = tables[i].0;
        let mut end = i + 1;
        while end < tables.len()
            && tables[end].0 == tables[end - 1].0 + gt_stride
            && tables[end].0 + gt_bytes - start <= TABLE_READ
        {
            end += 1;
        }
        let span = tables[end - 1].0 + gt_bytes - start;
        tables_end = tables_end.max(start + span);
        buf.resize(span as usize, 0);
        meta.read_at(&mut buf, start, "grain table")?;
        for &(at, index) in &tables[i..end] {
            let from = (at - start) as usize;
            let gt = &buf[from..from + gt_bytes as usize];
            let first = index * u64::from(h.gtes_per_gt);
            for (k, e) in gt.chunks_exact(4).enumerate() {
                let grain = first + k as u64;
                if grain >= h.grains() {
                    break; // the last table may cover more than the disk
                }
                each(grain, le32(e, 0))?;
            }
        }
        i = end;
    }
    Ok(tables_end)
}

/// Where a grain table entry says a grain is: `None` for zero.
fn grain_host(h: &Header, grain: u64, gte: u32) -> Result<Option<u64>, FormatError> {
    match gte {
        GTE_UNALLOCATED => Ok(None),
        GTE_ZEROED if h.zeroed_grains() => Ok(None),
        sector => {
            let host = u64::from(sector) * SECTOR;
            if host < h.data_start() {
                return Err(corrupt(format!(
                    "grain {grain} (guest offset {}) is stored at host offset {host}, inside the metadata (grains \
                     start at {})",
                    grain * h.grain_bytes(),
                    h.data_start()
                )));
            }
            Ok(Some(host))
        }
    }
}

fn map_sparse(meta: &mut dyn Meta, h: &Header) -> Result<Mapped, ImportError> {
    let grain = h.grain_bytes();
    let mut extents = ExtentMap::new(FORMAT, h.capacity * SECTOR, grain);
    read_tables(meta, h, |index, gte| {
        if let Some(host) = grain_host(h, index, gte)? {
            extents.add(index * grain, host, grain)?;
        }
        Ok(())
    })?;
    Ok(extents.finish(meta.image_len())?)
}

/// A streamOptimized image's header, enough to decode its grains as they pass.
#[derive(Debug)]
pub struct StreamOptimized {
    pub virtual_size: u64,
    header: Header,
    /// The grains the tables name, when the tables precede the grains (qemu's layout): the
    /// stream must hold exactly these.
    expected: Option<GrainSet>,
    /// The tables do not precede the grains: only an end-of-stream marker shows the stream
    /// is whole.
    needs_end_marker: bool,
}

impl StreamOptimized {
    fn open(meta: &mut dyn Meta, h: Header) -> Result<StreamOptimized, ImportError> {
        let data_start = h.data_start();
        let desc_end = (h.desc_offset + h.desc_size) * SECTOR;
        if h.desc_size > 0 && desc_end > data_start {
            return Err(corrupt(format!(
                "its descriptor ends at host offset {desc_end}, after the first grain marker at {data_start}"
            ))
            .into());
        }
        // Only a stream needs the tables; random access takes the one-pass path anyway and
        // opens the image again as a stream.
        let tables_first = h.gd_end().is_some_and(|end| end <= data_start);
        let expected = if tables_first && meta.forward_only() {
            let mut set = GrainSet::new(h.grains());
            let tables_end = read_tables(meta, &h, |index, gte| {
                if grain_host(&h, index, gte)?.is_some() {
                    set.insert(index);
                }
                Ok(())
            })?;
            if tables_end > data_start {
                return Err(corrupt(format!(
                    "a grain table ends at host offset {tables_end}, after the first grain marker at {data_start}: \
                     the grains cannot be read in one pass"
                ))
                .into());
            }
            Some(set)
        } else {
            None
        };
        Ok(StreamOptimized { virtual_size: h.capacity * SECTOR, header: h, expected, needs_end_marker: !tables_first })
    }

    /// Whether every write is aligned well enough for direct I/O on the target: grains are
    /// at least 4 KiB, and jobs never split one.
    pub fn direct_ok(&self) -> bool {
        self.header.grain_bytes() >= copy::ZERO_BLOCK as u64
    }

    /// Decodes the grains from `input` (positioned after what [`open`] read): markers in
    /// file order, grains batched into jobs the workers inflate, and at the end zeros for
    /// the grains the stream did not hold (block devices only).
    ///
    /// # Errors
    /// A marker naming a guest sector off the grain grid or past the disk, a grain seen
    /// twice or not in the tables, a compressed size past qemu's bound, an unknown marker
    /// type, a stream that ends early.
    pub fn convert(&self, input: &mut Forward<'_>, sink: &JobSink<'_>, need_zero: bool) -> Result<(), ImportError> {
        let data_start = self.header.data_start();
        if input.pos() > data_start {
            return Err(FormatError::Internal("vmdk stream read past its first grain before decoding").into());
        }
        input.skip_to_reach(data_start, "first grain")?;
        let mut d = Decoder {
            so: self,
            sink,
            seen: GrainSet::new(self.header.grains()),
            batch: CompressedBatch::new(FORMAT, Codec::Zlib, self.header.grain_bytes() as usize),
            inflate: None,
        };
        d.markers(input)?;
        d.batch.flush(sink)?;
        if let Some(expected) = &self.expected
            && let Some(grain) = expected.first_missing_from(&d.seen)
        {
            return Err(corrupt(format!(
                "its grain table maps guest offset {} but the stream ended at byte {} without that grain: the \
                 file is truncated",
                grain * self.header.grain_bytes(),
                input.pos()
            ))
            .into());
        }
        let mut zeros = ZeroRuns::new(need_zero);
        if need_zero {
            let grain = self.header.grain_bytes();
            d.seen.absent_runs(|first, count| {
                let guest = first * grain;
                let len = (count * grain).min(self.virtual_size - guest);
                zeros.add(guest, len, sink)
            })?;
        }
        zeros.flush(sink)?;
        input.drain()
    }
}

/// The one-pass streamOptimized decoder's state.
struct Decoder<'a, 's> {
    so: &'a StreamOptimized,
    sink: &'a JobSink<'s>,
    seen: GrainSet,
    /// Compressed grains being batched into one job.
    batch: CompressedBatch,
    /// For grains too large for a copy chunk, inflated on this thread.
    inflate: Option<flate2::Decompress>,
}

impl Decoder<'_, '_> {
    /// Reads markers until the end-of-stream marker, or the end of the stream where the
    /// layout allows it (qemu's files have no end-of-stream marker; their tables tell
    /// whether anything is missing).
    fn markers(&mut self, input: &mut Forward<'_>) -> Result<(), ImportError> {
        let so = self.so;
        let mut sector = [0u8; SECTOR as usize];
        loop {
            self.sink.check()?;
            let at = input.pos();
            let n = input.read_full(&mut sector)?;
            if n == 0 {
                if so.needs_end_marker {
                    return Err(FormatError::Truncated {
                        format: FORMAT,
                        what: "end-of-stream marker",
                        offset: at,
                        received: at,
                    }
                    .into());
                }
                return Ok(());
            }
            let truncated = |what| FormatError::Truncated { format: FORMAT, what, offset: at, received: at + n as u64 };
            if n < 16 {
                return Err(truncated("marker").into());
            }
            let (value, size) = (le64(&sector, 0), le32(&sector, 8));
            if size > 0 {
                self.grain(input, at, value, size, &sector[..n])?;
                continue;
            }
            match le32(&sector, 12) {
                MARKER_END_OF_STREAM => return Ok(()),
                MARKER_GRAIN_TABLE | MARKER_GRAIN_DIRECTORY => {
                    // The tables are not needed: each grain's marker says where it goes.
                    let end = bytes_of("metadata marker", value)
                        .ok()
                        .and_then(|len| (at + SECTOR).checked_add(len))
                        .ok_or_else(|| {
                            corrupt(format!("the metadata marker at host offset {at} spans {value} sectors"))
                        })?;
                    input.skip_to_reach(end, "end of the tables after a metadata marker")?;
                }
                MARKER_FOOTER => {
                    if n < SECTOR as usize {
                        return Err(truncated("footer marker").into());
                    }
                    self.footer(input, at, value)?;
                }
                other => {
                    return Err(corrupt(format!("unknown marker type {other} at host offset {at}")).into());
                }
            }
        }
    }

    /// The footer repeats the header (with the GD's offset): qemu reads the disk's geometry
    /// from it, so a footer that disagrees would make us convert another disk than qemu.
    fn footer(&mut self, input: &mut Forward<'_>, at: u64, sectors: u64) -> Result<(), ImportError> {
        if sectors != 1 {
            return Err(corrupt(format!("the footer marker at host offset {at} spans {sectors} sectors, not 1")).into());
        }
        let mut footer = [0u8; HEADER_LEN];
        input.read_exact(&mut footer, FORMAT, "footer")?;
        let f = Header::parse(&footer).map_err(|e| match e {
            FormatError::Internal(_) => corrupt(format!("the footer at host offset {} has no KDMV magic", at + SECTOR)),
            other => other,
        })?;
        let h = &self.so.header;
        if (f.capacity, f.grain, f.compressed) != (h.capacity, h.grain, h.compressed) {
            return Err(corrupt(format!(
                "the footer at host offset {} describes another disk ({} sectors of {}-sector grains) than the \
                 header ({} sectors of {}-sector grains)",
                at + SECTOR,
                f.capacity,
                f.grain,
                h.capacity,
                h.grain
            ))
            .into());
        }
        Ok(())
    }

    /// Places one grain: `first` is the marker's sector as read (shorter at the stream's end).
    fn grain(
        &mut self,
        input: &mut Forward<'_>,
        at: u64,
        lba: u64,
        size: u32,
        first: &[u8],
    ) -> Result<(), ImportError> {
        let so = self.so;
        let h = &so.header;
        let grain = h.grain_bytes();
        if !lba.is_multiple_of(h.grain) {
            return Err(corrupt(format!(
                "the grain marker at host offset {at} names guest sector {lba}, which does not start a grain of {} \
                 sectors",
                h.grain
            ))
            .into());
        }
        if lba >= h.capacity {
            return Err(corrupt(format!(
                "the grain marker at host offset {at} names guest sector {lba}, past the disk's {} sectors",
                h.capacity
            ))
            .into());
        }
        let len = size as usize;
        // qemu reads a compressed grain from a buffer of two grains.
        if u64::from(size) > 2 * grain {
            return Err(corrupt(format!(
                "the grain at host offset {at} has {size} compressed bytes, more than twice the grain size ({grain})"
            ))
            .into());
        }
        let index = lba / h.grain;
        let guest = index * grain;
        if !self.seen.insert(index) {
            return Err(corrupt(format!(
                "the grain for guest offset {guest} appears twice (again at host offset {at})"
            ))
            .into());
        }
        if let Some(expected) = &so.expected
            && !expected.contains(index)
        {
            return Err(corrupt(format!(
                "the grain at host offset {at} for guest offset {guest} is not in the grain table"
            ))
            .into());
        }
        let keep = grain.min(so.virtual_size - guest) as usize;
        let total = GRAIN_MARKER_LEN + len;
        let head = &first[GRAIN_MARKER_LEN..first.len().min(total)];
        let chunk = self.sink.chunk();
        if len <= chunk && grain as usize <= chunk {
            let (buf, clusters) = self.batch.room(self.sink, len)?;
            let start = buf.len();
            buf.set_len(start + len);
            buf[start..start + head.len()].copy_from_slice(head);
            input.read_exact(&mut buf[start + head.len()..start + len], FORMAT, "compressed grain")?;
            clusters.push(CompressedCluster { guest, start, len, out_len: keep, cluster_size: grain as usize });
        } else {
            self.inflate_here(input, head, len, guest, keep)?;
        }
        // Markers start on sector boundaries. The last grain's padding may be missing.
        let padded = (total as u64).next_multiple_of(SECTOR);
        let pad = (at + padded).saturating_sub(input.pos()) as usize;
        input.read_full(&mut [0u8; SECTOR as usize][..pad])?;
        Ok(())
    }

    /// A grain larger than a copy chunk (or whose compressed form is): inflated here and
    /// placed in chunk-sized pieces, which never share a 4 KiB block with another job.
    fn inflate_here(
        &mut self,
        input: &mut Forward<'_>,
        head: &[u8],
        len: usize,
        guest: u64,
        keep: usize,
    ) -> Result<(), ImportError> {
        let mut compressed = vec![0u8; len];
        compressed[..head.len()].copy_from_slice(head);
        input.read_exact(&mut compressed[head.len()..], FORMAT, "compressed grain")?;
        let mut out = vec![0u8; self.so.header.grain_bytes() as usize];
        let d = self.inflate.get_or_insert_with(|| flate2::Decompress::new(true));
        copy::inflate_zlib(d, &compressed, &mut out, keep, guest)?;
        let chunk = self.sink.chunk();
        for (i, piece) in out[..keep].chunks(chunk).enumerate() {
            let mut buf = self.sink.buffer()?;
            buf.set_len(piece.len());
            buf.copy_from_slice(piece);
            self.sink.submit(Job::Data { offset: guest + (i * chunk) as u64, buf })?;
        }
        Ok(())
    }
}

/// Grains per page of a [`GrainSet`] (a 4 KiB page of bits).
const PAGE_GRAINS: u64 = 1 << 15;
const PAGE_WORDS: usize = (PAGE_GRAINS / 64) as usize;

/// One bit per grain, in pages allocated when first touched: a header naming many grains
/// costs memory only as grains are found, and never more than [`MAX_GRAINS`] / 8 bytes.
struct GrainSet {
    grains: u64,
    pages: Vec<Option<Box<[u64; PAGE_WORDS]>>>,
}

impl std::fmt::Debug for GrainSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pages = self.pages.iter().filter(|p| p.is_some()).count();
        f.debug_struct("GrainSet").field("grains", &self.grains).field("pages", &pages).finish()
    }
}

impl GrainSet {
    fn new(grains: u64) -> GrainSet {
        GrainSet { grains, pages: (0..grains.div_ceil(PAGE_GRAINS)).map(|_| None).collect() }
    }

    fn word(&self, grain: u64) -> u64 {
        let page = &self.pages[(grain / PAGE_GRAINS) as usize];
        page.as_ref().map_or(0, |p| p[((grain % PAGE_GRAINS) / 64) as usize])
    }

    /// Adds `grain` (below `grains`); false when it was there already.
    fn insert(&mut self, grain: u64) -> bool {
        let page = self.pages[(grain / PAGE_GRAINS) as usize].get_or_insert_with(|| Box::new([0; PAGE_WORDS]));
        let word = &mut page[((grain % PAGE_GRAINS) / 64) as usize];
        let bit = 1u64 << (grain % 64);
        let new = *word & bit == 0;
        *word |= bit;
        new
    }

    fn contains(&self, grain: u64) -> bool {
        self.word(grain) & (1 << (grain % 64)) != 0
    }

    /// The first grain of `self` that `other` lacks.
    fn first_missing_from(&self, other: &GrainSet) -> Option<u64> {
        for (p, page) in self.pages.iter().enumerate() {
            let Some(page) = page else { continue };
            for (w, &word) in page.iter().enumerate() {
                let base = p as u64 * PAGE_GRAINS + w as u64 * 64;
                let missing = word & !other.word(base);
                if missing != 0 {
                    return Some(base + u64::from(missing.trailing_zeros()));
                }
            }
        }
        None
    }

    /// Calls `f(first, count)` for the grains not in the set, in order (runs may be split).
    fn absent_runs(&self, mut f: impl FnMut(u64, u64) -> Result<(), ImportError>) -> Result<(), ImportError> {
        for (p, page) in self.pages.iter().enumerate() {
            let base = p as u64 * PAGE_GRAINS;
            let in_page = PAGE_GRAINS.min(self.grains - base);
            let Some(page) = page else {
                f(base, in_page)?;
                continue;
            };
            for (w, &word) in page.iter().enumerate() {
                let first = base + w as u64 * 64;
                if first >= self.grains {
                    break;
                }
                let in_word = 64.min(self.grains - first);
                match word {
                    0 => f(first, in_word)?,
                    u64::MAX => {}
                    _ => {
                        for bit in 0..in_word {
                            if word & (1 << bit) == 0 {
                                f(first + bit, 1)?;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::mapped::Forward;

    const CAPACITY: u64 = 4096; // sectors: 2 MiB, 32 grains of 64 KiB

    /// A header as qemu writes it: descriptor at sector 1 (20 sectors), GD at 21, its one
    /// grain table at 22, grains from sector 128.
    fn mk_header(capacity: u64, compressed: bool) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..4].copy_from_slice(MAGIC);
        h[4..8].copy_from_slice(&(if compressed { 3u32 } else { 1 }).to_le_bytes());
        let flags = FLAG_NEWLINE_CHECK | if compressed { (1 << 16) | FLAG_MARKERS } else { 0 };
        h[8..12].copy_from_slice(&flags.to_le_bytes());
        h[12..20].copy_from_slice(&capacity.to_le_bytes());
        h[20..28].copy_from_slice(&128u64.to_le_bytes());
        h[28..36].copy_from_slice(&1u64.to_le_bytes());
        h[36..44].copy_from_slice(&20u64.to_le_bytes());
        h[44..48].copy_from_slice(&512u32.to_le_bytes());
        h[56..64].copy_from_slice(&21u64.to_le_bytes());
        h[64..72].copy_from_slice(&128u64.to_le_bytes());
        h[73..77].copy_from_slice(&NEWLINE_CHECK);
        h[77..79].copy_from_slice(&u16::from(compressed).to_le_bytes());
        h
    }

    fn mk_descriptor(create_type: &str, extra: &str) -> String {
        format!(
            "# Disk DescriptorFile\nversion=1\nCID=1234abcd\nparentCID=ffffffff\ncreateType=\"{create_type}\"\n{extra}\n\
             # Extent description\nRW {CAPACITY} SPARSE \"disk.vmdk\"\n\n#DDB\nddb.adapterType = \"ide\"\n"
        )
    }

    /// A monolithicSparse image: header, `descriptor`, GD, one GT with `gtes`, then grains
    /// (filled with their index) at the sectors the GTEs name.
    fn mk_sparse(descriptor: &str, gtes: &[u32], flags: u32) -> Vec<u8> {
        let mut img = mk_header(CAPACITY, false);
        let f = le32(&img, 8) | flags;
        img[8..12].copy_from_slice(&f.to_le_bytes());
        img.resize(512 * 128, 0);
        img[512..512 + descriptor.len()].copy_from_slice(descriptor.as_bytes());
        img[21 * 512..21 * 512 + 4].copy_from_slice(&22u32.to_le_bytes());
        for (i, gte) in gtes.iter().enumerate() {
            let at = 22 * 512 + i * 4;
            img[at..at + 4].copy_from_slice(&gte.to_le_bytes());
            if (128..4096).contains(gte) {
                let end = (*gte as usize + 128) * 512;
                if img.len() < end {
                    img.resize(end, 0);
                }
                img[*gte as usize * 512..end].fill(i as u8 + 1);
            }
        }
        img
    }

    fn open_stream(image: &[u8]) -> Result<Vmdk, ImportError> {
        let mut stream = image;
        let mut fwd = Forward::new(FORMAT, &mut stream, &image[..image.len().min(4096)], Some(image.len() as u64));
        open(&mut fwd, image)
    }

    #[test]
    fn a_monolithic_sparse_image_becomes_extents() {
        let img = mk_sparse(&mk_descriptor("monolithicSparse", ""), &[128, 0, 256, 384], 0);
        let Vmdk::Sparse(m) = open_stream(&img).unwrap() else { panic!("not sparse") };
        assert_eq!(m.virtual_size, CAPACITY * 512);
        assert_eq!(m.data_bytes(), 3 << 16);
    }

    #[test]
    fn zeroed_grains_read_as_zero_only_with_their_flag() {
        let img = mk_sparse(&mk_descriptor("monolithicSparse", ""), &[128, GTE_ZEROED], FLAG_ZEROED_GRAIN);
        let Vmdk::Sparse(m) = open_stream(&img).unwrap() else { panic!("not sparse") };
        assert_eq!(m.data_bytes(), 1 << 16);
        // Without the flag, sector 1 is the descriptor: no grain may live there.
        let img = mk_sparse(&mk_descriptor("monolithicSparse", ""), &[128, GTE_ZEROED], 0);
        let err = open_stream(&img).unwrap_err();
        assert!(err.to_string().contains("inside the metadata"), "{err}");
    }

    #[test]
    fn table_entries_outside_the_file_are_refused() {
        let mut img = mk_sparse(&mk_descriptor("monolithicSparse", ""), &[128, 1 << 30], 0);
        let err = open_stream(&img).unwrap_err();
        assert!(err.to_string().contains("beyond the end of the image"), "{err}");
        img[21 * 512..21 * 512 + 4].copy_from_slice(&(1u32 << 30).to_le_bytes());
        let err = open_stream(&img).unwrap_err();
        assert!(err.to_string().contains("grain table at host offset"), "{err}");
    }

    #[test]
    fn two_directory_entries_naming_one_table_are_refused() {
        let mut img = mk_header(CAPACITY * 1024, false);
        img.resize(512 * 128, 0);
        let desc = mk_descriptor("monolithicSparse", "");
        img[512..512 + desc.len()].copy_from_slice(desc.as_bytes());
        for i in 0..2 {
            img[21 * 512 + i * 4..21 * 512 + i * 4 + 4].copy_from_slice(&24u32.to_le_bytes());
        }
        let err = open_stream(&img).unwrap_err();
        assert!(err.to_string().contains("both name the grain table"), "{err}");
    }

    #[test]
    fn hostile_header_fields_are_refused_with_their_name() {
        let cases: [(usize, &[u8], &str); 9] = [
            (4, &4u32.to_le_bytes(), "version is 4"),
            (4, &0u32.to_le_bytes(), "version is 0"),
            (12, &(1u64 << 40).to_le_bytes(), "capacity"),
            (20, &3u64.to_le_bytes(), "grain size is 3"),
            (20, &4096u64.to_le_bytes(), "grain size is 4096"),
            (44, &0u32.to_le_bytes(), "grain table entries is 0"),
            (44, &1024u32.to_le_bytes(), "grain table entries is 1024"),
            (36, &(1u64 << 20).to_le_bytes(), "descriptor size"),
            (77, &2u16.to_le_bytes(), "compression algorithm is 2"),
        ];
        for (at, bytes, needle) in cases {
            let mut h = mk_header(CAPACITY, false);
            h[at..at + bytes.len()].copy_from_slice(bytes);
            let err = Header::parse(&h).unwrap_err();
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
        // Offsets that overflow once turned into bytes.
        let mut h = mk_header(CAPACITY, false);
        h[56..64].copy_from_slice(&(u64::MAX - 1).to_le_bytes());
        assert!(Header::parse(&h).unwrap_err().to_string().contains("overflows"));
        // A grain directory "at the end" without compressed grains.
        let mut h = mk_header(CAPACITY, false);
        h[56..64].copy_from_slice(&GD_AT_END.to_le_bytes());
        assert!(Header::parse(&h).unwrap_err().to_string().contains("at the end"));
        // Tiny grains in a huge disk: too many grains to track.
        let mut h = mk_header(1 << 36, false);
        h[20..28].copy_from_slice(&8u64.to_le_bytes());
        assert!(Header::parse(&h).unwrap_err().to_string().contains("2^28 grains"));
    }

    #[test]
    fn a_text_mode_transfer_is_recognised() {
        let mut h = mk_header(CAPACITY, false);
        h[75] = b'\n'; // "\r\n" became "\n\n"
        let err = Header::parse(&h).unwrap_err();
        assert!(err.to_string().contains("binary mode"), "{err}");
    }

    #[test]
    fn descriptors_of_other_files_are_refused_with_their_type() {
        for kind in ["twoGbMaxExtentSparse", "twoGbMaxExtentFlat", "monolithicFlat", "vmfsThin", "vmfs", "fullDevice"] {
            let d = Descriptor::parse(mk_descriptor(kind, "").as_bytes()).unwrap();
            let err = d.check().unwrap_err();
            assert!(matches!(err, FormatError::MultiFile { .. }), "{kind}: {err}");
            assert!(err.to_string().contains(kind), "{kind}: {err}");
        }
        let flat = "createType=\"monolithicSparse\"\nRW 100 FLAT \"other.img\" 0\n";
        let err = Descriptor::parse(flat.as_bytes()).unwrap().check().unwrap_err();
        assert!(err.to_string().contains("FLAT extent in \"other.img\""), "{err}");
        let two = format!("{}RW 100 SPARSE \"b.vmdk\"\n", mk_descriptor("monolithicSparse", ""));
        let err = Descriptor::parse(two.as_bytes()).unwrap().check().unwrap_err();
        assert!(err.to_string().contains("with 2 extents"), "{err}");
        let err = Descriptor::parse(b"createType=\"bogus\"").unwrap().check().unwrap_err();
        assert!(err.to_string().contains("\"bogus\" is not a VMDK disk type"), "{err}");
    }

    #[test]
    fn an_extent_without_descriptor_is_a_piece_of_a_split_disk() {
        let err = Descriptor::parse(&[0u8; 512]).unwrap().check().unwrap_err();
        assert!(err.to_string().contains("split-disk"), "{err}");
        let img = mk_sparse("", &[128], 0);
        assert!(open_stream(&img).unwrap_err().to_string().contains("split-disk"));
    }

    #[test]
    fn parents_are_refused_with_their_name() {
        let d = mk_descriptor("monolithicSparse", "parentFileNameHint=\"base.vmdk\"").replace("ffffffff", "5be840a2");
        let err = Descriptor::parse(d.as_bytes()).unwrap().check().unwrap_err();
        assert!(matches!(err, FormatError::Differencing { .. }), "{err}");
        assert!(err.to_string().contains("\"base.vmdk\""), "{err}");
        let d = mk_descriptor("monolithicSparse", "").replace("ffffffff", "5be840a2");
        let err = Descriptor::parse(d.as_bytes()).unwrap().check().unwrap_err();
        assert!(err.to_string().contains("CID 5be840a2"), "{err}");
        let d = mk_descriptor("monolithicSparse", "").replace("ffffffff", "nothex");
        let err = Descriptor::parse(d.as_bytes()).unwrap().check().unwrap_err();
        assert!(err.to_string().contains("not a hexadecimal"), "{err}");
        let err = refuse_descriptor(mk_descriptor("twoGbMaxExtentSparse", "parentFileNameHint=\"p.vmdk\"").as_bytes());
        assert!(err.to_string().contains("\"p.vmdk\""), "{err}");
    }

    #[test]
    fn a_descriptor_file_is_refused_even_for_one_sparse_extent() {
        let err = refuse_descriptor(mk_descriptor("monolithicSparse", "").as_bytes());
        assert!(err.to_string().contains("monolithicSparse (a descriptor file)"), "{err}");
        let err = refuse_descriptor(b"version=1\nRW 10 SPARSE \"a\nb\n");
        assert!(err.to_string().contains("line 2 is not an extent line"), "{err}");
    }

    #[test]
    fn stream_optimized_reads_its_tables_only_from_a_stream() {
        let mut img = mk_header(CAPACITY, true);
        img.resize(512 * 128, 0);
        let desc = mk_descriptor("streamOptimized", "");
        img[512..512 + desc.len()].copy_from_slice(desc.as_bytes());
        img[21 * 512..21 * 512 + 4].copy_from_slice(&22u32.to_le_bytes());
        img[22 * 512..22 * 512 + 8].copy_from_slice(&[128, 0, 0, 0, 129, 0, 0, 0]);
        let Vmdk::StreamOptimized(so) = open_stream(&img).unwrap() else { panic!("not streamOptimized") };
        let expected = so.expected.as_ref().expect("tables precede the grains");
        assert!(expected.contains(0) && expected.contains(1) && !expected.contains(2));
        assert!(so.direct_ok() && !so.needs_end_marker);
        // VMware's layout: the tables come at the end, nothing is read ahead of the grains.
        img[56..64].copy_from_slice(&GD_AT_END.to_le_bytes());
        let Vmdk::StreamOptimized(so) = open_stream(&img).unwrap() else { panic!("not streamOptimized") };
        assert!(so.expected.is_none() && so.needs_end_marker);
        // Tables past the first grain (a writer that patched the header): the end marker
        // is what shows the stream is whole.
        img[56..64].copy_from_slice(&4000u64.to_le_bytes());
        let Vmdk::StreamOptimized(so) = open_stream(&img).unwrap() else { panic!("not streamOptimized") };
        assert!(so.expected.is_none() && so.needs_end_marker);
    }

    #[test]
    fn grain_sets_track_bits_and_absent_runs() {
        let mut s = GrainSet::new(PAGE_GRAINS * 2 + 70);
        assert!(s.insert(3) && !s.insert(3));
        s.insert(PAGE_GRAINS * 2 + 64);
        for g in 64..128 {
            s.insert(g);
        }
        let mut runs = Vec::new();
        s.absent_runs(|first, count| {
            match runs.last_mut() {
                Some((f, c)) if *f + *c == first => *c += count,
                _ => runs.push((first, count)),
            }
            Ok(())
        })
        .unwrap();
        let total = PAGE_GRAINS * 2 + 70;
        assert_eq!(runs, vec![(0, 3), (4, 60), (128, total - 128 - 6), (total - 5, 5)]);
        let mut other = GrainSet::new(total);
        other.insert(3);
        assert_eq!(s.first_missing_from(&other), Some(64));
        assert_eq!(other.first_missing_from(&s), None);
    }
}

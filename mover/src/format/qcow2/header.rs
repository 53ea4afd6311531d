//! The qcow2 header and its extensions (qcow2 spec, docs/interop/qcow2.rst in QEMU).
//!
//! Everything is checked before use: field ranges against named limits, offsets against
//! alignment, arithmetic with `checked_*`. Features that would make us read files other
//! than the image (backing file, external data file) or that we cannot decode (encryption,
//! unknown incompatible bits) are refused here, before anything is written.

use super::FORMAT;
use crate::copy::Codec;
use crate::format::FormatError;
use crate::format::bytes::{be32, be64};

pub const MAGIC: &[u8; 4] = b"QFI\xfb";
/// Size of the version 2 header; version 3 headers are at least [`V3_HEADER_LEN`].
const V2_HEADER_LEN: usize = 72;
const V3_HEADER_LEN: usize = 104;
/// QEMU's limits on cluster_bits (block/qcow2.h MIN_CLUSTER_BITS / MAX_CLUSTER_BITS):
/// clusters of 512 B to 2 MiB.
pub const MIN_CLUSTER_BITS: u32 = 9;
pub const MAX_CLUSTER_BITS: u32 = 21;
/// QEMU's QCOW_MAX_L1_SIZE: the L1 table is at most 32 MiB.
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// QEMU caps virtual sizes so offsets fit in 63 bits with room for flags; 2^61 bytes is far
/// above any real disk and keeps every guest offset computation below u64 overflow.
pub const MAX_VIRTUAL_SIZE: u64 = 1 << 61;
/// Host offsets live in bits 9..=55 of table entries.
pub const HOST_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// QEMU's limit on the backing file name length.
const MAX_BACKING_NAME: u32 = 1023;

/// Incompatible feature bits (qcow2 spec, "incompatible_features").
pub mod incompat {
    pub const DIRTY: u64 = 1 << 0;
    pub const CORRUPT: u64 = 1 << 1;
    pub const EXTERNAL_DATA_FILE: u64 = 1 << 2;
    pub const COMPRESSION_TYPE: u64 = 1 << 3;
    pub const EXTENDED_L2: u64 = 1 << 4;
    pub const KNOWN: u64 = DIRTY | CORRUPT | EXTERNAL_DATA_FILE | COMPRESSION_TYPE | EXTENDED_L2;
}

/// Header extension types.
mod ext {
    pub const END: u32 = 0;
    pub const BACKING_FORMAT: u32 = 0xe279_2aca;
    pub const FEATURE_NAMES: u32 = 0x6803_f857;
    pub const BITMAPS: u32 = 0x2385_2875;
    pub const FULL_DISK_ENCRYPTION: u32 = 0x0537_be77;
    pub const EXTERNAL_DATA_FILE: u32 = 0x4441_5441;
}

/// A validated qcow2 header.
#[derive(Debug, Clone)]
pub struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub virtual_size: u64,
    pub l1_entries: u32,
    pub l1_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub snapshot_count: u32,
    pub snapshots_offset: u64,
    pub codec: Codec,
    pub extended_l2: bool,
    /// Bytes at the start of the image that hold the header and its extensions.
    pub header_bytes: u64,
}

fn bad(field: &'static str, value: u64, reason: &'static str) -> FormatError {
    FormatError::BadHeader { format: FORMAT, field, value, reason }
}

impl Header {
    /// Parses the header from the image's first bytes (`head`, at least the header and its
    /// extensions; the first cluster is always enough).
    pub fn parse(head: &[u8]) -> Result<Header, FormatError> {
        if head.len() < V2_HEADER_LEN {
            return Err(FormatError::HeaderTruncated { format: FORMAT, available: head.len(), needed: V2_HEADER_LEN });
        }
        if &head[..4] != MAGIC {
            return Err(FormatError::Internal("qcow2 parser called on non-qcow2 data"));
        }
        let version = be32(head, 4);
        if !(2..=3).contains(&version) {
            return Err(bad("version", version.into(), "only versions 2 and 3 exist"));
        }
        let cluster_bits = be32(head, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(bad("cluster_bits", cluster_bits.into(), "clusters must be 512 B to 2 MiB (9..=21)"));
        }
        let cluster_size = 1u64 << cluster_bits;

        let (incompatible, header_len, refcount_order) = if version == 3 {
            if head.len() < V3_HEADER_LEN {
                return Err(FormatError::HeaderTruncated {
                    format: FORMAT,
                    available: head.len(),
                    needed: V3_HEADER_LEN,
                });
            }
            let header_len = be32(head, 100) as usize;
            if header_len < V3_HEADER_LEN {
                return Err(bad("header_length", header_len as u64, "a version 3 header is at least 104 bytes"));
            }
            if header_len as u64 > cluster_size {
                return Err(bad("header_length", header_len as u64, "the header must fit in the first cluster"));
            }
            (be64(head, 72), header_len, be32(head, 96))
        } else {
            (0, V2_HEADER_LEN, 4)
        };
        if refcount_order > 6 {
            return Err(bad("refcount_order", refcount_order.into(), "refcounts are at most 64 bits (order <= 6)"));
        }

        // The extensions come before anything else is checked: the feature-name table lets
        // us name unknown feature bits, and some extensions mean "refuse".
        let exts = Extensions::parse(head, header_len, cluster_size)?;

        let backing_offset = be64(head, 8);
        let backing_len = be32(head, 16);
        if backing_offset != 0 {
            let name = backing_name(head, backing_offset, backing_len);
            return Err(FormatError::BackingFile { name });
        }

        let crypt = be32(head, 32);
        if crypt != 0 || exts.encryption {
            let method = match crypt {
                1 => "AES",
                2 => "LUKS",
                _ => "unknown method",
            };
            return Err(FormatError::Encrypted { method });
        }

        if incompatible & incompat::EXTERNAL_DATA_FILE != 0 || exts.data_file.is_some() {
            let name = exts.data_file.map(|n| format!(" ({n:?})")).unwrap_or_default();
            return Err(FormatError::ExternalDataFile { name });
        }
        let unknown = incompatible & !incompat::KNOWN;
        if unknown != 0 {
            let names = (0..64)
                .filter(|bit| unknown & (1 << bit) != 0)
                .map(|bit| match exts.incompat_names.iter().find(|(b, _)| *b == bit) {
                    Some((_, name)) => format!("bit {bit} {name:?}"),
                    None => format!("bit {bit}"),
                })
                .collect::<Vec<_>>()
                .join(", ");
            return Err(FormatError::UnknownIncompatible { bits: unknown, names });
        }
        // The dirty bit (lazy refcounts after a crash) and the corrupt bit only concern
        // writers' refcounts; reading the active layer read-only is safe, as qemu-img does.
        if incompatible & incompat::CORRUPT != 0 {
            tracing::warn!("qcow2 image is marked corrupt; reading it read-only with full bounds checks");
        }

        let codec = if incompatible & incompat::COMPRESSION_TYPE != 0 {
            if header_len <= V3_HEADER_LEN {
                return Err(bad(
                    "header_length",
                    header_len as u64,
                    "compression type bit set but no compression_type field",
                ));
            }
            match head[104] {
                0 => Codec::Deflate,
                1 => Codec::Zstd,
                other => return Err(bad("compression_type", other.into(), "known types are 0 (zlib) and 1 (zstd)")),
            }
        } else {
            if header_len > V3_HEADER_LEN && head[104] != 0 {
                return Err(bad("compression_type", head[104].into(), "non-zlib compression needs incompatible bit 3"));
            }
            Codec::Deflate
        };
        let extended_l2 = incompatible & incompat::EXTENDED_L2 != 0;
        if extended_l2 && cluster_bits < 14 {
            // QEMU: subclusters (cluster/32) must be at least 512 bytes.
            return Err(bad(
                "cluster_bits",
                cluster_bits.into(),
                "extended L2 entries need clusters of 16 KiB or more",
            ));
        }

        let virtual_size = be64(head, 24);
        if virtual_size > MAX_VIRTUAL_SIZE {
            return Err(bad("size", virtual_size, "larger than any disk this reader accepts (2^61 bytes)"));
        }
        let l1_entries = be32(head, 36);
        let l1_offset = be64(head, 40);
        let entry_bytes: u64 = if extended_l2 { 16 } else { 8 };
        let l2_entries = cluster_size / entry_bytes;
        let bytes_per_l1 = l2_entries * cluster_size;
        let needed_l1 = virtual_size.div_ceil(bytes_per_l1);
        if u64::from(l1_entries) < needed_l1 {
            return Err(bad("l1_size", l1_entries.into(), "the L1 table is too small for the virtual size"));
        }
        if u64::from(l1_entries) * 8 > MAX_L1_BYTES {
            return Err(bad("l1_size", l1_entries.into(), "the L1 table is larger than QEMU's 32 MiB limit"));
        }
        if l1_entries > 0 && (l1_offset == 0 || !l1_offset.is_multiple_of(cluster_size)) {
            return Err(bad("l1_table_offset", l1_offset, "must be a non-zero multiple of the cluster size"));
        }
        let refcount_table_offset = be64(head, 48);
        if !refcount_table_offset.is_multiple_of(cluster_size) {
            return Err(bad("refcount_table_offset", refcount_table_offset, "must be a multiple of the cluster size"));
        }
        let refcount_table_clusters = be32(head, 56);
        let snapshot_count = be32(head, 60);
        let snapshots_offset = be64(head, 64);
        if snapshot_count > 0 && !snapshots_offset.is_multiple_of(8) {
            return Err(bad("snapshots_offset", snapshots_offset, "must be 8-byte aligned"));
        }
        Ok(Header {
            version,
            cluster_bits,
            virtual_size,
            l1_entries,
            l1_offset,
            refcount_table_offset,
            refcount_table_clusters,
            snapshot_count,
            snapshots_offset,
            codec,
            extended_l2,
            header_bytes: exts.end as u64,
        })
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Bytes per L2 entry: 8, or 16 with extended L2 (entry + subcluster bitmap).
    pub fn l2_entry_bytes(&self) -> u64 {
        if self.extended_l2 { 16 } else { 8 }
    }

    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / self.l2_entry_bytes()
    }

    /// Guest bytes one L2 table maps.
    pub fn bytes_per_l2(&self) -> u64 {
        self.l2_entries() * self.cluster_size()
    }

    /// L1 entries that map guest bytes below the virtual size (the rest are ignored).
    pub fn l1_used(&self) -> u64 {
        self.virtual_size.div_ceil(self.bytes_per_l2()).min(self.l1_entries.into())
    }

    pub fn l1_bytes(&self) -> u64 {
        u64::from(self.l1_entries) * 8
    }

    /// Bytes of a subcluster (extended L2 only).
    pub fn subcluster_size(&self) -> u64 {
        self.cluster_size() / 32
    }
}

#[derive(Debug, Default)]
struct Extensions {
    encryption: bool,
    data_file: Option<String>,
    incompat_names: Vec<(u32, String)>,
    end: usize,
}

impl Extensions {
    fn parse(head: &[u8], start: usize, cluster_size: u64) -> Result<Extensions, FormatError> {
        let limit = (cluster_size as usize).min(head.len());
        let mut exts = Extensions { end: start, ..Default::default() };
        let mut at = start;
        loop {
            if at + 8 > limit {
                if (at as u64) + 8 > cluster_size {
                    return Err(bad("header extensions", at as u64, "run past the first cluster"));
                }
                return Err(FormatError::HeaderTruncated { format: FORMAT, available: head.len(), needed: at + 8 });
            }
            let kind = be32(head, at);
            let len = be32(head, at + 4) as usize;
            if kind == ext::END {
                exts.end = at + 8;
                return Ok(exts);
            }
            let data_start = at + 8;
            let data_end = data_start.checked_add(len).filter(|&e| e <= limit).ok_or_else(|| {
                bad("header extension length", len as u64, "the extension runs past the first cluster")
            })?;
            let data = &head[data_start..data_end];
            match kind {
                ext::FULL_DISK_ENCRYPTION => exts.encryption = true,
                ext::EXTERNAL_DATA_FILE => exts.data_file = Some(String::from_utf8_lossy(data).into_owned()),
                ext::FEATURE_NAMES => {
                    for entry in data.chunks_exact(48) {
                        if entry[0] == 0 {
                            let name = entry[2..].split(|&b| b == 0).next().unwrap_or(&[]);
                            exts.incompat_names.push((entry[1].into(), String::from_utf8_lossy(name).into_owned()));
                        }
                    }
                }
                ext::BACKING_FORMAT | ext::BITMAPS => {}
                _ => {} // unknown extensions are informational by spec
            }
            at = data_start + len.next_multiple_of(8);
        }
    }
}

/// The backing file name, for the error message only (never opened).
fn backing_name(head: &[u8], offset: u64, len: u32) -> String {
    if len > MAX_BACKING_NAME {
        return String::new();
    }
    let start = offset as usize;
    match head.get(start..start.saturating_add(len as usize)) {
        Some(bytes) if !bytes.is_empty() => {
            let name: String = String::from_utf8_lossy(bytes).chars().filter(|c| !c.is_control()).take(200).collect();
            format!(" ({name:?})")
        }
        _ => String::new(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal valid v3 header with 64 KiB clusters for a 1 GiB disk.
    pub fn mk_header() -> Vec<u8> {
        let mut h = vec![0u8; 65536];
        h[..4].copy_from_slice(MAGIC);
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        h[36..40].copy_from_slice(&2u32.to_be_bytes());
        h[40..48].copy_from_slice(&(3u64 << 16).to_be_bytes());
        h[48..56].copy_from_slice(&(1u64 << 16).to_be_bytes());
        h[56..60].copy_from_slice(&1u32.to_be_bytes());
        h[96..100].copy_from_slice(&4u32.to_be_bytes());
        h[100..104].copy_from_slice(&112u32.to_be_bytes());
        h
    }

    fn set32(h: &mut [u8], at: usize, v: u32) {
        h[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    fn set64(h: &mut [u8], at: usize, v: u64) {
        h[at..at + 8].copy_from_slice(&v.to_be_bytes());
    }

    #[test]
    fn parses_a_plain_header() {
        let h = Header::parse(&mk_header()).unwrap();
        assert_eq!(h.cluster_size(), 65536);
        assert_eq!(h.virtual_size, 1 << 30);
        assert_eq!(h.l1_used(), 2);
        assert_eq!(h.codec, Codec::Deflate);
        assert_eq!(h.header_bytes, 120);
    }

    #[test]
    fn refuses_absurd_fields() {
        let cases: Vec<(usize, u64, bool)> = vec![
            (4, 7, false),            // version
            (20, 70, false),          // cluster_bits: would overflow shifts
            (20, 8, false),           // cluster_bits too small
            (24, u64::MAX, true),     // size
            (36, 0x7fff_ffff, false), // l1_size beyond 32 MiB
            (36, 1, false),           // l1_size too small for 1 GiB
            (40, 12345, true),        // unaligned L1
            (96, 7, false),           // refcount_order
            (100, 1 << 20, false),    // header_length beyond the cluster
        ];
        for (at, value, wide) in cases {
            let mut h = mk_header();
            if wide {
                set64(&mut h, at, value)
            } else {
                set32(&mut h, at, value as u32)
            }
            let err = Header::parse(&h).unwrap_err();
            assert!(matches!(err, FormatError::BadHeader { .. }), "field at {at}: {err}");
        }
        assert!(matches!(Header::parse(&mk_header()[..50]), Err(FormatError::HeaderTruncated { .. })));
    }

    #[test]
    fn refuses_backing_files_data_files_and_encryption() {
        let mut h = mk_header();
        set64(&mut h, 8, 512);
        set32(&mut h, 16, 11);
        h[512..523].copy_from_slice(b"/etc/shadow");
        let err = Header::parse(&h).unwrap_err();
        assert!(matches!(err, FormatError::BackingFile { .. }));
        assert!(err.to_string().contains("/etc/shadow"), "{err}");

        let mut h = mk_header();
        set64(&mut h, 72, incompat::EXTERNAL_DATA_FILE);
        assert!(matches!(Header::parse(&h), Err(FormatError::ExternalDataFile { .. })));

        let mut h = mk_header();
        set32(&mut h, 32, 2);
        assert!(matches!(Header::parse(&h), Err(FormatError::Encrypted { method: "LUKS" })));
    }

    #[test]
    fn names_unknown_incompatible_bits_from_the_feature_table() {
        let mut h = mk_header();
        set64(&mut h, 72, 1 << 9);
        // Feature name table at 112: one entry (type 0 = incompatible, bit 9, "frobnicate").
        set32(&mut h, 112, ext::FEATURE_NAMES);
        set32(&mut h, 116, 48);
        h[120] = 0;
        h[121] = 9;
        h[122..132].copy_from_slice(b"frobnicate");
        let err = Header::parse(&h).unwrap_err();
        assert!(err.to_string().contains("bit 9 \"frobnicate\""), "{err}");
    }

    #[test]
    fn accepts_dirty_and_reads_the_compression_type() {
        let mut h = mk_header();
        set64(&mut h, 72, incompat::DIRTY | incompat::COMPRESSION_TYPE);
        h[104] = 1;
        assert_eq!(Header::parse(&h).unwrap().codec, Codec::Zstd);
        h[104] = 9;
        assert!(Header::parse(&h).is_err());
    }

    #[test]
    fn extension_lengths_are_bounded() {
        let mut h = mk_header();
        set32(&mut h, 112, 0x1234);
        set32(&mut h, 116, u32::MAX);
        assert!(Header::parse(&h).is_err());
    }
}

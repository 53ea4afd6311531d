//! L1 and L2 table entries, decoded into the mapping primitive: what one guest cluster is.

use super::FORMAT;
use super::header::{HOST_OFFSET_MASK, Header};
use crate::format::FormatError;

/// What a guest cluster reads as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cluster {
    /// Reads as zeros (unallocated without a backing file, or the zero flag).
    Zero,
    /// The whole cluster is stored at `host`.
    Data { host: u64 },
    /// Extended L2: some subclusters stored at `host + i * subcluster`, the rest zero.
    /// `zero_mask` bit i set = subcluster i reads as zero.
    Partial { host: u64, zero_mask: u32 },
    /// Compressed bytes at `host`, `len` bytes long (may run up to 511 bytes past the data).
    Compressed { host: u64, len: u64 },
}

/// An L1 entry: the host offset of an L2 table, or `None` when the range is unallocated.
pub fn l1_entry(header: &Header, raw: u64) -> Result<Option<u64>, FormatError> {
    let offset = raw & HOST_OFFSET_MASK;
    if offset == 0 {
        return Ok(None);
    }
    if !offset.is_multiple_of(header.cluster_size()) {
        return Err(FormatError::Misaligned { format: FORMAT, what: "L2 table", offset, unit: header.cluster_size() });
    }
    Ok(Some(offset))
}

/// Decodes the L2 entry for one guest cluster. `bitmap` is the subcluster bitmap of an
/// extended L2 entry (`None` for regular entries).
pub fn l2_entry(header: &Header, raw: u64, bitmap: Option<u64>) -> Result<Cluster, FormatError> {
    const COMPRESSED: u64 = 1 << 62;
    const ZERO_FLAG: u64 = 1;
    let cs = header.cluster_size();
    if raw & COMPRESSED != 0 {
        // Compressed descriptor: x = 62 - (cluster_bits - 8) bits of host offset, then the
        // number of additional 512-byte sectors.
        let x = 62 - (header.cluster_bits - 8);
        let host = raw & ((1u64 << x) - 1);
        let sectors = ((raw >> x) & ((1u64 << (header.cluster_bits - 8)) - 1)) + 1;
        let len = sectors * 512 - (host & 511);
        if host == 0 {
            return Err(FormatError::corrupt(FORMAT, "compressed cluster at host offset 0"));
        }
        return Ok(Cluster::Compressed { host, len });
    }
    let host = raw & HOST_OFFSET_MASK;
    if host != 0 && !host.is_multiple_of(cs) {
        return Err(FormatError::Misaligned { format: FORMAT, what: "data cluster", offset: host, unit: cs });
    }
    let Some(bitmap) = bitmap else {
        return Ok(if raw & ZERO_FLAG != 0 && header.version >= 3 || host == 0 {
            Cluster::Zero
        } else {
            Cluster::Data { host }
        });
    };
    let alloc = bitmap as u32;
    let zero = (bitmap >> 32) as u32;
    if alloc & zero != 0 {
        return Err(FormatError::corrupt(
            FORMAT,
            format!("subcluster bitmap {bitmap:#018x} marks subclusters both allocated and zero"),
        ));
    }
    if alloc == 0 {
        // Unallocated subclusters read as zero: there is no backing file.
        return Ok(Cluster::Zero);
    }
    if host == 0 {
        return Err(FormatError::corrupt(
            FORMAT,
            format!("subclusters marked allocated ({alloc:#010x}) in a cluster without a host offset"),
        ));
    }
    Ok(if alloc == u32::MAX { Cluster::Data { host } } else { Cluster::Partial { host, zero_mask: !alloc } })
}

/// Decodes a whole L2 table (`table` is one cluster) into clusters, in guest order.
pub fn decode_l2(header: &Header, table: &[u8]) -> Result<Vec<Cluster>, FormatError> {
    let entry = header.l2_entry_bytes() as usize;
    table
        .chunks_exact(entry)
        .map(|e| {
            let raw = u64::from_be_bytes(e[..8].try_into().expect("8 bytes"));
            let bitmap = header.extended_l2.then(|| u64::from_be_bytes(e[8..16].try_into().expect("8 bytes")));
            l2_entry(header, raw, bitmap)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::header::tests::mk_header;
    use super::*;

    fn header() -> Header {
        Header::parse(&mk_header()).unwrap()
    }

    #[test]
    fn standard_entries() {
        let h = header();
        assert_eq!(l2_entry(&h, 0, None).unwrap(), Cluster::Zero);
        assert_eq!(l2_entry(&h, (1 << 63) | 0x50000, None).unwrap(), Cluster::Data { host: 0x50000 });
        assert_eq!(l2_entry(&h, 0x50000 | 1, None).unwrap(), Cluster::Zero);
        assert!(matches!(l2_entry(&h, 0x50200, None), Err(FormatError::Misaligned { .. })));
    }

    #[test]
    fn compressed_entries() {
        let h = header(); // 64 KiB clusters: x = 62 - 8 = 54
        let raw = (1u64 << 62) | (3u64 << 54) | 0x12345;
        assert_eq!(l2_entry(&h, raw, None).unwrap(), Cluster::Compressed { host: 0x12345, len: 4 * 512 - 0x145 });
    }

    #[test]
    fn subcluster_bitmaps() {
        let h = header();
        assert_eq!(l2_entry(&h, 0x50000, Some(0)).unwrap(), Cluster::Zero);
        assert_eq!(l2_entry(&h, 0x50000, Some(u32::MAX as u64)).unwrap(), Cluster::Data { host: 0x50000 });
        assert_eq!(l2_entry(&h, 0x50000, Some(0b101)).unwrap(), Cluster::Partial { host: 0x50000, zero_mask: !0b101 });
        assert!(l2_entry(&h, 0x50000, Some(1 | (1 << 32))).is_err());
        assert!(l2_entry(&h, 0, Some(1)).is_err());
    }
}

//! qcow2 from a random-access source: metadata first, then data in host-offset order.
//!
//! The L1 table is read once; L2 tables are read a window at a time (bounded memory), and
//! each window's clusters are coalesced into large reads: runs contiguous in both guest and
//! host, and batches of compressed clusters whose host span fits a chunk. Jobs go out in
//! guest order, which for images qemu-img wrote is host order give or take the few clusters
//! its parallel writers reorder, so the source is read front to back in big requests while
//! the target is allocated front to back.

use super::FORMAT;
use super::header::Header;
use super::table::{Cluster, decode_l2, l1_entry};
use crate::copy::{CompressedCluster, Input, Job, JobSink, ZeroMask};
use crate::error::ImportError;
use crate::format::{FormatError, ZeroRuns};
use crate::source::RandomAccess;

/// Guest clusters planned at once; bounds the planner's memory (about 32 bytes each).
const WINDOW_CLUSTERS: u64 = 256 << 10;
/// Compressed data may run this far past the end of the file (its last sector is partial).
const COMPRESSED_SLACK: u64 = 512;

/// One allocated guest cluster (or the part of it below the virtual size).
#[derive(Debug, Clone, Copy)]
struct Piece {
    host: u64,
    guest: u64,
    /// Host bytes to read.
    len: u64,
    kind: PieceKind,
}

#[derive(Debug, Clone, Copy)]
enum PieceKind {
    Data {
        zero_mask: Option<u32>,
    },
    /// `out_len` guest bytes kept out of the decompressed cluster.
    Compressed {
        out_len: u64,
    },
}

/// Emits the jobs that convert the image. `need_zero`: the target needs zero ranges written
/// explicitly (block devices).
pub fn convert(h: &Header, src: &dyn RandomAccess, sink: &JobSink<'_>, need_zero: bool) -> Result<(), ImportError> {
    let file_len = src.len();
    let cs = h.cluster_size();
    let l1 = read_l1(h, src)?;
    let mut zeros = ZeroRuns::new(need_zero);
    let mut index = 0usize;
    let mut table = vec![0u8; cs as usize];
    while index < l1.len() {
        // Plan one window of L2 tables.
        let mut pieces = Vec::new();
        let mut planned = 0u64;
        while index < l1.len() && planned < WINDOW_CLUSTERS {
            sink.check()?;
            let guest_base = index as u64 * h.bytes_per_l2();
            let span = h.bytes_per_l2().min(h.virtual_size - guest_base);
            match l1_entry(h, l1[index])? {
                None => zeros.add(guest_base, span, sink)?,
                Some(l2_offset) => {
                    check_bounds("L2 table", l2_offset, cs, file_len)?;
                    src.read_exact_at(&mut table, l2_offset)?;
                    for (i, cluster) in decode_l2(h, &table)?.into_iter().enumerate() {
                        let guest = guest_base + i as u64 * cs;
                        if guest >= h.virtual_size {
                            break;
                        }
                        let glen = cs.min(h.virtual_size - guest);
                        match cluster {
                            Cluster::Zero => zeros.add(guest, glen, sink)?,
                            Cluster::Data { host } => {
                                check_bounds("data cluster", host, glen, file_len)?;
                                pieces.push(Piece {
                                    host,
                                    guest,
                                    len: glen,
                                    kind: PieceKind::Data { zero_mask: None },
                                });
                            }
                            Cluster::Partial { host, zero_mask } => {
                                let mask = ZeroMask { unit: h.subcluster_size() as usize, bits: zero_mask };
                                check_bounds("data cluster", host, mask.stored_len(glen as usize) as u64, file_len)?;
                                pieces.push(Piece {
                                    host,
                                    guest,
                                    len: glen,
                                    kind: PieceKind::Data { zero_mask: Some(zero_mask) },
                                });
                            }
                            Cluster::Compressed { host, len } => {
                                let len = clamp_compressed(host, len, file_len)?;
                                pieces.push(Piece { host, guest, len, kind: PieceKind::Compressed { out_len: glen } });
                            }
                        }
                    }
                    planned += h.l2_entries();
                }
            }
            index += 1;
        }
        zeros.flush(sink)?;
        // Guest order: the target is then allocated front to back (see copy::Turns), and for
        // images qemu-img wrote, host order is guest order give or take a few clusters.
        emit(h, &pieces, sink)?;
    }
    zeros.flush(sink)
}

fn read_l1(h: &Header, src: &dyn RandomAccess) -> Result<Vec<u64>, ImportError> {
    let used = h.l1_used();
    check_bounds("L1 table", h.l1_offset, used * 8, src.len())?;
    let mut raw = vec![0u8; (used * 8) as usize];
    src.read_exact_at(&mut raw, h.l1_offset)?;
    Ok(raw.chunks_exact(8).map(|e| u64::from_be_bytes(e.try_into().expect("8 bytes"))).collect())
}

fn check_bounds(what: &'static str, offset: u64, len: u64, file_len: u64) -> Result<(), FormatError> {
    match offset.checked_add(len) {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(FormatError::OutOfBounds { format: FORMAT, what, offset, len, file_len }),
    }
}

/// The compressed length to read: the descriptor rounds up to whole sectors, so the last
/// compressed cluster of a file may claim up to 511 bytes past its end.
pub(super) fn clamp_compressed(host: u64, len: u64, file_len: u64) -> Result<u64, FormatError> {
    let end = host.checked_add(len).ok_or(FormatError::OutOfBounds {
        format: FORMAT,
        what: "compressed cluster",
        offset: host,
        len,
        file_len,
    })?;
    if host >= file_len || end > file_len + COMPRESSED_SLACK {
        return Err(FormatError::OutOfBounds {
            format: FORMAT,
            what: "compressed cluster",
            offset: host,
            len,
            file_len,
        });
    }
    Ok(end.min(file_len) - host)
}

/// Turns host-sorted pieces into coalesced jobs.
fn emit(h: &Header, pieces: &[Piece], sink: &JobSink<'_>) -> Result<(), ImportError> {
    let chunk = sink.chunk() as u64;
    let mut i = 0;
    while i < pieces.len() {
        sink.check()?;
        let first = pieces[i];
        match first.kind {
            PieceKind::Data { zero_mask: Some(bits) } => {
                let mask = ZeroMask { unit: h.subcluster_size() as usize, bits };
                sink.submit(Job::Copy {
                    offset: first.guest,
                    host: first.host,
                    len: first.len as usize,
                    zero_mask: Some(mask),
                })?;
                i += 1;
            }
            PieceKind::Data { zero_mask: None } => {
                // Extend while both host and guest stay contiguous.
                let mut len = first.len;
                let mut j = i + 1;
                while let Some(p) = pieces.get(j) {
                    let contiguous = matches!(p.kind, PieceKind::Data { zero_mask: None })
                        && p.host == first.host + len
                        && p.guest == first.guest + len;
                    if !contiguous || len + p.len > chunk {
                        break;
                    }
                    len += p.len;
                    j += 1;
                }
                sink.submit(Job::Copy { offset: first.guest, host: first.host, len: len as usize, zero_mask: None })?;
                i = j;
            }
            PieceKind::Compressed { .. } => {
                // Gather compressed clusters, in guest order, while their host span and their
                // output each fit one chunk. Writers compress in parallel, so neighbours in
                // the guest are near, not always in order, in the file.
                let (mut lo, mut hi) = (first.host, first.host + first.len);
                let mut j = i;
                while let Some(p) = pieces.get(j) {
                    if !matches!(p.kind, PieceKind::Compressed { .. }) {
                        break;
                    }
                    let (nlo, nhi) = (lo.min(p.host), hi.max(p.host + p.len));
                    let out = (j - i + 1) as u64 * h.cluster_size();
                    if j > i && (nhi - nlo > chunk || out > chunk) {
                        break;
                    }
                    (lo, hi) = (nlo, nhi);
                    j += 1;
                }
                if hi - lo > chunk {
                    return Err(FormatError::corrupt(
                        FORMAT,
                        format!("compressed cluster at host offset {} is larger than a job", first.host),
                    )
                    .into());
                }
                let clusters = pieces[i..j]
                    .iter()
                    .map(|p| {
                        let PieceKind::Compressed { out_len } = p.kind else { unreachable!("checked above") };
                        CompressedCluster {
                            guest: p.guest,
                            start: (p.host - lo) as usize,
                            len: p.len as usize,
                            out_len: out_len as usize,
                            cluster_size: h.cluster_size() as usize,
                        }
                    })
                    .collect();
                let input = Input::At { host: lo, len: (hi - lo) as usize };
                sink.submit(Job::Compressed { input, clusters, codec: h.codec })?;
                i = j;
            }
        }
    }
    Ok(())
}

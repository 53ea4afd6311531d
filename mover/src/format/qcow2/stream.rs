//! qcow2 from a pure stream (HTTP without ranges, gz/xz/zst-wrapped images, uploads):
//! decode while the bytes pass, without a scratch copy.
//!
//! Images written by qemu-img put each L2 table before the clusters it maps, so nearly every
//! cluster can be placed on arrival: the decoder learns the L1 table, then each L2 table as
//! it passes, and keeps a map of "host offset → guest offset" for what is still ahead.
//! Data runs are read straight into output buffers. What cannot be placed yet is kept:
//! * the last few clusters (a look-behind window), and the last one that held compressed
//!   data: qemu keeps packing compressed clusters into the tail of a partly used host
//!   cluster, even after it allocated whole clusters and new L2 tables past it;
//! * clusters nothing has claimed yet while some L2 table is still ahead, in a spool bounded
//!   by configuration. An image that needs more fails with a clear error instead.

use super::FORMAT;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Read;

use super::header::{HOST_OFFSET_MASK, Header};
use super::random::clamp_compressed;
use super::table::{Cluster, decode_l2, l1_entry};
use crate::copy::{Job, JobSink, ZeroMask};
use crate::disk::Storage;
use crate::error::ImportError;
use crate::format::{CompressedBatch, FormatError, ZeroRuns, read_full};

/// Limits of the streaming decoder (memory is bounded by these, not by the image).
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Bytes of not-yet-placeable clusters kept in memory.
    pub spool_bytes: u64,
    /// Host→guest mappings remembered for data still ahead.
    pub pending_entries: usize,
}

impl Default for StreamLimits {
    fn default() -> StreamLimits {
        StreamLimits { spool_bytes: 16 << 20, pending_entries: 1 << 20 }
    }
}

/// Clusters of look-behind kept for compressed data mapped by an L2 table that follows it.
const LOOKBEHIND: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pend {
    /// `len` bytes of consecutive whole clusters (host and guest contiguous).
    Run { len: u64 },
    /// One cluster, some subclusters zero.
    Partial { mask: u32, len: u64 },
    /// Compressed bytes; `out_len` guest bytes kept.
    Compressed { len: u64, out_len: u64 },
}

/// Converts the qcow2 image read from `stream`, whose first bytes were parsed into `h`.
/// `disk` lends the room past the image (its spool region) for clusters that do not fit
/// the memory spool.
pub fn convert(
    h: &Header,
    stream: &mut dyn Read,
    sink: &JobSink<'_>,
    need_zero: bool,
    limits: StreamLimits,
    disk: Option<&dyn Storage>,
) -> Result<(), ImportError> {
    Decoder::new(h, sink, need_zero, limits, disk).run(stream)
}

/// Where a spooled cluster is kept.
#[derive(Debug)]
enum Spooled {
    Memory(Vec<u8>),
    /// Parked on the target, past the image, at this offset.
    Target {
        offset: u64,
        len: usize,
    },
}

struct Decoder<'a, 's> {
    h: &'a Header,
    sink: &'a JobSink<'s>,
    cs: u64,
    limits: StreamLimits,
    zeros: ZeroRuns,
    /// Host bytes consumed so far.
    pos: u64,
    /// The L1 table being collected, until complete.
    l1: Option<Vec<u8>>,
    /// L2 tables still ahead: host offset → L1 index.
    unseen_l2: BTreeMap<u64, u64>,
    /// Refcount table bytes still ahead (to learn which clusters are refcount blocks).
    refcount_table: Option<(u64, u64)>,
    /// Clusters known to hold metadata we do not need (refcount blocks).
    skip: BTreeSet<u64>,
    /// Data still ahead: (host, guest) → what.
    pending: BTreeMap<(u64, u64), Pend>,
    /// Whole clusters passed before anything claimed them.
    spool: BTreeMap<u64, Spooled>,
    spool_used: u64,
    /// The target's spool region, and how much of it is used.
    disk: Option<&'a dyn Storage>,
    disk_spool_next: u64,
    /// The last clusters read one by one: (host offset, bytes).
    window: VecDeque<(u64, Vec<u8>)>,
    /// The last cluster that held compressed data.
    last_compressed: Option<(u64, Vec<u8>)>,
    /// Compressed clusters being batched into one job.
    batch: CompressedBatch,
    /// The stream has ended.
    eof: bool,
}

impl<'a, 's> Decoder<'a, 's> {
    fn new(
        h: &'a Header,
        sink: &'a JobSink<'s>,
        need_zero: bool,
        limits: StreamLimits,
        disk: Option<&'a dyn Storage>,
    ) -> Decoder<'a, 's> {
        let rt_len = u64::from(h.refcount_table_clusters) * h.cluster_size();
        Decoder {
            h,
            sink,
            cs: h.cluster_size(),
            limits,
            zeros: ZeroRuns::new(need_zero),
            pos: 0,
            l1: (h.l1_used() > 0).then(Vec::new),
            unseen_l2: BTreeMap::new(),
            refcount_table: (h.refcount_table_offset > 0 && rt_len > 0).then_some((h.refcount_table_offset, rt_len)),
            skip: BTreeSet::new(),
            pending: BTreeMap::new(),
            spool: BTreeMap::new(),
            spool_used: 0,
            disk_spool_next: disk.and_then(|d| d.spool_region()).map_or(0, |(start, _)| start),
            disk,
            window: VecDeque::new(),
            last_compressed: None,
            batch: CompressedBatch::new(FORMAT, h.codec, h.cluster_size() as usize),
            eof: false,
        }
    }

    fn run(mut self, stream: &mut dyn Read) -> Result<(), ImportError> {
        if self.l1.is_none() {
            // No L1 entries: the whole disk reads as zero.
            self.zeros.add(0, self.h.virtual_size, self.sink)?;
        }
        let mut cluster = vec![0u8; self.cs as usize];
        while !self.eof {
            self.sink.check()?;
            if self.metadata_done() && self.pending.is_empty() {
                break;
            }
            // A data run starting here goes straight into an output buffer, unless compressed
            // data that ends inside it is waiting for its last bytes (entries behind `pos`
            // are always such compressed data: everything else is placed when it passes).
            let waiting = self.pending.range(..(self.pos, 0)).next().is_some();
            if let Some(len) = self.run_at(self.pos).filter(|_| !waiting) {
                self.read_run(stream, len)?;
                continue;
            }
            let n = read_full(stream, &mut cluster)?;
            if n == 0 {
                self.eof = true;
                break;
            }
            let start = self.pos;
            self.pos += n as u64;
            self.on_cluster(start, &cluster[..n])?;
            self.place_compressed()?;
        }
        self.finish_at_eof()?;
        self.batch.flush(self.sink)?;
        self.zeros.flush(self.sink)?;
        // The rest of the stream maps nothing, but is read to its end: a checksum covers
        // it, and a transfer that breaks there must not pass for a complete one.
        super::super::drain(stream)
    }

    fn metadata_done(&self) -> bool {
        self.l1.is_none() && self.unseen_l2.is_empty()
    }

    /// If a run of whole data clusters starts at `pos`, how many bytes to read at once:
    /// up to a chunk, and never past the next metadata we still need.
    fn run_at(&self, pos: u64) -> Option<u64> {
        let mut at_pos = self.pending.range((pos, 0)..(pos + 1, 0));
        let (&(_, _), &pend) = at_pos.next()?;
        if at_pos.next().is_some() {
            return None; // mapped twice: take the cluster-by-cluster path
        }
        let Pend::Run { len } = pend else { return None };
        let mut limit = len.min(self.sink.chunk() as u64);
        if let Some((&l2, _)) = self.unseen_l2.range(pos..).next() {
            limit = limit.min(l2 - pos);
        }
        if let Some((rt, _)) = self.refcount_table.filter(|&(rt, _)| rt > pos) {
            limit = limit.min(rt - pos);
        }
        if self.l1.is_some() && self.h.l1_offset > pos {
            limit = limit.min(self.h.l1_offset - pos);
        }
        // Whole clusters only, so reads stay cluster-aligned; a short last cluster (the image
        // ends inside it) takes the cluster-by-cluster path.
        let limit = limit / self.cs * self.cs;
        (limit > 0).then_some(limit)
    }

    fn read_run(&mut self, stream: &mut dyn Read, len: u64) -> Result<(), ImportError> {
        let pos = self.pos;
        let ((_, guest), pend) = self.pending.pop_first_at(pos).expect("run_at found it");
        let Pend::Run { len: run_len } = pend else { unreachable!("run_at checks the kind") };
        let mut buf = self.sink.buffer()?;
        buf.set_len(len as usize);
        let n = read_full(stream, &mut buf)?;
        if (n as u64) < len {
            return Err(FormatError::Truncated {
                format: FORMAT,
                what: "data cluster",
                offset: pos + n as u64,
                received: pos + n as u64,
            }
            .into());
        }
        self.pos += len;
        if run_len > len {
            self.pending.insert((pos + len, guest + len), Pend::Run { len: run_len - len });
        }
        self.sink.submit(Job::Data { offset: guest, buf })
    }

    /// Handles one cluster (or the last, short, piece) read at `start`.
    fn on_cluster(&mut self, start: u64, bytes: &[u8]) -> Result<(), ImportError> {
        let end = start + bytes.len() as u64;
        let mut claimed = start == 0; // the header cluster

        if let Some(l1) = &mut self.l1 {
            let (l1_start, l1_end) = (self.h.l1_offset, self.h.l1_offset + self.h.l1_used() * 8);
            if start < l1_end && end > l1_start {
                let from = l1_start.max(start);
                let to = l1_end.min(end);
                if from != l1_start + l1.len() as u64 {
                    return Err(FormatError::Internal("L1 table bytes out of order").into());
                }
                l1.extend_from_slice(&bytes[(from - start) as usize..(to - start) as usize]);
                claimed = true;
                if to == l1_end {
                    let table = self.l1.take().expect("present");
                    self.on_l1(&table)?;
                }
            }
        }
        if let Some((rt, rt_len)) = self.refcount_table
            && start < rt + rt_len
            && end > rt
        {
            claimed = true;
            let from = rt.max(start);
            let to = (rt + rt_len).min(end);
            for e in bytes[(from - start) as usize..(to - start) as usize].chunks_exact(8) {
                let block = u64::from_be_bytes(e.try_into().expect("8 bytes")) & HOST_OFFSET_MASK;
                // Bounded: an absurd refcount table only costs us spool, not memory.
                if block > end && self.skip.len() < 1 << 16 {
                    self.skip.insert(block);
                }
            }
            if to == rt + rt_len {
                self.refcount_table = None;
            }
        }
        if let Some(index) = self.unseen_l2.remove(&start) {
            if bytes.len() as u64 != self.cs {
                return Err(
                    FormatError::Truncated { format: FORMAT, what: "L2 table", offset: start, received: end }.into()
                );
            }
            self.on_l2(index, bytes)?;
            claimed = true;
        }
        if self.skip.remove(&start) {
            claimed = true;
        }
        // Data mapped here (duplicates and partial clusters take this path).
        let here: Vec<((u64, u64), Pend)> = self
            .pending
            .range((start, 0)..(end, 0))
            .filter(|(_, p)| !matches!(p, Pend::Compressed { .. }))
            .map(|(k, p)| (*k, *p))
            .collect();
        for ((host, guest), pend) in here {
            self.pending.remove(&(host, guest));
            claimed = true;
            self.place_from(bytes, start, host, guest, pend)?;
        }
        if self.pending.range((start, 0)..(end, 0)).next().is_some() {
            claimed = true; // compressed data: placed once it has fully passed
            // qemu keeps packing compressed clusters into the last partly used host cluster,
            // even after allocating whole clusters (and new L2 tables) past it.
            self.last_compressed = Some((start, bytes.to_vec()));
        }
        self.window.push_back((start, bytes.to_vec()));
        if self.window.len() > LOOKBEHIND {
            self.window.pop_front();
        }
        if !claimed && !self.metadata_done() {
            self.spool_cluster(start, bytes)?;
        }
        Ok(())
    }

    fn on_l1(&mut self, table: &[u8]) -> Result<(), ImportError> {
        for (index, e) in table.chunks_exact(8).enumerate() {
            let raw = u64::from_be_bytes(e.try_into().expect("8 bytes"));
            let guest = index as u64 * self.h.bytes_per_l2();
            match l1_entry(self.h, raw)? {
                None => {
                    let span = self.h.bytes_per_l2().min(self.h.virtual_size - guest);
                    self.zeros.add(guest, span, self.sink)?;
                }
                Some(offset) if offset < self.pos => {
                    // Already passed: it must be in the spool or the look-behind window.
                    let table = self.passed_bytes(offset, self.cs)?.ok_or_else(|| FormatError::NeedsRandomAccess {
                        format: FORMAT,
                        reason: format!("L2 table at host offset {offset} comes before the L1 table that names it"),
                    })?;
                    self.on_l2(index as u64, &table)?;
                }
                Some(offset) => {
                    if self.unseen_l2.insert(offset, index as u64).is_some() {
                        return Err(FormatError::corrupt(
                            FORMAT,
                            format!("two L1 entries name the L2 table at {offset}"),
                        )
                        .into());
                    }
                }
            }
        }
        self.release_spool_if_done();
        Ok(())
    }

    fn on_l2(&mut self, index: u64, table: &[u8]) -> Result<(), ImportError> {
        let guest_base = index * self.h.bytes_per_l2();
        for (i, cluster) in decode_l2(self.h, table)?.into_iter().enumerate() {
            let guest = guest_base + i as u64 * self.cs;
            if guest >= self.h.virtual_size {
                break;
            }
            let glen = self.cs.min(self.h.virtual_size - guest);
            let (host, pend) = match cluster {
                Cluster::Zero => {
                    self.zeros.add(guest, glen, self.sink)?;
                    continue;
                }
                Cluster::Data { host } => (host, Pend::Run { len: glen }),
                Cluster::Partial { host, zero_mask } => (host, Pend::Partial { mask: zero_mask, len: glen }),
                Cluster::Compressed { host, len } => (host, Pend::Compressed { len, out_len: glen }),
            };
            if host < self.pos && !matches!(pend, Pend::Compressed { .. }) {
                // Passed before this table told us what it was.
                let bytes = self.passed_bytes(host, glen)?.ok_or_else(|| FormatError::NeedsRandomAccess {
                    format: FORMAT,
                    reason: format!(
                        "data for guest offset {guest} at host offset {host} comes before the L2 table that maps it \
                         and did not fit the spool"
                    ),
                })?;
                self.place_from(&bytes, host, host, guest, pend)?;
                continue;
            }
            self.add_pending(host, guest, pend)?;
        }
        self.release_spool_if_done();
        Ok(())
    }

    /// Remembers data still ahead, merging runs that continue the previous one.
    fn add_pending(&mut self, host: u64, guest: u64, pend: Pend) -> Result<(), ImportError> {
        if let Pend::Run { len } = pend
            && let Some((&(ph, pg), &Pend::Run { len: plen })) = self.pending.range(..(host, 0)).next_back()
            && ph + plen == host
            && pg + plen == guest
            && plen % self.cs == 0
        {
            self.pending.insert((ph, pg), Pend::Run { len: plen + len });
            return Ok(());
        }
        if self.pending.len() >= self.limits.pending_entries {
            return Err(FormatError::NeedsRandomAccess {
                format: FORMAT,
                reason: format!("more than {} fragments are mapped ahead of the stream", self.limits.pending_entries),
            }
            .into());
        }
        if self.pending.insert((host, guest), pend).is_some() {
            return Err(FormatError::corrupt(FORMAT, format!("guest offset {guest} is mapped twice")).into());
        }
        Ok(())
    }

    /// Places a data cluster whose bytes (starting at host offset `base`) are in `bytes`.
    fn place_from(&mut self, bytes: &[u8], base: u64, host: u64, guest: u64, pend: Pend) -> Result<(), ImportError> {
        let (len, mask) = match pend {
            Pend::Run { len } => (len, None),
            Pend::Partial { mask, len } => (len, Some(mask)),
            Pend::Compressed { .. } => return Err(FormatError::Internal("compressed data placed as plain").into()),
        };
        // A run found here (not by run_at) is placed one cluster at a time.
        let take = len.min(self.cs) as usize;
        let mask = mask.map(|bits| ZeroMask { unit: self.h.subcluster_size() as usize, bits });
        // A partly allocated cluster that ends the image may end the file early too.
        let stored = mask.map_or(take, |m| m.stored_len(take));
        let from = (host - base) as usize;
        let data = bytes.get(from..from + stored).ok_or(FormatError::Truncated {
            format: FORMAT,
            what: "data cluster",
            offset: host,
            received: self.pos,
        })?;
        let mut buf = self.sink.buffer()?;
        buf.set_len(take);
        buf[..stored].copy_from_slice(data);
        buf[stored..].fill(0);
        if let Some(mask) = mask {
            mask.apply(&mut buf);
        }
        self.sink.submit(Job::Data { offset: guest, buf })?;
        let take = take as u64;
        if len > take {
            self.add_pending(host + take, guest + take, Pend::Run { len: len - take })?;
        }
        Ok(())
    }

    /// Places every compressed cluster whose bytes have fully passed.
    fn place_compressed(&mut self) -> Result<(), ImportError> {
        // Entries behind `pos` are compressed data (everything else is placed on arrival).
        loop {
            let next = self.pending.range(..(self.pos, 0)).next().map(|(k, p)| (*k, *p));
            let Some(((host, guest), pend)) = next else { return Ok(()) };
            let Pend::Compressed { len, out_len } = pend else {
                return Err(FormatError::Internal("plain data left behind the stream position").into());
            };
            let len = if self.eof { clamp_compressed(host, len, self.pos)? } else { len };
            if host + len > self.pos {
                return Ok(()); // its end is still ahead
            }
            self.pending.remove(&(host, guest));
            let bytes = self.passed_bytes(host, len)?.ok_or_else(|| FormatError::NeedsRandomAccess {
                format: FORMAT,
                reason: format!(
                    "compressed data for guest offset {guest} at host offset {host} is no longer available"
                ),
            })?;
            self.batch.push(self.sink, &bytes, guest, out_len as usize)?;
        }
    }

    /// Bytes `[host, host + len)` that already passed: from the look-behind window or the
    /// spool, which both hold whole clusters. `None` when they were not kept.
    fn passed_bytes(&self, host: u64, len: u64) -> Result<Option<Vec<u8>>, ImportError> {
        let mut out = Vec::with_capacity(len as usize);
        let mut at = host;
        while at < host + len {
            let cluster = at / self.cs * self.cs;
            let parked;
            let recent = self.window.iter().chain(self.last_compressed.iter()).find(|(s, _)| *s == cluster);
            let bytes: &[u8] = if let Some((_, b)) = recent {
                b
            } else {
                match self.spool.get(&cluster) {
                    Some(Spooled::Memory(b)) => b,
                    Some(Spooled::Target { offset, len }) => {
                        let disk = self.disk.ok_or(FormatError::Internal("spool on a target without one"))?;
                        parked = disk.spool_read(*offset, *len)?;
                        &parked
                    }
                    None => return Ok(None),
                }
            };
            let from = (at - cluster) as usize;
            let to = ((host + len - cluster) as usize).min(bytes.len());
            if from >= to {
                return Ok(None);
            }
            out.extend_from_slice(&bytes[from..to]);
            at = cluster + to as u64;
        }
        Ok(Some(out))
    }

    fn spool_cluster(&mut self, start: u64, bytes: &[u8]) -> Result<(), ImportError> {
        if self.spool_used + bytes.len() as u64 <= self.limits.spool_bytes {
            self.spool_used += bytes.len() as u64;
            self.spool.insert(start, Spooled::Memory(bytes.to_vec()));
            return Ok(());
        }
        // Memory is full: park it on the target, past the image, if there is room.
        if let Some(disk) = self.disk
            && let Some((region, room)) = disk.spool_region()
            && self.disk_spool_next + self.cs <= region + room
        {
            let offset = self.disk_spool_next;
            disk.spool_write(bytes, offset)?;
            self.disk_spool_next += self.cs;
            self.spool.insert(start, Spooled::Target { offset, len: bytes.len() });
            return Ok(());
        }
        Err(FormatError::NeedsRandomAccess {
            format: FORMAT,
            reason: format!(
                "more bytes pass before the metadata that maps them (at host offset {start}) than the spool \
                 holds ({} bytes in memory, {} on the target)",
                self.limits.spool_bytes,
                self.disk.and_then(|d| d.spool_region()).map_or(0, |(_, room)| room)
            ),
        }
        .into())
    }

    /// Once every L2 table is known, nothing passed can be claimed any more.
    fn release_spool_if_done(&mut self) {
        if self.metadata_done() {
            self.spool.clear();
            self.spool_used = 0;
            // Target slots are not reused: the region only has to hold what waits at once.
        }
    }

    fn finish_at_eof(&mut self) -> Result<(), ImportError> {
        if self.eof {
            self.place_compressed()?;
        }
        if self.l1.is_some() {
            return Err(FormatError::Truncated {
                format: FORMAT,
                what: "L1 table",
                offset: self.h.l1_offset,
                received: self.pos,
            }
            .into());
        }
        if let Some((&offset, _)) = self.unseen_l2.iter().next() {
            return Err(FormatError::Truncated { format: FORMAT, what: "L2 table", offset, received: self.pos }.into());
        }
        if let Some((&(host, _), pend)) = self.pending.iter().next() {
            let what = if matches!(pend, Pend::Compressed { .. }) { "compressed cluster" } else { "data cluster" };
            return Err(FormatError::Truncated { format: FORMAT, what, offset: host, received: self.pos }.into());
        }
        Ok(())
    }
}

trait PopAt {
    fn pop_first_at(&mut self, host: u64) -> Option<((u64, u64), Pend)>;
}

impl PopAt for BTreeMap<(u64, u64), Pend> {
    fn pop_first_at(&mut self, host: u64) -> Option<((u64, u64), Pend)> {
        let key = *self.range((host, 0)..(host + 1, 0)).next()?.0;
        self.remove(&key).map(|p| (key, p))
    }
}

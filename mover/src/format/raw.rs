//! Raw images (and ISO, and anything unrecognised): the bytes are the disk — except a
//! trailer that says otherwise (a fixed VHD's footer), which is never written as disk bytes.

use std::io::Read;

use crate::copy::{Job, JobSink, PooledBuf};
use crate::detect::{self, Trailer};
use crate::error::ImportError;
use crate::format::read_full;
use crate::format::vhd::FOOTER_LEN;
use crate::source::RandomAccess;

/// Copies a raw image with random access: the first `data_len` bytes, data regions in
/// chunk-sized reads and holes of a sparse local file as zero ranges (never read); zeros
/// from there to `virtual_size`.
pub fn convert_random(
    src: &dyn RandomAccess,
    data_len: u64,
    virtual_size: u64,
    sink: &JobSink<'_>,
    need_zero: bool,
) -> Result<(), ImportError> {
    let len = data_len.min(src.len());
    let chunk = sink.chunk() as u64;
    let mut pos = 0;
    while pos < len {
        sink.check()?;
        let (start, end) = src.next_data(pos).map_or((len, len), |(s, e)| (s.min(len), e.min(len)));
        if start > pos && need_zero {
            sink.submit(Job::Zero { offset: pos, len: start - pos })?;
        }
        // Align chunk boundaries to the chunk size so jobs never share a block.
        let mut at = start;
        while at < end {
            let next = ((at / chunk + 1) * chunk).min(end);
            sink.submit(Job::Copy { offset: at, host: at, len: (next - at) as usize, zero_mask: None })?;
            at = next;
        }
        pos = end.max(start);
        if start >= len {
            break;
        }
    }
    if virtual_size > len && need_zero {
        sink.submit(Job::Zero { offset: len, len: virtual_size - len })?;
    }
    Ok(())
}

/// How a raw stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawEnd {
    /// Bytes the stream held.
    pub stream_len: u64,
    /// The disk's size: the stream's length, or what its trailer says.
    pub virtual_size: u64,
    pub trailer: Option<Trailer>,
}

/// The smallest disk a raw stream of `len` bytes may hold: it may end in a fixed VHD's
/// footer, known only once it has passed.
pub fn smallest_disk(len: u64) -> u64 {
    if len >= 2 * FOOTER_LEN as u64 && len.is_multiple_of(FOOTER_LEN as u64) { len - FOOTER_LEN as u64 } else { len }
}

/// Copies a raw image from a stream, chunk by chunk. Each chunk is held until the next one
/// arrives, so that the last bytes can be looked at before they are written: a fixed VHD's
/// footer is dropped, not written as the disk's last sector.
pub fn convert_stream(stream: &mut dyn Read, sink: &JobSink<'_>, need_zero: bool) -> Result<RawEnd, ImportError> {
    let mut pos = 0u64;
    let mut held: Option<PooledBuf> = None;
    let mut short: Option<PooledBuf> = None;
    loop {
        sink.check()?;
        let mut buf = sink.buffer()?;
        let cap = buf.capacity();
        buf.set_len(cap);
        let filled = read_full(stream, &mut buf)?;
        buf.set_len(filled);
        if filled == 0 {
            break;
        }
        if filled < FOOTER_LEN && held.is_some() {
            // The stream ends within a footer's length of the held chunk: keep both.
            short = Some(buf);
            break;
        }
        if let Some(prev) = held.take() {
            let len = prev.len() as u64;
            sink.submit(Job::Data { offset: pos, buf: prev })?;
            pos += len;
        }
        held = Some(buf);
        if filled < cap {
            break;
        }
    }
    let Some(mut last) = held else { return Ok(RawEnd { stream_len: pos, virtual_size: pos, trailer: None }) };
    let short_len = short.as_ref().map_or(0, |b| b.len());
    let stream_len = pos + (last.len() + short_len) as u64;
    // The last bytes, across the two chunks when the stream ended just after a full one.
    let mut tail = Vec::with_capacity(FOOTER_LEN);
    tail.extend_from_slice(&last[last.len().saturating_sub(FOOTER_LEN - short_len.min(FOOTER_LEN))..]);
    if let Some(b) = &short {
        tail.extend_from_slice(b);
    }
    let trailer = if tail.len() == FOOTER_LEN { detect::sniff_tail(&tail, stream_len)? } else { None };
    let virtual_size = match trailer {
        Some(Trailer::FixedVhd { virtual_size, data_len }) => {
            // Everything from the footer on is dropped. A footer whose (CHS) size is smaller
            // than the bytes already passed keeps nothing more: those bytes lie past the
            // disk's end, which the target's final size cuts off.
            let keep = data_len.saturating_sub(pos).min(last.len() as u64) as usize;
            last.set_len(keep);
            short = None;
            if virtual_size > data_len && need_zero {
                sink.submit(Job::Zero { offset: data_len, len: virtual_size - data_len })?;
            }
            virtual_size
        }
        _ => stream_len,
    };
    // A dmg is refused by the caller: nothing of its trailer is written either.
    if trailer != Some(Trailer::Dmg) {
        let last_len = last.len() as u64;
        if last_len > 0 {
            sink.submit(Job::Data { offset: pos, buf: last })?;
        }
        if let Some(b) = short {
            sink.submit(Job::Data { offset: pos + last_len, buf: b })?;
        }
    }
    Ok(RawEnd { stream_len, virtual_size, trailer })
}

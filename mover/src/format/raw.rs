//! Raw images (and ISO, and anything unrecognised): the bytes are the disk.

use std::io::Read;

use crate::copy::{Job, JobSink};
use crate::error::ImportError;
use crate::source::RandomAccess;

/// Copies a raw image with random access: data regions in chunk-sized reads, holes of a
/// sparse local file as zero ranges (never read).
pub fn convert_random(src: &dyn RandomAccess, sink: &JobSink<'_>, need_zero: bool) -> Result<(), ImportError> {
    let len = src.len();
    let chunk = sink.chunk() as u64;
    let mut pos = 0;
    while pos < len {
        sink.check()?;
        let (start, end) = src.next_data(pos).unwrap_or((len, len));
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
    Ok(())
}

/// Copies a raw image from a stream, chunk by chunk. Returns the image size (bytes read).
pub fn convert_stream(stream: &mut dyn Read, sink: &JobSink<'_>) -> Result<u64, ImportError> {
    let mut pos = 0u64;
    loop {
        sink.check()?;
        let mut buf = sink.buffer()?;
        let cap = buf.capacity();
        buf.set_len(cap);
        let mut filled = 0;
        while filled < cap {
            match stream.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(crate::import::read_error(e)),
            }
        }
        if filled == 0 {
            return Ok(pos);
        }
        buf.set_len(filled);
        sink.submit(Job::Data { offset: pos, buf })?;
        pos += filled as u64;
        if filled < cap {
            return Ok(pos);
        }
    }
}

//! Block-mapped images (vhd, vhdx, vdi, sparse vmdk): the guest disk is cut into equal
//! blocks, each stored whole at some host offset or reading as zero. A format module reads
//! its headers and tables through [`Meta`] into an [`ExtentMap`]; this module turns the map
//! into copy jobs:
//!
//! * with random access, in guest order, data runs coalesced into large reads;
//! * from a stream, in host order: the tables of these formats precede the data they map in
//!   every file their tools write, so each block is placed as it passes. Data that passed
//!   before the table naming it is refused with a clear error (no scratch copy).
//!
//! Memory is one [`Extent`] per run of blocks contiguous in guest and host, bounded by
//! [`MAX_EXTENTS`], whatever the image size.

use std::io::{self, Read};

use super::{FormatError, ZeroRuns};
use crate::copy::{Job, JobSink, ZERO_BLOCK};
use crate::error::ImportError;
use crate::source::RandomAccess;

/// Most runs a map may hold (24 bytes each): a map this fragmented is hostile, or needs
/// converting elsewhere first.
pub const MAX_EXTENTS: usize = 4 << 20;

/// `len` guest bytes at `guest` are stored at host offset `host`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub guest: u64,
    pub host: u64,
    pub len: u64,
}

/// Where an image's data is, collected from its tables in any order.
#[derive(Debug)]
pub struct ExtentMap {
    format: &'static str,
    virtual_size: u64,
    granularity: u64,
    extents: Vec<Extent>,
}

impl ExtentMap {
    /// `granularity` is the format's smallest mapped unit (block, grain): writes of the
    /// copy engine are aligned to it.
    pub fn new(format: &'static str, virtual_size: u64, granularity: u64) -> ExtentMap {
        ExtentMap { format, virtual_size, granularity, extents: Vec::new() }
    }

    pub fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    /// Records that guest `[guest, guest + len)` is stored at `host`; the part past the
    /// virtual size is dropped (the last block of an image may be partial).
    pub fn add(&mut self, guest: u64, host: u64, len: u64) -> Result<(), FormatError> {
        if guest >= self.virtual_size || len == 0 {
            return Ok(());
        }
        let len = len.min(self.virtual_size - guest);
        if host.checked_add(len).is_none() {
            return Err(FormatError::OutOfBounds {
                format: self.format,
                what: "block",
                offset: host,
                len,
                file_len: 0,
            });
        }
        if let Some(last) = self.extents.last_mut()
            && last.guest + last.len == guest
            && last.host + last.len == host
        {
            last.len += len;
            return Ok(());
        }
        if self.extents.len() >= MAX_EXTENTS {
            return Err(FormatError::corrupt(
                self.format,
                format!("its blocks form more than {MAX_EXTENTS} separate runs; convert it with qemu-img first"),
            ));
        }
        self.extents.push(Extent { guest, host, len });
        Ok(())
    }

    /// Sorts the map and checks it: no guest byte mapped twice, and (when the image's length
    /// is known) every run inside the file.
    pub fn finish(mut self, file_len: Option<u64>) -> Result<Mapped, FormatError> {
        self.extents.sort_unstable_by_key(|e| e.guest);
        let mut merged: Vec<Extent> = Vec::with_capacity(self.extents.len());
        for e in self.extents {
            if let Some(file_len) = file_len
                && e.host + e.len > file_len
            {
                return Err(FormatError::OutOfBounds {
                    format: self.format,
                    what: "data block",
                    offset: e.host,
                    len: e.len,
                    file_len,
                });
            }
            match merged.last_mut() {
                Some(last) if last.guest + last.len > e.guest => {
                    return Err(FormatError::corrupt(
                        self.format,
                        format!(
                            "guest offset {} is mapped by two blocks (host offsets {} and {})",
                            e.guest, last.host, e.host
                        ),
                    ));
                }
                Some(last) if last.guest + last.len == e.guest && last.host + last.len == e.host => last.len += e.len,
                _ => merged.push(e),
            }
        }
        Ok(Mapped {
            format: self.format,
            virtual_size: self.virtual_size,
            granularity: self.granularity,
            extents: merged,
        })
    }
}

/// A checked map, ready to convert.
#[derive(Debug)]
pub struct Mapped {
    format: &'static str,
    pub virtual_size: u64,
    granularity: u64,
    /// Guest order, no overlaps.
    extents: Vec<Extent>,
}

impl Mapped {
    /// Whether every write is aligned well enough for direct I/O on the target.
    pub fn direct_ok(&self) -> bool {
        self.granularity >= ZERO_BLOCK as u64
    }

    /// The runs, in guest order: for format readers' tests.
    #[cfg(test)]
    pub(crate) fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// Guest bytes holding data.
    pub fn data_bytes(&self) -> u64 {
        self.extents.iter().map(|e| e.len).sum()
    }

    /// Emits the jobs that convert the image from a random-access source. `need_zero`: the
    /// target needs zero ranges written explicitly (block devices).
    pub fn convert_random(
        &self,
        src: &dyn RandomAccess,
        sink: &JobSink<'_>,
        need_zero: bool,
    ) -> Result<(), ImportError> {
        let chunk = sink.chunk() as u64;
        let mut zeros = ZeroRuns::new(need_zero);
        let mut pos = 0;
        for e in &self.extents {
            sink.check()?;
            zeros.add(pos, e.guest - pos, sink)?;
            zeros.flush(sink)?;
            let mut at = e.guest;
            let end = e.guest + e.len;
            while at < end {
                // Cut at guest chunk boundaries: jobs never share a block of the target.
                let next = ((at / chunk + 1) * chunk).min(end);
                let host = e.host + (at - e.guest);
                sink.submit(Job::Copy { offset: at, host, len: (next - at) as usize, zero_mask: None })?;
                at = next;
            }
            pos = end;
        }
        let _ = src; // read by the workers
        zeros.add(pos, self.virtual_size - pos, sink)?;
        zeros.flush(sink)
    }

    /// Emits the jobs that convert the image from `input`, positioned after the metadata the
    /// format read: data is read in host order and placed as it passes.
    pub fn convert_stream(
        &self,
        input: &mut Forward<'_>,
        sink: &JobSink<'_>,
        need_zero: bool,
    ) -> Result<(), ImportError> {
        // Zero ranges first: they need no bytes from the stream.
        let mut zeros = ZeroRuns::new(need_zero);
        let mut pos = 0;
        for e in &self.extents {
            zeros.add(pos, e.guest - pos, sink)?;
            pos = e.guest + e.len;
        }
        zeros.add(pos, self.virtual_size - pos, sink)?;
        zeros.flush(sink)?;

        let mut by_host: Vec<&Extent> = self.extents.iter().collect();
        by_host.sort_unstable_by_key(|e| e.host);
        let chunk = sink.chunk() as u64;
        for e in by_host {
            sink.check()?;
            if e.host < input.pos() {
                return Err(FormatError::NeedsRandomAccess {
                    format: self.format,
                    reason: format!(
                        "the data for guest offset {} at host offset {} comes before byte {} of the stream (before \
                         the table that maps it, or shared with another block)",
                        e.guest,
                        e.host,
                        input.pos()
                    ),
                }
                .into());
            }
            input.skip_to_reach(e.host, "data block")?;
            let mut at = e.guest;
            let end = e.guest + e.len;
            while at < end {
                let next = ((at / chunk + 1) * chunk).min(end);
                let mut buf = sink.buffer()?;
                buf.set_len((next - at) as usize);
                input.read_exact(&mut buf, self.format, "data block")?;
                sink.submit(Job::Data { offset: at, buf })?;
                at = next;
            }
        }
        input.drain()
    }
}

/// How a format reads its headers and tables, the same way from a random-access source or
/// from a stream.
pub trait Meta {
    /// Fills `buf` from host offset `offset`. `what` names the structure, for errors.
    fn read_at(&mut self, buf: &mut [u8], offset: u64, what: &'static str) -> Result<(), ImportError>;

    /// The image file's length, when known (random access, or a stream of known length).
    fn image_len(&self) -> Option<u64>;

    /// Whether reads must come in increasing offset order (a stream).
    fn forward_only(&self) -> bool;
}

/// [`Meta`] over a random-access source.
#[derive(Debug)]
pub struct RandomMeta<'a> {
    pub format: &'static str,
    pub src: &'a dyn RandomAccess,
}

impl Meta for RandomMeta<'_> {
    fn read_at(&mut self, buf: &mut [u8], offset: u64, what: &'static str) -> Result<(), ImportError> {
        let len = buf.len() as u64;
        match offset.checked_add(len) {
            Some(end) if end <= self.src.len() => Ok(self.src.read_exact_at(buf, offset)?),
            _ => {
                Err(FormatError::OutOfBounds { format: self.format, what, offset, len, file_len: self.src.len() }
                    .into())
            }
        }
    }

    fn image_len(&self) -> Option<u64> {
        Some(self.src.len())
    }

    fn forward_only(&self) -> bool {
        false
    }
}

/// A stream read front to back, for metadata and then data. The first bytes (the sniffed
/// head) stay readable again; anything else behind the position is gone.
pub struct Forward<'a> {
    format: &'static str,
    stream: &'a mut dyn Read,
    /// Bytes already consumed from `stream`.
    pos: u64,
    head: Vec<u8>,
    len: Option<u64>,
}

impl std::fmt::Debug for Forward<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forward").field("format", &self.format).field("pos", &self.pos).finish()
    }
}

impl<'a> Forward<'a> {
    /// `stream` starts at the image's first byte; `head` is a copy of its first bytes.
    pub fn new(format: &'static str, stream: &'a mut dyn Read, head: &[u8], len: Option<u64>) -> Forward<'a> {
        Forward { format, stream, pos: 0, head: head.to_vec(), len }
    }

    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// The stream itself, for a decoder of its own that starts at the image's first byte.
    pub fn into_inner(self) -> Result<&'a mut dyn Read, ImportError> {
        if self.pos != 0 {
            return Err(FormatError::Internal("a stream handed over after it was read from").into());
        }
        Ok(self.stream)
    }

    /// Discards bytes up to `offset` (which must not be behind the position).
    pub fn skip_to(&mut self, offset: u64) -> Result<(), ImportError> {
        self.skip_to_reach(offset, "image")
    }

    /// [`Forward::skip_to`] on the way to the structure `what`, named if the stream ends first.
    pub fn skip_to_reach(&mut self, offset: u64, what: &'static str) -> Result<(), ImportError> {
        let mut scratch = [0u8; 64 << 10];
        while self.pos < offset {
            let want = (offset - self.pos).min(scratch.len() as u64) as usize;
            let n = read_some(self.stream, &mut scratch[..want])?;
            if n == 0 {
                return Err(FormatError::Truncated { format: self.format, what, offset, received: self.pos }.into());
            }
            self.pos += n as u64;
        }
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes at the position.
    pub fn read_exact(&mut self, buf: &mut [u8], format: &'static str, what: &'static str) -> Result<(), ImportError> {
        let start = self.pos;
        let mut filled = 0;
        while filled < buf.len() {
            let n = read_some(self.stream, &mut buf[filled..])?;
            if n == 0 {
                return Err(FormatError::Truncated { format, what, offset: start, received: self.pos }.into());
            }
            filled += n;
            self.pos += n as u64;
        }
        Ok(())
    }

    /// Reads until `buf` is full or the stream ends; returns the bytes read. For formats
    /// whose end is found by reading (vmdk's markers).
    pub fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, ImportError> {
        let mut filled = 0;
        while filled < buf.len() {
            let n = read_some(self.stream, &mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
            self.pos += n as u64;
        }
        Ok(filled)
    }

    /// Reads the stream to its end: a checksum covers it, and a transfer that breaks there
    /// must not pass for a complete one.
    pub fn drain(&mut self) -> Result<(), ImportError> {
        super::drain(self.stream)
    }
}

impl Meta for Forward<'_> {
    fn read_at(&mut self, buf: &mut [u8], offset: u64, what: &'static str) -> Result<(), ImportError> {
        let end = offset.checked_add(buf.len() as u64).ok_or(FormatError::OutOfBounds {
            format: self.format,
            what,
            offset,
            len: buf.len() as u64,
            file_len: self.len.unwrap_or(0),
        })?;
        if end <= self.head.len() as u64 {
            buf.copy_from_slice(&self.head[offset as usize..end as usize]);
            return Ok(());
        }
        if let Some(file_len) = self.len
            && end > file_len
        {
            return Err(FormatError::OutOfBounds {
                format: self.format,
                what,
                offset,
                len: buf.len() as u64,
                file_len,
            }
            .into());
        }
        if offset < self.pos {
            // Bytes still in the head are replayed; a structure straddling it is read whole
            // from the head too when possible, else it has passed.
            return Err(FormatError::NeedsRandomAccess {
                format: self.format,
                reason: format!(
                    "its {what} at host offset {offset} comes after bytes the stream already passed (byte {})",
                    self.pos
                ),
            }
            .into());
        }
        self.skip_to_reach(offset, what)?;
        self.read_exact(buf, self.format, what)
    }

    fn image_len(&self) -> Option<u64> {
        self.len
    }

    fn forward_only(&self) -> bool {
        true
    }
}

fn read_some(stream: &mut dyn Read, buf: &mut [u8]) -> Result<usize, ImportError> {
    loop {
        match stream.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(crate::import::read_error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_contiguous_in_guest_and_host_coalesce() {
        let mut m = ExtentMap::new("test", 10 << 20, 1 << 20);
        m.add(0, 4096, 1 << 20).unwrap();
        m.add(1 << 20, 4096 + (1 << 20), 1 << 20).unwrap();
        m.add(4 << 20, 100 << 20, 1 << 20).unwrap();
        m.add(3 << 20, 50 << 20, 1 << 20).unwrap(); // out of order: sorted by finish
        let done = m.finish(None).unwrap();
        assert_eq!(
            done.extents,
            vec![
                Extent { guest: 0, host: 4096, len: 2 << 20 },
                Extent { guest: 3 << 20, host: 50 << 20, len: 1 << 20 },
                Extent { guest: 4 << 20, host: 100 << 20, len: 1 << 20 },
            ]
        );
        assert_eq!(done.data_bytes(), 4 << 20);
    }

    #[test]
    fn the_last_block_is_cut_at_the_virtual_size() {
        let mut m = ExtentMap::new("test", (1 << 20) + 512, 1 << 20);
        m.add(1 << 20, 8 << 20, 1 << 20).unwrap();
        m.add(2 << 20, 9 << 20, 1 << 20).unwrap(); // wholly past the end: ignored
        let done = m.finish(Some((8 << 20) + 512)).unwrap();
        assert_eq!(done.extents, vec![Extent { guest: 1 << 20, host: 8 << 20, len: 512 }]);
    }

    #[test]
    fn a_guest_range_mapped_twice_is_corrupt() {
        let mut m = ExtentMap::new("test", 4 << 20, 1 << 20);
        m.add(0, 1 << 20, 1 << 20).unwrap();
        m.add(0, 3 << 20, 1 << 20).unwrap();
        let err = m.finish(None).unwrap_err();
        assert!(err.to_string().contains("mapped by two blocks"), "{err}");
    }

    #[test]
    fn blocks_past_the_file_end_are_refused() {
        let mut m = ExtentMap::new("test", 4 << 20, 1 << 20);
        m.add(0, 1 << 20, 1 << 20).unwrap();
        let err = m.finish(Some(1 << 20)).unwrap_err();
        assert!(matches!(err, FormatError::OutOfBounds { .. }), "{err}");
    }

    #[test]
    fn forward_meta_replays_the_head_and_refuses_what_passed() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
        let mut stream = &data[..];
        let mut f = Forward::new("test", &mut stream, &data[..4096], Some(data.len() as u64));
        let mut buf = [0u8; 16];
        f.read_at(&mut buf, 100_000, "table").unwrap();
        assert_eq!(buf[..], data[100_000..100_016]);
        f.read_at(&mut buf, 10, "header").unwrap(); // in the head: still there
        assert_eq!(buf[..], data[10..26]);
        let err = f.read_at(&mut buf, 50_000, "table").unwrap_err();
        assert!(err.to_string().contains("already passed"), "{err}");
        let err = f.read_at(&mut buf, (1 << 20) - 8, "table").unwrap_err();
        assert!(err.to_string().contains("beyond the end"), "{err}");
    }
}

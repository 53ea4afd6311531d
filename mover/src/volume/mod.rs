//! Volume streaming: a volume's contents as a stream of sparse extents, out of a volume
//! ([`read`]) and into one ([`write`]). Host-assisted clone is one mover's reader feeding
//! another's writer over gRPC: a client forwarding `ReadVolume` into `WriteVolume`, or a
//! `Populate` whose source is the peer's volume, the writing mover reading it itself
//! (`source::peer`). This module knows nothing of gRPC (the service converts [`Chunk`]s to
//! and from the wire).
//!
//! ```text
//!  block device ─┐                                                  ┌─▶ block device (O_DIRECT,
//!  disk.img/file ┼─RAW─▶ Header, Data/Zero extents in offset order ─┤    zero extents zeroed)
//!  directory ────┘─TAR─▶ (tar byte stream cut into extents)         ├─▶ disk.img / file (sparse)
//!                                                                   └─▶ directory (archive::extract)
//! ```
//!
//! # The stream
//! A [`Header`] first, then [`Extent`]s that start at offset 0 and follow each other with no
//! gap and no overlap, then [`Chunk::End`]. RAW: the extents cover exactly
//! `[0, header.size)`. TAR: `header.size` is 0 and the archive ends where the last extent
//! ends. Data extents carry at most [`MAX_DATA_EXTENT`] bytes when we produce them; every
//! whole 4 KiB block of zeros (aligned to the stream's offsets) travels as a zero extent, so
//! holes and zeroed regions cost nothing on the wire. A writer refuses any other shape
//! ([`StreamError`]) and commits nothing unless the end arrived.
//!
//! Why an end message rather than the end of the gRPC stream: over HTTP/2 (hyper) a client
//! that cancels its request stream looks, to the server, just like one that finished it; and
//! a client forwarding a failed ReadVolume may well end its WriteVolume stream cleanly. The
//! end travels from the reader to the writer with the data, so neither can fake a complete
//! volume.

#[cfg(test)]
mod io_tests;
pub mod read;
pub mod write;

use std::path::PathBuf;

use bytes::Bytes;

pub use read::{ReadStats, VolumeReader};
pub use write::{Written, write_volume};

/// Largest data extent a reader produces. gRPC's default limit on a message is 4 MiB.
pub const MAX_DATA_EXTENT: usize = 1 << 20;
/// Unit of zero detection: whole blocks of this size (at multiples of it in the stream) that
/// hold only zeros become zero extents.
pub const ZERO_BLOCK: usize = 4096;

/// How a volume's contents are laid out in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The bytes of a block device, a `disk.img` or a file.
    Raw,
    /// A tar archive of a directory tree.
    Tar,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Raw => "RAW",
            Format::Tar => "TAR",
        })
    }
}

/// First message of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub format: Format,
    /// RAW: the volume's size. TAR: 0.
    pub size: u64,
}

/// A run of the stream: bytes, or a range that reads as zeros.
#[derive(Clone, PartialEq, Eq)]
pub enum Extent {
    /// `Bytes`: a received extent is a view into the message it came in.
    Data {
        offset: u64,
        data: Bytes,
    },
    Zero {
        offset: u64,
        len: u64,
    },
}

impl Extent {
    pub fn offset(&self) -> u64 {
        match self {
            Extent::Data { offset, .. } | Extent::Zero { offset, .. } => *offset,
        }
    }

    pub fn len(&self) -> u64 {
        match self {
            Extent::Data { data, .. } => data.len() as u64,
            Extent::Zero { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for Extent {
    // The bytes themselves are never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Extent::Data { offset, data } => write!(f, "Data({offset}+{})", data.len()),
            Extent::Zero { offset, len } => write!(f, "Zero({offset}+{len})"),
        }
    }
}

/// One message of a volume stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    Header(Header),
    Extent(Extent),
    /// The last message: the stream is complete, `length` bytes long.
    End {
        length: u64,
    },
}

/// Why a stream was refused: its shape is wrong, whatever the target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("the volume stream must start with a header; got an extent at offset {offset}")]
    NoHeader { offset: u64 },
    #[error("the volume stream ended before its header")]
    Empty,
    #[error("the volume stream has a second header; only the first message is a header")]
    SecondHeader,
    #[error("a TAR stream's header must have size 0, not {size}")]
    TarWithSize { size: u64 },
    #[error(
        "extent at offset {offset} is out of order: the next extent must start at {expected} \
         (extents follow each other from offset 0, without gaps or overlaps)"
    )]
    OutOfOrder { offset: u64, expected: u64 },
    #[error("extent at offset {offset} is empty; extents carry at least one byte")]
    EmptyExtent { offset: u64 },
    #[error("extent at offset {offset} of {len} bytes ends beyond the volume size {size} given in the header")]
    BeyondSize { offset: u64, len: u64, size: u64 },
    #[error("the volume stream ended at offset {end}, short of the volume size {size} given in the header")]
    Short { end: u64, size: u64 },
    #[error("the volume stream's end says it is {length} bytes long, but its extents end at {end}")]
    WrongLength { length: u64, end: u64 },
    #[error("the volume stream goes on after its end")]
    AfterEnd,
    #[error(
        "the volume stream stopped at offset {end} without its end message (the sender failed or went away); \
         nothing was committed"
    )]
    NoEnd { end: u64 },
}

/// Checks the shape of a stream, chunk by chunk (see the module docs).
#[derive(Debug, Default)]
pub struct StreamCheck {
    header: Option<Header>,
    /// Where the next extent must start.
    next: u64,
    data_bytes: u64,
    zero_bytes: u64,
    ended: bool,
}

impl StreamCheck {
    pub fn header(&self) -> Option<Header> {
        self.header
    }

    /// Bytes of data extents accepted so far.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Bytes covered by zero extents accepted so far.
    pub fn zero_bytes(&self) -> u64 {
        self.zero_bytes
    }

    /// Where the stream has got to.
    pub fn position(&self) -> u64 {
        self.next
    }

    pub fn check(&mut self, chunk: &Chunk) -> Result<(), StreamError> {
        if self.ended {
            return Err(StreamError::AfterEnd);
        }
        match chunk {
            Chunk::Header(h) => self.check_header(h),
            Chunk::Extent(e) => self.check_extent(e),
            Chunk::End { length } => self.check_end(*length),
        }
    }

    fn check_end(&mut self, length: u64) -> Result<(), StreamError> {
        let header = self.header.ok_or(StreamError::Empty)?;
        if header.format == Format::Raw && self.next != header.size {
            return Err(StreamError::Short { end: self.next, size: header.size });
        }
        if length != self.next {
            return Err(StreamError::WrongLength { length, end: self.next });
        }
        self.ended = true;
        Ok(())
    }

    fn check_header(&mut self, h: &Header) -> Result<(), StreamError> {
        if self.header.is_some() {
            return Err(StreamError::SecondHeader);
        }
        if h.format == Format::Tar && h.size != 0 {
            return Err(StreamError::TarWithSize { size: h.size });
        }
        self.header = Some(*h);
        Ok(())
    }

    fn check_extent(&mut self, e: &Extent) -> Result<(), StreamError> {
        let (offset, len) = (e.offset(), e.len());
        let header = self.header.ok_or(StreamError::NoHeader { offset })?;
        if offset != self.next {
            return Err(StreamError::OutOfOrder { offset, expected: self.next });
        }
        if len == 0 {
            return Err(StreamError::EmptyExtent { offset });
        }
        let end = offset.checked_add(len);
        let end = match header.format {
            Format::Raw => end.filter(|&end| end <= header.size),
            Format::Tar => end,
        }
        .ok_or(StreamError::BeyondSize { offset, len, size: header.size })?;
        self.next = end;
        match e {
            Extent::Data { .. } => self.data_bytes += len,
            Extent::Zero { .. } => self.zero_bytes += len,
        }
        Ok(())
    }

    /// The stream stopped: it is whole if its end arrived.
    pub fn finish(&self) -> Result<Header, StreamError> {
        let header = self.header.ok_or(StreamError::Empty)?;
        if !self.ended {
            return Err(StreamError::NoEnd { end: self.next });
        }
        Ok(header)
    }
}

/// Why reading or writing a volume stream failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("{path} does not exist")]
    NotFound { path: PathBuf },
    #[error("{path} cannot be streamed as {format}: {why}")]
    WrongFormat { path: PathBuf, format: Format, why: &'static str },
    #[error("{path} is not a block device, a directory or a regular file; it cannot be streamed")]
    Unsupported { path: PathBuf },
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} changed while it was being read ({what}); stop whatever writes the volume and stream it again")]
    Changed { path: PathBuf, what: String },
    #[error(transparent)]
    Target(#[from] crate::disk::TargetError),
    #[error(transparent)]
    Import(Box<crate::ImportError>),
    #[error("the receiver of the volume stream went away")]
    Closed,
}

impl From<crate::ImportError> for VolumeError {
    fn from(e: crate::ImportError) -> VolumeError {
        match e {
            crate::ImportError::Target(t) => VolumeError::Target(t),
            other => VolumeError::Import(Box::new(other)),
        }
    }
}

/// Cuts a byte stream into extents: whole zero blocks become zero extents (merged with their
/// neighbours), the rest data extents of at most [`MAX_DATA_EXTENT`] bytes.
pub struct ExtentCutter<F> {
    emit: F,
    /// Stream offset of the next byte pushed.
    pos: u64,
    /// A pending data extent: it starts at `pos - data.len()`.
    data: Vec<u8>,
    /// A pending zero extent: it ends at `pos`. Never pending at the same time as data.
    zeros: u64,
    max_data: usize,
}

impl<F> std::fmt::Debug for ExtentCutter<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtentCutter").field("pos", &self.pos).finish_non_exhaustive()
    }
}

impl<E, F: FnMut(Extent) -> Result<(), E>> ExtentCutter<F> {
    pub fn new(emit: F) -> Self {
        Self::with_max_data(emit, MAX_DATA_EXTENT)
    }

    /// `max_data` is rounded up to a multiple of [`ZERO_BLOCK`].
    pub fn with_max_data(emit: F, max_data: usize) -> Self {
        let max_data = max_data.max(1).next_multiple_of(ZERO_BLOCK);
        ExtentCutter { emit, pos: 0, data: Vec::new(), zeros: 0, max_data }
    }

    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Pushes the next bytes of the stream.
    pub fn data(&mut self, mut bytes: &[u8]) -> Result<(), E> {
        while !bytes.is_empty() {
            // Up to the next block boundary of the stream.
            let to_boundary = ZERO_BLOCK - (self.pos % ZERO_BLOCK as u64) as usize;
            let n = to_boundary.min(bytes.len());
            let (piece, rest) = bytes.split_at(n);
            if n == ZERO_BLOCK && crate::copy::is_zero(piece) {
                self.zero(ZERO_BLOCK as u64)?;
            } else {
                self.push_data(piece)?;
            }
            bytes = rest;
        }
        Ok(())
    }

    /// Pushes `len` bytes of zeros known without looking (a hole).
    pub fn zero(&mut self, len: u64) -> Result<(), E> {
        if len == 0 {
            return Ok(());
        }
        self.flush_data()?;
        self.zeros += len;
        self.pos += len;
        Ok(())
    }

    fn push_data(&mut self, piece: &[u8]) -> Result<(), E> {
        self.flush_zeros()?;
        if self.data.capacity() == 0 {
            self.data.reserve_exact(self.max_data);
        }
        self.data.extend_from_slice(piece);
        self.pos += piece.len() as u64;
        // Pieces never cross a block boundary and max_data is a multiple of the block, so a
        // full extent is exactly max_data.
        if self.data.len() >= self.max_data {
            self.flush_data()?;
        }
        Ok(())
    }

    fn flush_data(&mut self) -> Result<(), E> {
        if self.data.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.data);
        let offset = self.pos - data.len() as u64;
        (self.emit)(Extent::Data { offset, data: data.into() })
    }

    fn flush_zeros(&mut self) -> Result<(), E> {
        if self.zeros == 0 {
            return Ok(());
        }
        let len = std::mem::take(&mut self.zeros);
        (self.emit)(Extent::Zero { offset: self.pos - len, len })
    }

    /// Emits what is pending. Returns the stream's length.
    pub fn finish(mut self) -> Result<u64, E> {
        self.flush_data()?;
        self.flush_zeros()?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(max: usize, f: impl FnOnce(&mut ExtentCutter<&mut dyn FnMut(Extent) -> Result<(), ()>>)) -> Vec<Extent> {
        let mut out = Vec::new();
        let mut push = |e: Extent| {
            out.push(e);
            Ok(())
        };
        let mut cutter = ExtentCutter::with_max_data(&mut push as &mut dyn FnMut(Extent) -> Result<(), ()>, max);
        f(&mut cutter);
        cutter.finish().unwrap();
        out
    }

    fn shape(extents: &[Extent]) -> Vec<String> {
        extents.iter().map(|e| format!("{e:?}")).collect()
    }

    #[test]
    fn zero_blocks_become_zero_extents_and_merge_with_holes() {
        let mut buf = vec![0u8; 5 * 4096];
        buf[10] = 1;
        buf[4 * 4096] = 2;
        let out = cut(MAX_DATA_EXTENT, |c| {
            c.data(&buf).unwrap();
            c.zero(8192).unwrap();
            c.data(&[0u8; 4096]).unwrap();
            c.data(&[3u8; 100]).unwrap();
        });
        assert_eq!(
            shape(&out),
            ["Data(0+4096)", "Zero(4096+12288)", "Data(16384+4096)", "Zero(20480+12288)", "Data(32768+100)"]
        );
        let Extent::Data { data, .. } = &out[0] else { panic!() };
        assert_eq!(data[10], 1);
    }

    #[test]
    fn zero_detection_follows_stream_alignment_not_push_boundaries() {
        // 512 bytes of data, then zeros: the first block is data, later blocks zero, even
        // though the pushes do not start on a block boundary.
        let out = cut(MAX_DATA_EXTENT, |c| {
            c.data(&[7u8; 512]).unwrap();
            c.data(&[0u8; 3 * 4096]).unwrap();
        });
        assert_eq!(shape(&out), ["Data(0+4096)", "Zero(4096+8192)", "Data(12288+512)"]);
    }

    #[test]
    fn data_extents_are_capped() {
        let out = cut(8192, |c| c.data(&[1u8; 5 * 4096 + 1]).unwrap());
        assert_eq!(shape(&out), ["Data(0+8192)", "Data(8192+8192)", "Data(16384+4097)"]);
    }

    #[test]
    fn an_empty_stream_has_no_extents() {
        assert!(cut(MAX_DATA_EXTENT, |_| {}).is_empty());
    }

    fn data(offset: u64, len: usize) -> Chunk {
        Chunk::Extent(Extent::Data { offset, data: vec![1; len].into() })
    }

    fn zero(offset: u64, len: u64) -> Chunk {
        Chunk::Extent(Extent::Zero { offset, len })
    }

    fn raw(size: u64) -> Chunk {
        Chunk::Header(Header { format: Format::Raw, size })
    }

    fn end(length: u64) -> Chunk {
        Chunk::End { length }
    }

    fn run(chunks: &[Chunk]) -> Result<Header, StreamError> {
        let mut check = StreamCheck::default();
        for c in chunks {
            check.check(c)?;
        }
        check.finish()
    }

    #[test]
    fn a_well_formed_raw_stream_passes() {
        assert_eq!(run(&[raw(10), data(0, 4), zero(4, 6), end(10)]), Ok(Header { format: Format::Raw, size: 10 }));
        assert_eq!(run(&[raw(0), end(0)]), Ok(Header { format: Format::Raw, size: 0 }));
    }

    #[test]
    fn a_tar_stream_ends_where_its_last_extent_ends() {
        let tar = Chunk::Header(Header { format: Format::Tar, size: 0 });
        assert!(run(&[tar.clone(), data(0, 512), zero(512, 1 << 40), end(512 + (1 << 40))]).is_ok());
        assert_eq!(run(&[tar, data(0, 512), end(1024)]), Err(StreamError::WrongLength { length: 1024, end: 512 }));
        assert_eq!(
            run(&[Chunk::Header(Header { format: Format::Tar, size: 5 })]),
            Err(StreamError::TarWithSize { size: 5 })
        );
    }

    #[test]
    fn malformed_streams_are_refused_with_the_offset_at_fault() {
        assert_eq!(run(&[data(0, 1)]), Err(StreamError::NoHeader { offset: 0 }));
        assert_eq!(run(&[]), Err(StreamError::Empty));
        assert_eq!(run(&[raw(10), raw(10)]), Err(StreamError::SecondHeader));
        assert_eq!(run(&[raw(10), data(0, 4), data(5, 1)]), Err(StreamError::OutOfOrder { offset: 5, expected: 4 }));
        assert_eq!(run(&[raw(10), data(0, 4), zero(2, 8)]), Err(StreamError::OutOfOrder { offset: 2, expected: 4 }));
        assert_eq!(run(&[raw(10), data(0, 0)]), Err(StreamError::EmptyExtent { offset: 0 }));
        assert_eq!(run(&[raw(10), zero(0, 11)]), Err(StreamError::BeyondSize { offset: 0, len: 11, size: 10 }));
        assert_eq!(run(&[raw(10), data(0, 4), end(4)]), Err(StreamError::Short { end: 4, size: 10 }));
        assert_eq!(run(&[raw(10), data(0, 10)]), Err(StreamError::NoEnd { end: 10 }));
        assert_eq!(run(&[raw(10), data(0, 10), end(10), zero(10, 1)]), Err(StreamError::AfterEnd));
        assert_eq!(run(&[end(0)]), Err(StreamError::Empty));
        let huge = Chunk::Header(Header { format: Format::Tar, size: 0 });
        assert_eq!(
            run(&[huge, zero(0, u64::MAX), zero(u64::MAX, 2)]),
            Err(StreamError::BeyondSize { offset: u64::MAX, len: 2, size: 0 })
        );
    }
}

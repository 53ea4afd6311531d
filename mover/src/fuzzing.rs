//! Fuzzing harnesses: each feeds arbitrary bytes to one reader of the data path, the way
//! [`crate::import`] would, writing into the in-memory storage (`disk::mem`).
//!
//! Every harness must return, for any input, `Ok` or a typed [`ImportError`]: never panic,
//! hang, or allocate without bound. The fuzz targets in `mover/fuzz` call them, and the test
//! suite replays the committed corpus and every crash found through them (`tests/it/fuzz.rs`),
//! so a crash fixed once stays fixed without cargo-fuzz.
//!
//! Inputs are small (the fuzzer keeps them to a few MiB at most), but a header can claim a
//! virtual size of exabytes. So that one input cannot make a run slow, conversions are only
//! attempted for images of at most [`MAX_VIRTUAL`] bytes (headers and tables are still read
//! whatever the size), and decompressed output is read up to [`MAX_OUTPUT`] bytes.
//!
//! Compiled only with the `fuzzing` feature (on for the test suite through a dev-dependency).

use std::borrow::Cow;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::archive;
use crate::copy::{self, CopyConfig, Counters, JobSink};
use crate::decompress::xz_blocks::Layout;
use crate::detect::{self, Compression, Detected, ImageFormat, SNIFF_LEN, Trailer};
use crate::disk::Storage;
use crate::disk::mem::MemStorage;
use crate::error::ImportError;
use crate::format::mapped::{Forward, Mapped, Meta, RandomMeta};
use crate::format::qcow2::{self, Header, StreamLimits, table};
use crate::format::vmdk::{self, Vmdk};
use crate::format::{FormatError, raw, vdi, vhd, vhdx};
use crate::import::{peel, read_error};
use crate::source::{RandomAccess, SourceError};

/// Largest virtual size converted (headers of larger images are still parsed): data written
/// is bounded by it, since several guest clusters may map the same host bytes.
pub const MAX_VIRTUAL: u64 = 16 << 20;
/// Decompressed bytes read per input: a few bytes of gzip or xz can expand to gigabytes.
pub const MAX_OUTPUT: u64 = 16 << 20;
/// L2 tables decoded by [`qcow2_header`] (an L1 table of 2^25 entries could name them all).
const MAX_L2_TABLES: usize = 64;
/// Room past the image for the streaming qcow2 decoder's spool.
const SPOOL: u64 = 4 << 20;

/// One worker: a single core per fuzzer; small chunks so jobs cut at chunk edges are many.
const CFG: CopyConfig = CopyConfig { workers: 1, chunk: 64 << 10, buffers: 2 };

/// A harness: bytes in, `Ok` or a typed error out.
pub type Harness = fn(&[u8]) -> Result<(), ImportError>;

/// Every harness by name; the fuzz target of the same name runs it.
pub const HARNESSES: &[(&str, Harness)] = &[
    ("qcow2_header", qcow2_header),
    ("qcow2_random", qcow2_random),
    ("qcow2_stream", qcow2_stream),
    ("decompress", decompress),
    ("tar", tar),
    ("vhd", vhd),
    ("vhdx", vhdx),
    ("vdi", vdi),
    ("vmdk", vmdk),
    ("raw_trailer", raw_trailer),
];

/// The input as a random-access source.
#[derive(Debug)]
struct MemSource<'a>(&'a [u8]);

impl RandomAccess for MemSource<'_> {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), SourceError> {
        let range = usize::try_from(offset).ok().and_then(|o| Some(o..o.checked_add(buf.len())?));
        let bytes = range.and_then(|r| self.0.get(r)).ok_or(SourceError::OutOfBounds {
            offset,
            len: buf.len() as u64,
            size: self.len(),
        })?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

/// The input as a stream that hands out a few KiB per read, in varying amounts, as a
/// network or a decompressor does: every decoder must cope with short reads.
#[derive(Debug)]
struct Trickle<'a> {
    data: &'a [u8],
    reads: u64,
}

impl<'a> Trickle<'a> {
    fn new(data: &'a [u8]) -> Trickle<'a> {
        Trickle { data, reads: 0 }
    }
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        let cap = 1 + (self.reads.wrapping_mul(0x9e37_79b9) % 8192) as usize;
        let n = cap.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// What import reads first: the bytes detection sniffs.
fn head(data: &[u8]) -> &[u8] {
    &data[..data.len().min(SNIFF_LEN)]
}

/// A memory disk; like a block device (zero ranges written explicitly) for inputs of odd
/// length, so both ways of handling zeros are exercised.
fn storage(data: &[u8], spool: u64) -> MemStorage {
    let mem = MemStorage::new(MAX_VIRTUAL, spool);
    if data.len() % 2 == 1 { mem.block_like() } else { mem }
}

/// Runs `produce` in the copy engine, writing into `mem`.
fn convert<T>(
    mem: &MemStorage,
    source: Option<&dyn RandomAccess>,
    produce: impl FnOnce(&JobSink<'_>, bool) -> Result<T, ImportError>,
) -> Result<T, ImportError> {
    let need_zero = !mem.unwritten_reads_zero();
    let cancel = Arc::new(AtomicBool::new(false));
    copy::run(CFG, mem, source, &Counters::default(), cancel, |sink| produce(sink, need_zero))
}

/// `data` with the checksums of the structures at `(offset, len, checksum field offset)`
/// recomputed by `sum`, where the input holds them: a hostile writer seals its damage, and a
/// fuzzer that has to guess checksums never gets past them. Inputs whose length is 3 mod 4
/// are left as they are, so that checksum failures are fuzzed too.
fn resealed<'a>(
    data: &'a [u8],
    structures: &[(usize, usize, usize)],
    sum: fn(&[u8], usize) -> [u8; 4],
) -> Cow<'a, [u8]> {
    if data.len() % 4 == 3 {
        return Cow::Borrowed(data);
    }
    let mut data = data.to_vec();
    for &(at, len, field) in structures {
        if let Some(s) = at.checked_add(len).and_then(|end| data.get_mut(at..end)) {
            s[field..field + 4].fill(0);
            let checksum = sum(s, field);
            s[field..field + 4].copy_from_slice(&checksum);
        }
    }
    Cow::Owned(data)
}

/// vhd's checksum: the one's complement of the byte sum, big-endian (the field reads as zero).
fn vhd_sum(s: &[u8], _field: usize) -> [u8; 4] {
    (!s.iter().fold(0u32, |acc, &b| acc.wrapping_add(b.into()))).to_be_bytes()
}

/// vhdx's checksum: CRC-32C, little-endian (the field reads as zero).
fn vhdx_sum(s: &[u8], _field: usize) -> [u8; 4] {
    crc::Crc::<u32>::new(&crc::CRC_32_ISCSI).checksum(s).to_le_bytes()
}

/// vhd's footer (its copy at the start, and at the end) and dynamic header.
fn vhd_sealed(data: &[u8]) -> Cow<'_, [u8]> {
    let footer = vhd::FOOTER_LEN;
    resealed(data, &[(0, footer, 64), (footer, 1024, 36), (data.len().saturating_sub(footer), footer, 64)], vhd_sum)
}

/// The first error of two runs over the same input, else `Ok`.
fn both(a: Result<(), ImportError>, b: Result<(), ImportError>) -> Result<(), ImportError> {
    a.and(b)
}

/// qcow2 header and extensions, then the L1 table and up to [`MAX_L2_TABLES`] L2 tables
/// decoded entry by entry, where they lie inside the input.
pub fn qcow2_header(data: &[u8]) -> Result<(), ImportError> {
    let h = Header::parse(head(data))?;
    // The derived sizes must not overflow, whatever the header says.
    let _ = (h.cluster_size(), h.l2_entries(), h.bytes_per_l2(), h.l1_used(), h.l1_bytes(), h.subcluster_size());
    let l1_at = usize::try_from(h.l1_offset).unwrap_or(usize::MAX);
    let l1 = data.get(l1_at..).unwrap_or_default();
    let cs = h.cluster_size() as usize;
    let mut tables = 0;
    for raw in l1.chunks_exact(8).take(h.l1_used() as usize) {
        let raw = u64::from_be_bytes(raw.try_into().expect("8 bytes"));
        let Some(l2_at) = table::l1_entry(&h, raw)? else { continue };
        let Some(l2) = usize::try_from(l2_at).ok().and_then(|at| data.get(at..at.checked_add(cs)?)) else {
            continue;
        };
        table::decode_l2(&h, l2)?;
        tables += 1;
        if tables == MAX_L2_TABLES {
            break;
        }
    }
    Ok(())
}

/// qcow2 converted with random access (the input is the file).
pub fn qcow2_random(data: &[u8]) -> Result<(), ImportError> {
    let h = Header::parse(head(data))?;
    if h.virtual_size > MAX_VIRTUAL {
        return Ok(());
    }
    let mem = storage(data, 0);
    let src = MemSource(data);
    convert(&mem, Some(&src), |sink, need_zero| qcow2::random::convert(&h, &src, sink, need_zero))
}

/// qcow2 converted in one pass over a stream, with a small memory spool and room on the
/// target to spool more.
pub fn qcow2_stream(data: &[u8]) -> Result<(), ImportError> {
    let h = Header::parse(head(data))?;
    if h.virtual_size > MAX_VIRTUAL {
        return Ok(());
    }
    let mem = storage(data, SPOOL);
    let limits = StreamLimits { spool_bytes: 1 << 20, pending_entries: 1 << 16 };
    let mut stream = Trickle::new(data);
    convert(&mem, None, |sink, need_zero| {
        qcow2::stream::convert(&h, &mut stream, sink, need_zero, limits, Some(&mem as &dyn Storage))
    })
}

/// Compression layers peeled as import peels them (gzip, xz, zstd, nested), the output read
/// up to [`MAX_OUTPUT`] bytes; and an xz file's blocks decoded as import's parallel path does.
pub fn decompress(data: &[u8]) -> Result<(), ImportError> {
    let streamed = (|| {
        let stream: Box<dyn Read + Send> = Box::new(io::Cursor::new(data.to_vec()));
        let (stream, _, _) = peel(stream)?;
        io::copy(&mut stream.take(MAX_OUTPUT), &mut io::sink()).map_err(read_error)?;
        Ok(())
    })();
    let blocks =
        if detect::sniff(head(data)) == Detected::Compressed(Compression::Xz) { xz_blocks(data) } else { Ok(()) };
    both(streamed, blocks)
}

/// An xz file's index, then each block decoded on its own (output bounded per block and in
/// all).
fn xz_blocks(data: &[u8]) -> Result<(), ImportError> {
    let src = MemSource(data);
    let Some(layout) = Layout::read(&src)? else { return Ok(()) };
    let (mut input, mut out) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    let mut left = MAX_OUTPUT;
    for i in 0..layout.blocks.len() {
        if left == 0 {
            break;
        }
        left = left.saturating_sub(layout.decode(&src, i, &mut input, &mut out, Some(left), &mut |_, _| Ok(()))?);
    }
    Ok(())
}

/// Tar extraction as import does it for content type archive (compression peeled first),
/// into a fresh directory on tmpfs where there is one. Nothing may appear beside it.
pub fn tar(data: &[u8]) -> Result<(), ImportError> {
    let shm = Path::new("/dev/shm");
    let parent = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() };
    let parent =
        parent.map_err(|e| ImportError::InvalidRequest(format!("cannot make a directory to extract to: {e}")))?;
    let target = parent.path().join("volume");
    std::fs::create_dir(&target)
        .map_err(|e| ImportError::InvalidRequest(format!("cannot make a directory to extract to: {e}")))?;
    let stream: Box<dyn Read + Send> = Box::new(io::Cursor::new(data.to_vec()));
    let (mut stream, format, _) = peel(stream)?;
    if format != ImageFormat::Tar {
        return Err(FormatError::NotAnArchive { found: Detected::Image(format).name() }.into());
    }
    let cancel = Arc::new(AtomicBool::new(false));
    let result = archive::extract(&mut stream, &target, &cancel, crate::format::drain).map(|_| ());
    // The escape checks held: the volume is the only thing in its parent.
    let beside: Vec<_> = std::fs::read_dir(parent.path())
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.file_name())).collect())
        .unwrap_or_default();
    assert_eq!(beside, [std::ffi::OsString::from("volume")], "extraction wrote outside the volume");
    result
}

/// How a block-mapped format reads its map; `None`: nothing to convert as a map.
type MapFn = fn(&mut dyn Meta, &[u8]) -> Result<Option<Mapped>, ImportError>;

/// A block-mapped format read as import reads it: from random access, and from a stream
/// of known and of unknown length (compressed); converted into memory when small enough.
fn mapped(data: &[u8], format: &'static str, map: MapFn) -> Result<(), ImportError> {
    let src = MemSource(data);
    let random = map(&mut RandomMeta { format, src: &src }, head(data)).and_then(|m| match m {
        Some(m) if m.virtual_size <= MAX_VIRTUAL => {
            let mem = storage(data, 0);
            convert(&mem, Some(&src), |sink, need_zero| m.convert_random(&src, sink, need_zero))
        }
        _ => Ok(()),
    });
    let mut streamed = Ok(());
    for len in [Some(data.len() as u64), None] {
        let mut stream = Trickle::new(data);
        let mut input = Forward::new(format, &mut stream, head(data), len);
        let run = map(&mut input, head(data)).and_then(|m| match m {
            Some(m) if m.virtual_size <= MAX_VIRTUAL => {
                let mem = storage(data, 0);
                convert(&mem, None, |sink, need_zero| m.convert_stream(&mut input, sink, need_zero))
            }
            _ => Ok(()),
        });
        streamed = both(streamed, run);
    }
    both(random, streamed)
}

pub fn vhd(data: &[u8]) -> Result<(), ImportError> {
    let data = &vhd_sealed(data);
    mapped(data, vhd::FORMAT, |meta, head| vhd::map(meta, head).map(Some))
}

/// vhdx, its headers and region tables (both copies of each) resealed.
pub fn vhdx(data: &[u8]) -> Result<(), ImportError> {
    const KIB: usize = 1024;
    let tables = [(64 * KIB, 4 * KIB, 4), (128 * KIB, 4 * KIB, 4), (192 * KIB, 64 * KIB, 4), (256 * KIB, 64 * KIB, 4)];
    let data = &resealed(data, &tables, vhdx_sum);
    mapped(data, vhdx::FORMAT, |meta, head| vhdx::map(meta, head).map(Some))
}

pub fn vdi(data: &[u8]) -> Result<(), ImportError> {
    mapped(data, vdi::FORMAT, |meta, head| vdi::map(meta, head).map(Some))
}

/// vmdk: monolithicSparse as a block-mapped image; streamOptimized through its one-pass
/// decoder, from a stream of known and of unknown length (with random access, import opens
/// it as a stream too).
pub fn vmdk(data: &[u8]) -> Result<(), ImportError> {
    let sparse = mapped(data, vmdk::FORMAT, |meta, head| match vmdk::open(meta, head)? {
        Vmdk::Sparse(m) => Ok(Some(m)),
        Vmdk::StreamOptimized(_) => Ok(None),
    });
    let mut streamed = Ok(());
    for len in [Some(data.len() as u64), None] {
        let mut stream = Trickle::new(data);
        let mut input = Forward::new(vmdk::FORMAT, &mut stream, head(data), len);
        let run = vmdk::open(&mut input, head(data)).and_then(|v| match v {
            Vmdk::StreamOptimized(s) if s.virtual_size <= MAX_VIRTUAL => {
                let mem = storage(data, 0);
                convert(&mem, None, |sink, need_zero| s.convert(&mut input, sink, need_zero))
            }
            _ => Ok(()),
        });
        streamed = both(streamed, run);
    }
    both(sparse, streamed)
}

/// A raw image with trailer detection: from a stream (the last bytes held back and looked at)
/// and with random access (the tail read first), as import plans each.
pub fn raw_trailer(data: &[u8]) -> Result<(), ImportError> {
    let footer = vhd::FOOTER_LEN;
    let data = &resealed(data, &[(data.len().saturating_sub(footer), footer, 64)], vhd_sum);
    let mem = storage(data, 0);
    let mut stream = Trickle::new(data);
    let streamed =
        convert(&mem, None, |sink, need_zero| raw::convert_stream(&mut stream, sink, need_zero)).and_then(|end| {
            if end.stream_len != data.len() as u64 {
                return Err(FormatError::Internal("raw stream length differs from the input's").into());
            }
            Ok(())
        });
    let src = MemSource(data);
    let tail = &data[data.len().saturating_sub(vhd::FOOTER_LEN)..];
    let (data_len, virtual_size) = match detect::sniff_tail(tail, data.len() as u64)? {
        Some(Trailer::FixedVhd { virtual_size, data_len }) => (data_len, virtual_size),
        Some(Trailer::Dmg) => return streamed,
        None => (data.len() as u64, data.len() as u64),
    };
    let mem = storage(data, 0);
    let random =
        convert(&mem, Some(&src), |sink, need_zero| raw::convert_random(&src, data_len, virtual_size, sink, need_zero));
    both(streamed, random)
}

//! One import, end to end: open the source, detect what it holds, size and open the target,
//! run the copy engine, verify, and only then make the result visible.

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use crate::checksum::{Checksum, Hasher, HashingReader};
use crate::copy::{self, CopyConfig, Job};
use crate::decompress::xz_blocks::Layout;
use crate::decompress::{self, DecompressError};
use crate::detect::{self, Compression, Detected, Foreign, ImageFormat, Peeked, SNIFF_LEN, Trailer};
use crate::disk::{Storage, TargetOptions, TargetPlan, sizing};
use crate::error::ImportError;
use crate::format::mapped::{Forward, Mapped, Meta, RandomMeta};
use crate::format::qcow2::{self, StreamLimits};
use crate::format::vmdk::{self, Vmdk};
use crate::format::{FormatError, raw, vdi, vhd, vhdx};
use crate::progress::{Phase, Progress};
use crate::source::{self, CountingReader, Opened, RandomAccess, SourceError, SourceOptions, SourceSpec};

/// Most compression layers peeled off one source (e.g. `.tar.gz.xz`); more is hostile.
const MAX_LAYERS: usize = 4;

/// What the source holds, as CDI's `contentType` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContentType {
    /// A VM disk image, converted to raw.
    #[default]
    Kubevirt,
    /// A tar archive, extracted into a filesystem volume.
    Archive,
}

/// Everything one import needs.
#[derive(Debug, Clone)]
pub struct ImportRequest {
    pub source: SourceSpec,
    pub source_options: SourceOptions,
    pub target: PathBuf,
    pub content_type: ContentType,
    pub checksum: Option<Checksum>,
    pub target_options: TargetOptions,
    pub copy: CopyConfig,
    pub stream_limits: StreamLimits,
}

impl ImportRequest {
    pub fn new(source: SourceSpec, target: PathBuf) -> ImportRequest {
        ImportRequest {
            source,
            source_options: SourceOptions::default(),
            target,
            content_type: ContentType::Kubevirt,
            checksum: None,
            target_options: TargetOptions::default(),
            copy: CopyConfig::default(),
            stream_limits: StreamLimits::default(),
        }
    }
}

/// What a successful import produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportResult {
    /// The image's virtual size (for archives: the content bytes extracted).
    pub virtual_size: u64,
    /// Data bytes written to the target (zero ranges are not written).
    pub bytes_written: u64,
    /// The layers detected, outermost first, e.g. `["xz", "qcow2"]`.
    pub formats: Vec<&'static str>,
    /// `ALGO:HEX` of the source bytes, when a checksum was requested (and verified).
    pub source_digest: Option<String>,
    /// Where the result is: the device, the `disk.img`, the file, or the directory.
    pub target: PathBuf,
    /// Final size of the target file or device.
    pub target_size: u64,
}

/// Runs one import. Network I/O runs on `rt`; call this from a thread outside that
/// runtime (a plain thread, or `spawn_blocking`). Setting `cancel` stops it within a
/// chunk's time, leaving nothing that looks complete.
pub fn import(
    req: &ImportRequest,
    rt: &tokio::runtime::Handle,
    progress: &Progress,
    cancel: Arc<AtomicBool>,
) -> Result<ImportResult, ImportError> {
    let result = run(req, rt, progress, cancel.clone());
    // Whatever a cancelled import tripped over on its way out, it was cancelled.
    let result = match result {
        Err(_) if cancel.load(std::sync::atomic::Ordering::SeqCst) => Err(ImportError::Cancelled),
        other => other,
    };
    progress.set_phase(if result.is_ok() { Phase::Complete } else { Phase::Failed });
    if result.is_ok() {
        progress.complete();
    }
    result
}

fn run(
    req: &ImportRequest,
    rt: &tokio::runtime::Handle,
    progress: &Progress,
    cancel: Arc<AtomicBool>,
) -> Result<ImportResult, ImportError> {
    sizing::validate_overhead(req.target_options.filesystem_overhead).map_err(ImportError::InvalidRequest)?;
    let plan = TargetPlan::inspect(&req.target, req.target_options.clone())?;
    // No bytes to open: the disk is made where it lies.
    if matches!(req.source, SourceSpec::Blank) {
        return source::blank::create(req, plan, progress, &cancel);
    }
    if req.content_type == ContentType::Archive && !plan.is_directory() {
        return Err(ImportError::InvalidRequest(format!(
            "content type archive needs a directory target (a filesystem volume); {} is not a directory",
            req.target.display()
        )));
    }
    // Extents, not image bytes: written as a WriteVolume would write them.
    if let SourceSpec::Volume(peer) = &req.source {
        return source::peer::copy(req, peer, rt, progress, &cancel);
    }
    let mut source_options = req.source_options.clone();
    source_options.cancel = Some(cancel.clone());
    let opened = source::open(&req.source, &source_options, rt)?;
    tracing::debug!(source = %opened.name, len = ?opened.len, random = opened.random.is_some(), "source opened");

    // Random access when nothing forces one pass over the bytes.
    let random =
        if req.checksum.is_none() && req.content_type == ContentType::Kubevirt { opened.random.clone() } else { None };
    if let Some(src) = random {
        let head = read_head(src.as_ref())?;
        match detect::sniff(&head) {
            Detected::Image(format) => {
                // None: a layout only one pass can decode (vmdk streamOptimized).
                if let Some((image, name)) = plan_random(format, &head, src.as_ref())? {
                    return run_random(req, plan, src, image, name, progress, cancel);
                }
            }
            Detected::Compressed(Compression::Xz) => {
                if let Some((layout, format)) = xz_raw_layout(src.as_ref())? {
                    return run_xz_blocks(req, plan, src, layout, format, progress, cancel);
                }
            }
            // Other compression can only be peeled in one pass.
            Detected::Compressed(_) => {}
        }
    }
    run_stream(req, plan, opened, progress, cancel)
}

fn read_head(src: &dyn RandomAccess) -> Result<Vec<u8>, ImportError> {
    let mut head = vec![0u8; (SNIFF_LEN as u64).min(src.len()) as usize];
    src.read_exact_at(&mut head, 0)?;
    Ok(head)
}

/// The block layout of an xz file worth decoding in parallel: several blocks holding a raw
/// disk (a qcow2 or tar inside needs its bytes in order, so it takes the one-pass path).
fn xz_raw_layout(src: &dyn RandomAccess) -> Result<Option<(Arc<Layout>, ImageFormat)>, ImportError> {
    let Some(layout) = Layout::read(src)? else { return Ok(None) };
    if layout.blocks.len() < 2 {
        return Ok(None);
    }
    let mut head = Vec::with_capacity(SNIFF_LEN);
    let (mut input, mut out) = (vec![0u8; 1 << 20], vec![0u8; SNIFF_LEN]);
    layout.decode(src, 0, &mut input, &mut out, Some(SNIFF_LEN as u64), &mut |_, bytes| {
        head.extend_from_slice(bytes);
        Ok(())
    })?;
    match detect::sniff(&head) {
        // A trailer (a fixed VHD's footer) must not be written as disk bytes: the one-pass
        // path holds the last bytes back and looks at them.
        Detected::Image(f @ (ImageFormat::Raw | ImageFormat::Iso)) if xz_tail(src, &layout)?.is_none() => {
            Ok(Some((Arc::new(layout), f)))
        }
        _ => Ok(None),
    }
}

/// What the last 512 decompressed bytes of a multi-block xz say, if anything.
fn xz_tail(src: &dyn RandomAccess, layout: &Layout) -> Result<Option<Trailer>, ImportError> {
    let from = layout.out_len.saturating_sub(vhd::FOOTER_LEN as u64);
    let mut tail = Vec::with_capacity(vhd::FOOTER_LEN);
    let (mut input, mut out) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    for (i, block) in layout.blocks.iter().enumerate() {
        if block.out_offset + block.out_len <= from {
            continue;
        }
        layout.decode(src, i, &mut input, &mut out, None, &mut |offset, bytes| {
            let end = offset + bytes.len() as u64;
            if end > from {
                let skip = from.saturating_sub(offset) as usize;
                tail.extend_from_slice(&bytes[skip..]);
            }
            Ok(())
        })?;
    }
    Ok(detect::sniff_tail(&tail, layout.out_len)?)
}

fn run_xz_blocks(
    req: &ImportRequest,
    plan: TargetPlan,
    src: Arc<dyn RandomAccess>,
    layout: Arc<Layout>,
    format: ImageFormat,
    progress: &Progress,
    cancel: Arc<AtomicBool>,
) -> Result<ImportResult, ImportError> {
    let virtual_size = layout.out_len;
    plan.check_fits(virtual_size)?;
    let disk = plan.open(Some(virtual_size), true)?;
    progress.set_total(src.len());
    progress.set_phase(Phase::Transferring);
    let copied = copy::run(req.copy, &disk, Some(src.as_ref()), &progress.counters, cancel, |sink| {
        for index in 0..layout.blocks.len() {
            sink.submit(Job::XzBlock { layout: layout.clone(), index })?;
        }
        Ok(virtual_size)
    });
    let formats = vec![Detected::Compressed(Compression::Xz).name(), Detected::Image(format).name()];
    finish(disk, copied, formats, None, progress)
}

/// How an image is converted, once its headers (and tables) are read.
enum Plan {
    /// The first `data_len` bytes are the disk; it reads as zero from there to
    /// `virtual_size` (a fixed VHD: the disk without its footer).
    Raw {
        data_len: u64,
        virtual_size: u64,
    },
    Qcow2(qcow2::Header),
    /// A block-mapped image: vhd, vhdx, vdi, sparse vmdk.
    Mapped(Mapped),
    /// vmdk streamOptimized: compressed grains, one pass.
    VmdkStream(vmdk::StreamOptimized),
}

impl Plan {
    /// The virtual size, when the headers tell it.
    fn virtual_size(&self) -> Option<u64> {
        match self {
            Plan::Raw { virtual_size, .. } => Some(*virtual_size),
            Plan::Qcow2(h) => Some(h.virtual_size),
            Plan::Mapped(m) => Some(m.virtual_size),
            Plan::VmdkStream(s) => Some(s.virtual_size),
        }
    }

    /// Whether every write of this plan is aligned well enough for direct I/O.
    fn direct_ok(&self) -> bool {
        match self {
            Plan::Raw { .. } => true,
            Plan::Qcow2(h) => h.cluster_size() >= copy::ZERO_BLOCK as u64,
            Plan::Mapped(m) => m.direct_ok(),
            Plan::VmdkStream(s) => s.direct_ok(),
        }
    }
}

/// Why a format recognised by its magic (its first bytes: `head`) is refused.
fn refuse(format: ImageFormat, head: &[u8]) -> ImportError {
    match format {
        // Its text names the files that hold the data, or a parent.
        ImageFormat::Foreign(Foreign::VmdkDescriptor) => vmdk::refuse_descriptor(head).into(),
        other => FormatError::Unsupported { format: Detected::Image(other).name() }.into(),
    }
}

fn warn_tar() {
    // CDI recognises a tar but attaches no reader to it: for disk images the bytes are the
    // disk. Say so, since it is rarely what was meant.
    tracing::warn!(
        "the source is a tar archive; importing its bytes as a raw disk (use content type archive to extract it)"
    );
}

/// Reads what the image's headers and tables say, with random access. `None`: the image
/// must be read in one pass.
fn plan_random(
    format: ImageFormat,
    head: &[u8],
    src: &dyn RandomAccess,
) -> Result<Option<(Plan, &'static str)>, ImportError> {
    let name = Detected::Image(format).name();
    let mut meta = RandomMeta { format: name, src };
    let plan = match format {
        ImageFormat::Raw | ImageFormat::Iso | ImageFormat::Tar => {
            if format == ImageFormat::Tar {
                warn_tar();
            }
            let len = src.len();
            let mut tail = vec![0u8; (vhd::FOOTER_LEN as u64).min(len) as usize];
            let tail_at = len - tail.len() as u64;
            src.read_exact_at(&mut tail, tail_at)?;
            match detect::sniff_tail(&tail, len)? {
                Some(Trailer::FixedVhd { virtual_size, data_len }) => {
                    return Ok(Some((Plan::Raw { data_len, virtual_size }, vhd::FORMAT)));
                }
                Some(Trailer::Dmg) => return Err(refuse(ImageFormat::Foreign(Foreign::Dmg), head)),
                None => Plan::Raw { data_len: len, virtual_size: len },
            }
        }
        ImageFormat::Qcow2 => Plan::Qcow2(qcow2::Header::parse(head)?),
        ImageFormat::Vhd => Plan::Mapped(vhd::map(&mut meta, head)?),
        ImageFormat::Vhdx => Plan::Mapped(vhdx::map(&mut meta, head)?),
        ImageFormat::Vdi => Plan::Mapped(vdi::map(&mut meta, head)?),
        ImageFormat::Vmdk => match vmdk::open(&mut meta, head)? {
            Vmdk::Sparse(m) => Plan::Mapped(m),
            Vmdk::StreamOptimized(_) => return Ok(None),
        },
        ImageFormat::Foreign(_) => return Err(refuse(format, head)),
    };
    Ok(Some((plan, name)))
}

/// Reads what a block-mapped image's headers and tables say from the stream, which then
/// goes on with the data.
fn plan_stream(format: ImageFormat, meta: &mut dyn Meta, head: &[u8]) -> Result<Plan, ImportError> {
    Ok(match format {
        ImageFormat::Qcow2 => Plan::Qcow2(qcow2::Header::parse(head)?),
        ImageFormat::Vhd => Plan::Mapped(vhd::map(meta, head)?),
        ImageFormat::Vhdx => Plan::Mapped(vhdx::map(meta, head)?),
        ImageFormat::Vdi => Plan::Mapped(vdi::map(meta, head)?),
        ImageFormat::Vmdk => match vmdk::open(meta, head)? {
            Vmdk::Sparse(m) => Plan::Mapped(m),
            Vmdk::StreamOptimized(s) => Plan::VmdkStream(s),
        },
        ImageFormat::Foreign(_) => return Err(refuse(format, head)),
        ImageFormat::Raw | ImageFormat::Iso | ImageFormat::Tar => {
            return Err(FormatError::Internal("raw images have no stream plan").into());
        }
    })
}

fn run_random(
    req: &ImportRequest,
    plan: TargetPlan,
    src: Arc<dyn RandomAccess>,
    image: Plan,
    name: &'static str,
    progress: &Progress,
    cancel: Arc<AtomicBool>,
) -> Result<ImportResult, ImportError> {
    let virtual_size = image.virtual_size().ok_or(FormatError::Internal("random-access plan without a size"))?;
    plan.check_fits(virtual_size)?;
    let disk = plan.open(Some(virtual_size), image.direct_ok())?;
    progress.set_total(src.len());
    progress.set_phase(Phase::Transferring);
    let need_zero = !disk.unwritten_reads_zero();
    let copied = copy::run(req.copy, &disk, Some(src.as_ref()), &progress.counters, cancel, |sink| match &image {
        Plan::Raw { data_len, virtual_size } => {
            raw::convert_random(src.as_ref(), *data_len, *virtual_size, sink, need_zero)
        }
        Plan::Qcow2(h) => qcow2::random::convert(h, src.as_ref(), sink, need_zero),
        Plan::Mapped(m) => m.convert_random(src.as_ref(), sink, need_zero),
        Plan::VmdkStream(_) => Err(FormatError::Internal("streamOptimized vmdk planned for random access").into()),
    });
    finish(disk, copied.map(|()| virtual_size), vec![name], None, progress)
}

fn run_stream(
    req: &ImportRequest,
    plan: TargetPlan,
    mut opened: Opened,
    progress: &Progress,
    cancel: Arc<AtomicBool>,
) -> Result<ImportResult, ImportError> {
    let source_len = opened.len;
    // Checked once the image is read, before anything is committed.
    let end_check = Mutex::new(opened.take_end_check());
    let check_end = || -> Result<(), ImportError> {
        match end_check.lock().expect("end check lock").take() {
            Some(check) => Ok(check()?),
            None => Ok(()),
        }
    };
    if let Some(len) = source_len {
        progress.set_total(len);
    }
    let hasher = req.checksum.as_ref().map(|c| Arc::new(Mutex::new(c.algorithm.hasher())));
    let mut stream: Box<dyn Read + Send> =
        Box::new(CountingReader::new(opened.into_stream()?, progress.counters.source_read.clone()));
    if let Some(h) = &hasher {
        stream = Box::new(HashingReader::new(stream, h.clone()));
    }

    let (mut stream, format, mut formats) = peel(stream)?;
    progress.set_phase(Phase::Transferring);

    if req.content_type == ContentType::Archive {
        if format != ImageFormat::Tar {
            return Err(FormatError::NotAnArchive { found: Detected::Image(format).name() }.into());
        }
        return extract_archive(req, &mut stream, hasher, &check_end, formats, progress, cancel);
    }

    let digest = req.checksum.as_ref().map(|c| c.to_string());
    let uncompressed_len = source_len.filter(|_| formats.len() == 1);
    if matches!(format, ImageFormat::Raw | ImageFormat::Iso | ImageFormat::Tar) {
        if format == ImageFormat::Tar {
            warn_tar();
        }
        // A raw stream's size is known up front only without compression; it may still end
        // in a fixed VHD's footer, which is not part of the disk.
        if let Some(len) = uncompressed_len {
            plan.check_fits(raw::smallest_disk(len))?;
        }
        let disk = plan.open_stream(uncompressed_len, true)?;
        let need_zero = !disk.unwritten_reads_zero();
        let copied = copy::run(req.copy, &disk, None, &progress.counters, cancel, |sink| {
            raw::convert_stream(&mut stream, sink, need_zero)
        });
        let copied = copied.and_then(|end| {
            if let Some(expected) = uncompressed_len
                && end.stream_len != expected
            {
                let got = end.stream_len;
                return Err(SourceError::ShortBody { url: req.source.display(), offset: got, expected, got }.into());
            }
            match end.trailer {
                Some(Trailer::FixedVhd { .. }) => *formats.last_mut().expect("the image's format") = vhd::FORMAT,
                Some(Trailer::Dmg) => return Err(refuse(ImageFormat::Foreign(Foreign::Dmg), &[])),
                None => {}
            }
            check_end()?;
            verify(req, hasher.as_ref()).map(|()| end.virtual_size)
        });
        return finish(disk, copied, formats, digest, progress);
    }

    let head = stream.head().to_vec();
    let name = Detected::Image(format).name();
    let mut input = Forward::new(name, &mut stream, &head, uncompressed_len);
    let image = plan_stream(format, &mut input, &head)?;
    let virtual_size = image.virtual_size().ok_or(FormatError::Internal("stream plan without a size"))?;
    plan.check_fits(virtual_size)?;
    let disk = plan.open_stream(Some(virtual_size), image.direct_ok())?;
    let need_zero = !disk.unwritten_reads_zero();
    let copied = copy::run(req.copy, &disk, None, &progress.counters, cancel, |sink| match &image {
        Plan::Qcow2(h) => {
            qcow2::stream::convert(h, input.into_inner()?, sink, need_zero, req.stream_limits, Some(&disk))
        }
        Plan::Mapped(m) => m.convert_stream(&mut input, sink, need_zero),
        Plan::VmdkStream(s) => s.convert(&mut input, sink, need_zero),
        Plan::Raw { .. } => Err(FormatError::Internal("raw plan on the image path").into()),
    });
    let copied = copied.and_then(|()| {
        check_end()?;
        verify(req, hasher.as_ref()).map(|()| virtual_size)
    });
    finish(disk, copied, formats, digest, progress)
}

/// What [`peel`] leaves: the innermost stream (its head read for sniffing, and replayed), its
/// format, and the layers' names, outermost first, the format's last.
pub(crate) type Peeled = (Peeked<Box<dyn Read + Send>>, ImageFormat, Vec<&'static str>);

/// Peels compression layers off `stream` (at most [`MAX_LAYERS`]).
pub(crate) fn peel(mut stream: Box<dyn Read + Send>) -> Result<Peeled, ImportError> {
    let mut formats = Vec::new();
    loop {
        let peeked = Peeked::new(stream, SNIFF_LEN).map_err(read_error)?;
        match detect::sniff(peeked.head()) {
            Detected::Compressed(c) if formats.len() < MAX_LAYERS => {
                formats.push(Detected::Compressed(c).name());
                stream = decompress::decoder(c, Box::new(peeked)).map_err(read_error)?;
            }
            Detected::Compressed(_) => {
                return Err(FormatError::TooManyLayers { max: MAX_LAYERS }.into());
            }
            Detected::Image(format) => {
                formats.push(Detected::Image(format).name());
                return Ok((peeked, format, formats));
            }
        }
    }
}

fn extract_archive(
    req: &ImportRequest,
    stream: &mut dyn Read,
    hasher: Option<Arc<Mutex<Hasher>>>,
    check_end: &dyn Fn() -> Result<(), ImportError>,
    formats: Vec<&'static str>,
    progress: &Progress,
    cancel: Arc<AtomicBool>,
) -> Result<ImportResult, ImportError> {
    // The checksum covers the whole archive, known only at its end: it is verified before
    // the extracted files are moved into place.
    let extracted = crate::archive::extract(stream, &req.target, &cancel, |rest| {
        crate::format::drain(rest)?;
        check_end()?;
        verify(req, hasher.as_ref())
    })?;
    progress.set_phase(Phase::Finishing);
    sync_dir(&req.target)?;
    Ok(ImportResult {
        virtual_size: extracted.bytes,
        bytes_written: extracted.bytes,
        formats,
        source_digest: req.checksum.as_ref().map(|c| c.to_string()),
        target: req.target.clone(),
        target_size: extracted.bytes,
    })
}

/// Flushes the volume: syncfs covers every extracted file, not only the directory.
pub(crate) fn sync_dir(path: &std::path::Path) -> Result<(), ImportError> {
    let dir = std::fs::File::open(path).map_err(|source| crate::disk::TargetError::Finish {
        op: "open",
        path: path.to_path_buf(),
        source,
    })?;
    nix::unistd::syncfs(&dir).map_err(|e| crate::disk::TargetError::Finish {
        op: "flush",
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    Ok(())
}

fn verify(req: &ImportRequest, hasher: Option<&Arc<Mutex<Hasher>>>) -> Result<(), ImportError> {
    let (Some(expected), Some(hasher)) = (&req.checksum, hasher) else { return Ok(()) };
    let actual = hasher.lock().expect("hasher lock").clone().finish_hex();
    if actual != expected.hex {
        return Err(ImportError::ChecksumMismatch {
            algorithm: expected.algorithm.name(),
            expected: expected.hex.clone(),
            actual,
        });
    }
    Ok(())
}

/// Where an import's outcome meets its disk: finished only when the copy succeeded (and was
/// verified), aborted otherwise.
pub(crate) fn finish<S: Storage>(
    disk: S,
    copied: Result<u64, ImportError>,
    formats: Vec<&'static str>,
    source_digest: Option<String>,
    progress: &Progress,
) -> Result<ImportResult, ImportError> {
    let virtual_size = match copied {
        Ok(size) => size,
        Err(e) => {
            disk.abort();
            return Err(map_no_space(e));
        }
    };
    progress.set_phase(Phase::Finishing);
    let finished = disk.finish(virtual_size)?;
    Ok(ImportResult {
        virtual_size,
        bytes_written: finished.bytes_written,
        formats,
        source_digest,
        target: finished.path,
        target_size: finished.size,
    })
}

/// A stream that outgrows the target is the "image too large" case CDI reports.
pub(crate) fn map_no_space(e: ImportError) -> ImportError {
    match e {
        ImportError::Target(crate::disk::TargetError::NoSpace { needed, available, .. }) => {
            ImportError::TooLarge { virtual_size: needed, available }
        }
        other => other,
    }
}

/// Recovers the typed error carried through `io::Read` by the layers below.
pub fn read_error(e: io::Error) -> ImportError {
    let e = match SourceError::from_io(e) {
        Ok(s) => return s.into(),
        Err(e) => e,
    };
    match DecompressError::from_io(e) {
        Ok(d) => d.into(),
        Err(e) => SourceError::Aborted(e.to_string()).into(),
    }
}

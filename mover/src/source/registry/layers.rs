//! The layer walk: finds the one regular file under `disk/` while the layers stream, and
//! hands its bytes on without storing anything.
//!
//! Later layers win, so the walk goes from the top layer down:
//! - layers above the winning one are read to their end (they hold no disk file, but their
//!   whiteouts hide lower files);
//! - the first regular file under `disk/` that no upper layer hid or replaced is the disk:
//!   its bytes go to the import as they arrive;
//! - the rest of that layer and every layer below are still read, to their end, to verify
//!   their digests and to find other surviving files under `disk/` ("more than one").
//!
//! So every layer is downloaded exactly once and nothing is downloaded twice; a disk that a
//! later layer replaced is downloaded (and discarded) with its lower layer. The stream ends
//! (EOF) only when every layer has been verified, so a bad digest anywhere fails the import
//! before the target can be marked complete.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::Duration;

use cdi_common::checksum::Algorithm;

use super::error::RegistryError;
use crate::checksum::BackgroundHasher;
use crate::source::SourceError;

/// The directory a containerDisk keeps its disk in.
const DISK_DIR: &str = "disk";
const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
/// Bytes of the disk per message to the reader; a few in flight bound the memory used.
const CHUNK: usize = 1 << 20;
const IN_FLIGHT: usize = 4;
const CANCEL_POLL: Duration = Duration::from_millis(200);

/// Layer media types whose content is a (possibly compressed) tar.
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
];

/// One layer as the manifest describes it.
#[derive(Debug, Clone)]
pub struct Layer {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

/// Where the layers' bytes come from (a registry, an OCI archive). The walk verifies them.
pub trait BlobStore: Send + Sync + fmt::Debug {
    fn open(&self, layer: &Layer) -> Result<Box<dyn Read + Send>, SourceError>;
}

/// Refuses what the walk could not read, before anything is downloaded.
pub fn check_media_types(image: &str, layers: &[Layer]) -> Result<(), RegistryError> {
    if let Some(l) = layers.iter().find(|l| !LAYER_TYPES.contains(&l.media_type.as_str())) {
        return Err(RegistryError::UnsupportedMediaType {
            image: image.to_string(),
            media_type: l.media_type.clone(),
            role: "layer",
        });
    }
    for l in layers {
        parse_digest(image, &l.digest)?;
    }
    Ok(())
}

fn parse_digest(image: &str, digest: &str) -> Result<(Algorithm, String), RegistryError> {
    let unsupported = || RegistryError::UnsupportedDigest { image: image.to_string(), digest: digest.to_string() };
    let (algo, hex) = digest.split_once(':').ok_or_else(unsupported)?;
    let algo = match algo {
        "sha256" => Algorithm::Sha256,
        "sha512" => Algorithm::Sha512,
        _ => return Err(unsupported()),
    };
    if hex.len() != algo.hex_len() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(unsupported());
    }
    Ok((algo, hex.to_ascii_lowercase()))
}

/// A blob reader that checks size as it goes and digest at its end. The digest is computed
/// beside the walk, which is busy decompressing.
struct Verified<'a> {
    inner: Box<dyn Read + Send>,
    hasher: Option<BackgroundHasher>,
    expected: String,
    size: u64,
    read: u64,
    image: &'a str,
    digest: &'a str,
}

impl Verified<'_> {
    fn mismatch(&self, actual: String) -> io::Error {
        SourceError::from(RegistryError::LayerMismatch {
            image: self.image.to_string(),
            digest: self.digest.to_string(),
            actual,
        })
        .into_io()
    }

    /// Reads what is left (a tar's padding, a compressor's trailer) so the digest covers it all.
    fn finish(&mut self) -> io::Result<()> {
        let mut scratch = vec![0u8; 256 << 10];
        while self.read(&mut scratch)? > 0 {}
        Ok(())
    }
}

impl Read for Verified<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(hasher) = self.hasher.as_mut() else { return Ok(0) };
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.size {
            return Err(self.mismatch(format!("more than its {} bytes", self.size)));
        }
        hasher.update(&buf[..n]);
        if n == 0 && !buf.is_empty() {
            let actual = self.hasher.take().expect("checked above").finish_hex()?;
            if self.read != self.size {
                return Err(self.mismatch(format!("{} bytes of {}", self.read, self.size)));
            }
            if actual != self.expected {
                return Err(self.mismatch(format!("digest {actual}")));
            }
        }
        Ok(n)
    }
}

enum Msg {
    Data(Vec<u8>),
    Done,
    Failed(SourceError),
}

/// What the walk needs: the image's name for messages, its layers bottom to top, their store.
#[derive(Debug)]
pub struct Walk {
    pub image: String,
    pub layers: Vec<Layer>,
    pub store: Arc<dyn BlobStore>,
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Walk {
    /// Starts the walk on its own thread; the disk's bytes come out of the returned reader.
    pub fn start(self) -> Result<DiskReader, SourceError> {
        let (tx, rx) = sync_channel(IN_FLIGHT);
        let cancel = self.cancel.clone();
        std::thread::Builder::new()
            .name("cdi-layer-walk".into())
            .spawn(move || {
                let outcome = self.run(&tx);
                let last = match outcome {
                    Ok(()) => Msg::Done,
                    Err(Stop::Failed(e)) => Msg::Failed(e),
                    Err(Stop::ReaderGone) => return,
                };
                let _ = tx.send(last);
            })
            .map_err(|e| SourceError::Aborted(format!("cannot start the layer walk: {e}")))?;
        Ok(DiskReader { rx, current: Vec::new(), pos: 0, cancel, done: false })
    }

    fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed))
    }

    fn run(&self, tx: &SyncSender<Msg>) -> Result<(), Stop> {
        let mut upper = Upper::default();
        let mut disk: Option<String> = None;
        let mut extras: Vec<String> = Vec::new();
        for layer in self.layers.iter().rev() {
            if self.cancelled() {
                return Err(Stop::Failed(SourceError::Aborted("cancelled".into())));
            }
            let (algo, expected) = parse_digest(&self.image, &layer.digest).map_err(|e| Stop::Failed(e.into()))?;
            let hasher = BackgroundHasher::start(algo.hasher())
                .map_err(|e| Stop::Failed(SourceError::Aborted(format!("cannot start a digest thread: {e}"))))?;
            let mut blob = Verified {
                inner: self.store.open(layer).map_err(Stop::Failed)?,
                hasher: Some(hasher),
                expected,
                size: layer.size,
                read: 0,
                image: &self.image,
                digest: &layer.digest,
            };
            let this_layer = match self.scan_layer(&mut blob, layer, &upper, &mut disk, &mut extras, tx) {
                Ok(marks) => {
                    blob.finish().map_err(|e| Stop::Failed(self.io_error(layer, e)))?;
                    marks
                }
                // A digest mismatch explains a broken tar or a decoder error: read on to see
                // whether the layer is what the manifest says, and report that first.
                Err(Stop::Failed(e @ SourceError::Registry(RegistryError::BadLayer { .. }))) => {
                    let verdict = blob.finish().err().and_then(|f| SourceError::from_io(f).ok());
                    return Err(Stop::Failed(match verdict {
                        Some(m @ SourceError::Registry(RegistryError::LayerMismatch { .. })) => m,
                        _ => e,
                    }));
                }
                Err(stop) => return Err(stop),
            };
            upper.merge(this_layer);
        }
        match disk {
            None => Err(Stop::Failed(RegistryError::NoDisk { image: self.image.clone() }.into())),
            Some(found) if !extras.is_empty() => {
                let mut files = vec![format!("/{found}")];
                files.extend(extras.iter().map(|f| format!("/{f}")));
                Err(Stop::Failed(RegistryError::MoreThanOneDisk { image: self.image.clone(), files }.into()))
            }
            Some(_) => Ok(()),
        }
    }

    /// Reads one layer's tar: streams the disk if this layer has the winning one, notes other
    /// surviving files under disk/, and returns what this layer hides from the ones below.
    fn scan_layer(
        &self,
        blob: &mut Verified<'_>,
        layer: &Layer,
        upper: &Upper,
        disk: &mut Option<String>,
        extras: &mut Vec<String>,
        tx: &SyncSender<Msg>,
    ) -> Result<LayerMarks, Stop> {
        let mut marks = LayerMarks::default();
        let mut buffered = BufReader::with_capacity(256 << 10, blob);
        // The content decides, not the media type: registries relabel, the bytes do not lie.
        let (gzip, zstd) = {
            let head = buffered.fill_buf().map_err(|e| Stop::Failed(self.io_error(layer, e)))?;
            (head.starts_with(&[0x1f, 0x8b]), head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]))
        };
        let decoded: Box<dyn Read + '_> = if gzip {
            Box::new(flate2::bufread::GzDecoder::new(buffered))
        } else if zstd {
            Box::new(
                zstd::stream::read::Decoder::with_buffer(buffered)
                    .map_err(|e| Stop::Failed(self.io_error(layer, e)))?,
            )
        } else {
            Box::new(buffered)
        };
        let mut archive = tar::Archive::new(decoded);
        let entries = archive.entries().map_err(|e| Stop::Failed(self.io_error(layer, e)))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| Stop::Failed(self.io_error(layer, e)))?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let path = normalize(&raw).ok_or_else(|| {
                Stop::Failed(
                    RegistryError::PathEscape {
                        image: self.image.clone(),
                        digest: layer.digest.clone(),
                        entry: raw.clone(),
                    }
                    .into(),
                )
            })?;
            let Some((name, parent)) = path.split_last() else { continue };
            if name == OPAQUE {
                marks.opaque.push(parent.join("/"));
                continue;
            }
            if let Some(hidden) = name.strip_prefix(WHITEOUT) {
                let mut p = parent.to_vec();
                p.push(hidden.to_string());
                marks.hidden.push(p.join("/"));
                continue;
            }
            if path.len() < 2 || path[0] != DISK_DIR {
                continue;
            }
            let joined = path.join("/");
            let regular = entry.header().entry_type().is_file();
            if !regular || upper.hides(&path) {
                continue;
            }
            marks.files.push(joined.clone());
            if disk.is_some() {
                extras.push(joined);
                continue;
            }
            tracing::info!(image = %self.image, layer = %layer.digest, file = %format!("/{joined}"), "found the disk");
            *disk = Some(joined);
            self.send_entry(&mut entry, layer, tx)?;
        }
        Ok(marks)
    }

    fn send_entry(&self, entry: &mut impl Read, layer: &Layer, tx: &SyncSender<Msg>) -> Result<(), Stop> {
        loop {
            if self.cancelled() {
                return Err(Stop::Failed(SourceError::Aborted("cancelled".into())));
            }
            let mut chunk = vec![0u8; CHUNK];
            let mut filled = 0;
            while filled < CHUNK {
                match entry.read(&mut chunk[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Stop::Failed(self.io_error(layer, e))),
                }
            }
            if filled == 0 {
                return Ok(());
            }
            chunk.truncate(filled);
            tx.send(Msg::Data(chunk)).map_err(|_| Stop::ReaderGone)?;
        }
    }

    /// An error reading a layer: the store's or the verifier's own, or the layer is bad.
    fn io_error(&self, layer: &Layer, e: io::Error) -> SourceError {
        SourceError::from_io(e).unwrap_or_else(|e| {
            RegistryError::BadLayer { image: self.image.clone(), digest: layer.digest.clone(), detail: e.to_string() }
                .into()
        })
    }
}

#[derive(Debug)]
enum Stop {
    Failed(SourceError),
    /// The import stopped reading: nothing more to do, nobody to tell.
    ReaderGone,
}

/// What one layer says about the layers below it.
#[derive(Debug, Default)]
struct LayerMarks {
    /// Whited-out paths (`.wh.NAME`): that path and everything under it.
    hidden: Vec<String>,
    /// Opaque directories (`.wh..wh..opq`): everything under them.
    opaque: Vec<String>,
    /// Files this layer has under disk/: the same path below is replaced.
    files: Vec<String>,
}

/// Everything the layers above the current one hide.
#[derive(Debug, Default)]
struct Upper {
    hidden: HashSet<String>,
    opaque: HashSet<String>,
    files: HashSet<String>,
}

impl Upper {
    fn merge(&mut self, marks: LayerMarks) {
        self.hidden.extend(marks.hidden);
        self.opaque.extend(marks.opaque);
        self.files.extend(marks.files);
    }

    fn hides(&self, path: &[String]) -> bool {
        if self.files.contains(&path.join("/")) {
            return true;
        }
        (1..=path.len()).any(|n| {
            let prefix = path[..n].join("/");
            self.hidden.contains(&prefix) || (n < path.len() && self.opaque.contains(&prefix))
        }) || self.opaque.contains("")
    }
}

/// `./disk//a` → `["disk", "a"]`; `None` for a `..` component (never followed).
fn normalize(raw: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => out.push(c.to_string()),
        }
    }
    Some(out)
}

/// The disk's bytes, in order; EOF only after every layer was verified.
#[derive(Debug)]
pub struct DiskReader {
    rx: Receiver<Msg>,
    current: Vec<u8>,
    pos: usize,
    cancel: Option<Arc<AtomicBool>>,
    done: bool,
}

impl fmt::Debug for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Msg::Data(d) => write!(f, "Data({} bytes)", d.len()),
            Msg::Done => f.write_str("Done"),
            Msg::Failed(e) => write!(f, "Failed({e})"),
        }
    }
}

impl Read for DiskReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            if self.done {
                return Ok(0);
            }
            if self.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(SourceError::Aborted("cancelled".into()).into_io());
            }
            match self.rx.recv_timeout(CANCEL_POLL) {
                Ok(Msg::Data(d)) => {
                    self.current = d;
                    self.pos = 0;
                }
                Ok(Msg::Done) => self.done = true,
                Ok(Msg::Failed(e)) => return Err(e.into_io()),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(SourceError::Aborted("the layer walk stopped unexpectedly".into()).into_io());
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<String> {
        normalize(s).unwrap()
    }

    #[test]
    fn normalizes_and_refuses_dot_dot() {
        assert_eq!(p("./disk//a.img"), vec!["disk", "a.img"]);
        assert_eq!(p("/disk/a.img"), vec!["disk", "a.img"]);
        assert!(normalize("disk/../../etc/passwd").is_none());
    }

    #[test]
    fn whiteouts_hide_lower_files() {
        let mut upper = Upper::default();
        upper.merge(LayerMarks { hidden: vec!["disk/old.img".into()], ..Default::default() });
        assert!(upper.hides(&p("disk/old.img")));
        assert!(!upper.hides(&p("disk/new.img")));
        upper.merge(LayerMarks { opaque: vec!["disk".into()], ..Default::default() });
        assert!(upper.hides(&p("disk/new.img")));
        let mut upper = Upper::default();
        upper.merge(LayerMarks { hidden: vec!["disk".into()], ..Default::default() });
        assert!(upper.hides(&p("disk/x")));
        let mut upper = Upper::default();
        upper.merge(LayerMarks { files: vec!["disk/x".into()], ..Default::default() });
        assert!(upper.hides(&p("disk/x")) && !upper.hides(&p("disk/y")));
    }

    /// Layers held in memory, by digest.
    #[derive(Debug, Default)]
    struct MemStore(std::collections::HashMap<String, Vec<u8>>);

    impl BlobStore for MemStore {
        fn open(&self, layer: &Layer) -> Result<Box<dyn Read + Send>, SourceError> {
            Ok(Box::new(io::Cursor::new(self.0[&layer.digest].clone())))
        }
    }

    /// A tar of (path, content) with paths written raw (no normalisation by the builder).
    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            let name = path.as_bytes();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn walk(layers: &[Vec<u8>]) -> Result<Vec<u8>, SourceError> {
        let mut store = MemStore::default();
        let mut descs = Vec::new();
        for blob in layers {
            let mut h = Algorithm::Sha256.hasher();
            h.update(blob);
            let digest = format!("sha256:{}", h.finish_hex());
            store.0.insert(digest.clone(), blob.clone());
            descs.push(Layer { digest, size: blob.len() as u64, media_type: LAYER_TYPES[0].into() });
        }
        let walk = Walk { image: "docker://h/i:1".into(), layers: descs, store: Arc::new(store), cancel: None };
        let mut out = Vec::new();
        walk.start()?.read_to_end(&mut out).map_err(|e| SourceError::from_io(e).unwrap())?;
        Ok(out)
    }

    #[test]
    fn the_walk_streams_the_surviving_disk_and_refuses_the_rest() {
        let low = tar_of(&[("disk/a.img", b"old"), ("disk/b.img", b"gone"), ("etc/x", b"x")]);
        let gz = {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&tar_of(&[("disk/.wh.b.img", b""), ("./disk/a.img", b"new")])).unwrap();
            e.finish().unwrap()
        };
        assert_eq!(walk(&[low.clone(), gz]).unwrap(), b"new");
        let e = walk(std::slice::from_ref(&low)).unwrap_err();
        assert!(e.to_string().contains("/disk/a.img, /disk/b.img"), "{e}");
        let e = walk(&[tar_of(&[("disk/../../etc/passwd", b"x")])]).unwrap_err();
        assert!(matches!(e, SourceError::Registry(RegistryError::PathEscape { .. })), "{e}");
        let e = walk(&[tar_of(&[("etc/x", b"x")])]).unwrap_err();
        assert!(matches!(e, SourceError::Registry(RegistryError::NoDisk { .. })), "{e}");
        // One byte changed after the digest was taken: refused at the layer's end.
        let opaque = tar_of(&[("disk/.wh..wh..opq", b""), ("disk/c.img", b"c")]);
        assert_eq!(walk(&[low.clone(), opaque.clone()]).unwrap(), b"c");
        let mut store_bad = low.clone();
        let mut h = Algorithm::Sha256.hasher();
        h.update(&low);
        let digest = format!("sha256:{}", h.finish_hex());
        let last = store_bad.len() - 1;
        store_bad[last] ^= 1;
        let walk = Walk {
            image: "docker://h/i:1".into(),
            layers: vec![Layer { digest: digest.clone(), size: low.len() as u64, media_type: LAYER_TYPES[0].into() }],
            store: Arc::new(MemStore([(digest, store_bad)].into_iter().collect())),
            cancel: None,
        };
        let e = io::read_to_string(walk.start().unwrap()).unwrap_err();
        let e = SourceError::from_io(e).unwrap();
        assert!(matches!(e, SourceError::Registry(RegistryError::LayerMismatch { .. })), "{e}");
        assert!(!e.is_retryable());
    }

    #[test]
    fn digests_are_checked_for_shape() {
        assert!(parse_digest("i", &format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(parse_digest("i", "md5:abc").is_err());
        assert!(parse_digest("i", "sha256:xyz").is_err());
    }
}

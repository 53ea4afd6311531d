//! Where image bytes come from.
//!
//! Every source reads sequentially ([`Opened::into_stream`]); sources whose transport allows
//! it also offer random access ([`RandomAccess`]): local files and HTTP servers that honour
//! `Range`. The import uses random access when nothing forces a single pass (no outer
//! compression, no checksum over the stream), which lets qcow2 be read metadata-first and
//! lets several workers fetch in parallel.
//!
//! [`blank`] is the source without bytes: an empty disk, made where it lies. The object
//! stores ([`s3`], [`gcs`]) are HTTP sources with their own addressing and authorisation.
//! [`peer`] is another mover's volume, read as a stream of extents rather than image bytes.

pub mod blank;
mod file;
pub mod gcs;
mod google_auth;
mod http;
pub mod peer;
pub mod registry;
pub mod s3;
pub mod sigv4;
pub mod upload;

use std::fmt;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

pub use file::FileSource;
pub use gcs::{GcsLocation, GcsOptions};
pub use http::{CaBundle, Credentials, HttpOptions, HttpSource, ObjectAccess, ProxySettings, RequestAuth};
pub use peer::{PeerClient, PeerError, PeerTls, PeerVolume};
pub use registry::{ImageRef, Platform, RegistryError, RegistryOptions};
pub use s3::S3Location;
pub use sigv4::S3Keys;
pub use upload::{UploadError, UploadFeed};

/// Random access to the source's bytes. Implementations are shared by the copy workers.
pub trait RandomAccess: Send + Sync + fmt::Debug {
    /// Total length in bytes.
    fn len(&self) -> u64;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` from `offset`; reading past [`RandomAccess::len`] is an error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), SourceError>;

    /// The next allocated region at or after `offset`, if the source knows its holes (sparse
    /// local files). The default says "everything is data".
    fn next_data(&self, offset: u64) -> Option<(u64, u64)> {
        (offset < self.len()).then(|| (offset, self.len()))
    }
}

/// Bytes held in memory as a random-access source: for tests and fuzzing, where a file or
/// a server would only add noise.
#[derive(Debug, Clone)]
pub struct MemSource(pub Arc<Vec<u8>>);

impl RandomAccess for MemSource {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), SourceError> {
        let bytes = usize::try_from(offset)
            .ok()
            .and_then(|o| self.0.get(o..o.checked_add(buf.len())?))
            .ok_or(SourceError::OutOfBounds { offset, len: buf.len() as u64, size: self.0.len() as u64 })?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

/// What the user asked to import from.
#[derive(Clone)]
pub enum SourceSpec {
    File(PathBuf),
    Http(reqwest::Url),
    /// A container image (containerDisk): `docker://…` or `oci-archive:///…` ([`registry`]).
    Registry(ImageRef),
    /// An S3 object: `s3://BUCKET/KEY`, or a path-style `http(s)://ENDPOINT/BUCKET/KEY`
    /// named as S3 by the caller ([`SourceSpec::s3`]).
    S3(S3Location),
    /// A Google Cloud Storage object: `gs://BUCKET/OBJECT`.
    Gcs(GcsLocation),
    /// No bytes: an empty raw disk of the target's usable size ([`blank`]).
    Blank,
    /// Bytes pushed by an `Upload` call ([`upload`]); never parsed from a string.
    Upload(UploadFeed),
    /// Another mover's volume, read with its `ReadVolume` ([`peer`]); never parsed from a
    /// string.
    Volume(PeerVolume),
}

/// Redacted: a URL may carry credentials in its user info or query.
impl fmt::Debug for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::File(p) => f.debug_tuple("File").field(p).finish(),
            SourceSpec::Http(u) => f.debug_tuple("Http").field(&redact(u)).finish(),
            SourceSpec::Registry(i) => f.debug_tuple("Registry").field(&i.display()).finish(),
            SourceSpec::S3(l) => f.debug_tuple("S3").field(&l.name).finish(),
            SourceSpec::Gcs(l) => f.debug_tuple("Gcs").field(&l.name()).finish(),
            SourceSpec::Blank => f.write_str("Blank"),
            SourceSpec::Upload(_) => f.write_str("Upload"),
            SourceSpec::Volume(v) => f.debug_tuple("Volume").field(&v.display()).finish(),
        }
    }
}

impl SourceSpec {
    /// Parses a path, `file://…`, `http://…`, `https://…`, `s3://BUCKET/KEY`,
    /// `gs://BUCKET/OBJECT`, `docker://…`, `oci-archive:///…`, or `blank:` (an empty disk).
    /// http(s) URLs are plain HTTP; the caller names an S3 endpoint or a GCS browser URL with
    /// [`SourceSpec::s3`] or [`SourceSpec::gcs`].
    pub fn parse(s: &str) -> Result<SourceSpec, SourceError> {
        if let Some(image) = ImageRef::parse(s) {
            return Ok(SourceSpec::Registry(image?));
        }
        if s.eq_ignore_ascii_case(blank::SPEC) || s.eq_ignore_ascii_case("blank://") {
            return Ok(SourceSpec::Blank);
        }
        if let Some(rest) = s.strip_prefix("file://") {
            if rest.is_empty() || !rest.starts_with('/') {
                return Err(SourceError::InvalidUrl {
                    url: s.to_string(),
                    reason: "a file:// URL needs an absolute path, e.g. file:///var/images/disk.qcow2".into(),
                });
            }
            return Ok(SourceSpec::File(PathBuf::from(rest)));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            let url = reqwest::Url::parse(s)
                .map_err(|e| SourceError::InvalidUrl { url: redact_str(s), reason: e.to_string() })?;
            return match scheme.to_ascii_lowercase().as_str() {
                "http" | "https" => Ok(SourceSpec::Http(url)),
                "s3" => Ok(SourceSpec::S3(S3Location::parse(s)?)),
                "gs" => Ok(SourceSpec::Gcs(GcsLocation::parse(s)?)),
                other => Err(SourceError::UnsupportedScheme { scheme: other.to_string(), url: redact(&url) }),
            };
        }
        Ok(SourceSpec::File(PathBuf::from(s)))
    }

    /// An S3 object from `s3://BUCKET/KEY` or a path-style `http(s)://ENDPOINT/BUCKET/KEY`.
    pub fn s3(s: &str) -> Result<SourceSpec, SourceError> {
        Ok(SourceSpec::S3(S3Location::parse(s)?))
    }

    /// A GCS object from `gs://BUCKET/OBJECT` or `https://storage.cloud.google.com/BUCKET/OBJECT`.
    pub fn gcs(s: &str) -> Result<SourceSpec, SourceError> {
        Ok(SourceSpec::Gcs(GcsLocation::parse(s)?))
    }

    /// The source as it may be shown to users: no credentials, no query string.
    pub fn display(&self) -> String {
        match self {
            SourceSpec::File(p) => p.display().to_string(),
            SourceSpec::Http(u) => redact(u),
            SourceSpec::Registry(i) => i.display(),
            SourceSpec::S3(l) => l.name.clone(),
            SourceSpec::Gcs(l) => l.name(),
            SourceSpec::Blank => blank::FORMAT.to_string(),
            SourceSpec::Upload(_) => upload::NAME.to_string(),
            SourceSpec::Volume(v) => v.display(),
        }
    }
}

/// An opened source, before the import decides how to read it.
pub struct Opened {
    /// How the source may be named in messages (credentials removed).
    pub name: String,
    /// Length in bytes when known (file size, Content-Length).
    pub len: Option<u64>,
    /// Random access, when the transport supports it.
    pub random: Option<Arc<dyn RandomAccess>>,
    stream: Box<dyn FnOnce() -> Result<Box<dyn Read + Send>, SourceError> + Send>,
    end_check: Option<EndCheck>,
}

/// Confirms, before the import commits, that the source really ended where the image did.
pub type EndCheck = Box<dyn FnOnce() -> Result<(), SourceError> + Send>;

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened")
            .field("name", &self.name)
            .field("len", &self.len)
            .field("random", &self.random.is_some())
            .finish()
    }
}

impl Opened {
    pub fn new(
        name: String,
        len: Option<u64>,
        random: Option<Arc<dyn RandomAccess>>,
        stream: impl FnOnce() -> Result<Box<dyn Read + Send>, SourceError> + Send + 'static,
    ) -> Opened {
        Opened { name, len, random, stream: Box::new(stream), end_check: None }
    }

    /// Adds a check the import runs once the image is read, before it commits the target.
    pub fn with_end_check(mut self, check: impl FnOnce() -> Result<(), SourceError> + Send + 'static) -> Opened {
        self.end_check = Some(Box::new(check));
        self
    }

    /// The end check, if the source has one (uploads: the uploader's end must arrive).
    pub fn take_end_check(&mut self) -> Option<EndCheck> {
        self.end_check.take()
    }

    /// Starts the sequential read of the whole source. Errors surface from `read` as
    /// `io::Error`s wrapping a [`SourceError`] (see [`SourceError::from_io`]).
    pub fn into_stream(self) -> Result<Box<dyn Read + Send>, SourceError> {
        (self.stream)()
    }
}

/// Options for opening any source.
#[derive(Debug, Clone, Default)]
pub struct SourceOptions {
    /// For every source over HTTP (S3 and GCS too): CA, TLS verification, connections.
    pub http: HttpOptions,
    pub registry: RegistryOptions,
    /// S3's access keys; none: anonymous.
    pub s3_keys: Option<S3Keys>,
    pub gcs: GcsOptions,
    /// Set to stop blocked network reads promptly (the import's cancel flag).
    pub cancel: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// Opens the source named by `spec`. Network sources run their I/O on `rt`; this function
/// and everything it returns must be used from outside that runtime's worker threads.
pub fn open(spec: &SourceSpec, opts: &SourceOptions, rt: &tokio::runtime::Handle) -> Result<Opened, SourceError> {
    match spec {
        SourceSpec::File(path) => FileSource::open(path),
        SourceSpec::Http(url) => HttpSource::open(url.clone(), opts.http.clone(), opts.cancel.clone(), rt.clone()),
        SourceSpec::Registry(image) => registry::open(image, &opts.registry, opts.cancel.clone(), rt),
        SourceSpec::S3(location) => {
            s3::open(location, opts.s3_keys.as_ref(), &opts.http, opts.cancel.clone(), rt.clone())
        }
        SourceSpec::Gcs(location) => gcs::open(location, &opts.gcs, &opts.http, opts.cancel.clone(), rt.clone()),
        // The import makes a blank disk without opening anything (`blank::create`).
        SourceSpec::Blank => Err(SourceError::NoBytes),
        SourceSpec::Upload(feed) => upload::open(feed),
        // The import writes the peer's extents itself (`peer::copy`): no bytes to open.
        SourceSpec::Volume(_) => Err(SourceError::NoBytes),
    }
}

/// Why reading the source failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot open source {path}: {source}")]
    OpenFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("source {path} is neither a regular file nor a block device")]
    NotAFile { path: PathBuf },
    #[error("cannot read source {path} at offset {offset}: {source}")]
    ReadFile {
        path: PathBuf,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("invalid source URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error(
        "unsupported source scheme {scheme:?} in {url}; use a path, file://, http://, https://, s3://, gs://, docker://, oci-archive:// or blank:"
    )]
    UnsupportedScheme { scheme: String, url: String },
    #[error("invalid HTTP option: {0}")]
    InvalidOption(String),
    #[error("CA certificates from {origin}: {reason}")]
    CaFile { origin: String, reason: String },
    #[error("{url}: HTTP {status}{hint}")]
    Status { url: String, status: u16, hint: &'static str },
    /// An object store refused a request and said why (S3's error code, GCS's message).
    #[error("{object}: {message}")]
    Store { object: String, status: u16, retryable: bool, message: String },
    /// Obtaining an access token for the store failed.
    #[error("{0}")]
    Token(String),
    #[error("{0}")]
    TokenRetryable(String),
    #[error("{url}: {operation} failed at offset {offset}: {source}")]
    Transfer {
        url: String,
        operation: &'static str,
        offset: u64,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "{url}: the connection dropped at offset {offset} and the server does not support range \
         requests, so the download cannot resume"
    )]
    Interrupted { url: String, offset: u64 },
    #[error("{url}: the server sent {got} bytes where {expected} were expected at offset {offset}")]
    ShortBody { url: String, offset: u64, expected: u64, got: u64 },
    #[error("{url}: the server answered a range request for offset {offset} with {detail}")]
    BadRange { url: String, offset: u64, detail: String },
    #[error("{url}: more than {limit} redirects")]
    TooManyRedirects { url: String, limit: usize },
    #[error("{url}: redirect without a usable Location header")]
    BadRedirect { url: String },
    #[error("read of {len} bytes at offset {offset} is beyond the end of the source ({size} bytes)")]
    OutOfBounds { offset: u64, len: u64, size: u64 },
    #[error("the download stopped: {0}")]
    Aborted(String),
    #[error("a blank or volume source has no bytes to read")]
    NoBytes,
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Upload(#[from] UploadError),
    #[error(transparent)]
    Peer(#[from] PeerError),
}

impl SourceError {
    pub fn is_retryable(&self) -> bool {
        match self {
            SourceError::Registry(e) => e.is_retryable(),
            SourceError::Upload(e) => e.is_retryable(),
            SourceError::Peer(e) => e.is_retryable(),
            SourceError::Status { status, .. } => is_retryable_status(*status),
            SourceError::Store { retryable, .. } => *retryable,
            SourceError::TokenRetryable(_) => true,
            SourceError::Transfer { .. }
            | SourceError::Interrupted { .. }
            | SourceError::ShortBody { .. }
            | SourceError::ReadFile { .. } => true,
            SourceError::OpenFile { source, .. } => source.kind() != io::ErrorKind::NotFound,
            _ => false,
        }
    }

    pub fn reason(&self) -> crate::error::Reason {
        use crate::error::Reason;
        match self {
            SourceError::Registry(e) => e.reason(),
            SourceError::Peer(e) => e.reason(),
            SourceError::Status { status: 404 | 410, .. } => Reason::NotFound,
            SourceError::Status { status: 401 | 403 | 407, .. } => Reason::Unauthorized,
            SourceError::Store { status: 404 | 410, .. } => Reason::NotFound,
            SourceError::Store { status: 401 | 403, .. } | SourceError::Token(_) => Reason::Unauthorized,
            SourceError::OpenFile { source, .. } if source.kind() == io::ErrorKind::NotFound => Reason::NotFound,
            e if e.is_retryable() => Reason::SourceUnavailable,
            _ => Reason::SourceInvalid,
        }
    }

    /// Wraps the error for transport through `std::io::Read`.
    pub fn into_io(self) -> io::Error {
        io::Error::other(self)
    }

    /// Recovers a [`SourceError`] carried inside an `io::Error` by [`SourceError::into_io`].
    pub fn from_io(e: io::Error) -> Result<SourceError, io::Error> {
        if e.get_ref().is_some_and(|inner| inner.is::<SourceError>()) {
            let inner = e.into_inner().expect("checked above");
            Ok(*inner.downcast::<SourceError>().expect("checked above"))
        } else {
            Err(e)
        }
    }
}

/// HTTP statuses worth retrying: timeouts, rate limits and server-side failures.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 425 | 429) || (500..600).contains(&status)
}

/// A URL as it may appear in logs and errors: no user info, no query string (presigned URLs
/// carry their credentials there), no fragment.
pub fn redact(url: &reqwest::Url) -> String {
    let mut shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    if url.query().is_some() {
        shown.push_str("?…");
    }
    shown
}

pub(crate) fn redact_str(s: &str) -> String {
    match reqwest::Url::parse(s) {
        Ok(u) => redact(&u),
        // Unparseable: show the part before any '@' or '?', where credentials hide.
        Err(_) => match s.split_once("://") {
            Some((scheme, rest)) => {
                let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
                format!("{scheme}://{}", rest.split('?').next().unwrap_or(""))
            }
            None => s.split('?').next().unwrap_or("").to_string(),
        },
    }
}

/// Counts source bytes for progress as they are read.
#[derive(Debug)]
pub struct CountingReader<R> {
    inner: R,
    counter: Arc<std::sync::atomic::AtomicU64>,
}

impl<R: Read> CountingReader<R> {
    pub fn new(inner: R, counter: Arc<std::sync::atomic::AtomicU64>) -> CountingReader<R> {
        CountingReader { inner, counter }
    }
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn parses_paths_and_urls() {
        assert!(
            matches!(SourceSpec::parse("/tmp/x.qcow2").unwrap(), SourceSpec::File(p) if p == Path::new("/tmp/x.qcow2"))
        );
        assert!(matches!(SourceSpec::parse("rel/x.img").unwrap(), SourceSpec::File(_)));
        assert!(matches!(SourceSpec::parse("file:///tmp/x").unwrap(), SourceSpec::File(p) if p == Path::new("/tmp/x")));
        assert!(matches!(SourceSpec::parse("https://h/x").unwrap(), SourceSpec::Http(_)));
        assert!(matches!(SourceSpec::parse("HTTP://h/x").unwrap(), SourceSpec::Http(_)));
        assert!(matches!(SourceSpec::parse("blank:").unwrap(), SourceSpec::Blank));
        assert!(matches!(SourceSpec::parse("s3://b/k.img").unwrap(), SourceSpec::S3(l) if l.key == "k.img"));
        assert!(matches!(SourceSpec::parse("gs://b/o.img").unwrap(), SourceSpec::Gcs(l) if l.object == "o.img"));
        // Object stores over http(s) are named by the caller, not guessed.
        assert!(matches!(SourceSpec::parse("https://storage.cloud.google.com/b/o").unwrap(), SourceSpec::Http(_)));
        assert!(matches!(SourceSpec::s3("http://127.0.0.1:9000/b/k").unwrap(), SourceSpec::S3(l) if l.bucket == "b"));
        assert_eq!(SourceSpec::gcs("https://storage.cloud.google.com/b/o").unwrap().display(), "gs://b/o");
        assert!(matches!(SourceSpec::parse("blank://").unwrap(), SourceSpec::Blank));
        // A file that happens to be called "blank" is still a file.
        assert!(matches!(SourceSpec::parse("blank").unwrap(), SourceSpec::File(_)));
        assert_eq!(SourceSpec::Blank.display(), "blank");
    }

    #[test]
    fn refuses_other_schemes_and_relative_file_urls() {
        let e = SourceSpec::parse("ftp://user:pw@h/x").unwrap_err();
        assert!(matches!(e, SourceError::UnsupportedScheme { .. }));
        assert!(!e.to_string().contains("pw"), "{e}");
        assert!(matches!(SourceSpec::parse("file://rel").unwrap_err(), SourceError::InvalidUrl { .. }));
    }

    #[test]
    fn redaction_drops_credentials_and_query() {
        let u = reqwest::Url::parse("https://bob:secret@example.com:8443/a/b.img?X-Amz-Signature=abc#frag").unwrap();
        assert_eq!(redact(&u), "https://example.com:8443/a/b.img?…");
        assert_eq!(redact_str("http://bob:secret@[bad/x?tok=1"), "http://[bad/x");
    }

    #[test]
    fn source_errors_survive_an_io_round_trip() {
        let e = SourceError::Interrupted { url: "http://h/x".into(), offset: 7 }.into_io();
        let back = SourceError::from_io(e).unwrap();
        assert!(matches!(back, SourceError::Interrupted { offset: 7, .. }));
        assert!(SourceError::from_io(io::Error::other("plain")).is_err());
    }

    #[test]
    fn classifies_statuses() {
        let st = |status| SourceError::Status { url: String::new(), status, hint: "" };
        assert!(!st(404).is_retryable());
        assert!(!st(401).is_retryable());
        assert!(st(503).is_retryable());
        assert!(st(429).is_retryable());
        assert_eq!(st(404).reason(), crate::error::Reason::NotFound);
        assert_eq!(st(403).reason(), crate::error::Reason::Unauthorized);
    }
}

//! Another mover's volume as a source: the mover side of a host-assisted clone.
//!
//! ```text
//!  peer mover ──ReadVolume (mTLS)──▶ pump (async, on the runtime) ─▶ bounded channel
//!      ─▶ next() (blocking: counts progress, notices cancel) ─▶ volume::write_volume ─▶ target
//! ```
//!
//! This mover connects to the peer at [`PeerVolume::address`] as a client, presenting its
//! own serving certificate (the movers share one CA, so the peer's `--client-ca` trusts it)
//! and checking the peer's against [`PeerVolume::server_name`]. It asks for RAW (a disk
//! image: KUBEVIRT content) or TAR (ARCHIVE content) and writes the stream exactly as a
//! `WriteVolume` would, with [`write_volume`]: sized like an import of the same raw image,
//! committed only once the stream's end arrived, cleaned up otherwise.
//!
//! Memory stays bounded whatever the volume's size: the HTTP/2 windows, [`QUEUE`] chunks
//! in the channel, and the copy engine's pooled buffers.
//!
//! The service's gRPC types appear here because this source *is* a gRPC client; the
//! statuses it meets are those of the peer, turned into a [`PeerError`] at once.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cdi_common::mtls;
use cdi_proto::v1 as pb;
use cdi_proto::v1::mover_client::MoverClient;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use crate::disk::TargetError;
use crate::error::{ImportError, Reason, one_line};
use crate::import::{ContentType, ImportRequest, ImportResult};
use crate::progress::{Phase, Progress};
use crate::service::volume::{QUEUE, chunk_from_pb, format_to_pb};
use crate::volume::write::TarInto;
use crate::volume::{Chunk, Format, StreamError, VolumeError, Written, write_volume};

/// How the source kind is named (Capabilities, task listings).
pub const NAME: &str = "volume";
/// The name every mover's certificate carries (the populator's `MOVER_SERVER_NAME`).
pub const DEFAULT_SERVER_NAME: &str = "cdi-mover";

/// How long connecting to a peer (TCP and TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 flow control for what a peer sends (ReadVolume): a few 1 MiB chunks in flight,
/// in large frames, rather than hyper's small defaults.
pub const STREAM_WINDOW: u32 = 4 << 20;
pub const CONNECTION_WINDOW: u32 = 8 << 20;
pub const MAX_FRAME: u32 = 1 << 20;
/// Largest message accepted from a peer: chunks are 1 MiB from a mover, a few MiB at most.
pub const MAX_MESSAGE: usize = 64 << 20;
/// How often the writer, waiting for the peer, checks for cancellation.
const CANCEL_POLL: Duration = Duration::from_millis(200);

/// The files of this mover's identity towards its peers: the serving certificate and key
/// (`serve --tls-cert`, `--tls-key`) and the CA the peers' certificates are signed by
/// (`--client-ca`). Read at every connection, so rotated files are picked up.
#[derive(Debug, Clone)]
pub struct PeerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// How this mover reaches its peers: mutual TLS, or plain HTTP/2 when it serves without TLS
/// itself (`--insecure-plaintext`, tests only).
#[derive(Debug, Clone, Default)]
pub struct PeerClient {
    pub tls: Option<PeerTls>,
}

/// A volume on another mover's node, and how to reach that mover.
#[derive(Debug, Clone)]
pub struct PeerVolume {
    /// `HOST:PORT` of the peer mover.
    pub address: String,
    /// The volume as the peer addresses it.
    pub volume: pb::Target,
    /// How the volume may be shown, e.g. `pod UID volume NAME`.
    pub volume_shown: String,
    /// The name the peer's certificate must carry.
    pub server_name: String,
    pub client: PeerClient,
}

impl PeerVolume {
    /// `volume HOST:PORT DESCRIPTION`: the task's source as listings and logs show it.
    pub fn display(&self) -> String {
        format!("{NAME} {} {}", self.address, self.volume_shown)
    }
}

/// Why reading the peer's volume failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    #[error(
        "cannot load this mover's client identity to reach {address}: {why} (the files of serve --tls-cert, \
         --tls-key and --client-ca)"
    )]
    Identity { address: String, why: String },
    #[error("cannot reach the mover at {address}: {why}")]
    Unreachable { address: String, why: String },
    #[error(
        "the mover at {address} refused this mover's client certificate (TLS alert {alert}): the certificate of \
         serve --tls-cert must carry the clientAuth extended key usage and be signed by a CA the peer trusts \
         (its --client-ca)"
    )]
    ClientCertRefused { address: String, alert: String },
    #[error(
        "the certificate of the mover at {address} was refused for the name {server_name:?}: {why}; it must be \
         signed by the CA of this mover's --client-ca and name {server_name:?} (source.volume.server_name)"
    )]
    PeerCertRefused { address: String, server_name: String, why: String },
    #[error("the mover at {address} has no volume {volume}: {message}")]
    NotFound { address: String, volume: String, message: String },
    #[error("the mover at {address} refused to stream {volume} as {format} ({code:?}): {message}")]
    Refused { address: String, volume: String, format: Format, code: tonic::Code, message: String },
    #[error("the mover at {address} cannot stream {volume} now ({code:?}): {message}")]
    Unavailable { address: String, volume: String, code: tonic::Code, message: String },
    #[error("the stream of {volume} from the mover at {address} broke off at offset {offset}: {why}")]
    Cut { address: String, volume: String, offset: u64, why: String },
    #[error("the mover at {address} sent a malformed stream of {volume}: {why}")]
    Malformed { address: String, volume: String, why: String },
}

impl PeerError {
    /// What the network or a restarting peer caused may go away; what the peer refused for
    /// the request's sake will not. TLS refusals are retried: the movers' certificates
    /// rotate, and a fixed certificate heals the clone without touching its request.
    pub fn is_retryable(&self) -> bool {
        match self {
            PeerError::Identity { .. }
            | PeerError::Unreachable { .. }
            | PeerError::ClientCertRefused { .. }
            | PeerError::PeerCertRefused { .. }
            | PeerError::Unavailable { .. }
            | PeerError::Cut { .. } => true,
            PeerError::NotFound { .. } | PeerError::Refused { .. } | PeerError::Malformed { .. } => false,
        }
    }

    pub fn reason(&self) -> Reason {
        match self {
            PeerError::NotFound { .. } => Reason::NotFound,
            PeerError::Refused { code: tonic::Code::PermissionDenied | tonic::Code::Unauthenticated, .. } => {
                Reason::Unauthorized
            }
            e if e.is_retryable() => Reason::SourceUnavailable,
            _ => Reason::SourceInvalid,
        }
    }
}

/// What one clone is about, for its errors.
#[derive(Debug, Clone)]
struct Names {
    address: String,
    volume: String,
    server_name: String,
    format: Format,
}

impl Names {
    /// A status from the peer, or from the transport on the way to it. `offset`: where the
    /// stream had got to, once it started.
    fn status(&self, status: &tonic::Status, offset: Option<u64>) -> PeerError {
        if let Some(e) = self.tls(status) {
            return e;
        }
        let (address, volume, message) = (self.address.clone(), self.volume.clone(), status.message().to_string());
        use tonic::Code as C;
        match status.code() {
            C::NotFound => PeerError::NotFound { address, volume, message },
            code @ (C::FailedPrecondition
            | C::InvalidArgument
            | C::PermissionDenied
            | C::Unauthenticated
            | C::Unimplemented
            | C::OutOfRange
            | C::AlreadyExists) => PeerError::Refused { address, volume, format: self.format, code, message },
            code => match offset {
                Some(offset) => PeerError::Cut { address, volume, offset, why: format!("{code:?}: {}", text(status)) },
                None => PeerError::Unavailable { address, volume, code, message: text(status) },
            },
        }
    }

    /// A failed TLS handshake, whichever side refused the other's certificate.
    fn tls(&self, e: &(dyn std::error::Error + 'static)) -> Option<PeerError> {
        let address = self.address.clone();
        Some(match tls_verdict(e)? {
            Verdict::Alert(alert) => PeerError::ClientCertRefused { address, alert },
            Verdict::BadPeerCertificate(why) => {
                PeerError::PeerCertRefused { address, server_name: self.server_name.clone(), why }
            }
        })
    }
}

/// A status as one line: the peer's message, or what the transport says went wrong.
fn text(status: &tonic::Status) -> String {
    match std::error::Error::source(status) {
        Some(cause) if status.message().is_empty() => one_line(cause),
        Some(cause) => format!("{}: {}", status.message(), one_line(cause)),
        None => status.message().to_string(),
    }
}

/// What a TLS handshake's failure says about the certificates.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The peer sent an alert: it refused this mover's certificate.
    Alert(String),
    /// This mover refused the peer's certificate.
    BadPeerCertificate(String),
}

/// The TLS verdict behind a transport failure. `io::Error` hides its inner error from
/// `source()`, so each one met is opened too; depending on where the I/O stack met it, the
/// rustls error is typed or has become its text (rustls' wording is matched then).
fn tls_verdict(e: &(dyn std::error::Error + 'static)) -> Option<Verdict> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return match tls {
                rustls::Error::AlertReceived(alert) => Some(Verdict::Alert(format!("{alert:?}"))),
                rustls::Error::InvalidCertificate(why) => Some(Verdict::BadPeerCertificate(format!("{why:?}"))),
                _ => None,
            };
        }
        let text = err.to_string();
        if let Some(alert) = text.strip_prefix("received fatal alert: ") {
            return Some(Verdict::Alert(alert.to_string()));
        }
        if let Some(why) = text.strip_prefix("invalid peer certificate: ") {
            return Some(Verdict::BadPeerCertificate(why.to_string()));
        }
        if let Some(inner) = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref())
            && let Some(verdict) = tls_verdict(inner)
        {
            return Some(verdict);
        }
        next = err.source();
    }
    None
}

/// A client identity as PEM: certificate (chain), key, and the CA that signs the peers'.
pub type Pems = (Vec<u8>, Vec<u8>, Vec<u8>);

/// The mover at `address`, with the volume streams' flow control; TLS with `tls`
/// (certificate, key, CA, as PEM) checked against `server_name`, plain HTTP/2 without.
#[derive(Debug, Clone)]
pub struct PeerEndpoint {
    endpoint: Endpoint,
    tls: Option<mtls::Connector>,
}

impl PeerEndpoint {
    /// # Errors
    /// A malformed address or an identity rustls cannot use, as text.
    pub fn new(address: &str, tls: Option<Pems>, server_name: &str) -> Result<PeerEndpoint, String> {
        // The scheme only names the :scheme of requests: TLS, when used, is the connector's.
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| format!("invalid mover address {address:?}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME);
        let tls = match tls {
            Some((cert, key, ca)) => {
                let config = mtls::client_config(&cert, &key, &ca).map_err(|e| format!("invalid TLS setup: {e}"))?;
                Some(mtls::Connector::new(config, server_name, CONNECT_TIMEOUT)?)
            }
            None => None,
        };
        Ok(PeerEndpoint { endpoint, tls })
    }

    /// # Errors
    /// The connection or its TLS handshake failed.
    pub async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        match &self.tls {
            Some(connector) => self.endpoint.connect_with_connector(connector.clone()).await,
            None => self.endpoint.connect().await,
        }
    }

    /// How TLS connections are made, when they are.
    pub fn tls(&self) -> Option<&mtls::Connector> {
        self.tls.as_ref()
    }
}

/// A client of the volume streams (messages up to [`MAX_MESSAGE`]).
pub fn client(channel: Channel) -> MoverClient<Channel> {
    MoverClient::new(channel).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE)
}

/// Connects to the peer and starts its ReadVolume.
async fn open(peer: &PeerVolume, names: &Names) -> Result<tonic::Streaming<pb::VolumeChunk>, PeerError> {
    let address = &peer.address;
    let tls: Option<Pems> = match &peer.client.tls {
        None => None,
        Some(files) => {
            let read = |p: &PathBuf| {
                std::fs::read(p)
                    .map_err(|e| PeerError::Identity { address: address.clone(), why: format!("{}: {e}", p.display()) })
            };
            Some((read(&files.cert)?, read(&files.key)?, read(&files.ca)?))
        }
    };
    let endpoint = PeerEndpoint::new(address, tls, &peer.server_name)
        .map_err(|why| PeerError::Identity { address: address.clone(), why })?;
    let channel = endpoint.connect().await.map_err(|e| {
        names.tls(&e).unwrap_or_else(|| PeerError::Unreachable { address: address.clone(), why: one_line(&e) })
    })?;
    let request =
        pb::ReadVolumeRequest { target: Some(peer.volume.clone()), format: format_to_pb(names.format) as i32 };
    match client(channel).read_volume(request).await {
        Ok(response) => Ok(response.into_inner()),
        Err(s) => match endpoint.tls() {
            // Not an answer of the peer's (those have no source): the connection failed
            // under the call, maybe for the peer's verdict on this mover's certificate.
            Some(connector) if names.tls(&s).is_none() && std::error::Error::source(&s).is_some() => {
                Err(diagnose(connector, names).await.unwrap_or_else(|| names.status(&s, None)))
            }
            _ => Err(names.status(&s, None)),
        },
    }
}

/// How long [`diagnose`] waits for the peer's first word once its handshake is done.
const DIAGNOSE_WAIT: Duration = Duration::from_secs(3);

/// Why a peer closed a new TLS connection without an answer, if its certificate check is
/// why. In TLS 1.3 a server judges the client's certificate after the client considers
/// the handshake done: its refusal (an alert) reaches hyper's connection task, and the call
/// may only learn that the connection closed. One more handshake of our own, read until the
/// peer speaks (an accepted client gets HTTP/2 settings at once), finds out.
async fn diagnose(connector: &mtls::Connector, names: &Names) -> Option<PeerError> {
    use tokio::io::AsyncReadExt;
    let probe = async { connector.connect(&names.address).await?.read(&mut [0u8; 1]).await };
    match tokio::time::timeout(CONNECT_TIMEOUT + DIAGNOSE_WAIT, probe).await {
        Ok(Err(e)) => names.tls(&e),
        // It spoke, or kept quiet: it has nothing against this mover's certificate.
        Ok(Ok(_)) | Err(_) => None,
    }
}

/// Reads the peer's stream into `tx`. A failure is put in `failed` before the sender goes,
/// so the writer, seeing its stream stop, finds out why.
async fn pump(peer: PeerVolume, names: Names, tx: mpsc::Sender<Chunk>, failed: Arc<Mutex<Option<PeerError>>>) {
    let fail = |e: PeerError| *failed.lock().expect("peer failure lock") = Some(e);
    let mut stream = match open(&peer, &names).await {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let mut offset = 0u64;
    loop {
        let chunk = match stream.message().await {
            Ok(Some(c)) => c,
            // The writer decides whether the stream was whole (its end arrived).
            Ok(None) => return,
            Err(s) => return fail(names.status(&s, Some(offset))),
        };
        let chunk = match chunk_from_pb(chunk) {
            Ok(c) => c,
            Err(s) => {
                let why = s.message().to_string();
                return fail(PeerError::Malformed {
                    address: names.address.clone(),
                    volume: names.volume.clone(),
                    why,
                });
            }
        };
        if let Chunk::Extent(e) = &chunk {
            offset = e.offset().saturating_add(e.len());
        }
        // The writer stopped (done, failed or cancelled): its result says why.
        if tx.send(chunk).await.is_err() {
            return;
        }
    }
}

/// Copies the peer's volume into the request's target. Call from outside the runtime's
/// worker threads (a plain thread, or `spawn_blocking`), like [`crate::import`].
pub(crate) fn copy(
    req: &ImportRequest,
    peer: &PeerVolume,
    rt: &Handle,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<ImportResult, ImportError> {
    if req.checksum.is_some() {
        return Err(ImportError::InvalidRequest(
            "a volume source is copied as extents, not as the bytes a checksum is computed over; remove the checksum"
                .into(),
        ));
    }
    let format = match req.content_type {
        ContentType::Kubevirt => Format::Raw,
        ContentType::Archive => Format::Tar,
    };
    let names = Names {
        address: peer.address.clone(),
        volume: peer.volume_shown.clone(),
        server_name: peer.server_name.clone(),
        format,
    };
    let (tx, mut rx) = mpsc::channel(QUEUE);
    let failed = Arc::new(Mutex::new(None));
    let pumping = rt.spawn(pump(peer.clone(), names.clone(), tx, failed.clone()));
    let counted = &progress.counters.source_read;
    let next = || {
        let chunk = loop {
            if cancel.load(Ordering::SeqCst) {
                // The writer sees its stream stop short and cleans up.
                return None;
            }
            // The timer is made inside block_on: it needs the runtime's context.
            if let Ok(chunk) = rt.block_on(async { tokio::time::timeout(CANCEL_POLL, rx.recv()).await }) {
                break chunk?;
            }
        };
        match &chunk {
            Chunk::Header(h) => {
                if h.format == Format::Raw {
                    progress.set_total(h.size);
                }
                progress.set_phase(Phase::Transferring);
            }
            Chunk::Extent(e) => {
                counted.fetch_add(e.len(), Ordering::Relaxed);
            }
            Chunk::End { .. } => progress.set_phase(Phase::Finishing),
        }
        Some(chunk)
    };
    let written = write_volume(&req.target, req.target_options.clone(), TarInto::Directory, next);
    // Whatever the pump was waiting for, the stream is no longer wanted: dropping it tells
    // the peer, which releases its volume.
    pumping.abort();
    let failure = failed.lock().expect("peer failure lock").take();
    match written {
        Ok(w) => Ok(result(w)),
        Err(e) => Err(outcome(e, failure, &names)),
    }
}

fn result(w: Written) -> ImportResult {
    let (virtual_size, bytes_written, format) = match w.format {
        Format::Raw => (w.data_bytes + w.zero_bytes, w.data_bytes, "raw"),
        // As an archive import reports it: the content extracted.
        Format::Tar => (w.size, w.size, "tar"),
    };
    ImportResult {
        virtual_size,
        bytes_written,
        formats: vec![format],
        source_digest: None,
        target: w.path,
        target_size: w.size,
    }
}

/// The error a failed write is reported with: what broke the stream, when it was the peer
/// or the network, rather than the writer's "it stopped short".
fn outcome(e: VolumeError, failure: Option<PeerError>, names: &Names) -> ImportError {
    let (address, volume) = (names.address.clone(), names.volume.clone());
    let peer = |e: PeerError| ImportError::Source(e.into());
    match (e, failure) {
        (VolumeError::Stream(StreamError::NoEnd { .. } | StreamError::Empty), Some(f)) => peer(f),
        (VolumeError::Stream(StreamError::NoEnd { end }), None) => peer(PeerError::Cut {
            address,
            volume,
            offset: end,
            why: "the stream stopped without its end message (the peer went away or failed)".into(),
        }),
        (VolumeError::Stream(StreamError::Empty), None) => {
            peer(PeerError::Cut { address, volume, offset: 0, why: "the stream stopped before its header".into() })
        }
        (VolumeError::Stream(s), _) => peer(PeerError::Malformed { address, volume, why: s.to_string() }),
        (VolumeError::Import(i), _) => crate::import::map_no_space(*i),
        (VolumeError::Target(t), _) => crate::import::map_no_space(ImportError::Target(t)),
        (VolumeError::Io { op, path, source }, _) => ImportError::Target(TargetError::Finish { op, path, source }),
        // A TAR stream into anything but a directory, refused before the import gets here;
        // the rest are the reader's errors, which a writer does not produce.
        (
            other @ (VolumeError::WrongFormat { .. }
            | VolumeError::Unsupported { .. }
            | VolumeError::NotFound { .. }
            | VolumeError::Changed { .. }
            | VolumeError::Closed),
            _,
        ) => ImportError::InvalidRequest(one_line(&other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names {
            address: "10.0.0.7:7443".into(),
            volume: "pod u1 volume pv-1".into(),
            server_name: DEFAULT_SERVER_NAME.into(),
            format: Format::Raw,
        }
    }

    #[test]
    fn the_peers_statuses_say_whether_to_try_again() {
        let n = names();
        let of = |code, offset| {
            let e = n.status(&tonic::Status::new(code, "peer says no"), offset);
            (e.reason(), e.is_retryable())
        };
        assert_eq!(of(tonic::Code::NotFound, None), (Reason::NotFound, false));
        assert_eq!(of(tonic::Code::FailedPrecondition, None), (Reason::SourceInvalid, false));
        assert_eq!(of(tonic::Code::InvalidArgument, Some(4096)), (Reason::SourceInvalid, false));
        assert_eq!(of(tonic::Code::PermissionDenied, None), (Reason::Unauthorized, false));
        assert_eq!(of(tonic::Code::Unavailable, None), (Reason::SourceUnavailable, true));
        // ABORTED: another task or stream has the volume; it will be free later.
        assert_eq!(of(tonic::Code::Aborted, None), (Reason::SourceUnavailable, true));
        assert_eq!(of(tonic::Code::Unknown, Some(1 << 20)), (Reason::SourceUnavailable, true));
        let refused = n.status(&tonic::Status::failed_precondition("/v has no disk.img"), None).to_string();
        assert_eq!(
            refused,
            "the mover at 10.0.0.7:7443 refused to stream pod u1 volume pv-1 as RAW (FailedPrecondition): /v has no disk.img"
        );
        let cut = n.status(&tonic::Status::unknown("connection reset"), Some(8192)).to_string();
        assert!(cut.contains("broke off at offset 8192") && cut.contains("connection reset"), "{cut}");
    }

    #[test]
    fn a_tls_refusal_is_found_behind_io_errors() {
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::UnsupportedCertificate);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, alert);
        let e = names().tls(&io).expect("found inside the io::Error");
        assert!(matches!(&e, PeerError::ClientCertRefused { alert, .. } if alert == "UnsupportedCertificate"), "{e}");
        assert!(e.to_string().contains("clientAuth"), "{e}");
        let bad_name = rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName);
        let e = names().tls(&std::io::Error::other(bad_name)).unwrap();
        assert!(matches!(e, PeerError::PeerCertRefused { .. }), "{e}");
        assert!(names().tls(&std::io::Error::other("connection refused")).is_none());
    }

    #[test]
    fn a_stream_stopped_short_is_reported_as_what_stopped_it() {
        let n = names();
        let no_end = || VolumeError::Stream(StreamError::NoEnd { end: 4096 });
        let e = outcome(no_end(), None, &n);
        assert!(e.is_retryable() && e.reason() == Reason::SourceUnavailable, "{e}");
        assert!(e.to_string().contains("broke off at offset 4096"), "{e}");
        let gone = PeerError::Unreachable { address: n.address.clone(), why: "connection refused".into() };
        let e = outcome(VolumeError::Stream(StreamError::Empty), Some(gone), &n);
        assert!(e.to_string().starts_with("cannot reach the mover at 10.0.0.7:7443"), "{e}");
        let e = outcome(VolumeError::Stream(StreamError::OutOfOrder { offset: 1, expected: 0 }), None, &n);
        assert!(!e.is_retryable() && e.reason() == Reason::SourceInvalid, "{e}");
        let too_large = ImportError::TooLarge { virtual_size: 2, available: 1 };
        assert_eq!(outcome(too_large.into(), None, &n).reason(), Reason::TooLarge);
    }
}

//! Conversions between the wire types of `cdi.mover.v1` and the mover's own. Requests are
//! validated here, once: every problem is an INVALID_ARGUMENT naming the field at fault.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use cdi_proto::v1 as pb;
use tonic::Status;

use super::resolve::{PodVolume, ResolveError};
use super::tasks::{Snapshot, State, Task, TaskSpec};
use crate::checksum::Checksum;
use crate::disk::{TargetOptions, sizing};
use crate::error::Reason;
use crate::import::{ContentType, ImportRequest, ImportResult};
use crate::progress::Phase;
use crate::source::{
    CaBundle, Credentials, GcsOptions, HttpOptions, PeerClient, PeerVolume, Platform, ProxySettings, RegistryOptions,
    S3Keys, SourceOptions, SourceSpec, gcs, peer,
};

/// Longest task id accepted (a DNS subdomain's length, as Kubernetes names).
const MAX_TASK_ID: usize = 253;

fn invalid(field: &str, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {why}"))
}

pub fn task_id(id: &str) -> Result<String, Status> {
    if id.is_empty() {
        return Err(invalid("task_id", "is required"));
    }
    if id.len() > MAX_TASK_ID || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err(invalid("task_id", format!("must be 1-{MAX_TASK_ID} characters of [A-Za-z0-9._-]")));
    }
    Ok(id.to_string())
}

/// A target resolved to a path on this node, with how it may be shown.
#[derive(Debug, Clone)]
pub struct ResolvedTarget {
    pub path: PathBuf,
    pub display: String,
}

/// The volume a request names, before it is checked or resolved.
fn pod_volume(v: &pb::PodVolume) -> PodVolume {
    PodVolume {
        pod_uid: v.pod_uid.clone(),
        volume_name: v.volume_name.clone(),
        pv_name: v.pv_name.clone(),
        block: v.mode == pb::VolumeMode::Block as i32,
    }
}

/// How a target may be shown: its path, or `pod UID volume NAME`.
fn describe(kind: &pb::target::Kind) -> String {
    match kind {
        pb::target::Kind::HostPath(h) => h.path.clone(),
        pb::target::Kind::PodVolume(v) => {
            let name = if v.pv_name.is_empty() { &v.volume_name } else { &v.pv_name };
            format!("pod {} volume {name}", v.pod_uid)
        }
    }
}

pub fn target(field: &str, target: Option<&pb::Target>, kubelet_root: &Path) -> Result<ResolvedTarget, Status> {
    use pb::target::Kind;
    match target.and_then(|t| t.kind.as_ref()) {
        None => Err(invalid(field, "is required (host_path or pod_volume)")),
        Some(Kind::HostPath(h)) => {
            if h.path.is_empty() || !h.path.starts_with('/') {
                return Err(invalid(&format!("{field}.host_path.path"), "must be an absolute path"));
            }
            Ok(ResolvedTarget { path: PathBuf::from(&h.path), display: h.path.clone() })
        }
        Some(kind @ Kind::PodVolume(v)) => {
            let path = pod_volume(v).resolve(kubelet_root).map_err(|e| match e {
                ResolveError::NotFound { .. } => Status::not_found(e.to_string()),
                _ => invalid(&format!("{field}.pod_volume"), e),
            })?;
            Ok(ResolvedTarget { path, display: describe(kind) })
        }
    }
}

fn overhead(field: &str, value: Option<f64>) -> Result<f64, Status> {
    let overhead = value.unwrap_or(sizing::DEFAULT_OVERHEAD);
    sizing::validate_overhead(overhead).map_err(|e| invalid(field, e))
}

/// Validates a Populate request into the task to run; `peers` is how a volume source
/// reaches its mover.
pub fn populate(req: &pb::PopulateRequest, kubelet_root: &Path, peers: &PeerClient) -> Result<TaskSpec, Status> {
    let id = task_id(&req.task_id)?;
    let (source, mut source_options) = source(req.source.as_ref(), peers)?;
    if let Some(p) = &req.import_proxy {
        let proxy = import_proxy(p)?;
        source_options.http.proxy = Some(proxy.clone());
        source_options.registry.proxy = Some(proxy);
    }
    let target = target("target", req.target.as_ref(), kubelet_root)?;
    let content_type = match pb::ContentType::try_from(req.content_type) {
        Ok(pb::ContentType::Unspecified | pb::ContentType::Kubevirt) => ContentType::Kubevirt,
        Ok(pb::ContentType::Archive) => ContentType::Archive,
        Err(_) => return Err(invalid("content_type", format!("unknown value {}", req.content_type))),
    };
    let checksum = if req.checksum.is_empty() {
        None
    } else {
        Some(req.checksum.parse::<Checksum>().map_err(|e| invalid("checksum", e))?)
    };
    // An upload's bytes pass once, as the uploader sends them; nothing to check them against.
    if matches!(source, SourceSpec::Upload(_)) && checksum.is_some() {
        return Err(invalid("checksum", "must be empty for an upload source"));
    }
    // Extents of a volume, not the bytes of an image: nothing a digest could be taken of.
    if matches!(source, SourceSpec::Volume(_)) && checksum.is_some() {
        return Err(invalid("checksum", "must be empty for a volume source"));
    }
    if matches!(source, SourceSpec::Blank) {
        crate::source::blank::check_request(content_type, checksum.is_some())
            .map_err(|why| invalid(if checksum.is_some() { "checksum" } else { "content_type" }, why))?;
    }
    let display = source.display();
    let mut request = ImportRequest::new(source, target.path);
    request.source_options = source_options;
    request.content_type = content_type;
    request.checksum = checksum;
    request.target_options = TargetOptions {
        requested_size: (req.requested_size > 0).then_some(req.requested_size),
        filesystem_overhead: overhead("filesystem_overhead", req.filesystem_overhead)?,
        preallocate: req.preallocate,
    };
    let log = log(req.log.as_ref(), kubelet_root)?;
    Ok(TaskSpec { id, request, source: display, target: target.display, log })
}

/// The log file's path, if the request names one that can be found. Malformed names are
/// the caller's error; a volume not found (or leading out of the kubelet root) only costs
/// the log, not the import.
fn log(log: Option<&pb::TaskLog>, kubelet_root: &Path) -> Result<Option<PathBuf>, Status> {
    let Some(log) = log else { return Ok(None) };
    let file = if log.file_name.is_empty() { "import.log" } else { log.file_name.as_str() };
    if file.contains('/') || file == "." || file == ".." || file.contains('\0') {
        return Err(invalid("log.file_name", "must be a single path component"));
    }
    let Some(v) = &log.volume else { return Err(invalid("log.volume", "is required")) };
    // A log goes into a directory, whatever mode the request names.
    let volume = PodVolume { block: false, ..pod_volume(v) };
    volume.validate().map_err(|e| invalid("log.volume", e))?;
    match volume.resolve(kubelet_root) {
        Ok(dir) => Ok(Some(dir.join(file))),
        Err(e) => {
            tracing::warn!(error = %e, "task log volume not found; the task runs without a log");
            Ok(None)
        }
    }
}

fn source(source: Option<&pb::Source>, peers: &PeerClient) -> Result<(SourceSpec, SourceOptions), Status> {
    use pb::source::Kind;
    match source.and_then(|s| s.kind.as_ref()) {
        None => Err(invalid("source", "is required (http, s3, gcs, file, registry, blank, upload or volume)")),
        Some(Kind::Volume(v)) => Ok((SourceSpec::Volume(volume_source(v, peers)?), SourceOptions::default())),
        Some(Kind::Blank(pb::BlankSource {})) => Ok((SourceSpec::Blank, SourceOptions::default())),
        Some(Kind::Registry(r)) => registry(r),
        Some(Kind::Upload(pb::UploadSource {})) => {
            Ok((SourceSpec::Upload(crate::source::UploadFeed::waiting()), SourceOptions::default()))
        }
        Some(Kind::S3(s3)) => {
            let spec = SourceSpec::s3(&s3.url).map_err(|e| invalid("source.s3.url", e))?;
            let s3_keys = match (s3.access_key_id.is_empty(), s3.secret_key.is_empty()) {
                (true, true) => None,
                (false, false) => {
                    Some(S3Keys { access_key_id: s3.access_key_id.clone(), secret_key: s3.secret_key.clone() })
                }
                (true, false) => return Err(invalid("source.s3.access_key_id", "is required with secret_key")),
                (false, true) => return Err(invalid("source.s3.secret_key", "is required with access_key_id")),
            };
            let http = HttpOptions { ca: ca("source.s3.ca_pem", &s3.ca_pem), ..HttpOptions::default() };
            Ok((spec, SourceOptions { http, s3_keys, ..SourceOptions::default() }))
        }
        Some(Kind::Gcs(g)) => {
            let spec = SourceSpec::gcs(&g.url).map_err(|e| invalid("source.gcs.url", e))?;
            if !g.endpoint.trim().is_empty() {
                gcs::endpoint(Some(&g.endpoint), None).map_err(|e| invalid("source.gcs.endpoint", e))?;
            }
            let credentials_json = (!g.credentials_json.is_empty()).then(|| g.credentials_json.clone());
            if let Some(json) = &credentials_json {
                gcs::check_credentials(json).map_err(|e| invalid("source.gcs.credentials_json", e))?;
            }
            let gcs =
                GcsOptions { credentials_json, endpoint: (!g.endpoint.trim().is_empty()).then(|| g.endpoint.clone()) };
            Ok((spec, SourceOptions { gcs, ..SourceOptions::default() }))
        }
        Some(Kind::File(f)) => {
            if !f.path.starts_with('/') {
                return Err(invalid("source.file.path", "must be an absolute path"));
            }
            Ok((SourceSpec::File(PathBuf::from(&f.path)), SourceOptions::default()))
        }
        Some(Kind::Http(h)) => {
            let spec = SourceSpec::parse(&h.url).map_err(|e| invalid("source.http.url", e))?;
            if !matches!(spec, SourceSpec::Http(_)) {
                return Err(invalid("source.http.url", "must be an http:// or https:// URL"));
            }
            for header in &h.headers {
                if header.name.trim().is_empty() {
                    return Err(invalid("source.http.headers", "a header has no name"));
                }
            }
            let credentials = h
                .basic_auth
                .as_ref()
                .map(|a| Credentials { username: a.username.clone(), password: a.password.clone() });
            if credentials.as_ref().is_some_and(|c| c.username.is_empty()) {
                return Err(invalid("source.http.basic_auth.username", "is required with basic_auth"));
            }
            let http = HttpOptions {
                ca: ca("source.http.ca_pem", &h.ca_pem),
                insecure_skip_verify: h.insecure_skip_verify,
                headers: h.headers.iter().map(|x| (x.name.clone(), x.value.clone())).collect(),
                credentials,
                ..HttpOptions::default()
            };
            Ok((spec, SourceOptions { http, ..SourceOptions::default() }))
        }
    }
}

/// A peer's volume, checked as far as it can be here (the peer resolves it).
fn volume_source(v: &pb::VolumeSource, peers: &PeerClient) -> Result<PeerVolume, Status> {
    use tonic::codegen::http::uri::Authority;
    let address = v.address.trim();
    // No user info: a peer is named by host and port alone.
    let authority = address.parse::<Authority>().ok().filter(|a| a.port().is_some() && !a.as_str().contains('@'));
    if authority.is_none() {
        return Err(invalid("source.volume.address", format!("{:?} must be HOST:PORT of the peer mover", v.address)));
    }
    let kind = match v.volume.as_ref().and_then(|t| t.kind.as_ref()) {
        None => return Err(invalid("source.volume.volume", "is required (host_path or pod_volume)")),
        Some(pb::target::Kind::HostPath(h)) if !h.path.starts_with('/') => {
            return Err(invalid("source.volume.volume.host_path.path", "must be an absolute path"));
        }
        Some(kind @ pb::target::Kind::PodVolume(p)) => {
            pod_volume(p).validate().map_err(|e| invalid("source.volume.volume.pod_volume", e))?;
            kind
        }
        Some(kind) => kind,
    };
    let server_name = match v.server_name.trim() {
        "" => peer::DEFAULT_SERVER_NAME.to_string(),
        name => name.to_string(),
    };
    if rustls::pki_types::ServerName::try_from(server_name.as_str()).is_err() {
        return Err(invalid("source.volume.server_name", format!("{server_name:?} is not a DNS name or IP address")));
    }
    Ok(PeerVolume {
        address: address.to_string(),
        volume: pb::Target { kind: Some(kind.clone()) },
        volume_shown: describe(kind),
        server_name,
        client: peers.clone(),
    })
}

fn registry(r: &pb::RegistrySource) -> Result<(SourceSpec, SourceOptions), Status> {
    let spec = SourceSpec::parse(&r.url).map_err(|e| invalid("source.registry.url", e))?;
    if !matches!(spec, SourceSpec::Registry(_)) {
        return Err(invalid("source.registry.url", "must be a docker://HOST/REPO[:TAG] or oci-archive:///PATH URL"));
    }
    let credentials =
        r.credentials.as_ref().map(|a| Credentials { username: a.username.clone(), password: a.password.clone() });
    if credentials.as_ref().is_some_and(|c| c.username.is_empty()) {
        return Err(invalid("source.registry.credentials.username", "is required with credentials"));
    }
    let platform = if r.architecture.is_empty() {
        None
    } else {
        Some(r.architecture.parse::<Platform>().map_err(|e| invalid("source.registry.architecture", e))?)
    };
    let registry = RegistryOptions {
        credentials,
        ca: ca("source.registry.ca_pem", &r.ca_pem),
        insecure: r.insecure,
        platform,
        proxy: None,
    };
    Ok((spec, SourceOptions { registry, ..SourceOptions::default() }))
}

/// The request's proxies, each URL checked here so that a typo fails the call, not the task.
fn import_proxy(p: &pb::ImportProxy) -> Result<ProxySettings, Status> {
    let url = |field: &str, value: &str| -> Result<Option<String>, Status> {
        let value = value.trim();
        if value.is_empty() {
            return Ok(None);
        }
        match reqwest::Url::parse(value) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(Some(value.to_string())),
            // Never echo the value: it may carry a password.
            _ => Err(invalid(field, "must be an http:// or https:// URL with a host")),
        }
    };
    Ok(ProxySettings {
        http: url("import_proxy.http_proxy", &p.http_proxy)?,
        https: url("import_proxy.https_proxy", &p.https_proxy)?,
        no_proxy: Some(p.no_proxy.trim().to_string()).filter(|n| !n.is_empty()),
        ca: ca("import_proxy.ca_pem", &p.ca_pem),
    })
}

/// Extra CA certificates from a request field, if any.
fn ca(field: &str, pem: &[u8]) -> Option<CaBundle> {
    (!pem.is_empty()).then(|| CaBundle { pem: pem.to_vec(), origin: format!("the request's {field}") })
}

/// The options of a WriteVolume into a directory.
pub fn write_target_options(t: &pb::WriteVolumeTarget) -> Result<TargetOptions, Status> {
    Ok(TargetOptions {
        requested_size: (t.requested_size > 0).then_some(t.requested_size),
        filesystem_overhead: overhead("target.filesystem_overhead", t.filesystem_overhead)?,
        preallocate: false,
    })
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn phase(p: Option<Phase>) -> pb::Phase {
    match p {
        None => pb::Phase::Queued,
        Some(Phase::Probing) => pb::Phase::Probing,
        Some(Phase::Transferring) => pb::Phase::Transferring,
        Some(Phase::Finishing | Phase::Complete | Phase::Failed) => pb::Phase::Finishing,
        Some(Phase::AwaitingUpload) => pb::Phase::AwaitingUpload,
    }
}

pub fn state(s: State) -> pb::TaskState {
    match s {
        State::Queued => pb::TaskState::Queued,
        State::Running => pb::TaskState::Running,
        State::Succeeded => pb::TaskState::Succeeded,
        State::Failed => pb::TaskState::Failed,
        State::Cancelled => pb::TaskState::Cancelled,
    }
}

pub fn progress(s: &Snapshot) -> pb::Progress {
    pb::Progress {
        phase: phase(s.phase) as i32,
        bytes_done: s.bytes_done,
        bytes_total: s.bytes_total.unwrap_or(0),
        bytes_per_second: s.bytes_per_second,
    }
}

pub fn completed(r: &ImportResult) -> pb::Completed {
    pb::Completed {
        virtual_size: r.virtual_size,
        bytes_written: r.bytes_written,
        formats: r.formats.iter().map(|f| f.to_string()).collect(),
        source_digest: r.source_digest.clone().unwrap_or_default(),
        target_path: r.target.display().to_string(),
        target_size: r.target_size,
    }
}

/// A failure on the wire: the typed code, and its string for clients older than the code.
pub fn failed(s: &Snapshot) -> Option<pb::Failed> {
    s.failure.as_ref().map(|f| pb::Failed {
        reason: f.reason.as_str().to_string(),
        message: f.message.clone(),
        retryable: f.retryable,
        reason_code: failure_reason(f.reason) as i32,
    })
}

pub fn failure_reason(r: Reason) -> pb::FailureReason {
    use pb::FailureReason as W;
    match r {
        Reason::NotFound => W::NotFound,
        Reason::Unauthorized => W::Unauthorized,
        Reason::SourceUnavailable => W::SourceUnavailable,
        Reason::SourceInvalid => W::SourceInvalid,
        Reason::ChecksumMismatch => W::ChecksumMismatch,
        Reason::TooLarge => W::TooLarge,
        Reason::InvalidImage => W::InvalidImage,
        Reason::UnsupportedImage => W::UnsupportedImage,
        Reason::InvalidArchive => W::InvalidArchive,
        Reason::TargetFailed => W::TargetFailed,
        Reason::InvalidRequest => W::InvalidRequest,
        Reason::Cancelled => W::Cancelled,
    }
}

pub fn task(t: &Task) -> pb::Task {
    let s = t.snapshot();
    pb::Task {
        task_id: t.id.clone(),
        state: state(s.state) as i32,
        source: t.source.clone(),
        target: t.target.clone(),
        progress: Some(progress(&s)),
        completed: s.result.as_ref().map(completed),
        failed: failed(&s),
        created_unix_ms: unix_ms(t.created),
        finished_unix_ms: s.finished.map_or(0, unix_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> pb::PopulateRequest {
        pb::PopulateRequest {
            task_id: "t-1".into(),
            source: Some(pb::Source {
                kind: Some(pb::source::Kind::Http(pb::HttpSource {
                    url: "https://h/x.qcow2".into(),
                    ..Default::default()
                })),
            }),
            target: Some(pb::Target {
                kind: Some(pb::target::Kind::HostPath(pb::HostPath { path: "/tmp/out.raw".into() })),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_task_log_is_found_in_the_pods_empty_dir_or_skipped() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("pods/u1/volumes/kubernetes.io~empty-dir/cdi-log");
        std::fs::create_dir_all(&dir).unwrap();
        let log = |uid: &str, file: &str| pb::TaskLog {
            volume: Some(pb::PodVolume { pod_uid: uid.into(), volume_name: "cdi-log".into(), ..Default::default() }),
            file_name: file.into(),
        };
        let with = |l: pb::TaskLog| {
            populate(&pb::PopulateRequest { log: Some(l), ..req() }, root.path(), &PeerClient::default())
        };
        let found = with(log("u1", "")).unwrap().log.unwrap();
        assert_eq!(found, std::fs::canonicalize(&dir).unwrap().join("import.log"));
        assert!(with(log("gone", "import.log")).unwrap().log.is_none(), "no such pod: the import runs without a log");
        let e = with(log("u1", "../x")).unwrap_err();
        assert!(e.message().starts_with("log.file_name"), "{e:?}");
        let e = with(log("../u1", "x")).unwrap_err();
        assert!(e.message().starts_with("log.volume"), "{e:?}");
        assert!(populate(&req(), root.path(), &PeerClient::default()).unwrap().log.is_none());
    }

    fn field_of(r: pb::PopulateRequest) -> String {
        let s = populate(&r, Path::new("/var/lib/kubelet"), &PeerClient::default()).unwrap_err();
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
        s.message().to_string()
    }

    #[test]
    fn a_good_request_converts() {
        let spec = populate(&req(), Path::new("/var/lib/kubelet"), &PeerClient::default()).unwrap();
        assert_eq!(spec.id, "t-1");
        assert_eq!(spec.request.target_options.filesystem_overhead, 0.06);
        assert_eq!(spec.source, "https://h/x.qcow2");
    }

    #[test]
    fn bad_requests_name_the_field() {
        assert!(field_of(pb::PopulateRequest { task_id: String::new(), ..req() }).starts_with("task_id"));
        assert!(field_of(pb::PopulateRequest { task_id: "a/b".into(), ..req() }).starts_with("task_id"));
        assert!(field_of(pb::PopulateRequest { source: None, ..req() }).starts_with("source"));
        assert!(field_of(pb::PopulateRequest { target: None, ..req() }).starts_with("target"));
        let ftp = pb::Source {
            kind: Some(pb::source::Kind::Http(pb::HttpSource { url: "ftp://h/x".into(), ..Default::default() })),
        };
        let m = field_of(pb::PopulateRequest { source: Some(ftp), ..req() });
        assert!(m.starts_with("source.http.url") && m.contains("ftp"), "{m}");
        assert!(field_of(pb::PopulateRequest { checksum: "crc:1".into(), ..req() }).starts_with("checksum"));
        assert!(
            field_of(pb::PopulateRequest { filesystem_overhead: Some(2.0), ..req() })
                .starts_with("filesystem_overhead")
        );
        let escape = pb::Target {
            kind: Some(pb::target::Kind::PodVolume(pb::PodVolume {
                pod_uid: "../../etc".into(),
                pv_name: "pv".into(),
                ..Default::default()
            })),
        };
        assert!(field_of(pb::PopulateRequest { target: Some(escape), ..req() }).starts_with("target.pod_volume"));
    }

    fn blank() -> pb::PopulateRequest {
        pb::PopulateRequest {
            source: Some(pb::Source { kind: Some(pb::source::Kind::Blank(pb::BlankSource {})) }),
            ..req()
        }
    }

    #[test]
    fn a_blank_source_converts_and_refuses_what_needs_bytes() {
        let spec = populate(&blank(), Path::new("/var/lib/kubelet"), &PeerClient::default()).unwrap();
        assert!(matches!(spec.request.source, SourceSpec::Blank));
        assert_eq!(spec.source, "blank");
        let m = field_of(pb::PopulateRequest { content_type: pb::ContentType::Archive as i32, ..blank() });
        assert!(m.starts_with("content_type") && m.contains("archive"), "{m}");
        let m = field_of(pb::PopulateRequest { checksum: format!("sha256:{}", "0".repeat(64)), ..blank() });
        assert!(m.starts_with("checksum"), "{m}");
    }

    #[test]
    fn every_reason_has_its_own_wire_code_named_like_its_string() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            let code = failure_reason(r);
            assert!(seen.insert(code), "{r:?} shares {code:?}");
            // FAILURE_REASON_CHECKSUM_MISMATCH <-> ChecksumMismatch: one vocabulary.
            let camel: String = code
                .as_str_name()
                .trim_start_matches("FAILURE_REASON_")
                .split('_')
                .map(|w| w[..1].to_string() + &w[1..].to_ascii_lowercase())
                .collect();
            assert_eq!(camel, r.as_str());
        }
    }

    fn with_source(kind: pb::source::Kind) -> pb::PopulateRequest {
        pb::PopulateRequest { source: Some(pb::Source { kind: Some(kind) }), ..req() }
    }

    #[test]
    fn object_store_sources_convert_with_their_credentials() {
        let s3 = |url: &str, id: &str, secret: &str| {
            with_source(pb::source::Kind::S3(pb::S3Source {
                url: url.into(),
                access_key_id: id.into(),
                secret_key: secret.into(),
                ca_pem: b"PEM".to_vec(),
            }))
        };
        let spec =
            populate(&s3("http://127.0.0.1:9000/b/k.img", "AKID", "s3cr3t"), Path::new("/"), &PeerClient::default())
                .unwrap();
        assert!(matches!(&spec.request.source, SourceSpec::S3(l) if l.bucket == "b" && l.key == "k.img"));
        assert_eq!(spec.request.source_options.s3_keys.as_ref().unwrap().secret_key, "s3cr3t");
        assert!(spec.request.source_options.http.ca.is_some());
        assert!(!spec.source.contains("s3cr3t") && !format!("{:?}", spec.request).contains("s3cr3t"));
        let anonymous = populate(&s3("s3://b/k", "", ""), Path::new("/"), &PeerClient::default()).unwrap();
        assert!(anonymous.request.source_options.s3_keys.is_none());
        assert!(field_of(s3("s3://b/k", "AKID", "")).starts_with("source.s3.secret_key"));
        assert!(field_of(s3("s3://b/k", "", "x")).starts_with("source.s3.access_key_id"));
        assert!(field_of(s3("s3://bucket-only", "", "")).starts_with("source.s3.url"));

        let gcs = |url: &str, json: &[u8], endpoint: &str| {
            with_source(pb::source::Kind::Gcs(pb::GcsSource {
                url: url.into(),
                credentials_json: json.to_vec(),
                endpoint: endpoint.into(),
            }))
        };
        let spec = populate(
            &gcs("https://storage.cloud.google.com/b/o.img", b"", "http://127.0.0.1:1"),
            Path::new("/"),
            &PeerClient::default(),
        )
        .unwrap();
        assert_eq!(spec.source, "gs://b/o.img");
        assert_eq!(spec.request.source_options.gcs.endpoint.as_deref(), Some("http://127.0.0.1:1"));
        assert!(
            field_of(gcs("gs://b/o", b"{\"type\":\"service_account\"}", "")).starts_with("source.gcs.credentials_json")
        );
        assert!(field_of(gcs("gs://b/o", b"", "ftp://x")).starts_with("source.gcs.endpoint"));
        assert!(field_of(gcs("http://example.com/b/o", b"", "")).starts_with("source.gcs.url"));
    }

    #[test]
    fn a_volume_source_converts_and_names_bad_fields() {
        let vol = |address: &str, volume: Option<pb::Target>, server_name: &str| pb::PopulateRequest {
            source: Some(pb::Source {
                kind: Some(pb::source::Kind::Volume(pb::VolumeSource {
                    address: address.into(),
                    volume,
                    server_name: server_name.into(),
                })),
            }),
            ..req()
        };
        let pod = |uid: &str, name: &str| {
            Some(pb::Target {
                kind: Some(pb::target::Kind::PodVolume(pb::PodVolume {
                    pod_uid: uid.into(),
                    pv_name: name.into(),
                    ..Default::default()
                })),
            })
        };
        let peers =
            PeerClient { tls: Some(crate::source::PeerTls { cert: "/c".into(), key: "/k".into(), ca: "/ca".into() }) };
        let spec = populate(&vol("10.0.0.7:7443", pod("u1", "pv-1"), ""), Path::new("/"), &peers).unwrap();
        assert_eq!(spec.source, "volume 10.0.0.7:7443 pod u1 volume pv-1");
        let SourceSpec::Volume(v) = &spec.request.source else { panic!("{:?}", spec.request.source) };
        assert_eq!(v.server_name, "cdi-mover", "empty: the movers' shared name");
        assert!(v.client.tls.is_some(), "the mover's own identity");
        let named = populate(&vol("peer.example:1", pod("u1", "pv-1"), "other"), Path::new("/"), &peers).unwrap();
        let SourceSpec::Volume(v) = &named.request.source else { panic!() };
        assert_eq!(v.server_name, "other");

        let field = |r| {
            let s = populate(&r, Path::new("/"), &peers).unwrap_err();
            assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
            s.message().to_string()
        };
        for bad in ["", "10.0.0.7", "u:p@h:1", "h:1/x", "http://h:1"] {
            assert!(field(vol(bad, pod("u1", "pv"), "")).starts_with("source.volume.address"), "{bad:?}");
        }
        assert!(field(vol("h:1", None, "")).starts_with("source.volume.volume"));
        let relative = Some(pb::Target { kind: Some(pb::target::Kind::HostPath(pb::HostPath { path: "v".into() })) });
        assert!(field(vol("h:1", relative, "")).starts_with("source.volume.volume.host_path.path"));
        assert!(field(vol("h:1", pod("..", "pv"), "")).starts_with("source.volume.volume.pod_volume"));
        assert!(field(vol("h:1", pod("u1", "pv"), "a b")).starts_with("source.volume.server_name"));
        let summed =
            pb::PopulateRequest { checksum: format!("sha256:{}", "0".repeat(64)), ..vol("h:1", pod("u", "p"), "") };
        assert!(field(summed).starts_with("checksum"));
    }

    #[test]
    fn a_registry_source_converts_and_names_bad_fields() {
        let reg = |url: &str, arch: &str| pb::PopulateRequest {
            source: Some(pb::Source {
                kind: Some(pb::source::Kind::Registry(pb::RegistrySource {
                    url: url.into(),
                    credentials: Some(pb::BasicAuth { username: "u".into(), password: "hunter2".into() }),
                    architecture: arch.into(),
                    ..Default::default()
                })),
            }),
            ..req()
        };
        let spec = populate(&reg("docker://127.0.0.1:5000/vm/disk:1", "arm64"), Path::new("/"), &PeerClient::default())
            .unwrap();
        assert_eq!(spec.source, "docker://127.0.0.1:5000/vm/disk:1");
        let opts = &spec.request.source_options.registry;
        assert_eq!(opts.platform.as_ref().unwrap().to_string(), "linux/arm64");
        assert!(!format!("{:?}", spec.request.source_options).contains("hunter2"));
        assert!(field_of(reg("https://h/x", "")).starts_with("source.registry.url"));
        assert!(field_of(reg("docker://h/x:1", "a//b")).starts_with("source.registry.architecture"));
    }

    #[test]
    fn credentials_never_reach_the_display() {
        let mut r = req();
        r.source = Some(pb::Source {
            kind: Some(pb::source::Kind::Http(pb::HttpSource {
                url: "https://u:pw@h/x?sig=secret".into(),
                basic_auth: Some(pb::BasicAuth { username: "u".into(), password: "hunter2".into() }),
                ..Default::default()
            })),
        });
        let spec = populate(&r, Path::new("/"), &PeerClient::default()).unwrap();
        assert!(!spec.source.contains("pw") && !spec.source.contains("secret"), "{}", spec.source);
        assert!(!format!("{:?}", spec.request.source_options).contains("hunter2"));
    }
}

//! CDI's DataVolume admission rules, each with CDI's message: pure functions of the
//! DataVolume, the stored one on update, and the claim of the same name on create.
//!
//! The rules run in CDI's order and the first broken one answers (CDI joins all the causes
//! of one check into a message; it stops at the first failing check too).
//!
//! Where we differ from CDI's webhook, on purpose:
//! * URL schemes are checked per source (CDI lets `http`, `https` and `gs` through for
//!   every source): `http` takes http(s); `s3` also `s3://`; `gcs` only `gs://` and
//!   `https://storage.cloud.google.com/`; `imageio` and `vddk` http(s).
//! * `contentType: archive` is refused for every import source but `http` (and for
//!   `upload`'s absence of a source it is fine), and on `volumeMode: Block`: a tar archive
//!   is extracted into a filesystem. CDI refuses it only for `blank` and `registry` and
//!   fails later for the rest. Clone sources copy a volume whatever it holds: not checked.
//! * An update that leaves the spec as it was is admitted without checking the spec again:
//!   a DataVolume stored while the webhook was down must still take metadata changes
//!   (labels, finalizers, owner references) and be deletable.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, TypedLocalObjectReference, TypedObjectReference};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::review::Denial;
use crate::api::names::{annotations, kinds};
use crate::api::quantity;
use crate::api::{DataVolume, DataVolumeSource, DataVolumeSpec};

/// Kubernetes' longest object name (a DNS-1123 subdomain), CDI's limit for DataVolume and
/// storage class names.
pub const MAX_NAME_LENGTH: usize = 253;
const MIB: u64 = 1 << 20;
const ACCESS_MODES: [&str; 4] = ["ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod"];
const CONTENT_KUBEVIRT: &str = "kubevirt";
const CONTENT_ARCHIVE: &str = "archive";
const PULL_POD: &str = "pod";
const PULL_NODE: &str = "node";
const GCS_HTTPS_PREFIX: &str = "https://storage.cloud.google.com/";

type Verdict = Result<(), Denial>;

fn deny(message: impl Into<String>, field: &str) -> Verdict {
    Err(Denial::new(message, field))
}

/// All of CDI's admission rules for a DataVolume being created (`old: None`, `existing`:
/// the PVC of the same name if there is one) or updated (`old`: the stored object).
///
/// # Errors
/// The first rule broken, with CDI's message.
pub fn validate(dv: &DataVolume, old: Option<&DataVolume>, existing: Option<&PersistentVolumeClaim>) -> Verdict {
    if let Some(old) = old {
        if !spec_unchanged(&old.spec, &dv.spec) {
            return deny("Cannot update DataVolume Spec", "DataVolume.Spec");
        }
        // Admitted (or stored) before: see the module's notes.
        return Ok(());
    }
    check_name(dv)?;
    if let Some(pvc) = existing {
        claim_may_exist(dv, pvc)?;
    }
    check_spec(&dv.spec)
}

/// The rules that need nothing but the DataVolume: its name and spec. The DataVolume
/// controller reports what this refuses on the DataVolume, for objects that reached the
/// store without the webhook (installed later, or down with another failure policy).
///
/// # Errors
/// The first rule broken, with CDI's message.
pub fn validate_spec(dv: &DataVolume) -> Verdict {
    check_name(dv)?;
    check_spec(&dv.spec)
}

fn check_name(dv: &DataVolume) -> Verdict {
    let name = dv.metadata.name.as_deref().unwrap_or_default();
    name_length(name)
}

fn name_length(name: &str) -> Verdict {
    if name.len() > MAX_NAME_LENGTH {
        return deny(format!("Name cannot be longer than {MAX_NAME_LENGTH} characters"), "");
    }
    Ok(())
}

/// Equal specs, or a multi-stage import (`vddk`, `imageio` with checkpoints) whose only
/// changes are to `checkpoints` and `finalCheckpoint` (the next stage is added as the VM
/// migration goes).
fn spec_unchanged(old: &DataVolumeSpec, new: &DataVolumeSpec) -> bool {
    if old == new {
        return true;
    }
    let multi_stage =
        !new.checkpoints.is_empty() && new.source.as_ref().is_some_and(|s| s.vddk.is_some() || s.imageio.is_some());
    let without_stages =
        |s: &DataVolumeSpec| DataVolumeSpec { checkpoints: Vec::new(), final_checkpoint: None, ..s.clone() };
    multi_stage && without_stages(old) == without_stages(new)
}

/// Parses a Go `strconv.ParseBool` true.
fn go_true(value: &str) -> bool {
    matches!(value, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

/// A claim named like the DataVolume may exist when it was populated for it, when the
/// DataVolume asks to adopt it, or when a DataVolume controls it already.
fn claim_may_exist(dv: &DataVolume, pvc: &PersistentVolumeClaim) -> Verdict {
    let name = dv.metadata.name.as_deref().unwrap_or_default();
    let pvc_annotation = |key| pvc.metadata.annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str);
    if pvc_annotation(annotations::POPULATED_FOR_DATA_VOLUME) == Some(name) {
        return Ok(());
    }
    let made_for_this_dv =
        dv.metadata.uid.as_deref().is_some_and(|uid| pvc_annotation(annotations::CREATED_FOR_DATA_VOLUME) == Some(uid));
    let adopt = dv.metadata.annotations.as_ref().and_then(|a| a.get(annotations::ALLOW_CLAIM_ADOPTION));
    if !made_for_this_dv && adopt.is_some_and(|v| go_true(v)) {
        return Ok(());
    }
    let controller = pvc.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true));
    if controller.is_some_and(|o| o.kind == kinds::DATA_VOLUME) {
        return Ok(());
    }
    let namespace = pvc.metadata.namespace.as_deref().or(dv.metadata.namespace.as_deref()).unwrap_or_default();
    let claim = pvc.metadata.name.as_deref().unwrap_or(name);
    deny(format!("Destination PVC {namespace}/{claim} already exists"), "DataVolume.Name")
}

/// `spec.pvc` or `spec.storage`, whichever is set, as the parts the rules read.
struct Target<'a> {
    /// `PVC` or `Storage`, as CDI names them in messages.
    name: &'static str,
    access_modes: &'a [String],
    size: Option<&'a Quantity>,
    storage_class: Option<&'a str>,
    volume_mode: Option<&'a str>,
    data_source: Option<&'a TypedLocalObjectReference>,
    data_source_ref: Option<&'a TypedObjectReference>,
}

fn target(spec: &DataVolumeSpec) -> Result<Target<'_>, Denial> {
    match (&spec.pvc, &spec.storage) {
        (None, None) => Err(Denial::new("Missing Data volume PVC", "spec.PVC")),
        (Some(_), Some(_)) => Err(Denial::new(
            "Duplicate storage definition, both target storage and target pvc defined",
            "spec.PVC.Storage",
        )),
        (Some(pvc), None) => Ok(Target {
            name: "PVC",
            access_modes: pvc.access_modes.as_deref().unwrap_or_default(),
            size: pvc.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get("storage")),
            storage_class: pvc.storage_class_name.as_deref(),
            volume_mode: pvc.volume_mode.as_deref(),
            data_source: pvc.data_source.as_ref(),
            data_source_ref: pvc.data_source_ref.as_ref(),
        }),
        (None, Some(storage)) => Ok(Target {
            name: "Storage",
            access_modes: &storage.access_modes,
            size: storage.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get("storage")),
            storage_class: storage.storage_class_name.as_deref(),
            volume_mode: storage.volume_mode.as_deref(),
            data_source: storage.data_source.as_ref(),
            data_source_ref: storage.data_source_ref.as_ref(),
        }),
    }
}

fn check_spec(spec: &DataVolumeSpec) -> Verdict {
    let target = target(spec)?;
    check_size(spec, &target)?;
    if let Some(class) = target.storage_class {
        name_length(class)?;
    }
    check_access_modes(&target)?;
    if target.data_source.is_some() || target.data_source_ref.is_some() {
        return check_external_population(spec, &target);
    }
    let source = match (&spec.source, &spec.source_ref) {
        (Some(source), None) => source,
        (None, Some(source_ref)) => {
            if source_ref.kind.is_empty() {
                return deny("Missing sourceRef kind", "spec.sourceRef.Kind");
            }
            if source_ref.kind != kinds::DATA_SOURCE {
                return deny(
                    format!(
                        "Unsupported sourceRef kind {}, currently only {} is supported",
                        source_ref.kind,
                        kinds::DATA_SOURCE
                    ),
                    "spec.sourceRef.Kind",
                );
            }
            if source_ref.name.is_empty() {
                return deny("Missing sourceRef name", "spec.sourceRef.Name");
            }
            return Ok(());
        }
        _ => {
            return deny(
                "Data volume should have either Source or SourceRef, or be externally populated",
                "spec.source",
            );
        }
    };
    let variant = only_variant(source)?;
    check_content_type(spec, &target, variant)?;
    check_source(source)
}

/// A size of at least 1 MiB; only a clone through `storage` may leave it out (it is taken
/// from the source).
fn check_size(spec: &DataVolumeSpec, target: &Target<'_>) -> Verdict {
    let name = target.name;
    let field = format!("spec.{name}.resources.requests.size");
    let Some(size) = target.size else {
        let clone =
            spec.source_ref.is_some() || spec.source.as_ref().is_some_and(|s| s.pvc.is_some() || s.snapshot.is_some());
        if spec.pvc.is_some() || !clone {
            return deny(format!("{name} size is missing"), &field);
        }
        return Ok(());
    };
    let parsed: quantity::Quantity = size
        .0
        .parse()
        .map_err(|e: quantity::QuantityError| Denial::new(format!("{name} size is not valid: {e}"), &field))?;
    if parsed.is_negative() || parsed.nanos() == 0 {
        return deny(format!("{name} size can't be equal or less than zero"), &field);
    }
    // Kubevirt does not take disks under 1 MiB; CDI refuses such DataVolumes to match.
    if parsed.units().is_some_and(|bytes| bytes < MIB) {
        return deny(format!("{name} size should be at least 1MiB"), &field);
    }
    Ok(())
}

fn check_access_modes(target: &Target<'_>) -> Verdict {
    let field = "spec.PVC.accessModes";
    let unsupported = |mode: &str| {
        Denial::new(
            format!(
                "Unsupported value: \"{mode}\": supported values: \"ReadOnlyMany\", \"ReadWriteMany\", \"ReadWriteOnce\", \
                 \"ReadWriteOncePod\""
            ),
            field,
        )
    };
    // `pvc` is used as written: one mode exactly. `storage` may leave them to the
    // StorageProfile, or list several.
    if target.name == "PVC" {
        match target.access_modes {
            [] => return deny("Required value: at least 1 access mode is required", field),
            [_, _, ..] => return deny("PVC multiple accessModes", field),
            [_] => {}
        }
    }
    match target.access_modes.iter().find(|m| !ACCESS_MODES.contains(&m.as_str())) {
        Some(mode) => Err(unsupported(mode)),
        None => Ok(()),
    }
}

/// A DataVolume whose claim another populator fills (`dataSource`/`dataSourceRef`): no
/// source of its own, and references the API server would take.
fn check_external_population(spec: &DataVolumeSpec, target: &Target<'_>) -> Verdict {
    if spec.source.is_some() || spec.source_ref.is_some() {
        return deny("External population is incompatible with Source and SourceRef", "spec.source");
    }
    if let (Some(ds), Some(dsr)) = (target.data_source, target.data_source_ref) {
        let same = dsr.namespace.as_deref().is_none_or(str::is_empty)
            && ds.api_group.as_deref().unwrap_or_default() == dsr.api_group.as_deref().unwrap_or_default()
            && ds.kind == dsr.kind
            && ds.name == dsr.name;
        if !same {
            return deny("DataSourceRef and DataSource must match", "");
        }
    }
    let api_group_needed = |group: Option<&String>, kind: &str| {
        group.is_none_or(|g| g.is_empty()) && kind != kinds::PERSISTENT_VOLUME_CLAIM
    };
    if let Some(ds) = target.data_source {
        if ds.name.is_empty() {
            return deny("Required value: DataSource name", "spec.dataSource.name");
        }
        if ds.kind.is_empty() {
            return deny("Required value: DataSource kind", "spec.dataSource.kind");
        }
        if api_group_needed(ds.api_group.as_ref(), &ds.kind) {
            return deny(
                "Required value: DataSource apiGroup when kind is not 'PersistentVolumeClaim'",
                "spec.dataSource.apiGroup",
            );
        }
    }
    if let Some(dsr) = target.data_source_ref {
        if dsr.namespace.as_deref().is_some_and(|n| !n.is_empty()) {
            return deny("Invalid value: DataSourceRef namespace not supported", "spec.dataSourceRef.namespace");
        }
        if dsr.name.is_empty() {
            return deny("Required value: DataSourceRef name", "spec.dataSourceRef.name");
        }
        if dsr.kind.is_empty() {
            return deny("Required value: DataSourceRef kind", "spec.dataSourceRef.kind");
        }
        if api_group_needed(dsr.api_group.as_ref(), &dsr.kind) {
            return deny(
                "Required value: DataSourceRef apiGroup when kind is not 'PersistentVolumeClaim'",
                "spec.dataSourceRef.apiGroup",
            );
        }
    }
    Ok(())
}

/// Which source a DataVolume has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Http,
    S3,
    Gcs,
    Registry,
    Pvc,
    Snapshot,
    Upload,
    Blank,
    Imageio,
    Vddk,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Http => "http",
            Variant::S3 => "s3",
            Variant::Gcs => "gcs",
            Variant::Registry => "registry",
            Variant::Pvc => "pvc",
            Variant::Snapshot => "snapshot",
            Variant::Upload => "upload",
            Variant::Blank => "blank",
            Variant::Imageio => "imageio",
            Variant::Vddk => "vddk",
        }
    }
}

fn only_variant(s: &DataVolumeSource) -> Result<Variant, Denial> {
    let set = [
        (Variant::Http, s.http.is_some()),
        (Variant::S3, s.s3.is_some()),
        (Variant::Gcs, s.gcs.is_some()),
        (Variant::Registry, s.registry.is_some()),
        (Variant::Pvc, s.pvc.is_some()),
        (Variant::Snapshot, s.snapshot.is_some()),
        (Variant::Upload, s.upload.is_some()),
        (Variant::Blank, s.blank.is_some()),
        (Variant::Imageio, s.imageio.is_some()),
        (Variant::Vddk, s.vddk.is_some()),
    ];
    let mut found = set.into_iter().filter_map(|(v, is_set)| is_set.then_some(v));
    match (found.next(), found.next()) {
        (None, _) => Err(Denial::new("Missing Data volume source", "spec.source")),
        (Some(_), Some(_)) => Err(Denial::new("Multiple Data volume sources", "spec.source")),
        (Some(v), None) => Ok(v),
    }
}

fn check_content_type(spec: &DataVolumeSpec, target: &Target<'_>, variant: Variant) -> Verdict {
    let field = "spec.contentType";
    let content_type = spec.content_type.as_deref().unwrap_or_default();
    if !matches!(content_type, "" | CONTENT_KUBEVIRT | CONTENT_ARCHIVE) {
        return deny(format!("ContentType not one of: {CONTENT_KUBEVIRT}, {CONTENT_ARCHIVE}"), field);
    }
    if content_type != CONTENT_ARCHIVE {
        return Ok(());
    }
    match variant {
        Variant::Blank => deny("SourceType cannot be blank and the contentType be archive", field),
        Variant::Registry => deny(format!("ContentType must be {CONTENT_KUBEVIRT} when Source is Registry"), field),
        Variant::S3 | Variant::Gcs | Variant::Imageio | Variant::Vddk => deny(
            format!(
                "ContentType {CONTENT_ARCHIVE} is supported only with the http and upload sources, not {}",
                variant.name()
            ),
            field,
        ),
        Variant::Http | Variant::Upload if target.volume_mode == Some("Block") => deny(
            format!(
                "ContentType {CONTENT_ARCHIVE} needs volumeMode Filesystem: an archive is extracted into a filesystem"
            ),
            field,
        ),
        Variant::Http | Variant::Upload | Variant::Pvc | Variant::Snapshot => Ok(()),
    }
}

fn check_source(source: &DataVolumeSource) -> Verdict {
    if let Some(http) = &source.http {
        check_url(&http.url, &["http", "https"], "HTTP")?;
        if let Some(checksum) = http.checksum.as_deref().filter(|c| !c.is_empty()) {
            check_checksum(checksum)?;
        }
    }
    if let Some(s3) = &source.s3 {
        check_url(&s3.url, &["s3", "http", "https"], "S3")?;
    }
    if let Some(gcs) = &source.gcs {
        check_url(&gcs.url, &["gs", "https"], "GCS")?;
        if gcs.url.starts_with("https:") && !gcs.url.starts_with(GCS_HTTPS_PREFIX) {
            return deny(format!("spec.source Invalid source URL scheme: {}", gcs.url), "spec.source.GCS.url");
        }
    }
    if let Some(registry) = &source.registry {
        check_registry(registry)?;
    }
    if let Some(imageio) = &source.imageio {
        let field = "spec.source.Imageio";
        if imageio.secret_ref.as_deref().is_none_or(str::is_empty) || imageio.disk_id.is_empty() {
            return deny(format!("{field} source Imageio is not valid"), field);
        }
        if imageio.cert_config_map.as_deref().is_none_or(str::is_empty) && imageio.insecure_skip_verify != Some(true) {
            return deny(format!("{field} source Imageio requires CertConfigMap or InsecureSkipVerify"), field);
        }
        check_url(&imageio.url, &["http", "https"], "ImageIO")?;
    }
    if let Some(vddk) = &source.vddk {
        let field = "spec.source.VDDK";
        let missing = |v: &Option<String>| v.as_deref().is_none_or(str::is_empty);
        if missing(&vddk.secret_ref) || missing(&vddk.uuid) || missing(&vddk.backing_file) || missing(&vddk.thumbprint)
        {
            return deny(format!("{field} source VDDK is not valid"), field);
        }
        check_url(vddk.url.as_deref().unwrap_or_default(), &["http", "https"], "VDDK")?;
    }
    if let Some(pvc) = &source.pvc
        && (pvc.namespace.as_deref().is_some_and(str::is_empty) || pvc.name.is_empty())
    {
        return deny("spec.source.PVC source PVC is not valid", "spec.source.PVC");
    }
    if let Some(snapshot) = &source.snapshot
        && (snapshot.namespace.as_deref().is_some_and(str::is_empty) || snapshot.name.is_empty())
    {
        return deny("spec.source.Snapshot source snapshot is not valid", "spec.source.Snapshot");
    }
    Ok(())
}

/// A URL that parses and has one of `schemes`; CDI's messages name the source field.
fn check_url(text: &str, schemes: &[&str], source: &str) -> Verdict {
    let field = format!("spec.source.{source}.url");
    if text.is_empty() {
        return deny("spec.source source URL is empty", &field);
    }
    let Ok(url) = url::Url::parse(text) else {
        return deny(format!("spec.source Invalid source URL: {text}"), &field);
    };
    if !schemes.contains(&url.scheme()) {
        return deny(format!("spec.source Invalid source URL scheme: {text}"), &field);
    }
    Ok(())
}

/// `algorithm:hex`, checked in CDI's order with CDI's words.
fn check_checksum(text: &str) -> Verdict {
    use cdi_common::checksum::Algorithm;
    let invalid = |why: String| deny(format!("Invalid checksum format: {why}"), "spec.source.HTTP.checksum");
    let Some((algorithm, hex)) = text.split_once(':') else {
        return invalid(format!("invalid checksum format: expected 'algorithm:hash', got '{text}'"));
    };
    let (algorithm, hex) = (algorithm.trim().to_ascii_lowercase(), hex.trim().to_ascii_lowercase());
    if hex.is_empty() {
        return invalid("checksum hash value cannot be empty".into());
    }
    let Some(algo) = Algorithm::ALL.into_iter().find(|a| a.name() == algorithm) else {
        return invalid(format!(
            "unsupported hash algorithm '{algorithm}': supported algorithms are: md5, sha1, sha256, sha512"
        ));
    };
    if hex.len() != algo.hex_len() {
        return invalid(format!(
            "invalid {algorithm} hash length: expected {} hex characters, got {}",
            algo.hex_len(),
            hex.len()
        ));
    }
    if let Some(bad) = hex.chars().find(|c| !c.is_ascii_hexdigit()) {
        return invalid(format!("checksum hash is not valid hexadecimal: invalid character {bad:?}"));
    }
    Ok(())
}

fn check_registry(registry: &crate::api::DataVolumeSourceRegistry) -> Verdict {
    let field = "spec.source.Registry";
    let method_field = "spec.source.Registry.importMethod";
    let (url, stream) = (registry.url.as_deref(), registry.image_stream.as_deref());
    if url.is_some() == stream.is_some() {
        return deny("Source registry should have either URL or ImageStream", field);
    }
    if let Some(url) = url {
        let url_field = "spec.source.Registry.URL";
        let scheme = match url::Url::parse(url) {
            Ok(parsed) => parsed.scheme().to_string(),
            // `quay.io/image`: no scheme at all.
            Err(url::ParseError::RelativeUrlWithoutBase) => String::new(),
            Err(_) => return deny(format!("Illegal registry source URL {url}"), url_field),
        };
        if !matches!(scheme.as_str(), "docker" | "oci-archive") {
            return deny(format!("Illegal registry source URL scheme {url}"), url_field);
        }
    }
    let method = registry.pull_method.as_deref();
    if let Some(m) = method.filter(|m| !matches!(*m, PULL_POD | PULL_NODE)) {
        return deny(format!("ImportMethod {m} is neither {PULL_POD}, {PULL_NODE} or \"\""), method_field);
    }
    if stream == Some("") {
        return deny("Source registry ImageStream is not valid", method_field);
    }
    if stream.is_some() && method != Some(PULL_NODE) {
        return deny("Source registry ImageStream is supported only with node pull import method", method_field);
    }
    Ok(())
}

#[cfg(test)]
#[path = "datavolume_tests.rs"]
mod tests;

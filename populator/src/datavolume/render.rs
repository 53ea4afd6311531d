//! What a DataVolume asks for, and the objects that carry it out: the PVC of the same name
//! and the `VolumeImportSource` its `dataSourceRef` names. Pure functions of the
//! DataVolume and the storage defaults, tested in memory.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimSpec, TypedObjectReference};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use super::defaults::{StorageDefaults, VolumeMode};
use crate::api::names::{annotations as ann, api as group, kinds, labels};
use crate::api::quantity;
use crate::api::sources::ImportSourceType;
use crate::api::{
    DataVolume, VolumeCloneSource, VolumeCloneSourceSpec, VolumeImportSource, VolumeImportSourceSpec,
    VolumeUploadSource, VolumeUploadSourceSpec,
};
use crate::webhook::datavolume::validate_spec;

/// `spec.storage.volumeMode` asking for the StorageProfile's mode.
const FROM_STORAGE_PROFILE: &str = "FromStorageProfile";
/// `contentType` of VM disks, also the default.
const KUBEVIRT_CONTENT: &str = "kubevirt";
const MIB: u64 = 1 << 20;

/// What this controller makes of a DataVolume's spec.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Import through a `VolumeImportSource`.
    Import(Box<ImportSourceType>),
    /// Wait for an upload, through a `VolumeUploadSource`.
    Upload,
    /// Copy the PVC `namespace/name`, through a `VolumeCloneSource`.
    Clone { namespace: String, name: String },
    /// Restore the VolumeSnapshot `namespace/name`, through a `VolumeCloneSource`.
    Restore { namespace: String, name: String },
    /// Copy what DataSource `namespace/name` names (resolved by the reconcile).
    CloneFromDataSource { namespace: String, name: String },
    /// Valid for CDI, not handled by cdi-rs yet; the text says what.
    Unsupported(String),
    /// Refused by the admission webhook, with its message: the object got past a webhook
    /// that was down or not installed.
    Invalid(String),
}

/// Reads what kind of population the DataVolume asks for. Validity is the webhook's
/// judgement (`validate_spec`), so the controller and the webhook cannot disagree on
/// what is valid or on the message that says why not.
pub fn plan(dv: &DataVolume) -> Plan {
    if let Err(denial) = validate_spec(dv) {
        return Plan::Invalid(denial.message);
    }
    // Past the webhook's rules: exactly one of pvc/storage, and either external
    // population, a sourceRef, or a source naming exactly one variant.
    let spec = &dv.spec;
    let Some(source) = &spec.source else {
        return match &spec.source_ref {
            Some(r) => Plan::CloneFromDataSource {
                namespace: r
                    .namespace
                    .clone()
                    .filter(|ns| !ns.is_empty())
                    .or_else(|| dv.namespace())
                    .unwrap_or_default(),
                name: r.name.clone(),
            },
            None => Plan::Unsupported("external population (a dataSourceRef without spec.source)".into()),
        };
    };
    if let Some(pvc) = &source.pvc {
        let namespace =
            pvc.namespace.clone().filter(|ns| !ns.is_empty()).or_else(|| dv.namespace()).unwrap_or_default();
        return Plan::Clone { namespace, name: pvc.name.clone() };
    }
    if let Some(snapshot) = &source.snapshot {
        let namespace =
            snapshot.namespace.clone().filter(|ns| !ns.is_empty()).or_else(|| dv.namespace()).unwrap_or_default();
        return Plan::Restore { namespace, name: snapshot.name.clone() };
    }
    if source.upload.is_some() {
        return Plan::Upload;
    }
    match source.import_source() {
        Some(import) => Plan::Import(Box::new(import)),
        // The rules above demand a source; should they ever stop doing so, this still
        // reports rather than panics.
        None => Plan::Invalid("spec.source names no source".into()),
    }
}

/// What to tell about a registry source that asks for `pullMethod: node` (cdi-rs pulls
/// through the node's mover instead); `None` for any other source. The populate flow says
/// the same on the PVC.
pub fn node_pull_fallback(source: &ImportSourceType) -> Option<&'static str> {
    let registry = source.registry.as_ref()?;
    (registry.pull_method.as_deref() == Some("node")).then_some(crate::plan::NODE_PULL_FALLBACK)
}

/// Whether the DataVolume holds a VM disk (its content type is `kubevirt`, the default).
pub fn kubevirt_content(dv: &DataVolume) -> bool {
    dv.spec.content_type.as_deref().is_none_or(|c| c.is_empty() || c == KUBEVIRT_CONTENT)
}

/// The storage class `spec.storage` names, if any (`""` counts as none).
pub fn named_class(dv: &DataVolume) -> Option<&str> {
    dv.spec.storage.as_ref()?.storage_class_name.as_deref().filter(|c| !c.is_empty())
}

/// The name of the VolumeImportSource a DataVolume's PVC is populated from.
pub fn import_source_name(dv: &DataVolume) -> String {
    format!("volume-import-source-{}", dv.uid().unwrap_or_default())
}

/// The name of the VolumeUploadSource an upload DataVolume's PVC is populated from.
pub fn upload_source_name(dv: &DataVolume) -> String {
    format!("volume-upload-source-{}", dv.uid().unwrap_or_default())
}

/// The name of the VolumeCloneSource a clone DataVolume's PVC is populated from.
pub fn clone_source_name(dv: &DataVolume) -> String {
    format!("volume-clone-source-{}", dv.uid().unwrap_or_default())
}

/// Whether the DataVolume copies a PVC (`spec.source.pvc`, or a DataSource's).
pub fn is_clone(dv: &DataVolume) -> bool {
    dv.spec.source.as_ref().map_or(dv.spec.source_ref.is_some(), |s| s.pvc.is_some() || s.snapshot.is_some())
}

/// Whether the DataVolume waits for an upload (`spec.source.upload`).
pub fn is_upload(dv: &DataVolume) -> bool {
    dv.spec.source.as_ref().is_some_and(|s| s.upload.is_some())
}

/// The source object the DataVolume's PVC names: `(kind, name)`.
pub fn source_ref(dv: &DataVolume) -> (&'static str, String) {
    if is_upload(dv) {
        (kinds::VOLUME_UPLOAD_SOURCE, upload_source_name(dv))
    } else if is_clone(dv) {
        (kinds::VOLUME_CLONE_SOURCE, clone_source_name(dv))
    } else {
        (kinds::VOLUME_IMPORT_SOURCE, import_source_name(dv))
    }
}

/// The controller reference from what we create to the DataVolume (garbage-collected with
/// it; `blockOwnerDeletion` so a foreground delete waits for them).
pub fn owned_by(dv: &DataVolume) -> OwnerReference {
    OwnerReference {
        api_version: DataVolume::api_version(&()).into_owned(),
        kind: DataVolume::kind(&()).into_owned(),
        name: dv.name_any(),
        uid: dv.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A populator source object's metadata: `name` beside the DataVolume, owned by it.
fn source_metadata(dv: &DataVolume, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: dv.namespace(),
        owner_references: Some(vec![owned_by(dv)]),
        labels: Some(BTreeMap::from([(labels::APP.to_string(), labels::APP_CDI.to_string())])),
        ..Default::default()
    }
}

/// The VolumeImportSource for `source`: the DataVolume's content type, preallocation
/// (the cluster default when unset) and checkpoints.
pub fn import_source(dv: &DataVolume, source: ImportSourceType, defaults: &dyn StorageDefaults) -> VolumeImportSource {
    let multi_stage = !dv.spec.checkpoints.is_empty();
    VolumeImportSource {
        metadata: source_metadata(dv, import_source_name(dv)),
        spec: VolumeImportSourceSpec {
            source: Some(source),
            preallocation: dv.spec.preallocation.or_else(|| defaults.default_preallocation().then_some(true)),
            content_type: dv.spec.content_type.clone().filter(|c| !c.is_empty()),
            // A multi-stage source serves this one claim only, as CDI's does.
            target_claim: multi_stage.then(|| dv.name_any()),
            checkpoints: dv.spec.checkpoints.clone(),
            final_checkpoint: dv.spec.final_checkpoint,
        },
    }
}

/// The VolumeUploadSource of an upload DataVolume: its content type, and its preallocation
/// (the cluster default when unset).
pub fn upload_source(dv: &DataVolume, defaults: &dyn StorageDefaults) -> VolumeUploadSource {
    VolumeUploadSource {
        metadata: source_metadata(dv, upload_source_name(dv)),
        spec: VolumeUploadSourceSpec {
            content_type: dv.spec.content_type.clone().filter(|c| !c.is_empty()),
            preallocation: dv.spec.preallocation.or_else(|| defaults.default_preallocation().then_some(true)),
        },
    }
}

/// The VolumeCloneSource of a clone DataVolume: the source claim by name (its namespace,
/// when another, travels on the claim as CDI's `dataSourceNamespace`), the preallocation
/// (the cluster default when unset) and the priority class.
pub fn clone_source(dv: &DataVolume, from: &CloneFrom, defaults: &dyn StorageDefaults) -> VolumeCloneSource {
    let (api_group, kind) = match from.kind {
        CloneKind::Pvc => (None, kinds::PERSISTENT_VOLUME_CLAIM),
        CloneKind::Snapshot => (Some(kinds::SNAPSHOT_GROUP.to_string()), kinds::VOLUME_SNAPSHOT),
    };
    VolumeCloneSource {
        metadata: source_metadata(dv, clone_source_name(dv)),
        spec: VolumeCloneSourceSpec {
            source: k8s_openapi::api::core::v1::TypedLocalObjectReference {
                api_group,
                kind: kind.into(),
                name: from.name.clone(),
            },
            preallocation: dv.spec.preallocation.or_else(|| defaults.default_preallocation().then_some(true)),
            priority_class_name: dv.spec.priority_class_name.clone().filter(|c| !c.is_empty()),
        },
    }
}

/// What a clone's size and mode are taken from when the DataVolume leaves them out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloneOrigin {
    /// The source claim's request, in bytes.
    pub size: u64,
    pub mode: VolumeMode,
}

/// Why the PVC cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("spec.storage.volumeMode {0:?} is not Filesystem, Block or FromStorageProfile")]
    VolumeMode(String),
    #[error(
        "storage class {class:?} has no StorageProfile claim properties: set spec.storage.accessModes and \
         spec.storage.volumeMode"
    )]
    NoClaimProperties { class: String },
    #[error("spec.storage.resources.requests.storage is required for an import or an upload")]
    MissingSize,
    #[error(
        "the source PVC {0} does not exist: a clone without spec.storage.resources.requests.storage takes its size"
    )]
    NoCloneSource(String),
    #[error("spec.storage.resources.requests.storage: {0}")]
    Size(#[from] quantity::QuantityError),
    #[error("spec.storage.resources.requests.storage {0} is too large once the filesystem overhead is added")]
    TooLarge(String),
}

/// The DataVolume's PVC: `spec.pvc` as written, or `spec.storage` completed (class `class`,
/// access modes and volume mode from the defaults, size raised by the filesystem overhead
/// for Filesystem volumes); its `dataSourceRef` names the import (or upload) source.
/// Annotations the populate flow reads pass through; an upload's claim is marked
/// `storage.upload.target`, as CDI marks the claims it accepts upload tokens for.
pub fn claim(
    dv: &DataVolume,
    class: Option<&str>,
    defaults: &dyn StorageDefaults,
) -> Result<PersistentVolumeClaim, RenderError> {
    clone_claim(dv, class, defaults, None, None)
}

/// The claim (or snapshot) a clone copies, `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneFrom {
    pub kind: CloneKind,
    pub namespace: String,
    pub name: String,
}

/// What a clone copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloneKind {
    Pvc,
    Snapshot,
}

/// [`claim`], for a clone of `from` whose source claim is `origin` (when it exists): a size
/// left out is the source's request (raised by the filesystem overhead only from a Block
/// source into a Filesystem volume: a Filesystem source's request has it already).
pub fn clone_claim(
    dv: &DataVolume,
    class: Option<&str>,
    defaults: &dyn StorageDefaults,
    from: Option<&CloneFrom>,
    origin: Option<CloneOrigin>,
) -> Result<PersistentVolumeClaim, RenderError> {
    let mut spec = match (&dv.spec.pvc, &dv.spec.storage) {
        (Some(pvc), _) => pvc.clone(),
        (None, Some(_)) => storage_claim(dv, class, defaults, from, origin)?,
        (None, None) => PersistentVolumeClaimSpec::default(),
    };
    let (kind, source_name) = source_ref(dv);
    spec.data_source_ref = Some(TypedObjectReference {
        api_group: Some(group::GROUP.into()),
        kind: kind.into(),
        name: source_name,
        namespace: None,
    });
    spec.data_source = None;

    let mut labels = dv.labels().clone();
    labels.insert(labels::APP.into(), labels::APP_CDI.into());
    let mut annotations = BTreeMap::from([(ann::CREATED_FOR_DATA_VOLUME.to_string(), dv.uid().unwrap_or_default())]);
    if is_upload(dv) {
        annotations.insert(ann::reserved::UPLOAD_TARGET.into(), String::new());
    }
    if (is_upload(dv) || is_clone(dv))
        && let Some(content_type) = dv.spec.content_type.as_ref().filter(|c| !c.is_empty())
    {
        annotations.insert(ann::CONTENT_TYPE.into(), content_type.clone());
    }
    if let Some(from) = from
        && dv.namespace().as_deref() != Some(from.namespace.as_str())
    {
        annotations.insert(ann::reserved::DATA_SOURCE_NAMESPACE.into(), from.namespace.clone());
    }
    if let Some(value) = dv.annotations().get(ann::BIND_IMMEDIATE_REQUESTED) {
        annotations.insert(ann::BIND_IMMEDIATE_REQUESTED.into(), value.clone());
    }
    if let Some(value) = dv.annotations().get(ann::POD_RETAIN_AFTER_COMPLETION) {
        annotations.insert(ann::POD_RETAIN_AFTER_COMPLETION.into(), value.clone());
    }
    if let Some(class) = dv.spec.priority_class_name.as_ref().filter(|c| !c.is_empty()) {
        annotations.insert(ann::POD_PRIORITY_CLASS_NAME.into(), class.clone());
    }
    if let Some(account) = dv.spec.service_account_name.as_ref().filter(|a| !a.is_empty()) {
        annotations.insert(ann::POD_SERVICE_ACCOUNT_NAME.into(), account.clone());
    }
    Ok(PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(dv.name_any()),
            namespace: dv.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owned_by(dv)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    })
}

fn storage_claim(
    dv: &DataVolume,
    class: Option<&str>,
    defaults: &dyn StorageDefaults,
    from: Option<&CloneFrom>,
    origin: Option<CloneOrigin>,
) -> Result<PersistentVolumeClaimSpec, RenderError> {
    let storage = dv.spec.storage.clone().unwrap_or_default();
    let class_name = class.unwrap_or_default();
    let wanted_mode = match storage.volume_mode.as_deref() {
        None | Some("" | FROM_STORAGE_PROFILE) => None,
        Some(mode) => Some(VolumeMode::parse(mode).ok_or_else(|| RenderError::VolumeMode(mode.into()))?),
    };
    let profile =
        || defaults.claim_properties(class_name).ok_or(RenderError::NoClaimProperties { class: class_name.into() });
    let volume_mode = match wanted_mode {
        Some(mode) => mode,
        None => profile()?.volume_mode,
    };
    let access_modes = if storage.access_modes.is_empty() { profile()?.access_modes } else { storage.access_modes };

    let mut resources = storage.resources.unwrap_or_default();
    let mut requests = resources.requests.unwrap_or_default();
    match requests.get("storage") {
        Some(size) => {
            let bytes = quantity::parse_bytes(&size.0)?;
            if volume_mode == VolumeMode::Filesystem {
                let inflated = required_space(defaults.filesystem_overhead(class_name), bytes)
                    .ok_or_else(|| RenderError::TooLarge(size.0.clone()))?;
                requests.insert("storage".into(), Quantity(inflated.to_string()));
            }
        }
        None if is_clone(dv) => {
            let Some(origin) = origin else {
                let Some(from) = from else { return Err(RenderError::MissingSize) };
                return Err(RenderError::NoCloneSource(format!("{}/{}", from.namespace, from.name)));
            };
            let bytes = if volume_mode == VolumeMode::Filesystem && origin.mode == VolumeMode::Block {
                required_space(defaults.filesystem_overhead(class_name), origin.size)
                    .ok_or_else(|| RenderError::TooLarge(origin.size.to_string()))?
            } else {
                origin.size
            };
            requests.insert("storage".into(), Quantity(bytes.to_string()));
        }
        None => return Err(RenderError::MissingSize),
    }
    resources.requests = Some(requests);

    Ok(PersistentVolumeClaimSpec {
        access_modes: Some(access_modes),
        selector: storage.selector,
        resources: Some(resources),
        volume_name: storage.volume_name.filter(|v| !v.is_empty()),
        storage_class_name: class.map(str::to_string),
        volume_mode: Some(volume_mode.as_str().into()),
        ..Default::default()
    })
}

/// The request that leaves `usable` bytes after a filesystem overhead of `overhead` (a
/// fraction): `usable` rounded up to a MiB, times `1 + overhead`, rounded up to a byte, as
/// CDI sizes a Filesystem volume. `None` past `u64`.
pub fn required_space(overhead: f64, usable: u64) -> Option<u64> {
    let rounded = usable.div_ceil(MIB).checked_mul(MIB)?;
    let overhead = if overhead.is_finite() && overhead > 0.0 { overhead } else { 0.0 };
    // An f64 holds these sizes to well under a byte below 2^53; past that the result is
    // still a safe upper bound after `ceil`.
    let inflated = (rounded as f64 * (1.0 + overhead)).ceil();
    (inflated < u64::MAX as f64).then_some(inflated as u64)
}

#[cfg(test)]
mod tests;

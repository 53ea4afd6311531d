//! [`ImportPlan`]: a checked `VolumeImportSource`.

use super::{ContentType, GcsImport, HttpImport, PlanError, RegistryImport, S3Import, non_empty};
use crate::api::names::values::import_source;
use crate::api::{ImportSourceType, VolumeImportSource, VolumeImportSourceSpec};

/// What to import, checked. Built with `ImportPlan::try_from(&volume_import_source)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportPlan {
    /// Where the data comes from.
    pub source: ImportSource,
    /// What it holds.
    pub content_type: ContentType,
    /// `spec.preallocation`; unset means the cluster default, see [`Self::preallocate`].
    pub preallocation: Option<bool>,
    /// `spec.targetClaim`: when set, the only claim this source populates; see
    /// [`Self::serves_claim`].
    pub target_claim: Option<String>,
}

/// The source variant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImportSource {
    /// An `http://` or `https://` download.
    Http(HttpImport),
    /// An object of an S3-compatible store.
    S3(S3Import),
    /// An object of Google Cloud Storage.
    Gcs(GcsImport),
    /// A containerDisk image from a registry (or an OCI archive).
    Registry(RegistryImport),
    /// An empty raw disk of the volume's usable size (`blank: {}`).
    Blank,
    /// Bytes a user uploads later (a `VolumeUploadSource`, a DataVolume's `upload: {}`, a
    /// claim annotated `storage.upload.target`): the mover waits for them. Never built from
    /// a `VolumeImportSource`; see [`UploadPlan`](super::UploadPlan).
    Upload,
    /// A copy of another volume (a `VolumeCloneSource`, a DataVolume's `pvc` source); see
    /// [`ClonePlan`](super::ClonePlan). Never built from a `VolumeImportSource`.
    Clone(super::CloneSource),
    /// A variant the data path does not handle yet, by its `spec.source` name
    /// (`"imageio"`, `"vddk"`). The controller must report it (event, condition) and leave
    /// the claim alone.
    Unsupported(&'static str),
}

impl ImportSource {
    /// The variant's name in `spec.source`.
    pub fn name(&self) -> &'static str {
        match self {
            ImportSource::Http(_) => "http",
            ImportSource::S3(_) => "s3",
            ImportSource::Gcs(_) => "gcs",
            ImportSource::Registry(_) => "registry",
            ImportSource::Blank => "blank",
            ImportSource::Upload => "upload",
            ImportSource::Clone(_) => "clone",
            ImportSource::Unsupported(name) => name,
        }
    }

    /// The value CDI's `storage.import.source` annotation gives this variant: its name,
    /// except `blank`, which CDI spells `none`.
    pub fn annotation_value(&self) -> &'static str {
        match self {
            ImportSource::Blank => import_source::NONE,
            other => other.name(),
        }
    }
}

impl ImportPlan {
    /// Whether this source may populate the claim named `claim_name` (in its namespace).
    /// CDI skips claims other than `targetClaim` when that is set, without an error.
    pub fn serves_claim(&self, claim_name: &str) -> bool {
        self.target_claim.as_deref().is_none_or(|target| target == claim_name)
    }

    /// Whether to preallocate, given the cluster default for an unset `preallocation`.
    pub fn preallocate(&self, cluster_default: bool) -> bool {
        self.preallocation.unwrap_or(cluster_default)
    }
}

impl TryFrom<&VolumeImportSource> for ImportPlan {
    type Error = PlanError;

    fn try_from(source: &VolumeImportSource) -> Result<Self, Self::Error> {
        Self::try_from(&source.spec)
    }
}

impl TryFrom<&VolumeImportSourceSpec> for ImportPlan {
    type Error = PlanError;

    /// # Errors
    /// No variant or several; an invalid `contentType`, or `archive` with `blank` or
    /// `registry`; what [`HttpImport`], [`S3Import`], [`GcsImport`] and [`RegistryImport`]
    /// refuse.
    ///
    /// `checkpoints` and `finalCheckpoint` are not looked at: CDI uses them with `vddk`
    /// and `imageio` only, which are unsupported here anyway.
    fn try_from(spec: &VolumeImportSourceSpec) -> Result<Self, Self::Error> {
        let variant = only_variant(spec.source.as_ref())?;
        let content_type = ContentType::from_spec(spec.content_type.as_deref())?;
        // CDI's webhook rules: a blank disk or a container disk is never an archive.
        if content_type == ContentType::Archive && matches!(variant, "blank" | "registry") {
            return Err(PlanError::ArchiveNotAllowed { variant });
        }
        // `only_variant` found exactly one set: the first match is it.
        let s = spec.source.as_ref().ok_or(PlanError::NoSource)?;
        let source = if let Some(http) = &s.http {
            ImportSource::Http(HttpImport::try_from(http)?)
        } else if let Some(s3) = &s.s3 {
            ImportSource::S3(S3Import::try_from(s3)?)
        } else if let Some(gcs) = &s.gcs {
            ImportSource::Gcs(GcsImport::try_from(gcs)?)
        } else if let Some(registry) = &s.registry {
            ImportSource::Registry(RegistryImport::try_from(registry)?)
        } else if s.blank.is_some() {
            ImportSource::Blank
        } else {
            ImportSource::Unsupported(variant)
        };
        Ok(ImportPlan {
            source,
            content_type,
            preallocation: spec.preallocation,
            target_claim: non_empty(spec.target_claim.as_ref()),
        })
    }
}

/// The name of the one variant set, or why there is not exactly one.
fn only_variant(source: Option<&ImportSourceType>) -> Result<&'static str, PlanError> {
    let Some(s) = source else {
        return Err(PlanError::NoSource);
    };
    let set = [
        ("http", s.http.is_some()),
        ("s3", s.s3.is_some()),
        ("registry", s.registry.is_some()),
        ("gcs", s.gcs.is_some()),
        ("blank", s.blank.is_some()),
        ("imageio", s.imageio.is_some()),
        ("vddk", s.vddk.is_some()),
    ];
    let found: Vec<&'static str> = set.into_iter().filter_map(|(name, is_set)| is_set.then_some(name)).collect();
    match found.as_slice() {
        [] => Err(PlanError::NoSource),
        [one] => Ok(one),
        _ => Err(PlanError::MultipleSources { found }),
    }
}

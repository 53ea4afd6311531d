//! [`UploadPlan`]: a checked `VolumeUploadSource`.

use super::{ContentType, ImportPlan, ImportSource, PlanError};
use crate::api::{VolumeUploadSource, VolumeUploadSourceSpec};

/// What an upload fills, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UploadPlan {
    /// What the upload holds.
    pub content_type: ContentType,
    /// `spec.preallocation`; unset means the cluster default.
    pub preallocation: Option<bool>,
}

impl TryFrom<&VolumeUploadSource> for UploadPlan {
    type Error = PlanError;

    fn try_from(source: &VolumeUploadSource) -> Result<Self, Self::Error> {
        Self::try_from(&source.spec)
    }
}

impl TryFrom<&VolumeUploadSourceSpec> for UploadPlan {
    type Error = PlanError;

    /// # Errors
    /// An invalid `contentType`.
    fn try_from(spec: &VolumeUploadSourceSpec) -> Result<Self, Self::Error> {
        Ok(UploadPlan {
            content_type: ContentType::from_spec(spec.content_type.as_deref())?,
            preallocation: spec.preallocation,
        })
    }
}

/// An upload fills a volume through the same populate flow as an import: only the source
/// differs (the mover waits for the bytes), so the flow carries it as an [`ImportPlan`].
impl From<UploadPlan> for ImportPlan {
    fn from(upload: UploadPlan) -> ImportPlan {
        ImportPlan {
            source: ImportSource::Upload,
            content_type: upload.content_type,
            preallocation: upload.preallocation,
            target_claim: None,
        }
    }
}

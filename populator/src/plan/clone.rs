//! [`ClonePlan`]: a checked `VolumeCloneSource`.

use super::{ContentType, ImportPlan, ImportSource, PlanError, non_empty};
use crate::api::names::kinds;
use crate::api::{VolumeCloneSource, VolumeCloneSourceSpec};

/// What to copy, checked. The source lives in the clone source's namespace (CDI's
/// cross-namespace clones go through an annotation on the claim, not through this kind).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClonePlan {
    /// The volume to copy.
    pub source: CloneSource,
    /// `spec.preallocation`; unset means the cluster default.
    pub preallocation: Option<bool>,
    /// Priority class of the pods doing the copy.
    pub priority_class_name: Option<String>,
}

/// The volume a clone copies, by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloneSource {
    /// A PersistentVolumeClaim.
    Pvc {
        /// Its name.
        name: String,
    },
    /// A `snapshot.storage.k8s.io` VolumeSnapshot.
    Snapshot {
        /// Its name.
        name: String,
    },
}

impl TryFrom<&VolumeCloneSource> for ClonePlan {
    type Error = PlanError;

    fn try_from(source: &VolumeCloneSource) -> Result<Self, Self::Error> {
        Self::try_from(&source.spec)
    }
}

impl TryFrom<&VolumeCloneSourceSpec> for ClonePlan {
    type Error = PlanError;

    /// # Errors
    /// A kind other than PersistentVolumeClaim or VolumeSnapshot, or an empty name.
    ///
    /// Like CDI, only the kind is looked at, not `apiGroup`.
    fn try_from(spec: &VolumeCloneSourceSpec) -> Result<Self, Self::Error> {
        let name = spec.source.name.clone();
        let source = match spec.source.kind.as_str() {
            kinds::PERSISTENT_VOLUME_CLAIM => CloneSource::Pvc { name },
            kinds::VOLUME_SNAPSHOT => CloneSource::Snapshot { name },
            other => {
                return Err(PlanError::UnsupportedCloneSourceKind { kind: other.to_owned() });
            }
        };
        if spec.source.name.is_empty() {
            return Err(PlanError::MissingCloneSourceName);
        }
        Ok(ClonePlan {
            source,
            preallocation: spec.preallocation,
            priority_class_name: non_empty(spec.priority_class_name.as_ref()),
        })
    }
}

/// A clone fills a volume through the same populate flow as an import: only the source
/// differs (another volume, read by its node's mover), so the flow carries it as an
/// [`ImportPlan`]. What it holds is the target claim's to say (its `storage.contentType`
/// annotation), not the clone source's: `kubevirt` until the flow reads that.
impl From<ClonePlan> for ImportPlan {
    fn from(clone: ClonePlan) -> ImportPlan {
        ImportPlan {
            source: ImportSource::Clone(clone.source),
            content_type: ContentType::Kubevirt,
            preallocation: clone.preallocation,
            target_claim: None,
        }
    }
}

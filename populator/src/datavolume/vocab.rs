//! The DataVolume controller's vocabulary: the events it records on a DataVolume (CDI's
//! reasons where CDI has one) and the condition reasons only it writes.

use crate::api::names::event_reasons as cdi;

/// Events on a DataVolume, one per step of its story (`kubectl describe dv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DvEvent {
    /// The PVC waits for a volume (or the DataVolume for a storage class).
    Pending,
    /// WaitForFirstConsumer: nothing happens until a pod uses the claim.
    PendingPopulation,
    /// The PVC got its volume.
    Bound,
    ImportScheduled,
    ImportInProgress,
    ImportSucceeded,
    ImportFailed,
    /// An existing PVC was taken over as populated (`allowClaimAdoption`).
    ClaimAdopted,
    /// The source kind is CDI's but cdi-rs does not handle it yet.
    UnsupportedSource,
    /// A PVC of that name exists and is not this DataVolume's.
    ResourceExists,
    /// The PVC lost its volume.
    ClaimLost,
    /// The spec cannot be acted on (CDI's webhook refuses such objects).
    ClaimNotValid,
    /// A registry source asked for `pullMethod: node`; the node's mover pulls instead.
    NodePullFallback,
    UploadScheduled,
    UploadReady,
    UploadSucceeded,
    UploadFailed,
    CloneScheduled,
    CloneInProgress,
    CloneSucceeded,
    CloneFailed,
}

impl DvEvent {
    pub const ALL: [DvEvent; 21] = [
        DvEvent::Pending,
        DvEvent::PendingPopulation,
        DvEvent::Bound,
        DvEvent::ImportScheduled,
        DvEvent::ImportInProgress,
        DvEvent::ImportSucceeded,
        DvEvent::ImportFailed,
        DvEvent::ClaimAdopted,
        DvEvent::UnsupportedSource,
        DvEvent::ResourceExists,
        DvEvent::ClaimLost,
        DvEvent::ClaimNotValid,
        DvEvent::NodePullFallback,
        DvEvent::UploadScheduled,
        DvEvent::UploadReady,
        DvEvent::UploadSucceeded,
        DvEvent::UploadFailed,
        DvEvent::CloneScheduled,
        DvEvent::CloneInProgress,
        DvEvent::CloneSucceeded,
        DvEvent::CloneFailed,
    ];

    /// The event's `reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            DvEvent::Pending => "Pending",
            DvEvent::PendingPopulation => "PendingPopulation",
            DvEvent::Bound => "Bound",
            DvEvent::ImportScheduled => cdi::IMPORT_SCHEDULED,
            DvEvent::ImportInProgress => cdi::IMPORT_IN_PROGRESS,
            DvEvent::ImportSucceeded => cdi::IMPORT_SUCCEEDED,
            DvEvent::ImportFailed => cdi::IMPORT_FAILED,
            DvEvent::ClaimAdopted => "ClaimAdopted",
            DvEvent::UnsupportedSource => "UnsupportedSource",
            DvEvent::ResourceExists => cdi::ERR_RESOURCE_EXISTS,
            DvEvent::ClaimLost => cdi::ERR_CLAIM_LOST,
            DvEvent::ClaimNotValid => cdi::ERR_CLAIM_NOT_VALID,
            DvEvent::NodePullFallback => "NodePullFallback",
            DvEvent::UploadScheduled => cdi::reserved::UPLOAD_SCHEDULED,
            DvEvent::UploadReady => cdi::reserved::UPLOAD_READY,
            DvEvent::UploadSucceeded => cdi::reserved::UPLOAD_SUCCEEDED,
            DvEvent::UploadFailed => cdi::reserved::UPLOAD_FAILED,
            DvEvent::CloneScheduled => cdi::reserved::CLONE_SCHEDULED,
            DvEvent::CloneInProgress => cdi::reserved::CLONE_IN_PROGRESS,
            DvEvent::CloneSucceeded => cdi::reserved::CLONE_SUCCEEDED,
            DvEvent::CloneFailed => cdi::reserved::CLONE_FAILED,
        }
    }

    /// Warnings need someone to act; the rest is the normal course of an import.
    pub fn is_warning(self) -> bool {
        match self {
            DvEvent::ImportFailed
            | DvEvent::UploadFailed
            | DvEvent::CloneFailed
            | DvEvent::UnsupportedSource
            | DvEvent::ResourceExists
            | DvEvent::ClaimLost
            | DvEvent::ClaimNotValid => true,
            DvEvent::Pending
            | DvEvent::PendingPopulation
            | DvEvent::Bound
            | DvEvent::ImportScheduled
            | DvEvent::ImportInProgress
            | DvEvent::ImportSucceeded
            | DvEvent::ClaimAdopted
            | DvEvent::UploadScheduled
            | DvEvent::UploadReady
            | DvEvent::UploadSucceeded
            | DvEvent::CloneScheduled
            | DvEvent::CloneInProgress
            | DvEvent::CloneSucceeded
            // The import goes on as a pod pull: worth knowing, nothing to fix.
            | DvEvent::NodePullFallback => false,
        }
    }
}

/// Running condition reasons only the DataVolume controller writes.
pub mod reason {
    /// The source is not handled yet (the populate controller uses the same word).
    pub use crate::controller::vocab::UNSUPPORTED_CONDITION as UNSUPPORTED;
    /// A PVC of that name exists and is not this DataVolume's.
    pub const RESOURCE_EXISTS: &str = crate::api::names::event_reasons::ERR_RESOURCE_EXISTS;
    /// No storage class named and none is the default.
    pub const NO_STORAGE_CLASS: &str = "NoStorageClass";
}

#[cfg(test)]
mod tests {
    use super::DvEvent;

    #[test]
    fn event_reasons_are_distinct_and_failures_are_warnings() {
        let names: std::collections::HashSet<_> = DvEvent::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), DvEvent::ALL.len());
        assert!(DvEvent::ImportFailed.is_warning());
        assert!(DvEvent::UnsupportedSource.is_warning());
        assert!(!DvEvent::ImportSucceeded.is_warning());
        assert_eq!(DvEvent::ImportScheduled.as_str(), "ImportScheduled");
    }
}

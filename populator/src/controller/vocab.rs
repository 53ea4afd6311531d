//! The populator's own status vocabulary. CDI's names (annotations, event and condition
//! reasons) live in [`crate::api::names`]; this adds what only the populate flow uses.

pub use crate::api::names::{annotations as cdi_ann, condition_reasons as condition};

/// Annotations on the target PVC.
pub mod ann {
    pub use crate::api::names::annotations::{
        POD_PHASE, POD_READY, POD_RESTARTS, POD_RETAIN_AFTER_COMPLETION as RETAIN, POPULATOR_PROGRESS as PROGRESS,
        POPULATOR_PVC_PRIME as PVC_PRIME, RUNNING_CONDITION as RUNNING, RUNNING_CONDITION_MESSAGE as RUNNING_MESSAGE,
        RUNNING_CONDITION_REASON as RUNNING_REASON, SELECTED_NODE,
    };
    /// On the PV once it holds the target's data: `<namespace>/<name>`.
    pub const POPULATED_FOR: &str = "cdi.kubevirt.io/storage.populatedFor";
    /// cdi-rs bookkeeping: which attempt the current mover task is (its id is
    /// `<prime uid>-<attempt>`), so a retry is a new task and a restart re-attaches.
    pub const ATTEMPT: &str = "cdi.kubevirt.io/storage.populator.attempt";
    /// cdi-rs bookkeeping: the source generation a terminal failure was for; nothing is
    /// retried until the source changes.
    pub const FAILED_GENERATION: &str = "cdi.kubevirt.io/storage.populator.failedSourceGeneration";
    /// cdi-rs bookkeeping: after a retryable failure, when the next attempt may start
    /// (RFC 3339, UTC).
    pub const RETRY_AFTER: &str = "cdi.kubevirt.io/storage.populator.retryAfter";
    /// On a clone's source holder: the target claim, `<namespace>/<name>`.
    pub const CLONE_TARGET: &str = "cdi.kubevirt.io/storage.populator.cloneTarget";
    /// On a clone's target, CDI's: the strategy used (`copy` for host-assisted).
    pub use crate::api::names::annotations::reserved::CLONE_TYPE;
    /// On a clone's target, CDI's: why the strategy is not the one asked for.
    pub const CLONE_FALLBACK_REASON: &str = "cdi.kubevirt.io/cloneFallbackReason";
}

/// Labels on what the populator creates.
pub mod label {
    pub const NAME: &str = "app.kubernetes.io/name";
    pub const HOLDER: &str = "cdi-populator-holder";
    pub const PRIME: &str = "cdi-populator-prime";
    /// A pod holding a clone's source claim.
    pub const SOURCE_HOLDER: &str = "cdi-populator-clone-source";
    /// The VolumeSnapshot of a snapshot clone.
    pub const SNAPSHOT: &str = "cdi-populator-clone-snapshot";
    /// On a clone source holder: the UID of the ReadWriteOnce claim it holds, which all its
    /// holders share a node for.
    pub const CLONE_SOURCE: &str = "cdi.kubevirt.io/clone-source";
    /// The temporary claim a snapshot is restored into to be copied from.
    pub const RESTORED_SOURCE: &str = "cdi-populator-restored-source";
    /// The target PVC's UID, on the prime PVC and the holder pod.
    pub const FOR: &str = "cdi.kubevirt.io/populator-for";
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const MANAGER: &str = "cdi-populator";
}

/// Keeps a target PVC until its prime PVC, holder pod and mover task are gone.
pub const FINALIZER: &str = "cdi.kubevirt.io/populate-target-protection";

/// The events the populate flow records on a target PVC: CDI's reasons, plus the waits and
/// hand-over steps only this flow has. Each says once whether it is a warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventReason {
    PrimeCreated,
    ImportScheduled,
    ImportInProgress,
    ImportSucceeded,
    /// An attempt failed (retried or not: the note says).
    ImportFailed,
    PendingPopulation,
    SourceMissing,
    Rebind,
    UnsupportedSource,
    /// No mover answered on the node: the task may still run, it is followed again.
    MoverUnavailable,
    /// A registry source asked for `pullMethod: node`; the mover pulls instead.
    NodePullFallback,
    /// The mover holds the upload task: the upload proxy may send bytes.
    UploadReady,
    CloneScheduled,
    CloneSucceeded,
    /// A clone attempt failed (retried or not: the note says).
    CloneFailed,
    /// Another pod uses the clone's source claim: the clone waits.
    CloneSourceInUse,
    /// The clone's source claim is missing or not bound yet.
    CloneSourceMissing,
    /// The clone's strategy, chosen.
    CloneStrategy,
    /// A smart clone the driver cannot make is copied instead; CDI's reason.
    CloneFallback(&'static str),
}

impl EventReason {
    pub const ALL: [EventReason; 19] = [
        EventReason::PrimeCreated,
        EventReason::ImportScheduled,
        EventReason::ImportInProgress,
        EventReason::ImportSucceeded,
        EventReason::ImportFailed,
        EventReason::PendingPopulation,
        EventReason::SourceMissing,
        EventReason::Rebind,
        EventReason::UnsupportedSource,
        EventReason::MoverUnavailable,
        EventReason::NodePullFallback,
        EventReason::UploadReady,
        EventReason::CloneScheduled,
        EventReason::CloneSucceeded,
        EventReason::CloneFailed,
        EventReason::CloneSourceInUse,
        EventReason::CloneSourceMissing,
        EventReason::CloneStrategy,
        EventReason::CloneFallback("IncompatibleVolumeModes"),
    ];

    /// The event's `reason`.
    pub fn as_str(self) -> &'static str {
        use crate::api::names::event_reasons as cdi;
        match self {
            EventReason::PrimeCreated => cdi::CREATED_PVC_PRIME_SUCCESSFULLY,
            EventReason::ImportScheduled => cdi::IMPORT_SCHEDULED,
            EventReason::ImportInProgress => cdi::IMPORT_IN_PROGRESS,
            EventReason::ImportSucceeded => cdi::IMPORT_SUCCEEDED,
            EventReason::ImportFailed => cdi::IMPORT_FAILED,
            EventReason::PendingPopulation => "PendingPopulation",
            EventReason::SourceMissing => "ImportSourceNotFound",
            EventReason::Rebind => "RebindInProgress",
            EventReason::UnsupportedSource => "UnsupportedSource",
            EventReason::MoverUnavailable => "MoverUnavailable",
            EventReason::NodePullFallback => "NodePullFallback",
            EventReason::UploadReady => cdi::reserved::UPLOAD_READY,
            EventReason::CloneScheduled => cdi::reserved::CLONE_SCHEDULED,
            EventReason::CloneSucceeded => cdi::reserved::CLONE_SUCCEEDED,
            EventReason::CloneFailed => cdi::reserved::CLONE_FAILED,
            EventReason::CloneSourceInUse => cdi::reserved::CLONE_SOURCE_IN_USE,
            EventReason::CloneSourceMissing => "CloneSourceNotFound",
            EventReason::CloneStrategy => "CloneStrategy",
            EventReason::CloneFallback(reason) => reason,
            // What the driver said of the prime, said of the claim it stands for.
        }
    }

    /// Warning for what needs someone's attention (a failure, a source that cannot be
    /// served, a node without a mover); Normal for the steps of a healthy import.
    pub fn is_warning(self) -> bool {
        match self {
            EventReason::ImportFailed
            | EventReason::CloneFailed
            | EventReason::UnsupportedSource
            | EventReason::MoverUnavailable
            // CDI warns: the storage cannot do what its profile says.
            | EventReason::CloneFallback(_) => true,
            EventReason::PrimeCreated
            | EventReason::ImportScheduled
            | EventReason::ImportInProgress
            | EventReason::ImportSucceeded
            | EventReason::PendingPopulation
            | EventReason::SourceMissing
            | EventReason::Rebind
            | EventReason::UploadReady
            | EventReason::CloneScheduled
            | EventReason::CloneSucceeded
            | EventReason::CloneSourceMissing
            | EventReason::CloneStrategy
            // Waiting, as CDI does, until the source's user lets go.
            | EventReason::CloneSourceInUse
            // The import goes on, as a pod pull: worth knowing, nothing to fix.
            | EventReason::NodePullFallback => false,
        }
    }
}

/// Reason of the running condition when a source kind is accepted but not handled yet.
pub const UNSUPPORTED_CONDITION: &str = "Unsupported";

#[cfg(test)]
mod tests {
    use super::EventReason;

    #[test]
    fn event_reasons_are_distinct_and_failures_are_warnings() {
        let names: std::collections::HashSet<_> = EventReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), EventReason::ALL.len());
        assert!(EventReason::ImportFailed.is_warning());
        assert!(EventReason::UnsupportedSource.is_warning());
        assert!(!EventReason::ImportSucceeded.is_warning());
        assert!(!EventReason::PrimeCreated.is_warning());
    }
}

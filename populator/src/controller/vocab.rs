//! The populator's own status vocabulary. CDI's names (annotations, event and condition
//! reasons) live in [`crate::api::names`]; this adds what only the populate flow uses.

pub use crate::api::names::{annotations as cdi_ann, condition_reasons as condition, event_reasons as cdi_reason};

/// Annotations on the target PVC.
pub mod ann {
    pub use crate::api::names::annotations::{
        POD_PHASE, POD_RESTARTS, POPULATOR_PROGRESS as PROGRESS, POPULATOR_PVC_PRIME as PVC_PRIME,
        RUNNING_CONDITION as RUNNING, RUNNING_CONDITION_MESSAGE as RUNNING_MESSAGE,
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
}

/// Labels on what the populator creates.
pub mod label {
    pub const NAME: &str = "app.kubernetes.io/name";
    pub const HOLDER: &str = "cdi-populator-holder";
    pub const PRIME: &str = "cdi-populator-prime";
    /// The target PVC's UID, on the prime PVC and the holder pod.
    pub const FOR: &str = "cdi.kubevirt.io/populator-for";
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const MANAGER: &str = "cdi-populator";
}

/// Keeps a target PVC until its prime PVC, holder pod and mover task are gone.
pub const FINALIZER: &str = "cdi.kubevirt.io/populate-target-protection";

/// Event reasons: CDI's, plus the waits and hand-over steps only this flow has.
pub mod reason {
    pub use crate::api::names::event_reasons::{
        CREATED_PVC_PRIME_SUCCESSFULLY as PRIME_CREATED, IMPORT_FAILED as FAILED, IMPORT_IN_PROGRESS as IN_PROGRESS,
        IMPORT_SCHEDULED as SCHEDULED, IMPORT_SUCCEEDED as SUCCEEDED,
    };
    pub const PENDING_POPULATION: &str = "PendingPopulation";
    pub const SOURCE_MISSING: &str = "ImportSourceNotFound";
    pub const REBIND: &str = "RebindInProgress";
    pub const UNSUPPORTED: &str = "UnsupportedSource";
    pub const NO_MOVER: &str = "MoverUnavailable";
}

/// Reason of the running condition when a source kind is accepted but not handled yet.
pub const UNSUPPORTED_CONDITION: &str = "Unsupported";

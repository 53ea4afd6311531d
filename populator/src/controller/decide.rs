//! The populate flow's decisions, apart from the API calls that observe and act on them.
//!
//! ```text
//!            ┌───────────────── Step::Read(fact): reconcile.rs reads it ◀──────┐
//!            ▼                                                                  │
//!  target ─▶ Snapshot ──decide()──▶ Step ─┬────────────────────────────────────┘
//!                                         ├─ CreatePrime / CreateHolder: create, record, decide again
//!                                         └─ anything else: reconcile.rs acts and returns an Action
//! ```
//!
//! A [`Snapshot`] starts with the target PVC's facts only; everything else is a [`Lazy`]
//! fact that [`decide`] asks for when a decision needs it. So the reads happen in the order
//! the flow needs them, and only those: a populated claim never costs a StorageClass read,
//! the holder is looked up only once the prime exists.
//!
//! Nothing here talks to the API or awaits; the tests drive the whole flow in memory.

use cdi_proto::v1 as pb;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;

use super::failure::FailureReason;
use super::follow::{Outcome, TaskView};
use super::strategy::{Choice, Strategy};
use super::vocab::{UNSUPPORTED_CONDITION, ann};
use crate::api::names::annotations as cdi_ann;
use crate::api::names::{api as group, kinds};
use crate::api::{VolumeCloneSource, VolumeImportSource, VolumeUploadSource};
use crate::plan::{ClonePlan, CloneSource, ContentType, ImportPlan, ImportSource, PlanError, UploadPlan};

/// The kinds a target PVC's `dataSourceRef` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Import,
    Upload,
    Clone,
}

/// A pod phase, as Kubernetes spells it in `status.phase` and CDI in the `pod.phase`
/// annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

impl PodPhase {
    pub const ALL: [PodPhase; 5] =
        [PodPhase::Pending, PodPhase::Running, PodPhase::Succeeded, PodPhase::Failed, PodPhase::Unknown];

    /// `None` for text that names no phase: it is treated like no phase at all.
    pub fn parse(s: &str) -> Option<PodPhase> {
        PodPhase::ALL.into_iter().find(|p| p.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PodPhase::Pending => "Pending",
            PodPhase::Running => "Running",
            PodPhase::Succeeded => "Succeeded",
            PodPhase::Failed => "Failed",
            PodPhase::Unknown => "Unknown",
        }
    }
}

/// A PVC's `status.phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimPhase {
    Pending,
    Bound,
    Lost,
}

impl ClaimPhase {
    pub fn parse(s: &str) -> Option<ClaimPhase> {
        match s {
            "Pending" => Some(ClaimPhase::Pending),
            "Bound" => Some(ClaimPhase::Bound),
            "Lost" => Some(ClaimPhase::Lost),
            _ => None,
        }
    }
}

/// A StorageClass's `volumeBindingMode`; unset (or unknown) binds immediately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeBinding {
    Immediate,
    WaitForFirstConsumer,
}

impl From<&StorageClass> for VolumeBinding {
    fn from(class: &StorageClass) -> Self {
        match class.volume_binding_mode.as_deref() {
            Some("WaitForFirstConsumer") => VolumeBinding::WaitForFirstConsumer,
            _ => VolumeBinding::Immediate,
        }
    }
}

/// What the flow needs of the target PVC, read from it once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub kind: SourceKind,
    /// The source object's name (`dataSourceRef.name`).
    pub source_name: String,
    /// `spec.storageClassName`; empty when unset.
    pub class: String,
    pub bound: bool,
    /// The `pod.phase` annotation: where this claim's population stands.
    pub phase: Option<PodPhase>,
    /// The source generation of the last terminal failure, as written (compared as text,
    /// as it always was).
    pub failed_generation: Option<String>,
    /// The current attempt (part of the mover task id); 0 when unset.
    pub attempt: u32,
    /// Retryable failures so far; 0 when unset.
    pub restarts: u32,
    /// Where the scheduler put the consumer (WaitForFirstConsumer).
    pub selected_node: Option<String>,
    /// The running condition already says `Unsupported`: reported once is enough.
    pub unsupported_reported: bool,
    /// `storage.pod.retainAfterCompletion: "true"`: after success keep the importer pod
    /// (with its log) and the prime (`Lost`), as CDI does for debugging.
    pub retain: bool,
    /// A clone's source namespace: CDI's `dataSourceNamespace` annotation, else the claim's.
    pub source_namespace: String,
    /// What a clone copies, from the claim's `storage.contentType` annotation (a clone
    /// source has no such field); unreadable or unset: `kubevirt`.
    pub content_type: ContentType,
    /// A clone's strategy once chosen (CDI's `cloneType` annotation): kept for good, so a
    /// clone never switches ways half-made.
    pub clone_type: Option<Strategy>,
}

impl Target {
    /// `None` unless the claim's `dataSourceRef` names one of CDI's source kinds.
    pub fn from_pvc(pvc: &PersistentVolumeClaim) -> Option<Target> {
        let r = pvc.spec.as_ref()?.data_source_ref.as_ref()?;
        if r.api_group.as_deref() != Some(group::GROUP) {
            return None;
        }
        let kind = match r.kind.as_str() {
            kinds::VOLUME_IMPORT_SOURCE => SourceKind::Import,
            kinds::VOLUME_UPLOAD_SOURCE => SourceKind::Upload,
            kinds::VOLUME_CLONE_SOURCE => SourceKind::Clone,
            _ => return None,
        };
        let annotation = |key: &str| pvc.annotations().get(key).map(String::as_str);
        // Our own bookkeeping; anything unreadable counts as never written.
        let number = |key: &str| annotation(key).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
        let namespace = pvc.namespace().unwrap_or_default();
        Some(Target {
            name: pvc.name_any(),
            source_namespace: annotation(cdi_ann::reserved::DATA_SOURCE_NAMESPACE)
                .filter(|ns| !ns.is_empty())
                .map_or_else(|| namespace.clone(), str::to_string),
            namespace,
            uid: pvc.uid().unwrap_or_default(),
            kind,
            source_name: r.name.clone(),
            class: pvc.spec.as_ref().and_then(|s| s.storage_class_name.clone()).unwrap_or_default(),
            bound: claim_phase(pvc) == Some(ClaimPhase::Bound),
            phase: annotation(ann::POD_PHASE).and_then(PodPhase::parse),
            failed_generation: annotation(ann::FAILED_GENERATION).map(str::to_string),
            attempt: number(ann::ATTEMPT),
            restarts: number(ann::POD_RESTARTS),
            selected_node: annotation(ann::SELECTED_NODE).map(str::to_string),
            unsupported_reported: annotation(ann::RUNNING_REASON) == Some(UNSUPPORTED_CONDITION),
            retain: super::build::retain_after_completion(pvc),
            clone_type: annotation(super::vocab::ann::CLONE_TYPE).and_then(Strategy::parse),
            content_type: match annotation(cdi_ann::CONTENT_TYPE) {
                Some("archive") => ContentType::Archive,
                _ => ContentType::Kubevirt,
            },
        })
    }

    fn populated(&self) -> bool {
        self.phase == Some(PodPhase::Succeeded)
    }
}

fn claim_phase(pvc: &PersistentVolumeClaim) -> Option<ClaimPhase> {
    pvc.status.as_ref()?.phase.as_deref().and_then(ClaimPhase::parse)
}

/// The source object the target names (a `VolumeImportSource`, or a `VolumeUploadSource`
/// whose plan is an [`ImportSource::Upload`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Source {
    Missing,
    Invalid { generation: i64, error: PlanError },
    Found { generation: i64, plan: ImportPlan },
}

impl Source {
    pub fn from_object(source: Option<&VolumeImportSource>) -> Source {
        Source::from_kind(source, |s| ImportPlan::try_from(s))
    }

    pub fn from_clone(source: Option<&VolumeCloneSource>) -> Source {
        Source::from_kind(source, |s| ClonePlan::try_from(s).map(Into::into))
    }

    pub fn from_upload(source: Option<&VolumeUploadSource>) -> Source {
        Source::from_kind(source, |s| UploadPlan::try_from(s).map(Into::into))
    }

    /// A source object of any of our kinds, checked by `plan`.
    fn from_kind<K: kube::Resource>(
        source: Option<&K>,
        plan: impl FnOnce(&K) -> Result<ImportPlan, PlanError>,
    ) -> Source {
        let Some(source) = source else { return Source::Missing };
        let generation = source.meta().generation.unwrap_or(0);
        match plan(source) {
            Ok(plan) => Source::Found { generation, plan },
            Err(error) => Source::Invalid { generation, error },
        }
    }
}

impl SourceKind {
    /// The source object's kind, for messages.
    pub fn kind_name(self) -> &'static str {
        match self {
            SourceKind::Import => kinds::VOLUME_IMPORT_SOURCE,
            SourceKind::Upload => kinds::VOLUME_UPLOAD_SOURCE,
            SourceKind::Clone => kinds::VOLUME_CLONE_SOURCE,
        }
    }
}

/// The prime PVC (`prime-<target uid>`), which the mover fills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prime {
    pub uid: String,
    /// The target's, or for a smart clone the source's (where the driver can make it).
    pub namespace: String,
    /// The PV it is bound to.
    pub volume_name: Option<String>,
    pub phase: Option<ClaimPhase>,
    /// A smart clone's prime: the storage driver fills it from a claim or a snapshot.
    pub smart: bool,
}

impl From<&PersistentVolumeClaim> for Prime {
    fn from(pvc: &PersistentVolumeClaim) -> Self {
        Prime {
            uid: pvc.uid().unwrap_or_default(),
            namespace: pvc.namespace().unwrap_or_default(),
            volume_name: pvc.spec.as_ref().and_then(|s| s.volume_name.clone()),
            phase: claim_phase(pvc),
            smart: pvc.spec.as_ref().is_some_and(|s| s.data_source_ref.is_some()),
        }
    }
}

/// The holder pod, which keeps the prime attached on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub uid: String,
    /// `None` until the kubelet reports one: as good as Pending.
    pub phase: Option<PodPhase>,
    pub node: Option<String>,
    /// Being deleted (after a terminal failure): its volume is going away, so a new task
    /// must wait for the new holder rather than write through this one.
    pub deleting: bool,
}

impl From<&Pod> for Holder {
    fn from(pod: &Pod) -> Self {
        Holder {
            uid: pod.uid().unwrap_or_default(),
            phase: pod.status.as_ref().and_then(|s| s.phase.as_deref()).and_then(PodPhase::parse),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            deleting: pod.metadata.deletion_timestamp.is_some(),
        }
    }
}

/// The prime's PV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pv {
    /// `spec.claimRef.uid`: whose volume it is.
    pub claim_uid: Option<String>,
}

impl From<&PersistentVolume> for Pv {
    fn from(pv: &PersistentVolume) -> Self {
        Pv { claim_uid: pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()?.uid.clone()) }
    }
}

/// The claim a clone copies, as far as the flow cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloneVolume {
    Missing,
    /// A cross-namespace source the claim is not entitled to (why, for the failure).
    Refused(String),
    NotBound,
    Ready {
        /// Another pod that uses it: a clone waits until it is released rather than copy
        /// a volume being written, as CDI does (checked before the copy starts only).
        in_use_by: Option<String>,
        block: bool,
        pv_name: String,
        /// Its storage class (`""`: none).
        class: String,
        /// Bytes it requests.
        size: u64,
        /// Its UID when it is ReadWriteOnce: every pod that holds it for a clone must run
        /// on one node, or all but the first would wait for the volume to detach.
        co_locate: Option<String>,
    },
}

/// The claim a host-assisted clone reads (the source, or a snapshot restored aside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySource {
    pub claim: String,
    pub block: bool,
    pub pv_name: String,
    /// See [`CloneVolume::Ready`].
    pub co_locate: Option<String>,
}

impl CopySource {
    fn of(claim: String, ready: &CloneVolume) -> Option<CopySource> {
        match ready {
            CloneVolume::Ready { block, pv_name, co_locate, .. } => {
                Some(CopySource { claim, block: *block, pv_name: pv_name.clone(), co_locate: co_locate.clone() })
            }
            _ => None,
        }
    }
}

/// A DataVolume's `snapshot` source, as far as the flow cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSnapshot {
    Missing,
    /// Not ready to use yet, or its content not bound.
    NotReady,
    Ready {
        /// The driver that took it.
        driver: String,
        /// The snapshotted volume's mode, when the snapshot says.
        block: Option<bool>,
        /// Bytes a restore needs.
        size: u64,
    },
}

/// Where the source of a host-assisted clone is read: its holder pod, on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node: String,
    pub namespace: String,
    /// The source claim's name.
    pub claim: String,
    pub holder_uid: String,
    pub pv_name: String,
    pub block: bool,
}

/// A fact read only when a decision needs it.
#[derive(Debug, Clone)]
pub enum Lazy<T> {
    Unread,
    Read(T),
}

impl<T> Lazy<T> {
    pub fn get(&self) -> Option<&T> {
        match self {
            Lazy::Unread => None,
            Lazy::Read(t) => Some(t),
        }
    }
}

/// What a decision may ask to be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    Source,
    StorageClass,
    Prime,
    Holder,
    /// The prime's PV, by the name the prime is bound to (empty if none).
    Pv {
        name: String,
    },
    /// The follower's view of the mover task.
    Task,
    /// The claim a clone copies.
    CloneSource {
        name: String,
    },
    /// The pod that holds a clone's source on its node.
    SourceHolder,
    /// What the cluster allows a clone ([`super::strategy::choose`]).
    CloneStrategy,
    /// The VolumeSnapshot of a snapshot clone.
    CloneSnapshot,
    /// Why the storage driver refused to provision a smart clone's prime, if it did.
    PrimeRefusal,
    /// Whether the target may restore VolumeSnapshot `name` of another namespace.
    SnapshotGrant {
        name: String,
    },
    /// A DataVolume's `snapshot` source.
    SourceSnapshot {
        name: String,
    },
    /// The temporary claim a snapshot that cannot be restored into the target is restored
    /// into, to be copied from.
    RestoredSource,
}

/// What one reconcile has seen so far.
#[derive(Debug)]
pub struct Snapshot {
    pub target: Target,
    pub source: Lazy<Source>,
    /// `None`: the class does not exist.
    pub storage_class: Lazy<Option<VolumeBinding>>,
    pub prime: Lazy<Option<Prime>>,
    pub holder: Lazy<Option<Holder>>,
    pub pv: Lazy<Option<Pv>>,
    pub task: Lazy<TaskView>,
    pub clone_source: Lazy<CloneVolume>,
    pub source_holder: Lazy<Option<Holder>>,
    pub strategy: Lazy<Choice>,
    pub clone_snapshot: Lazy<SnapshotState>,
    /// The driver's latest `ProvisioningFailed` message about a smart clone's prime.
    pub prime_refusal: Lazy<Option<String>>,
    /// Why a restore of another namespace's snapshot is refused (`None`: allowed).
    pub snapshot_refusal: Lazy<Option<String>>,
    pub source_snapshot: Lazy<SourceSnapshot>,
}

/// Where a snapshot clone's VolumeSnapshot stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotState {
    Missing,
    Taking,
    Ready,
    /// The driver reported an error (its message).
    Failed(String),
}

impl Snapshot {
    pub fn new(target: Target) -> Snapshot {
        Snapshot {
            target,
            source: Lazy::Unread,
            storage_class: Lazy::Unread,
            prime: Lazy::Unread,
            holder: Lazy::Unread,
            pv: Lazy::Unread,
            task: Lazy::Unread,
            clone_source: Lazy::Unread,
            source_holder: Lazy::Unread,
            strategy: Lazy::Unread,
            clone_snapshot: Lazy::Unread,
            prime_refusal: Lazy::Unread,
            snapshot_refusal: Lazy::Unread,
            source_snapshot: Lazy::Unread,
        }
    }
}

/// A failure that is not retried until the source changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminal {
    pub reason: FailureReason,
    pub message: String,
    /// The source generation it is for.
    pub generation: i64,
    /// The attempt to record: the failed one is used up.
    pub attempt: u32,
}

/// The mover task of the current attempt, and what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// `<prime uid>-<attempt>`; an upload's: `<prime uid>`.
    pub id: String,
    pub node: String,
    pub holder_uid: String,
    /// The prime's PV (empty if not bound yet).
    pub pv_name: String,
    pub plan: ImportPlan,
    /// For a terminal failure if no request can be built from the plan.
    pub generation: i64,
    /// A clone's source, read by its node's mover.
    pub peer: Option<Peer>,
}

/// How the followed mover task of the current attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    Succeeded(pb::Completed),
    Retry {
        reason: FailureReason,
        message: String,
        /// Retryable failures including this one (the backoff's exponent).
        restarts: u32,
        /// The next attempt, so the retry is a new task.
        attempt: u32,
    },
    Failed(Terminal),
    /// The mover was unreachable or the stream broke; the task itself may be fine.
    Lost(String),
}

/// The next thing to do for a target.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Read this fact, then decide again.
    Read(Fact),
    /// Populated and bound: only leftovers of an interrupted cleanup may remain.
    Done,
    /// Populated and bound, and the claim asks to keep the importer pod and the prime.
    Retained,
    /// The source kind or variant is accepted but not handled; `announce` unless already
    /// reported.
    Unsupported {
        message: String,
        announce: bool,
    },
    WaitForSource,
    /// The source's `targetClaim` names another claim.
    NotOurs,
    /// Nothing is retried until the source changes.
    FailTerminally(Terminal),
    /// The last terminal failure was for this very source generation.
    WaitForSourceChange,
    WaitForStorageClass,
    /// WaitForFirstConsumer and no node selected yet; `announce` the wait once.
    WaitForConsumer {
        announce: bool,
    },
    CreatePrime,
    /// Pinned to the consumer's node, if one was selected.
    CreateHolder {
        node: Option<String>,
    },
    /// A clone's source claim is missing or unbound (why).
    WaitForCloneSource {
        why: String,
    },
    /// Another pod uses a clone's source claim.
    CloneSourceInUse {
        pod: String,
    },
    /// The pod that holds a clone's source claim on its node; `co_locate`: on the node of
    /// the other pods labelled with that source UID.
    CreateSourceHolder {
        claim: String,
        block: bool,
        co_locate: Option<String>,
    },
    /// Until the holder runs on a node, the volume is not there to fill.
    WaitForHolder,
    /// Start (or re-attach to) the mover task of the current attempt; `announce` that the
    /// import is scheduled unless the claim already says it runs.
    StartTask {
        task: Box<Task>,
        announce: bool,
    },
    WaitForTask,
    /// Forget the follower, then act on how the task ended.
    TaskEnded(Ended),
    /// After success the holder goes first, so nothing has the volume mounted when the
    /// consumer comes.
    DeleteHolder,
    /// After a clone's success its source is released.
    DeleteSourceHolder,
    /// Record the clone's strategy (and why it is not the one asked for).
    ChooseStrategy(Choice),
    /// Snapshot the source claim `claim`.
    CreateSnapshot {
        claim: String,
    },
    WaitForSnapshot,
    /// The prime, made by the driver from `kind` `name` (the source claim, or a snapshot).
    CreateSmartPrime {
        kind: &'static str,
        name: String,
    },
    /// Until the driver binds the prime; `announce` that the clone runs.
    WaitForSmartPrime {
        announce: bool,
    },
    /// Restore `snapshot`, which the target cannot be restored from, into a temporary claim
    /// of its own driver, mode and size, to copy from.
    CreateRestoredSource {
        snapshot: String,
        block: bool,
        size: u64,
        driver: String,
    },
    /// The driver made the prime: record success.
    SmartCloneDone,
    /// Hand the PV over to the target.
    RebindPv {
        pv: String,
    },
    /// The prime has nothing left to hold.
    DeletePrime,
    /// The PV is the target's; the binder has yet to mark the prime `Lost`.
    WaitForLost,
    /// The prime is gone; the binder has yet to bind the target.
    WaitForBind,
}

/// The next step for what `snapshot` holds.
pub fn decide(snapshot: &Snapshot) -> Step {
    next(snapshot).unwrap_or_else(Step::Read)
}

/// `Err(fact)`: the decision needs `fact`, which is unread.
fn next(s: &Snapshot) -> Result<Step, Fact> {
    let t = &s.target;
    if t.bound && t.populated() {
        return Ok(if t.retain { Step::Retained } else { Step::Done });
    }
    let (generation, plan) = match s.source.get().ok_or(Fact::Source)? {
        Source::Missing => return Ok(Step::WaitForSource),
        Source::Invalid { generation, error } => {
            let message = format!("{} {}: {error}", t.kind.kind_name(), t.source_name);
            return Ok(Step::FailTerminally(terminal(t, *generation, FailureReason::InvalidRequest, &message)));
        }
        Source::Found { generation, plan } => (*generation, plan),
    };
    if !plan.serves_claim(&t.name) {
        return Ok(Step::NotOurs);
    }
    if let ImportSource::Unsupported(name) = &plan.source {
        return Ok(unsupported(t, &format!("import source type {name}")));
    }
    if t.failed_generation.as_deref() == Some(generation.to_string().as_str()) {
        return Ok(Step::WaitForSourceChange);
    }
    if t.populated() { rebind(s) } else { populate(s, generation, plan) }
}

fn unsupported(t: &Target, what: &str) -> Step {
    Step::Unsupported {
        message: format!("{what} is not supported by this populator yet"),
        announce: !t.unsupported_reported,
    }
}

fn terminal(t: &Target, generation: i64, reason: FailureReason, message: &str) -> Terminal {
    Terminal { reason, message: message.to_string(), generation, attempt: t.attempt + 1 }
}

/// Up to the running mover task, and what its end means.
fn populate(s: &Snapshot, generation: i64, plan: &ImportPlan) -> Result<Step, Fact> {
    let t = &s.target;
    match s.storage_class.get().ok_or(Fact::StorageClass)? {
        None => return Ok(Step::WaitForStorageClass),
        Some(VolumeBinding::WaitForFirstConsumer) if t.selected_node.is_none() => {
            return Ok(Step::WaitForConsumer { announce: t.phase != Some(PodPhase::Pending) });
        }
        Some(_) => {}
    }
    // A clone's source must be there and free before anything is provisioned for it.
    let source = match &plan.source {
        ImportSource::Clone(CloneSource::Pvc { name }) => {
            match s.clone_source.get().ok_or_else(|| Fact::CloneSource { name: name.clone() })? {
                CloneVolume::Missing => {
                    let why = format!("source PVC {}/{name} not found", t.source_namespace);
                    return Ok(Step::WaitForCloneSource { why });
                }
                CloneVolume::NotBound => {
                    let why = format!("source PVC {}/{name} is not bound yet", t.source_namespace);
                    return Ok(Step::WaitForCloneSource { why });
                }
                CloneVolume::Refused(why) => {
                    return Ok(Step::FailTerminally(terminal(t, generation, FailureReason::InvalidRequest, why)));
                }
                CloneVolume::Ready { in_use_by: Some(pod), .. } if t.phase != Some(PodPhase::Running) => {
                    return Ok(Step::CloneSourceInUse { pod: pod.clone() });
                }
                ready => CopySource::of(name.clone(), ready),
            }
        }
        ImportSource::Clone(CloneSource::Snapshot { name }) => match restore(s, generation, name)? {
            Restore::Step(step) => return Ok(step),
            Restore::CopyFrom(source) => Some(source),
        },
        _ => None,
    };
    if let Some(CopySource { claim, .. }) = &source
        && matches!(plan.source, ImportSource::Clone(CloneSource::Pvc { .. }))
    {
        let strategy = match &t.clone_type {
            Some(strategy) => strategy.clone(),
            None => return Ok(Step::ChooseStrategy(s.strategy.get().ok_or(Fact::CloneStrategy)?.clone())),
        };
        if strategy != Strategy::Copy {
            return smart_clone(s, strategy, claim);
        }
    }
    let Some(prime) = s.prime.get().ok_or(Fact::Prime)? else { return Ok(Step::CreatePrime) };
    // The prime of a smart clone the driver refused: gone before the copy's is made.
    if prime.smart {
        return Ok(Step::DeletePrime);
    }
    let Some(holder) = s.holder.get().ok_or(Fact::Holder)? else {
        return Ok(Step::CreateHolder { node: t.selected_node.clone() });
    };
    // Both holders start at once; the task waits for both.
    let source = match source {
        None => None,
        Some(CopySource { claim, block, pv_name, co_locate }) => {
            match s.source_holder.get().ok_or(Fact::SourceHolder)? {
                None => return Ok(Step::CreateSourceHolder { claim, block, co_locate }),
                Some(source_holder) => Some((source_holder, claim, block, pv_name)),
            }
        }
    };
    let (Some(node), Some(PodPhase::Running), false) = (&holder.node, holder.phase, holder.deleting) else {
        return Ok(Step::WaitForHolder);
    };
    let peer = match source {
        None => None,
        Some((source_holder, claim, block, pv_name)) => {
            let (Some(node), Some(PodPhase::Running), false) =
                (&source_holder.node, source_holder.phase, source_holder.deleting)
            else {
                return Ok(Step::WaitForHolder);
            };
            Some(Peer {
                node: node.clone(),
                namespace: t.source_namespace.clone(),
                claim,
                holder_uid: source_holder.uid.clone(),
                pv_name,
                block,
            })
        }
    };
    let mut plan = plan.clone();
    if matches!(plan.source, ImportSource::Clone(_)) {
        plan.content_type = t.content_type;
    }
    let task_id = task_id(prime, t);
    Ok(match s.task.get().ok_or(Fact::Task)? {
        TaskView::Running { task_id: running } if *running == task_id => Step::WaitForTask,
        TaskView::Done { task_id: done, outcome } if *done == task_id => Step::TaskEnded(ended(t, generation, outcome)),
        // Acted on already, and this PVC predates that write: wait for it to arrive. An
        // upload's id stays the same across attempts: a claim that shows the retry (Pending)
        // or a failure whose source has since changed (Failed) starts it again.
        TaskView::Settled { task_id: settled } if *settled == task_id && !upload_again(t) => Step::WaitForTask,
        // Not followed, or followed for an earlier attempt.
        _ => Step::StartTask {
            task: Box::new(Task {
                id: task_id,
                node: node.clone(),
                holder_uid: holder.uid.clone(),
                pv_name: prime.volume_name.clone().unwrap_or_default(),
                plan,
                generation,
                peer,
            }),
            announce: t.phase != Some(PodPhase::Running),
        },
    })
}

/// Where a DataVolume's `snapshot` source stands.
enum Restore {
    /// Restored by the driver into the target, or not ready to copy yet.
    Step(Step),
    /// Restored aside, to be copied.
    CopyFrom(CopySource),
}

/// A DataVolume's `snapshot` source is restored by its driver into the target when CDI's
/// checks say it can; otherwise (or when the driver refuses that) into a temporary claim of
/// the snapshot's own driver, mode and size, which is then copied like a source claim.
fn restore(s: &Snapshot, generation: i64, name: &str) -> Result<Restore, Fact> {
    let t = &s.target;
    let step = |step| Ok(Restore::Step(step));
    // Restored in the snapshot's namespace, as a claim clone across namespaces is.
    if t.source_namespace != t.namespace
        && let Some(why) = s.snapshot_refusal.get().ok_or_else(|| Fact::SnapshotGrant { name: name.into() })?
    {
        return step(Step::FailTerminally(terminal(t, generation, FailureReason::InvalidRequest, why)));
    }
    let (block, size, driver) =
        match s.source_snapshot.get().ok_or_else(|| Fact::SourceSnapshot { name: name.into() })? {
            SourceSnapshot::Missing => {
                return step(Step::WaitForCloneSource {
                    why: format!("VolumeSnapshot {}/{name} not found", t.source_namespace),
                });
            }
            SourceSnapshot::NotReady => {
                let why = format!("VolumeSnapshot {}/{name} is not ready to use yet", t.source_namespace);
                return step(Step::WaitForCloneSource { why });
            }
            SourceSnapshot::Ready { block, size, driver } => (block.unwrap_or(false), *size, driver),
        };
    let strategy = match &t.clone_type {
        Some(strategy) => strategy.clone(),
        None => return step(Step::ChooseStrategy(s.strategy.get().ok_or(Fact::CloneStrategy)?.clone())),
    };
    if strategy != Strategy::Copy {
        return smart_prime(s, kinds::VOLUME_SNAPSHOT, name, Strategy::Snapshot).map(Restore::Step);
    }
    let claim = super::build::restored_source_name(&t.uid);
    match s.clone_source.get().ok_or(Fact::RestoredSource)? {
        CloneVolume::Missing => {
            step(Step::CreateRestoredSource { snapshot: name.into(), block, size, driver: driver.clone() })
        }
        // Only this clone holds its own restored claim: nothing to co-locate with.
        CloneVolume::Ready { block, pv_name, .. } => {
            Ok(Restore::CopyFrom(CopySource { claim, block: *block, pv_name: pv_name.clone(), co_locate: None }))
        }
        // Bound once restored, or (WaitForFirstConsumer) once its holder is scheduled.
        _ => match s.source_holder.get().ok_or(Fact::SourceHolder)? {
            None => step(Step::CreateSourceHolder { claim, block, co_locate: None }),
            Some(_) => step(Step::WaitForCloneSource {
                why: format!("restoring the snapshot into {}/{claim} to copy it", t.source_namespace),
            }),
        },
    }
}

/// A clone the storage driver makes: (a snapshot, then) a prime whose data source is the
/// source claim or the snapshot; once the driver has bound it, the volume is the target's.
fn smart_clone(s: &Snapshot, strategy: Strategy, claim: &str) -> Result<Step, Fact> {
    if strategy == Strategy::Snapshot {
        match s.clone_snapshot.get().ok_or(Fact::CloneSnapshot)? {
            SnapshotState::Missing => return Ok(Step::CreateSnapshot { claim: claim.to_string() }),
            SnapshotState::Taking => return Ok(Step::WaitForSnapshot),
            // Copied instead: the source is still there to read.
            SnapshotState::Failed(why) => {
                let fallback = Some(("SnapshotFailed", format!("the snapshot of the source failed: {why}")));
                return Ok(Step::ChooseStrategy(Choice { strategy: Strategy::Copy, fallback }));
            }
            SnapshotState::Ready => {}
        }
        let snapshot = super::build::clone_snapshot_name(&s.target.uid);
        return smart_prime(s, kinds::VOLUME_SNAPSHOT, &snapshot, strategy);
    }
    smart_prime(s, kinds::PERSISTENT_VOLUME_CLAIM, claim, strategy)
}

/// The prime the driver fills from `kind` `name`; once bound, the clone is made. `strategy`:
/// the smart way it is being made, which a copy replaces when the driver refuses the prime
/// (another pool, zone or node than the source's, a clone depth limit, ...).
fn smart_prime(s: &Snapshot, kind: &'static str, name: &str, strategy: Strategy) -> Result<Step, Fact> {
    let Some(prime) = s.prime.get().ok_or(Fact::Prime)? else {
        return Ok(Step::CreateSmartPrime { kind, name: name.to_string() });
    };
    if prime.phase == Some(ClaimPhase::Bound) {
        return Ok(Step::SmartCloneDone);
    }
    if let Some(why) = s.prime_refusal.get().ok_or(Fact::PrimeRefusal)? {
        let (reason, what) = match strategy {
            Strategy::Snapshot => (SNAPSHOT_RESTORE_FAILED, "the restore of the snapshot"),
            _ => (CSI_CLONE_FAILED, "the CSI clone of the source"),
        };
        let fallback = Some((reason, format!("the storage driver cannot provision {what}: {why}")));
        return Ok(Step::ChooseStrategy(Choice { strategy: Strategy::Copy, fallback }));
    }
    Ok(Step::WaitForSmartPrime { announce: s.target.phase != Some(PodPhase::Running) })
}

/// `cloneFallbackReason`s of a smart clone the driver accepted but then refused to provision
/// (CDI has none: its clone waits for the driver for ever).
const CSI_CLONE_FAILED: &str = "CSICloneFailed";
const SNAPSHOT_RESTORE_FAILED: &str = "SnapshotRestoreFailed";

/// An upload task that ended (and was acted on) is started again under the same id.
fn upload_again(t: &Target) -> bool {
    t.kind == SourceKind::Upload && matches!(t.phase, Some(PodPhase::Pending | PodPhase::Failed))
}

/// A retry is a new task; a restarted populator re-attaches to the same one. An upload's
/// task is the prime's UID itself: that is how the upload proxy finds it (it knows no
/// attempts; the mover retries failed upload attempts within the task).
fn task_id(prime: &Prime, t: &Target) -> String {
    match t.kind {
        SourceKind::Upload => prime.uid.clone(),
        SourceKind::Import | SourceKind::Clone => format!("{}-{}", prime.uid, t.attempt),
    }
}

fn ended(t: &Target, generation: i64, outcome: &Outcome) -> Ended {
    match outcome {
        Outcome::Succeeded(c) => Ended::Succeeded(c.clone()),
        Outcome::Failed(f) if f.retryable => Ended::Retry {
            reason: f.reason,
            message: f.message.clone(),
            restarts: t.restarts + 1,
            attempt: t.attempt + 1,
        },
        Outcome::Failed(f) => Ended::Failed(terminal(t, generation, f.reason, &f.message)),
        Outcome::Lost(why) => Ended::Lost(why.clone()),
    }
}

/// The import succeeded: hand its PV to the target, then clear the prime away.
fn rebind(s: &Snapshot) -> Result<Step, Fact> {
    let retain = s.target.retain;
    if !retain && s.holder.get().ok_or(Fact::Holder)?.is_some() {
        return Ok(Step::DeleteHolder);
    }
    // The source is released whatever the claim asks to retain: it is someone else's.
    if s.target.kind == SourceKind::Clone && s.source_holder.get().ok_or(Fact::SourceHolder)?.is_some() {
        return Ok(Step::DeleteSourceHolder);
    }
    let Some(prime) = s.prime.get().ok_or(Fact::Prime)? else { return Ok(Step::WaitForBind) };
    let pv_name = prime.volume_name.clone().unwrap_or_default();
    let pv = s.pv.get().ok_or_else(|| Fact::Pv { name: pv_name.clone() })?;
    Ok(match pv {
        Some(pv) if pv.claim_uid.as_deref() != Some(s.target.uid.as_str()) => Step::RebindPv { pv: pv_name },
        // The binder marks the prime Lost once its PV belongs to the target.
        Some(_) if prime.phase != Some(ClaimPhase::Lost) => Step::WaitForLost,
        // Kept `Lost`, as asked; the binder binds the target to the PV all the same.
        _ if retain => Step::WaitForBind,
        _ => Step::DeletePrime,
    })
}

/// The target is being deleted and no follower knows its task (e.g. after a restart):
/// the task of the current attempt, as `(task id, node)`, if the holder has a node and the
/// prime exists.
pub fn unfollowed_task(t: &Target, holder: Option<&Holder>, prime: Option<&Prime>) -> Option<(String, String)> {
    let node = holder?.node.clone()?;
    // Only a prime the API returned can name a task, and those have a uid.
    let prime = prime.filter(|p| !p.uid.is_empty())?;
    Some((task_id(prime, t), node))
}

#[cfg(test)]
mod tests;

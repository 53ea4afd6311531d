//! Following mover tasks: one stream per target PVC whose import runs, turning events into
//! progress annotations (throttled) and, at the end, an outcome the reconciler picks up.
//!
//! The mover owns the task; a follower is only a view of it. If the populator restarts or
//! the stream breaks, a new follower calls `Populate` with the same task id and the mover
//! re-attaches: no second download.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cdi_proto::v1 as pb;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;

use super::Ctx;
use super::failure::{FailureReason, TaskFailure};
use super::vocab::{EventReason, ann, condition};
use crate::api::names::values;

/// How a task ended, as far as its follower saw.
#[derive(Debug, Clone)]
pub enum Outcome {
    Succeeded(pb::Completed),
    Failed(TaskFailure),
    /// The mover could not be reached or the stream broke: follow again later.
    Lost(String),
}

#[derive(Debug)]
struct Follow {
    /// Which start made this entry: a follower replaced by a later start must not write
    /// its outcome into its successor's entry.
    serial: u64,
    task_id: String,
    node: String,
    outcome: Option<Outcome>,
    /// The outcome has been acted on (annotations written). Kept so that a reconcile
    /// reading the PVC from a cache that lags behind that write does not follow the same
    /// task again and act on its outcome twice.
    settled: bool,
    /// `None` only between registering the follower and spawning it.
    abort: Option<tokio::task::AbortHandle>,
}

impl Follow {
    fn abort(&self) {
        if let Some(a) = &self.abort {
            a.abort();
        }
    }
}

/// The followers, by target PVC UID.
#[derive(Debug, Default)]
pub struct Followers {
    inner: Mutex<HashMap<String, Follow>>,
    serial: AtomicU64,
}

/// A follower, as handed to the function that spawns it.
type FollowFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the reconciler sees of a target's task.
#[derive(Debug, Clone)]
pub enum TaskView {
    None,
    Running {
        task_id: String,
    },
    Done {
        task_id: String,
        outcome: Outcome,
    },
    /// Ended, and its outcome already acted on.
    Settled {
        task_id: String,
    },
}

impl Followers {
    pub fn view(&self, target_uid: &str) -> TaskView {
        match self.inner.lock().expect("followers lock").get(target_uid) {
            None => TaskView::None,
            Some(f) if f.settled => TaskView::Settled { task_id: f.task_id.clone() },
            Some(f) => match &f.outcome {
                None => TaskView::Running { task_id: f.task_id.clone() },
                Some(o) => TaskView::Done { task_id: f.task_id.clone(), outcome: o.clone() },
            },
        }
    }

    /// The task and node of a target, while followed.
    pub fn task_of(&self, target_uid: &str) -> Option<(String, String)> {
        self.inner.lock().expect("followers lock").get(target_uid).map(|f| (f.task_id.clone(), f.node.clone()))
    }

    pub fn forget(&self, target_uid: &str) {
        if let Some(f) = self.inner.lock().expect("followers lock").remove(target_uid) {
            f.abort();
        }
    }

    /// Marks a target's ended task as acted on; its outcome is dropped.
    pub fn settle(&self, target_uid: &str) {
        if let Some(f) = self.inner.lock().expect("followers lock").get_mut(target_uid) {
            f.settled = true;
            f.outcome = None;
        }
    }

    pub fn running(&self) -> usize {
        self.inner.lock().expect("followers lock").values().filter(|f| f.outcome.is_none() && !f.settled).count()
    }

    /// Starts following (and, on the mover, starting or re-attaching to) the task. For an
    /// upload, `prime` is the claim the mover fills when it is not the target itself.
    pub fn start(
        self: &Arc<Self>,
        ctx: Arc<Ctx>,
        target: ObjectRef<PersistentVolumeClaim>,
        target_uid: String,
        node: String,
        request: pb::PopulateRequest,
        prime: Option<String>,
    ) {
        let task_id = request.task_id.clone();
        let follow = {
            let (ctx, target, node) = (ctx.clone(), target.clone(), node.clone());
            async move { run(&ctx, &target, &node, request, prime.as_deref()).await }
        };
        let ended = move || {
            let _ = ctx.trigger.send(target);
        };
        self.follow(target_uid, task_id, node, follow, ended, |f| tokio::spawn(f).abort_handle());
    }

    /// Registers a follower of `target_uid`, then hands it to `spawn`. The entry exists
    /// before the follower can end, so an outcome that comes at once is kept rather than
    /// overwritten by the registration. `ended` runs once the outcome is recorded.
    fn follow(
        self: &Arc<Self>,
        target_uid: String,
        task_id: String,
        node: String,
        follow: impl Future<Output = Outcome> + Send + 'static,
        ended: impl FnOnce() + Send + 'static,
        spawn: impl FnOnce(FollowFuture) -> tokio::task::AbortHandle,
    ) {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let entry = Follow { serial, task_id, node, outcome: None, settled: false, abort: None };
        if let Some(old) = self.inner.lock().expect("followers lock").insert(target_uid.clone(), entry) {
            old.abort();
        }
        let this = self.clone();
        let uid = target_uid.clone();
        let abort = spawn(Box::pin(async move {
            let outcome = follow.await;
            if let Some(f) = this.inner.lock().expect("followers lock").get_mut(&uid)
                && f.serial == serial
            {
                f.outcome = Some(outcome);
            }
            ended();
        }));
        match self.inner.lock().expect("followers lock").get_mut(&target_uid) {
            Some(f) if f.serial == serial => f.abort = Some(abort),
            // Replaced or forgotten meanwhile: nobody else can stop it.
            _ => abort.abort(),
        }
    }
}

async fn run(
    ctx: &Ctx,
    target: &ObjectRef<PersistentVolumeClaim>,
    node: &str,
    request: pb::PopulateRequest,
    prime: Option<&str>,
) -> Outcome {
    let upload = super::source::is_upload(&request);
    let mut client = match ctx.movers.on_node(node).await {
        Ok(c) => c,
        Err(e) => return Outcome::Lost(e.to_string()),
    };
    let mut stream = match client.populate(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            return match status.code() {
                // A mover that predates uploads reads the unknown source as none at all.
                tonic::Code::InvalidArgument | tonic::Code::Unimplemented if upload => {
                    Outcome::Failed(upgrade_the_mover(node, &status))
                }
                // The request itself is wrong: retrying cannot help.
                tonic::Code::InvalidArgument | tonic::Code::AlreadyExists => Outcome::Failed(TaskFailure {
                    reason: FailureReason::InvalidRequest,
                    message: status.message().to_string(),
                    retryable: false,
                }),
                // A mover that predates the source kind (a registry, s3 or gcs source sent to
                // an older DaemonSet): retried with backoff, so a mover upgrade picks it up.
                tonic::Code::Unimplemented => Outcome::Failed(upgrade_the_mover(node, &status)),
                _ => Outcome::Lost(format!("mover on {node}: {}", status.message())),
            };
        }
    };
    let api: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), target.namespace.as_deref().unwrap_or_default());
    let mut last_write: Option<Instant> = None;
    let mut announced = false;
    let mut ready = false;
    loop {
        let event = match stream.message().await {
            Ok(Some(e)) => e,
            Ok(None) => return Outcome::Lost("the mover closed the event stream".into()),
            Err(status) => return Outcome::Lost(format!("mover on {node}: {}", status.message())),
        };
        use pb::populate_event::Event;
        if upload && !ready && awaits_upload(event.event.as_ref()) {
            ready = mark_ready(ctx, &api, target, node, prime).await;
        }
        match event.event {
            Some(Event::Progress(p)) => {
                if last_write.is_some_and(|t| t.elapsed() < ctx.cfg.progress_interval) {
                    continue;
                }
                last_write = Some(Instant::now());
                let percent = if p.bytes_total > 0 { p.bytes_done as f64 * 100.0 / p.bytes_total as f64 } else { 0.0 };
                // "100%" is only written once the task succeeded, as CDI holds it back.
                let shown = values::progress(percent);
                let patch = serde_json::json!({"metadata": {"annotations": {
                    ann::PROGRESS: shown,
                    ann::POD_PHASE: "Running",
                    ann::RUNNING: "true",
                    ann::RUNNING_REASON: condition::POD_RUNNING,
                    ann::RUNNING_MESSAGE: "",
                }}});
                if let Err(e) = api.patch(&target.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                    tracing::debug!(pvc = %target, error = %e, "progress not recorded");
                }
                if !announced && p.bytes_done > 0 {
                    announced = true;
                    let what = if upload { "Upload" } else { "Import" };
                    ctx.event(target, EventReason::ImportInProgress, &format!("{what} in progress on node {node}"))
                        .await;
                }
            }
            Some(Event::Completed(c)) => return Outcome::Succeeded(c),
            Some(Event::Failed(f)) => {
                let mut failure = TaskFailure::from(f);
                // The mover takes a failed upload attempt back itself; a failed upload task
                // is over, and its id (the prime's UID) cannot name a fresh one.
                failure.retryable &= !upload;
                return Outcome::Failed(failure);
            }
            Some(Event::Accepted(_)) | None => {}
        }
    }
}

fn upgrade_the_mover(node: &str, status: &tonic::Status) -> TaskFailure {
    // Retried with backoff, so a mover upgrade picks it up.
    TaskFailure {
        reason: FailureReason::InvalidRequest,
        message: format!(
            "the mover on node {node} cannot serve this request ({}): upgrade the cdi-mover DaemonSet",
            status.message()
        ),
        retryable: true,
    }
}

/// Whether an upload task's event says the mover holds the task, so that an `Upload` call
/// finds it: accepted and not over, or any progress (waiting for bytes or taking them).
fn awaits_upload(event: Option<&pb::populate_event::Event>) -> bool {
    use pb::populate_event::Event;
    match event {
        Some(Event::Accepted(a)) => {
            // Only a task that is over says so; anything else is held.
            !matches!(
                pb::TaskState::try_from(a.state),
                Ok(pb::TaskState::Succeeded | pb::TaskState::Failed | pb::TaskState::Cancelled)
            )
        }
        Some(Event::Progress(_)) => true,
        _ => false,
    }
}

/// The upload can come: `storage.pod.ready: "true"` on the target and the prime, and the
/// holder's node on the prime (or on the claim itself, golden) as
/// `volume.kubernetes.io/selected-node`, where the upload proxy looks for the mover.
/// `false` if a write still failed after a few tries: the next event tries again (a waiting
/// task may send none, hence the tries).
async fn mark_ready(
    ctx: &Ctx,
    api: &Api<PersistentVolumeClaim>,
    target: &ObjectRef<PersistentVolumeClaim>,
    node: &str,
    prime: Option<&str>,
) -> bool {
    let ready = |with_node: bool| {
        let mut annotations = serde_json::Map::new();
        annotations.insert(ann::POD_READY.into(), "true".into());
        annotations.insert(ann::POD_PHASE.into(), "Running".into());
        annotations.insert(ann::RUNNING.into(), "true".into());
        annotations.insert(ann::RUNNING_REASON.into(), condition::POD_RUNNING.into());
        annotations.insert(ann::RUNNING_MESSAGE.into(), "".into());
        if with_node {
            annotations.insert(ann::SELECTED_NODE.into(), node.into());
        }
        serde_json::json!({"metadata": {"annotations": annotations}})
    };
    // The node goes on the claim the mover fills: the prime, or the target when there is none.
    // The prime first: the proxy goes by the target, which must not say ready before the
    // node is where the proxy looks.
    let writes = [(prime, true), (Some(target.name.as_str()), prime.is_none())];
    for (name, with_node) in writes {
        let Some(name) = name else { continue };
        let mut tries = 0;
        while let Err(e) = api.patch(name, &PatchParams::default(), &Patch::Merge(&ready(with_node))).await {
            tries += 1;
            tracing::warn!(pvc = %name, error = %e, tries, "upload readiness not recorded");
            if tries == 5 {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
    ctx.event(target, EventReason::UploadReady, &format!("Upload ready on node {node}")).await;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt as _;
    use std::sync::atomic::AtomicBool;

    /// Spawns a follower by running it to its end on the spot: the interleaving where the
    /// task ends before `follow` returns, made certain.
    fn run_at_once(f: FollowFuture) -> tokio::task::AbortHandle {
        f.now_or_never().expect("the follower ends without waiting");
        tokio::spawn(async {}).abort_handle()
    }

    fn lost(why: &str) -> impl Future<Output = Outcome> + Send + 'static {
        let why = why.to_string();
        async move { Outcome::Lost(why) }
    }

    #[test]
    fn an_upload_is_ready_once_the_mover_holds_the_task_and_not_after_it_ended() {
        use pb::populate_event::Event;
        let accepted = |state: pb::TaskState| Event::Accepted(pb::Accepted { reattached: false, state: state as i32 });
        assert!(awaits_upload(Some(&accepted(pb::TaskState::Running))));
        assert!(awaits_upload(Some(&accepted(pb::TaskState::Queued))));
        let waiting = pb::Progress { phase: pb::Phase::AwaitingUpload as i32, ..Default::default() };
        assert!(awaits_upload(Some(&Event::Progress(waiting))));
        // Re-attached to a task that is over: its end follows, no upload can come.
        assert!(!awaits_upload(Some(&accepted(pb::TaskState::Succeeded))));
        assert!(!awaits_upload(Some(&accepted(pb::TaskState::Failed))));
        assert!(!awaits_upload(Some(&Event::Completed(pb::Completed::default()))));
        assert!(!awaits_upload(None));
    }

    #[tokio::test]
    async fn a_follower_that_ends_at_once_keeps_its_outcome() {
        let followers = Arc::new(Followers::default());
        let ended = Arc::new(AtomicBool::new(false));
        let flag = ended.clone();
        let on_end = move || flag.store(true, Ordering::SeqCst);
        followers.follow("pvc".into(), "t-0".into(), "n1".into(), lost("gone"), on_end, run_at_once);
        assert!(ended.load(Ordering::SeqCst), "the end was not announced");
        match followers.view("pvc") {
            TaskView::Done { task_id, outcome: Outcome::Lost(why) } => {
                assert_eq!((task_id.as_str(), why.as_str()), ("t-0", "gone"))
            }
            other => panic!("the outcome was lost: {other:?}; the PVC would wait forever"),
        }
        assert_eq!(followers.running(), 0);
    }

    #[tokio::test]
    async fn a_replaced_follower_never_writes_into_its_successor() {
        let followers = Arc::new(Followers::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // The first follower ends only when told, after the second has replaced it.
        let first = async move {
            let _ = rx.await;
            Outcome::Lost("stale".into())
        };
        let mut held = None;
        followers.follow(
            "pvc".into(),
            "t-0".into(),
            "n1".into(),
            first,
            || {},
            |f| {
                held = Some(f);
                tokio::spawn(async {}).abort_handle()
            },
        );
        followers.follow(
            "pvc".into(),
            "t-1".into(),
            "n1".into(),
            std::future::pending(),
            || {},
            |f| tokio::spawn(f).abort_handle(),
        );
        tx.send(()).unwrap();
        held.take().unwrap().await;
        match followers.view("pvc") {
            TaskView::Running { task_id } => assert_eq!(task_id, "t-1"),
            other => panic!("the replaced follower's outcome landed: {other:?}"),
        }
    }
}

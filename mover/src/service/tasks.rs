//! The mover's tasks: imports named by their callers, run at most N at a time, followed by
//! any number of client streams, and kept for a while after they finish.
//!
//! A task outlives the stream that started it: a client that disconnects and calls
//! `Populate` again with the same id re-attaches to the same transfer (or finds its result).
//!
//! An upload task (source `upload`) waits, holding its target but no slot, until an `Upload`
//! call brings it bytes ([`Registry::upload_turn`]); an attempt that fails leaves the target
//! wiped and the task waiting again, only success or a cancel ends it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};

use super::claims::{Access, Busy, Claim, Claims};
use super::metrics::Metrics;
use super::tasklog::TaskLog;
use crate::error::{ImportError, Reason, one_line};
use crate::import::{ContentType, ImportRequest, ImportResult};
use crate::progress::{Phase, Progress, Rate};
use crate::source::{SourceSpec, UploadFeed};

/// How often a running task's progress is published to its followers.
const TICK: Duration = Duration::from_millis(500);

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl State {
    pub fn is_final(self) -> bool {
        matches!(self, State::Succeeded | State::Failed | State::Cancelled)
    }
}

/// Why a task failed, as its followers see it (never with credentials: import errors only
/// ever name redacted URLs).
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
    pub retryable: bool,
}

/// The latest known state of a task, what its followers receive.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub state: State,
    /// `None` while queued.
    pub phase: Option<Phase>,
    pub bytes_done: u64,
    pub bytes_total: Option<u64>,
    pub bytes_per_second: f64,
    pub result: Option<ImportResult>,
    pub failure: Option<Failure>,
    pub finished: Option<SystemTime>,
}

/// What a caller asks to run.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub id: String,
    pub request: ImportRequest,
    /// How the source and target may be shown (credentials removed).
    pub source: String,
    pub target: String,
    /// Where to append the task's log lines (already resolved), if anywhere.
    pub log: Option<std::path::PathBuf>,
}

/// One task.
#[derive(Debug)]
pub struct Task {
    pub id: String,
    pub source: String,
    pub target: String,
    content_type: ContentType,
    pub created: SystemTime,
    cancel: Arc<AtomicBool>,
    /// Cancelled because the mover is shutting down, not because a client asked: the
    /// import can be tried again (on the restarted mover).
    interrupted: AtomicBool,
    /// Wakes a queued task that was cancelled.
    cancelled: Notify,
    /// Turns true on cancel: stops an Upload call feeding the task.
    stopping: watch::Sender<bool>,
    state: watch::Sender<Snapshot>,
    /// Where Upload calls hand an upload task their bytes; `None` for other tasks.
    upload: Option<UploadPort>,
}

#[derive(Debug)]
struct UploadPort {
    attempts: mpsc::Sender<Attempt>,
    /// Whose turn it is to feed the task (one Upload call at a time).
    turn: watch::Sender<Turn>,
    /// Numbers the turns, so that a call only ever changes its own.
    turns: AtomicU64,
}

/// An upload task's port, as Upload calls see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    Free,
    /// An Upload call (numbered) is streaming bytes in: another one is refused.
    Feeding(u64),
    /// The last call's stream is over (finished or cut) and its attempt is ending (a cut
    /// one wipes the target): a new call waits for it instead of being refused, so that an
    /// uploader may retry at once after a cut.
    Ending(u64),
}

/// How long a new Upload call waits for an ending attempt before it is refused.
const ENDING_WAIT: Duration = Duration::from_secs(60);
/// How long a new Upload call waits for a feeding attempt to stop before it is refused: a
/// client that cut its upload and retried at once may arrive before the cut reached this
/// mover through the proxy.
const FEEDING_GRACE: Duration = Duration::from_secs(5);

/// One Upload call's bytes for an upload task, and where its outcome goes (sent once the
/// task is Succeeded, or back to waiting).
#[derive(Debug)]
pub struct Attempt {
    pub feed: UploadFeed,
    pub content_length: Option<u64>,
    pub reply: oneshot::Sender<Result<ImportResult, ImportError>>,
}

/// Why an Upload call cannot feed a task.
#[derive(Debug, thiserror::Error)]
pub enum UploadRefused {
    #[error("no task {0}")]
    NotFound(String),
    #[error(
        "task {id} is not an upload (its source is {source_name}); only a Populate with source upload takes uploads"
    )]
    NotUpload { id: String, source_name: String },
    #[error("upload task {id} has {state}: it takes no more uploads")]
    Over { id: String, state: &'static str },
    #[error("another upload is feeding task {0}; one attempt at a time, retry once it ended")]
    Busy(String),
}

/// The right to feed an upload task, held by one Upload call. Released by the task once
/// the attempt it submitted is over (before the caller hears of it, so that it may retry at
/// once), or on drop if it submitted none.
#[derive(Debug)]
pub struct UploadTurn {
    task: Arc<Task>,
    number: u64,
    submitted: bool,
}

impl UploadTurn {
    pub fn task(&self) -> &Arc<Task> {
        &self.task
    }

    /// The stream is over: a new Upload call waits for this attempt's end from here on.
    pub fn stream_over(&self) {
        if let Some(port) = &self.task.upload {
            port.turn.send_if_modified(|t| {
                let mine = *t == Turn::Feeding(self.number);
                if mine {
                    *t = Turn::Ending(self.number);
                }
                mine
            });
        }
    }

    /// Hands the task an attempt; gives it back if the task ended meanwhile.
    pub async fn submit(&mut self, attempt: Attempt) -> Result<(), Attempt> {
        let Some(port) = &self.task.upload else { return Err(attempt) };
        port.attempts.send(attempt).await.map_err(|e| e.0)?;
        self.submitted = true;
        Ok(())
    }
}

impl Drop for UploadTurn {
    fn drop(&mut self) {
        if let Some(port) = &self.task.upload
            && !self.submitted
        {
            let number = self.number;
            port.turn.send_if_modified(|t| {
                let mine = *t == Turn::Feeding(number) || *t == Turn::Ending(number);
                if mine {
                    *t = Turn::Free;
                }
                mine
            });
        }
    }
}

impl Task {
    pub fn snapshot(&self) -> Snapshot {
        self.state.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.state.subscribe()
    }

    /// Turns true when the task is cancelled.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Lets the next Upload call in (it finds the task ended if it has).
    fn free_upload_turn(&self) {
        if let Some(port) = &self.upload {
            port.turn.send_replace(Turn::Free);
        }
    }

    fn stop(&self) {
        self.cancel.store(true, Ordering::SeqCst);
        self.cancelled.notify_one();
        self.stopping.send_replace(true);
    }

    fn same_work(&self, spec: &TaskSpec) -> bool {
        self.source == spec.source && self.target == spec.target && self.content_type == spec.request.content_type
    }
}

/// Why a task could not be started.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartError {
    #[error("task {id} already exists with another source or target ({source_name} → {target})")]
    Conflict { id: String, source_name: String, target: String },
    #[error("the mover is shutting down and takes no new tasks")]
    Draining,
    /// Another task or volume stream has the target.
    #[error(transparent)]
    TargetBusy(#[from] Busy),
}

/// All tasks of this mover.
#[derive(Debug)]
pub struct Registry {
    tasks: Mutex<HashMap<String, Arc<Task>>>,
    slots: Arc<Semaphore>,
    retention: Duration,
    draining: AtomicBool,
    running: AtomicU64,
    /// Current throughput of each running task, summed for the metrics.
    rates: Mutex<HashMap<String, f64>>,
    metrics: Arc<Metrics>,
    /// The targets in use, by tasks and by volume streams.
    claims: Arc<Claims>,
}

impl Registry {
    pub fn new(max_concurrent: usize, retention: Duration, metrics: Arc<Metrics>) -> Arc<Registry> {
        Arc::new(Registry {
            tasks: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(max_concurrent.max(1))),
            retention,
            draining: AtomicBool::new(false),
            running: AtomicU64::new(0),
            rates: Mutex::new(HashMap::new()),
            metrics,
            claims: Claims::new(),
        })
    }

    /// The targets in use; volume streams claim theirs here too.
    pub fn claims(&self) -> &Arc<Claims> {
        &self.claims
    }

    /// Starts the task, or returns the existing one of the same id (`true`: re-attached).
    pub fn start_or_attach(self: &Arc<Self>, spec: TaskSpec) -> Result<(Arc<Task>, bool), StartError> {
        self.sweep();
        let mut tasks = self.tasks.lock().expect("tasks lock");
        if let Some(task) = tasks.get(&spec.id) {
            if !task.same_work(&spec) {
                return Err(StartError::Conflict {
                    id: spec.id,
                    source_name: task.source.clone(),
                    target: task.target.clone(),
                });
            }
            return Ok((task.clone(), true));
        }
        if self.draining.load(Ordering::SeqCst) {
            return Err(StartError::Draining);
        }
        // Held until the task is over, its cleanup included: one target, one writer.
        let claim =
            self.claims.claim(&spec.request.target, &spec.target, Access::Write, format!("task {}", spec.id))?;
        let is_upload = matches!(spec.request.source, SourceSpec::Upload(_));
        // An upload waits as a running task (CDI's upload pod is running), in its own phase.
        let (state, _) = watch::channel(Snapshot {
            state: if is_upload { State::Running } else { State::Queued },
            phase: is_upload.then_some(Phase::AwaitingUpload),
            bytes_done: 0,
            bytes_total: None,
            bytes_per_second: 0.0,
            result: None,
            failure: None,
            finished: None,
        });
        // Capacity 1: the turn lets one Upload call in at a time anyway.
        let (upload, attempts) = if is_upload {
            let (tx, rx) = mpsc::channel(1);
            (Some(UploadPort { attempts: tx, turn: watch::channel(Turn::Free).0, turns: AtomicU64::new(0) }), Some(rx))
        } else {
            (None, None)
        };
        let task = Arc::new(Task {
            id: spec.id.clone(),
            source: spec.source.clone(),
            target: spec.target.clone(),
            content_type: spec.request.content_type,
            created: SystemTime::now(),
            cancel: Arc::new(AtomicBool::new(false)),
            interrupted: AtomicBool::new(false),
            cancelled: Notify::new(),
            stopping: watch::channel(false).0,
            state,
            upload,
        });
        tasks.insert(spec.id.clone(), task.clone());
        drop(tasks);
        let mut log = TaskLog::open(spec.log.as_deref(), &spec.id);
        log.started(&spec.source, &spec.target);
        match attempts {
            Some(attempts) => {
                tokio::spawn(self.clone().run_upload(task.clone(), spec.request, claim, log, attempts));
            }
            None => {
                tokio::spawn(self.clone().run(task.clone(), spec.request, claim, log));
            }
        }
        Ok((task, false))
    }

    /// Lets one Upload call feed upload task `id`, once the previous attempt (if its
    /// stream is over) has ended.
    pub async fn upload_turn(&self, id: &str) -> Result<UploadTurn, UploadRefused> {
        let task = self.get(id).ok_or_else(|| UploadRefused::NotFound(id.to_string()))?;
        let Some(port) = &task.upload else {
            return Err(UploadRefused::NotUpload { id: task.id.clone(), source_name: task.source.clone() });
        };
        let over = |state| UploadRefused::Over { id: task.id.clone(), state };
        match task.snapshot().state {
            State::Succeeded => return Err(over("succeeded")),
            State::Failed => return Err(over("failed")),
            State::Cancelled => return Err(over("been cancelled")),
            State::Queued | State::Running => {}
        }
        if task.cancel.load(Ordering::SeqCst) {
            return Err(over("been cancelled"));
        }
        let mut turn = port.turn.subscribe();
        // `is_ok` at once: the value borrowed by wait_for locks the turn until dropped.
        let not_feeding =
            tokio::time::timeout(FEEDING_GRACE, turn.wait_for(|t| !matches!(t, Turn::Feeding(_)))).await.is_ok();
        let free = not_feeding
            && tokio::time::timeout(ENDING_WAIT, turn.wait_for(|t| !matches!(t, Turn::Ending(_)))).await.is_ok();
        let number = port.turns.fetch_add(1, Ordering::SeqCst);
        let mut taken = false;
        if free {
            port.turn.send_if_modified(|t| {
                taken = *t == Turn::Free;
                if taken {
                    *t = Turn::Feeding(number);
                }
                taken
            });
        }
        if !taken {
            return Err(UploadRefused::Busy(task.id.clone()));
        }
        let over = UploadRefused::Over { id: task.id.clone(), state: "ended" };
        let turn = UploadTurn { task, number, submitted: false };
        // The attempt that just ended may have ended the task (dropping the turn frees it).
        if turn.task.snapshot().state.is_final() || turn.task.cancel.load(Ordering::SeqCst) {
            return Err(over);
        }
        Ok(turn)
    }

    pub fn get(&self, id: &str) -> Option<Arc<Task>> {
        self.sweep();
        self.tasks.lock().expect("tasks lock").get(id).cloned()
    }

    /// Every task known, oldest first.
    pub fn list(&self) -> Vec<Arc<Task>> {
        self.sweep();
        let mut tasks: Vec<_> = self.tasks.lock().expect("tasks lock").values().cloned().collect();
        tasks.sort_by_key(|t| (t.created, t.id.clone()));
        tasks
    }

    /// Asks a task to stop; it does within a chunk's time.
    pub fn cancel(&self, id: &str) -> Option<Arc<Task>> {
        let task = self.get(id)?;
        task.stop();
        Some(task)
    }

    /// Refuses new tasks, cancels the running ones and waits (up to `limit`) until they
    /// have cleaned up.
    pub async fn drain(&self, limit: Duration) {
        self.draining.store(true, Ordering::SeqCst);
        let tasks = self.list();
        for task in &tasks {
            task.interrupted.store(true, Ordering::SeqCst);
            task.stop();
        }
        let wait_all = async {
            for task in tasks {
                let mut rx = task.subscribe();
                let _ = rx.wait_for(|s| s.state.is_final()).await;
            }
        };
        if tokio::time::timeout(limit, wait_all).await.is_err() {
            tracing::warn!("tasks still running after {limit:?} of draining");
        }
    }

    pub fn running(&self) -> u64 {
        self.running.load(Ordering::Relaxed)
    }

    /// Forgets tasks finished longer ago than the retention.
    fn sweep(&self) {
        let now = SystemTime::now();
        self.tasks.lock().expect("tasks lock").retain(|_, t| {
            t.snapshot().finished.is_none_or(|f| now.duration_since(f).unwrap_or_default() < self.retention)
        });
    }

    /// Runs the task; its target is released before its end is announced, so a caller that
    /// saw it end finds the target free.
    async fn run(self: Arc<Self>, task: Arc<Task>, request: ImportRequest, claim: Claim, log: TaskLog) {
        let log = Arc::new(Mutex::new(log));
        // Wait for a slot, unless cancelled first.
        let permit = tokio::select! {
            permit = self.slots.clone().acquire_owned() => permit.ok(),
            () = task.cancelled.notified() => None,
        };
        let Some(_permit) = permit.filter(|_| !task.cancel.load(Ordering::SeqCst)) else {
            drop(claim);
            self.finish(&task, Err(ImportError::Cancelled), Duration::ZERO, &log);
            return;
        };
        let started = Instant::now();
        task.state.send_modify(|s| {
            s.state = State::Running;
            s.phase = Some(Phase::Probing);
        });
        let result = self.attempt(&task, request, &log).await;
        // The import is over, its disk finished or cleaned up: the target is free.
        drop(claim);
        self.finish(&task, result, started.elapsed(), &log);
    }

    /// Runs an upload task: waits for an Upload call's bytes, imports them, and waits
    /// again after a failed attempt (its target wiped by the import), until one succeeds
    /// or the task is cancelled. Holds the target all along, a slot only while importing.
    async fn run_upload(
        self: Arc<Self>,
        task: Arc<Task>,
        request: ImportRequest,
        claim: Claim,
        log: TaskLog,
        mut attempts: mpsc::Receiver<Attempt>,
    ) {
        let log = Arc::new(Mutex::new(log));
        loop {
            let attempt = tokio::select! {
                a = attempts.recv() => a,
                () = task.cancelled.notified() => None,
            };
            let Some(attempt) = attempt.filter(|_| !task.cancel.load(Ordering::SeqCst)) else { break };
            let permit = tokio::select! {
                permit = self.slots.clone().acquire_owned() => permit.ok(),
                () = task.cancelled.notified() => None,
            };
            let Some(permit) = permit.filter(|_| !task.cancel.load(Ordering::SeqCst)) else { break };
            task.state.send_modify(|s| {
                s.phase = Some(Phase::Probing);
                s.bytes_done = 0;
                s.bytes_total = attempt.content_length;
                s.bytes_per_second = 0.0;
            });
            let started = Instant::now();
            let mut request = request.clone();
            request.source = SourceSpec::Upload(attempt.feed);
            let result = self.attempt(&task, request, &log).await;
            drop(permit);
            match result {
                Ok(done) => {
                    drop(claim);
                    self.finish(&task, Ok(done.clone()), started.elapsed(), &log);
                    task.free_upload_turn();
                    let _ = attempt.reply.send(Ok(done));
                    return;
                }
                Err(ImportError::Cancelled) => {
                    drop(claim);
                    self.finish(&task, Err(ImportError::Cancelled), started.elapsed(), &log);
                    task.free_upload_turn();
                    let _ = attempt.reply.send(Err(ImportError::Cancelled));
                    return;
                }
                Err(e) => {
                    let message = one_line(&e);
                    log.lock().expect("task log lock").line(&format!(
                        "The upload failed ({}: {message}); its data was discarded, waiting for another upload",
                        e.reason().as_str()
                    ));
                    tracing::warn!(task = %task.id, reason = e.reason().as_str(), error = %message, "upload attempt failed; waiting for another");
                    self.metrics.record_finished(State::Failed, e.reason().as_str(), started.elapsed());
                    // Back to waiting before the caller hears of it: it may retry at once.
                    task.free_upload_turn();
                    task.state.send_modify(|s| {
                        s.phase = Some(Phase::AwaitingUpload);
                        s.bytes_done = 0;
                        s.bytes_total = None;
                        s.bytes_per_second = 0.0;
                    });
                    let _ = attempt.reply.send(Err(e));
                }
            }
        }
        drop(claim);
        self.finish(&task, Err(ImportError::Cancelled), Duration::ZERO, &log);
        task.free_upload_turn();
    }

    /// Runs one import with its progress published; the caller holds its slot.
    async fn attempt(
        self: &Arc<Self>,
        task: &Arc<Task>,
        request: ImportRequest,
        log: &Arc<Mutex<TaskLog>>,
    ) -> Result<ImportResult, ImportError> {
        self.running.fetch_add(1, Ordering::Relaxed);
        self.metrics.tasks_running.inc();
        let progress = Progress::new();
        let done = Arc::new(Notify::new());
        let ticker = tokio::spawn(self.clone().tick(task.clone(), progress.clone(), done.clone(), log.clone()));
        let rt = tokio::runtime::Handle::current();
        let cancel = task.cancel.clone();
        let progress_for_import = progress.clone();
        let result = tokio::task::spawn_blocking(move || {
            let result = crate::import(&request, &rt, &progress_for_import, cancel);
            cdi_common::heap::release_free();
            result
        })
        .await
        .unwrap_or_else(|e| Err(ImportError::InvalidRequest(format!("the import task failed: {e}"))));
        done.notify_one();
        let _ = ticker.await;
        self.running.fetch_sub(1, Ordering::Relaxed);
        self.metrics.tasks_running.dec();
        self.rates.lock().expect("rates lock").remove(&task.id);
        self.publish_throughput();
        task.state.send_modify(|s| {
            let snap = progress.snapshot();
            s.bytes_done = snap.bytes_done;
            s.bytes_total = snap.bytes_total;
        });
        result
    }

    /// Publishes progress until the import is done.
    async fn tick(
        self: Arc<Self>,
        task: Arc<Task>,
        progress: Arc<Progress>,
        done: Arc<Notify>,
        log: Arc<Mutex<TaskLog>>,
    ) {
        let mut rate = Rate::default();
        let mut interval = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                () = done.notified() => return,
            }
            let snap = progress.snapshot();
            let bps = rate.update(snap.bytes_done);
            task.state.send_modify(|s| {
                s.phase = Some(snap.phase);
                s.bytes_done = snap.bytes_done;
                s.bytes_total = snap.bytes_total;
                s.bytes_per_second = bps;
            });
            log.lock().expect("task log lock").progress(snap.phase, snap.bytes_done, snap.bytes_total, bps);
            self.rates.lock().expect("rates lock").insert(task.id.clone(), bps);
            self.publish_throughput();
        }
    }

    fn publish_throughput(&self) {
        let total: f64 = self.rates.lock().expect("rates lock").values().sum();
        self.metrics.throughput.set(total);
    }

    fn finish(&self, task: &Task, result: Result<ImportResult, ImportError>, took: Duration, log: &Mutex<TaskLog>) {
        let (state, failure) = match &result {
            Ok(r) => {
                self.metrics.bytes_written.inc_by(r.bytes_written);
                (State::Succeeded, None)
            }
            Err(ImportError::Cancelled) if task.interrupted.load(Ordering::SeqCst) => (
                State::Cancelled,
                Some(Failure {
                    reason: Reason::Cancelled,
                    message: "the mover is shutting down: the import was interrupted and can be tried again".into(),
                    // A rolling update or a node drain, not the caller's wish: not the end
                    // of the import, which a caller would otherwise record as terminal.
                    retryable: true,
                }),
            ),
            Err(ImportError::Cancelled) => (State::Cancelled, Some(failure(&ImportError::Cancelled))),
            Err(e) => (State::Failed, Some(failure(e))),
        };
        let reason = failure.as_ref().map_or("", |f| f.reason.as_str());
        self.metrics.record_finished(state, reason, took);
        let mut log = log.lock().expect("task log lock");
        match (&result, &failure) {
            (_, Some(f)) => log.failed(f),
            (Ok(r), None) => log.succeeded(r, took),
            (Err(_), None) => {}
        }
        drop(log);
        if let Some(f) = &failure {
            tracing::warn!(task = %task.id, reason = f.reason.as_str(), retryable = f.retryable, error = %f.message, "task failed");
        } else {
            tracing::info!(task = %task.id, seconds = took.as_secs_f64(), "task succeeded");
        }
        task.state.send_modify(|s| {
            s.state = state;
            s.result = result.ok();
            s.failure = failure;
            s.finished = Some(SystemTime::now());
        });
    }
}

fn failure(e: &ImportError) -> Failure {
    Failure { reason: e.reason(), message: one_line(e), retryable: e.is_retryable() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::upload::Chunk;

    fn upload_task(registry: &Arc<Registry>, dir: &std::path::Path) -> String {
        let target = dir.join("disk.img");
        let request = ImportRequest::new(SourceSpec::Upload(UploadFeed::waiting()), target);
        let spec = TaskSpec { id: "up".into(), request, source: "upload".into(), target: "disk.img".into(), log: None };
        registry.start_or_attach(spec).unwrap();
        "up".into()
    }

    fn attempt() -> (mpsc::Sender<Chunk>, Attempt, oneshot::Receiver<Result<ImportResult, ImportError>>) {
        let (tx, rx) = mpsc::channel(4);
        let (reply, outcome) = oneshot::channel();
        (tx, Attempt { feed: UploadFeed::new(rx, None), content_length: None, reply }, outcome)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_second_uploader_is_refused_while_one_feeds_on_but_a_retry_waits_for_a_cut_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(2, Duration::from_secs(60), Metrics::new());
        let id = upload_task(&registry, dir.path());
        let mut first = registry.upload_turn(&id).await.unwrap();
        let (tx, feed, outcome) = attempt();
        first.submit(feed).await.unwrap();
        tx.send(Chunk::Data(vec![7; 4096].into())).await.unwrap();
        assert!(matches!(registry.upload_turn(&id).await, Err(UploadRefused::Busy(_))), "two feeding at once");

        // A retry that arrives before the cut did (the first still feeds) waits for it.
        let mut retry = Box::pin(registry.upload_turn(&id));
        assert!(tokio::time::timeout(Duration::ZERO, &mut retry).await.is_err(), "the retry did not wait");
        // The first uploader's stream is over (cut) but its attempt has not ended yet.
        first.stream_over();
        assert!(tokio::time::timeout(Duration::ZERO, &mut retry).await.is_err(), "the retry did not wait");
        tx.send(Chunk::Cut("the uploader went away".into())).await.unwrap();
        drop(tx);
        assert!(outcome.await.unwrap().is_err(), "a cut attempt is a failure");
        drop(first);
        let retry = retry.await.expect("the retry gets its turn once the cut attempt ended");
        assert_eq!(retry.task().snapshot().phase, Some(Phase::AwaitingUpload));
    }
}

//! The mover's tasks: imports named by their callers, run at most N at a time, followed by
//! any number of client streams, and kept for a while after they finish.
//!
//! A task outlives the stream that started it: a client that disconnects and calls
//! `Populate` again with the same id re-attaches to the same transfer (or finds its result).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, Semaphore, watch};

use super::claims::{Access, Busy, Claim, Claims};
use super::metrics::Metrics;
use super::tasklog::TaskLog;
use crate::error::{ImportError, Reason, one_line};
use crate::import::{ContentType, ImportRequest, ImportResult};
use crate::progress::{Phase, Progress, Rate};

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
    state: watch::Sender<Snapshot>,
}

impl Task {
    pub fn snapshot(&self) -> Snapshot {
        self.state.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.state.subscribe()
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
        let (state, _) = watch::channel(Snapshot {
            state: State::Queued,
            phase: None,
            bytes_done: 0,
            bytes_total: None,
            bytes_per_second: 0.0,
            result: None,
            failure: None,
            finished: None,
        });
        let task = Arc::new(Task {
            id: spec.id.clone(),
            source: spec.source.clone(),
            target: spec.target.clone(),
            content_type: spec.request.content_type,
            created: SystemTime::now(),
            cancel: Arc::new(AtomicBool::new(false)),
            interrupted: AtomicBool::new(false),
            cancelled: Notify::new(),
            state,
        });
        tasks.insert(spec.id.clone(), task.clone());
        drop(tasks);
        let mut log = TaskLog::open(spec.log.as_deref(), &spec.id);
        log.started(&spec.source, &spec.target);
        tokio::spawn(self.clone().run(task.clone(), spec.request, claim, log));
        Ok((task, false))
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
        task.cancel.store(true, Ordering::SeqCst);
        task.cancelled.notify_one();
        Some(task)
    }

    /// Refuses new tasks, cancels the running ones and waits (up to `limit`) until they
    /// have cleaned up.
    pub async fn drain(&self, limit: Duration) {
        self.draining.store(true, Ordering::SeqCst);
        let tasks = self.list();
        for task in &tasks {
            task.interrupted.store(true, Ordering::SeqCst);
            task.cancel.store(true, Ordering::SeqCst);
            task.cancelled.notify_one();
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
        self.running.fetch_add(1, Ordering::Relaxed);
        self.metrics.tasks_running.inc();
        task.state.send_modify(|s| {
            s.state = State::Running;
            s.phase = Some(Phase::Probing);
        });
        let progress = Progress::new();
        let done = Arc::new(Notify::new());
        let ticker = tokio::spawn(self.clone().tick(task.clone(), progress.clone(), done.clone(), log.clone()));
        let rt = tokio::runtime::Handle::current();
        let cancel = task.cancel.clone();
        let progress_for_import = progress.clone();
        let result = tokio::task::spawn_blocking(move || crate::import(&request, &rt, &progress_for_import, cancel))
            .await
            .unwrap_or_else(|e| Err(ImportError::InvalidRequest(format!("the import task failed: {e}"))));
        // The import is over, its disk finished or cleaned up: the target is free.
        drop(claim);
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
        self.finish(&task, result, started.elapsed(), &log);
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

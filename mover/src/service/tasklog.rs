//! A task's human-readable log, appended to a file the caller named (`PopulateRequest.log`):
//! what the import does, in a few lines, for whoever shows them (the populator's holder pod
//! prints them, so `kubectl logs importer-…` tells the story).
//!
//! Best effort: a log that cannot be opened or written is dropped with a warning; the import
//! never fails for it. Lines name the source only as shown (no credentials, no query).

use cdi_common::human_bytes as human;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::import::ImportResult;
use crate::progress::Phase;

use super::tasks::Failure;

/// At most one progress line per this: a log, not a progress bar.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The log of one task; a no-op when there is none.
#[derive(Debug)]
pub struct TaskLog {
    file: Option<File>,
    last_progress: Option<Instant>,
    phase: Option<Phase>,
}

impl TaskLog {
    /// A log that writes nowhere.
    pub fn none() -> TaskLog {
        TaskLog { file: None, last_progress: None, phase: None }
    }

    /// Opens `path` for appending (created 0644: the holder pod's user reads it).
    pub fn open(path: Option<&Path>, task_id: &str) -> TaskLog {
        let Some(path) = path else { return TaskLog::none() };
        let file = std::fs::OpenOptions::new().create(true).append(true).mode(0o644).open(path);
        match file {
            Ok(f) => TaskLog { file: Some(f), ..TaskLog::none() },
            Err(e) => {
                tracing::warn!(task = %task_id, path = %path.display(), error = %e, "task log not written");
                TaskLog::none()
            }
        }
    }

    /// Appends one line; a failed write stops the log.
    pub fn line(&mut self, text: &str) {
        let Some(f) = &mut self.file else { return };
        let stamp = cdi_common::utc::UtcTime::now().rfc3339();
        if let Err(e) = writeln!(f, "{stamp} {text}") {
            tracing::warn!(error = %e, "task log write failed; no more lines");
            self.file = None;
        }
    }

    pub fn started(&mut self, source: &str, target: &str) {
        self.line(&format!("Importing {source} into {target}"));
    }

    /// A phase change gets a line; progress a line at most every [`PROGRESS_EVERY`].
    pub fn progress(&mut self, phase: Phase, done: u64, total: Option<u64>, bytes_per_second: f64) {
        if self.phase != Some(phase) {
            self.phase = Some(phase);
            let what = match phase {
                Phase::Probing => "Opening the source and detecting its format",
                Phase::Transferring => "Transferring data",
                Phase::Finishing => "Flushing the target to stable storage",
                Phase::AwaitingUpload => "Waiting for an upload",
                Phase::Complete | Phase::Failed => return,
            };
            self.line(what);
        }
        if phase != Phase::Transferring || self.last_progress.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
            return;
        }
        self.last_progress = Some(Instant::now());
        let rate = format!("{}/s", human(bytes_per_second as u64));
        match total.filter(|t| *t > 0) {
            Some(total) => {
                let percent = done as f64 * 100.0 / total as f64;
                self.line(&format!("Progress: {percent:.2}% ({} of {}, {rate})", human(done), human(total)))
            }
            None => self.line(&format!("Progress: {} ({rate})", human(done))),
        }
    }

    pub fn succeeded(&mut self, r: &ImportResult, took: Duration) {
        let formats = if r.formats.is_empty() { "raw".to_string() } else { r.formats.join(", ") };
        self.line(&format!("Formats detected: {formats}"));
        // Not the target's path: that is the node's, not what the pod sees.
        self.line(&format!(
            "Import Complete: virtual size {}, {} of data written in {:.1}s",
            human(r.virtual_size),
            human(r.bytes_written),
            took.as_secs_f64()
        ));
    }

    pub fn failed(&mut self, f: &Failure) {
        let then = if f.retryable { "it will be retried" } else { "not retried" };
        self.line(&format!("Import failed ({}): {}; {then}", f.reason.as_str(), f.message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Reason;

    #[test]
    fn lines_tell_the_story_and_are_throttled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("import.log");
        let mut log = TaskLog::open(Some(&path), "t");
        log.started("https://example.com/disk.img?…", "pod u volume pv");
        log.progress(Phase::Probing, 0, None, 0.0);
        log.progress(Phase::Transferring, 10, Some(100), 1.0);
        log.progress(Phase::Transferring, 20, Some(100), 1.0);
        log.failed(&Failure { reason: Reason::NotFound, message: "404".into(), retryable: false });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[0].ends_with("Importing https://example.com/disk.img?… into pod u volume pv"));
        assert!(lines[3].contains("Progress: 10.00%"), "{text}");
        assert!(lines[4].contains("Import failed (NotFound): 404; not retried"), "{text}");
        // Nowhere to write: nothing happens.
        TaskLog::open(Some(&dir.path().join("missing/x.log")), "t").line("dropped");
    }
}

//! How commands show progress and results: a bar on a terminal, JSON lines for machines.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::ValueEnum;

use cdi_mover::progress::{Phase, Rate, Snapshot};

/// How often progress is shown.
const BAR_TICK: Duration = Duration::from_millis(100);
const JSON_TICK: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressArg {
    /// A bar on a terminal, nothing otherwise.
    Auto,
    Bar,
    /// One JSON object per line on stdout, then the result.
    Json,
    None,
}

impl ProgressArg {
    /// `Auto` decided: a bar when stderr is a terminal.
    pub fn resolve(self) -> ProgressArg {
        match self {
            ProgressArg::Auto if std::io::stderr().is_terminal() => ProgressArg::Bar,
            ProgressArg::Auto => ProgressArg::None,
            other => other,
        }
    }
}

/// Shows progress from a thread of its own until stopped. `sample` returns the current
/// state; it is called from that thread.
pub struct Reporter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reporter {
    pub fn start(mode: ProgressArg, sample: impl Fn() -> Snapshot + Send + 'static) -> Reporter {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = match mode {
            ProgressArg::Bar => {
                let stop = stop.clone();
                Some(std::thread::spawn(move || bar(&sample, &stop)))
            }
            ProgressArg::Json => {
                let stop = stop.clone();
                Some(std::thread::spawn(move || json_lines(&sample, &stop)))
            }
            _ => None,
        };
        Reporter { stop, thread }
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn bar(sample: &dyn Fn() -> Snapshot, stop: &AtomicBool) {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>12} [{bar:40.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    while !stop.load(Ordering::SeqCst) {
        let s = sample();
        if let Some(total) = s.bytes_total {
            bar.set_length(total);
        }
        bar.set_position(s.bytes_done);
        bar.set_message(phase_name(s.phase));
        std::thread::sleep(BAR_TICK);
    }
    bar.finish_and_clear();
}

fn json_lines(sample: &dyn Fn() -> Snapshot, stop: &AtomicBool) {
    let mut rate = Rate::default();
    let mut out = std::io::stdout();
    while !stop.load(Ordering::SeqCst) {
        let s = sample();
        let line = serde_json::json!({
            "phase": s.phase,
            "bytes_done": s.bytes_done,
            "bytes_total": s.bytes_total,
            "bytes_per_second": rate.update(s.bytes_done).round(),
        });
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        let mut slept = Duration::ZERO;
        while slept < JSON_TICK && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
            slept += Duration::from_millis(20);
        }
    }
}

pub fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Probing => "probing",
        Phase::Transferring => "transferring",
        Phase::Finishing => "flushing",
        Phase::Complete => "done",
        Phase::Failed => "failed",
        Phase::AwaitingUpload => "awaiting upload",
    }
}

pub use cdi_common::human_bytes as human;

/// Prints a command's error the one way every command does.
pub fn error_line(message: &str) {
    eprintln!("cdi-mover: error: {message}");
}

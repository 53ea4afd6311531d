//! The command line: `cdi-mover import SOURCE TARGET [flags]`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use cdi_mover::checksum::Checksum;
use cdi_mover::copy::CopyConfig;
use cdi_mover::error::{ImportError, one_line};
use cdi_mover::format::qcow2::StreamLimits;
use cdi_mover::progress::{Phase, Progress, Rate};
use cdi_mover::source::{CaBundle, Credentials, HttpOptions, SourceOptions, SourceSpec};
use cdi_mover::target::{TargetOptions, sizing};
use cdi_mover::{ContentType, ImportRequest, ImportResult};

/// How often progress is shown.
const BAR_TICK: Duration = Duration::from_millis(100);
const JSON_TICK: Duration = Duration::from_millis(500);
/// Exit status of a failure worth retrying (EX_TEMPFAIL); other failures exit with 1.
pub const EXIT_RETRYABLE: i32 = 75;

#[derive(Debug, Parser)]
#[command(name = "cdi-mover", version, about = "The cdi-rs data mover: VM images into raw disks")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Import one image on this machine: SOURCE (a path, file://, http:// or https:// URL)
    /// into TARGET (a block device, a directory for a filesystem volume's disk.img, or a file).
    Import(ImportArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ContentTypeArg {
    Kubevirt,
    Archive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressArg {
    /// A bar on a terminal, nothing otherwise.
    Auto,
    Bar,
    /// One JSON object per line on stdout, then the result.
    Json,
    None,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The image: a path, file:///path, http://… or https://…
    pub source: String,
    /// A block device (written in place), a directory (writes disk.img inside) or a file.
    pub target: PathBuf,
    #[arg(long, value_enum, default_value = "kubevirt")]
    pub content_type: ContentTypeArg,
    /// Expected digest of the source bytes as fetched: md5|sha1|sha256|sha512:HEX.
    #[arg(long)]
    pub checksum: Option<Checksum>,
    /// Allocate the whole usable size (filesystem) or write every block (block device).
    #[arg(long)]
    pub preallocate: bool,
    /// Fraction of a filesystem volume kept free for filesystem overhead, as CDI's CDIConfig.
    #[arg(long, default_value_t = sizing::DEFAULT_OVERHEAD, env = "FILESYSTEM_OVERHEAD")]
    pub filesystem_overhead: f64,
    /// The volume's requested size in bytes (default: the target's capacity).
    #[arg(long, value_name = "BYTES")]
    pub size: Option<u64>,
    /// Extra CA certificates (PEM) trusted for HTTPS, besides the system's.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Do not verify the server's TLS certificate.
    #[arg(long)]
    pub insecure_skip_verify: bool,
    /// An extra HTTP request header, 'Name: value' (repeatable); sent to the source's origin only.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// A file with the basic-auth user name on the first line and the password on the second.
    #[arg(long, value_name = "FILE")]
    pub basic_auth_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressArg,
    #[command(flatten)]
    pub tuning: Tuning,
}

/// Knobs for memory and parallelism; the defaults suit a node agent.
#[derive(Debug, Args)]
pub struct Tuning {
    /// Copy worker threads.
    #[arg(long, default_value_t = CopyConfig::default().workers, hide_short_help = true)]
    pub workers: usize,
    /// Buffer size in bytes (largest read or write).
    #[arg(long, default_value_t = CopyConfig::default().chunk, hide_short_help = true)]
    pub chunk_size: usize,
    /// Buffers the reader may fill ahead of the writers.
    #[arg(long, default_value_t = CopyConfig::default().buffers, hide_short_help = true)]
    pub buffers: usize,
    /// Bytes of a streamed qcow2 held back while waiting for the metadata that maps them.
    #[arg(long, default_value_t = StreamLimits::default().spool_bytes, hide_short_help = true)]
    pub spool_limit: u64,
    /// Parallel HTTP connections when the server supports ranges.
    #[arg(long, default_value_t = HttpOptions::default().connections, hide_short_help = true)]
    pub connections: usize,
}

impl ImportArgs {
    fn request(&self) -> anyhow::Result<ImportRequest> {
        let source = SourceSpec::parse(&self.source)?;
        sizing::validate_overhead(self.filesystem_overhead).map_err(anyhow::Error::msg)?;
        if self.tuning.chunk_size < (64 << 10) || !self.tuning.chunk_size.is_power_of_two() {
            bail!("--chunk-size must be a power of two of at least 65536");
        }
        if self.tuning.workers == 0 || self.tuning.buffers == 0 || self.tuning.connections == 0 {
            bail!("--workers, --buffers and --connections must be at least 1");
        }
        let headers = self
            .headers
            .iter()
            .map(|h| {
                let (name, value) = h.split_once(':').with_context(|| {
                    format!("--header {:?} is not 'Name: value'", h.split(':').next().unwrap_or(""))
                })?;
                Ok((name.trim().to_string(), value.trim().to_string()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let credentials = self.basic_auth_file.as_deref().map(read_credentials).transpose()?;
        let ca = match &self.ca_file {
            Some(path) => Some(CaBundle {
                pem: std::fs::read(path).with_context(|| format!("cannot read CA file {}", path.display()))?,
                origin: path.display().to_string(),
            }),
            None => None,
        };
        let http = HttpOptions {
            ca,
            insecure_skip_verify: self.insecure_skip_verify,
            headers,
            credentials,
            connections: self.tuning.connections,
            ..HttpOptions::default()
        };
        Ok(ImportRequest {
            source,
            source_options: SourceOptions { http, cancel: None },
            target: self.target.clone(),
            content_type: match self.content_type {
                ContentTypeArg::Kubevirt => ContentType::Kubevirt,
                ContentTypeArg::Archive => ContentType::Archive,
            },
            checksum: self.checksum.clone(),
            target_options: TargetOptions {
                requested_size: self.size,
                filesystem_overhead: self.filesystem_overhead,
                preallocate: self.preallocate,
            },
            copy: CopyConfig {
                workers: self.tuning.workers,
                chunk: self.tuning.chunk_size,
                buffers: self.tuning.buffers,
            },
            stream_limits: StreamLimits { spool_bytes: self.tuning.spool_limit, ..StreamLimits::default() },
        })
    }
}

fn read_credentials(path: &std::path::Path) -> anyhow::Result<Credentials> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read basic auth file {}", path.display()))?;
    let mut lines = text.lines();
    match (lines.next(), lines.next()) {
        (Some(user), Some(password)) if !user.trim().is_empty() => Ok(Credentials {
            username: user.trim_end_matches('\r').to_string(),
            password: password.trim_end_matches('\r').to_string(),
        }),
        _ => bail!(
            "basic auth file {}: expected the user name on the first line and the password on the second",
            path.display()
        ),
    }
}

/// Runs `cdi-mover import`; returns the process exit status.
pub fn run_import(args: &ImportArgs) -> i32 {
    let request = match args.request() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cdi-mover: error: {}", one_line(e.as_ref()));
            return 2;
        }
    };
    let mode = match args.progress {
        ProgressArg::Auto if std::io::stderr().is_terminal() => ProgressArg::Bar,
        ProgressArg::Auto => ProgressArg::None,
        other => other,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cdi-mover: error: cannot start the I/O runtime: {e}");
            return 1;
        }
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let on_signal = cancel.clone();
    rt.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.store(true, Ordering::SeqCst);
        }
    });
    let progress = Progress::new();
    let reporter = Reporter::start(mode, progress.clone());
    let result = cdi_mover::import(&request, rt.handle(), &progress, cancel);
    reporter.stop();
    report(mode, &progress, &result);
    rt.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(_) => 0,
        Err(e) if e.is_retryable() => EXIT_RETRYABLE,
        Err(_) => 1,
    }
}

fn report(mode: ProgressArg, progress: &Progress, result: &Result<ImportResult, ImportError>) {
    let seconds = progress.elapsed().as_secs_f64();
    match result {
        Ok(r) => {
            if mode == ProgressArg::Json {
                let mut line = serde_json::to_value(r).expect("result serialises");
                line["phase"] = "complete".into();
                line["seconds"] = seconds.into();
                println!("{line}");
            } else if mode == ProgressArg::Bar {
                eprintln!(
                    "imported {} ({}) into {}: {} of data in {:.1}s",
                    human(r.virtual_size),
                    r.formats.join(" → "),
                    r.target.display(),
                    human(r.bytes_written),
                    seconds
                );
            }
        }
        Err(e) => {
            if mode == ProgressArg::Json {
                let line = serde_json::json!({
                    "phase": "failed",
                    "error": one_line(e),
                    "reason": e.reason().as_str(),
                    "retryable": e.is_retryable(),
                });
                println!("{line}");
            }
            eprintln!("cdi-mover: error: {}", one_line(e));
        }
    }
}

/// Shows progress from a thread of its own until stopped.
struct Reporter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reporter {
    fn start(mode: ProgressArg, progress: Arc<Progress>) -> Reporter {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = match mode {
            ProgressArg::Bar => {
                let stop = stop.clone();
                Some(std::thread::spawn(move || bar(&progress, &stop)))
            }
            ProgressArg::Json => {
                let stop = stop.clone();
                Some(std::thread::spawn(move || json_lines(&progress, &stop)))
            }
            _ => None,
        };
        Reporter { stop, thread }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn bar(progress: &Progress, stop: &AtomicBool) {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>12} [{bar:40.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    while !stop.load(Ordering::SeqCst) {
        let s = progress.snapshot();
        if let Some(total) = s.bytes_total {
            bar.set_length(total);
        }
        bar.set_position(s.bytes_done);
        bar.set_message(phase_name(s.phase));
        std::thread::sleep(BAR_TICK);
    }
    bar.finish_and_clear();
}

fn json_lines(progress: &Progress, stop: &AtomicBool) {
    let mut rate = Rate::default();
    let mut out = std::io::stdout();
    while !stop.load(Ordering::SeqCst) {
        let s = progress.snapshot();
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

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Probing => "probing",
        Phase::Transferring => "transferring",
        Phase::Finishing => "flushing",
        Phase::Complete => "done",
        Phase::Failed => "failed",
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

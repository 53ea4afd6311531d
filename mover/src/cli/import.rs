//! `cdi-mover import SOURCE TARGET [flags]`, and the transfer flags `client populate` shares.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use cdi_mover::checksum::Checksum;
use cdi_mover::copy::CopyConfig;
use cdi_mover::disk::{TargetOptions, sizing};
use cdi_mover::error::{ImportError, one_line};
use cdi_mover::format::qcow2::StreamLimits;
use cdi_mover::progress::Progress;
use cdi_mover::source::{
    CaBundle, Credentials, GcsOptions, HttpOptions, Platform, RegistryOptions, S3Keys, SourceOptions, SourceSpec,
};
use cdi_mover::{ContentType, ImportRequest, ImportResult};

use super::EXIT_RETRYABLE;
use super::output::{ProgressArg, Reporter, error_line, human};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ContentTypeArg {
    Kubevirt,
    Archive,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub transfer: TransferArgs,
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressArg,
    #[command(flatten)]
    pub tuning: Tuning,
}

/// What to import from where, and how: shared by `import` and `client populate`.
#[derive(Debug, Args)]
pub struct TransferArgs {
    /// The image: a path, file:///path, http://… or https://…; an object, s3://BUCKET/KEY or
    /// gs://BUCKET/OBJECT; a containerDisk image, docker://HOST[:PORT]/REPO[:TAG|@DIGEST] or
    /// oci-archive:///PATH (an OCI archive tar); or blank: for an empty disk of the target's
    /// usable size (a file target needs --size). `client populate` also takes upload: (a
    /// task that waits for `client upload`).
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
    /// Extra CA certificates (PEM, every one in the file) trusted for HTTPS and registries,
    /// besides the system's.
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
    /// Registry credentials (docker://) or S3 keys: a file with the user name / access key id
    /// on the first line and the password / secret key on the second, or one line
    /// USER:PASSWORD. Never pass a password as an argument. Without it: anonymous.
    #[arg(long, value_name = "FILE")]
    pub creds_file: Option<PathBuf>,
    /// The platform picked from a multi-arch image (docker://, oci-archive://): ARCH or
    /// OS/ARCH[/VARIANT], e.g. arm64 or linux/arm64 (default: this machine's).
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,
    /// The registry is insecure: its TLS certificate is not verified, and plain HTTP is used
    /// when it does not speak TLS.
    #[arg(long)]
    pub insecure_registry: bool,
    /// The http(s) SOURCE is an S3 object, path style: http(s)://ENDPOINT/BUCKET/KEY.
    #[arg(long)]
    pub s3: bool,
    /// The http(s) SOURCE is a GCS object: https://storage.cloud.google.com/BUCKET/OBJECT.
    #[arg(long, conflicts_with = "s3")]
    pub gcs: bool,
    /// A GCS service-account key file (credentials.json). Without it, GCS is anonymous.
    #[arg(long, value_name = "FILE")]
    pub gcs_credentials: Option<PathBuf>,
    /// The GCS API's base URL (default: $STORAGE_EMULATOR_HOST, else Google's).
    #[arg(long, value_name = "URL")]
    pub gcs_endpoint: Option<String>,
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

impl TransferArgs {
    /// The HTTP options: CA file read, headers split, credentials loaded.
    pub fn http_options(&self) -> anyhow::Result<HttpOptions> {
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
        let ca = self.ca()?;
        Ok(HttpOptions {
            ca,
            insecure_skip_verify: self.insecure_skip_verify,
            headers,
            credentials,
            ..HttpOptions::default()
        })
    }

    /// The registry options: credentials and CA loaded, platform parsed.
    pub fn registry_options(&self) -> anyhow::Result<RegistryOptions> {
        let credentials = self.creds_file.as_deref().map(read_registry_credentials).transpose()?;
        let platform = self.platform.as_deref().map(str::parse::<Platform>).transpose()?;
        // The CLI's proxies are its environment's (HTTP_PROXY, HTTPS_PROXY, NO_PROXY).
        Ok(RegistryOptions { credentials, ca: self.ca()?, insecure: self.insecure_registry, platform, proxy: None })
    }

    fn ca(&self) -> anyhow::Result<Option<CaBundle>> {
        Ok(match &self.ca_file {
            Some(path) => Some(CaBundle {
                pem: std::fs::read(path).with_context(|| format!("cannot read CA file {}", path.display()))?,
                origin: path.display().to_string(),
            }),
            None => None,
        })
    }

    /// The source named by SOURCE and --s3 / --gcs.
    pub fn source_spec(&self) -> anyhow::Result<SourceSpec> {
        let spec = if self.s3 {
            SourceSpec::s3(&self.source)?
        } else if self.gcs {
            SourceSpec::gcs(&self.source)?
        } else {
            SourceSpec::parse(&self.source)?
        };
        let s3 = matches!(spec, SourceSpec::S3(_));
        let gcs = matches!(spec, SourceSpec::Gcs(_));
        // --creds-file is shared with the registry source: refused only where it means nothing.
        if self.creds_file.is_some() && matches!(spec, SourceSpec::Http(_) | SourceSpec::File(_) | SourceSpec::Blank) {
            bail!(
                "--creds-file holds S3 keys; for an http(s) source use --basic-auth-file (or --s3 for an S3 endpoint)"
            );
        }
        if (self.gcs_credentials.is_some() || self.gcs_endpoint.is_some()) && !gcs {
            bail!("--gcs-credentials and --gcs-endpoint apply to gs:// sources (or --gcs)");
        }
        if (s3 || gcs) && (self.basic_auth_file.is_some() || !self.headers.is_empty()) {
            bail!(
                "--basic-auth-file and --header apply to http(s) sources; object stores authorise their own requests"
            );
        }
        Ok(spec)
    }

    /// S3 keys from --creds-file.
    pub fn s3_keys(&self) -> anyhow::Result<Option<S3Keys>> {
        let Some(path) = &self.creds_file else { return Ok(None) };
        let c = read_registry_credentials(path)?;
        Ok(Some(S3Keys { access_key_id: c.username, secret_key: c.password }))
    }

    /// GCS options from --gcs-credentials and --gcs-endpoint.
    pub fn gcs_options(&self) -> anyhow::Result<GcsOptions> {
        let credentials_json = match &self.gcs_credentials {
            Some(path) => {
                Some(std::fs::read(path).with_context(|| format!("cannot read GCS credentials {}", path.display()))?)
            }
            None => None,
        };
        Ok(GcsOptions { credentials_json, endpoint: self.gcs_endpoint.clone() })
    }

    pub fn content_type(&self) -> ContentType {
        match self.content_type {
            ContentTypeArg::Kubevirt => ContentType::Kubevirt,
            ContentTypeArg::Archive => ContentType::Archive,
        }
    }

    pub fn target_options(&self) -> anyhow::Result<TargetOptions> {
        sizing::validate_overhead(self.filesystem_overhead).map_err(anyhow::Error::msg)?;
        Ok(TargetOptions {
            requested_size: self.size,
            filesystem_overhead: self.filesystem_overhead,
            preallocate: self.preallocate,
        })
    }
}

impl ImportArgs {
    fn request(&self) -> anyhow::Result<ImportRequest> {
        let t = &self.transfer;
        let source = t.source_spec()?;
        if self.tuning.chunk_size < (64 << 10) || !self.tuning.chunk_size.is_power_of_two() {
            bail!("--chunk-size must be a power of two of at least 65536");
        }
        if self.tuning.workers == 0 || self.tuning.buffers == 0 || self.tuning.connections == 0 {
            bail!("--workers, --buffers and --connections must be at least 1");
        }
        let http = HttpOptions { connections: self.tuning.connections, ..t.http_options()? };
        Ok(ImportRequest {
            source,
            source_options: SourceOptions {
                http,
                registry: t.registry_options()?,
                s3_keys: t.s3_keys()?,
                gcs: t.gcs_options()?,
                cancel: None,
            },
            target: t.target.clone(),
            content_type: t.content_type(),
            checksum: t.checksum.clone(),
            target_options: t.target_options()?,
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

/// `USER:PASSWORD` on one line, or the user name and the password on two.
fn read_registry_credentials(path: &std::path::Path) -> anyhow::Result<Credentials> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read credentials file {}", path.display()))?;
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.is_empty()).collect();
    match lines.as_slice() {
        [user, password] if !user.trim().is_empty() => {
            Ok(Credentials { username: user.to_string(), password: password.to_string() })
        }
        [one] => match one.split_once(':') {
            Some((user, password)) if !user.is_empty() => {
                Ok(Credentials { username: user.to_string(), password: password.to_string() })
            }
            _ => bail!("credentials file {}: expected USER:PASSWORD on one line", path.display()),
        },
        _ => bail!(
            "credentials file {}: expected USER:PASSWORD on one line, or the user name and the password on two",
            path.display()
        ),
    }
}

/// Runs `cdi-mover import`; returns the process exit status.
pub fn run(args: &ImportArgs) -> i32 {
    let request = match args.request() {
        Ok(r) => r,
        Err(e) => {
            error_line(&one_line(e.as_ref()));
            return 2;
        }
    };
    let mode = args.progress.resolve();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error_line(&format!("cannot start the I/O runtime: {e}"));
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
    let sampled = progress.clone();
    let reporter = Reporter::start(mode, move || sampled.snapshot());
    let result = cdi_mover::import(&request, rt.handle(), &progress, cancel);
    reporter.stop();
    report(mode, progress.elapsed().as_secs_f64(), &result);
    rt.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(_) => 0,
        Err(e) if e.is_retryable() => EXIT_RETRYABLE,
        Err(_) => 1,
    }
}

fn report(mode: ProgressArg, seconds: f64, result: &Result<ImportResult, ImportError>) {
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
            error_line(&one_line(e));
        }
    }
}

//! Readiness and liveness probes of a running container (`httpGet`, `tcpSocket`, `exec`),
//! each in its own task: readiness decides the container's `ready`, a failed liveness probe
//! has the kubelet restart the container.
//!
//! Probes run on a runtime of their own (one thread), as the kubelet is a process of its
//! own: in this single-process cluster a busy API server would otherwise delay the probes'
//! own timers and fail healthy containers' liveness probes, restarting them.
//!
//! One deliberate difference from the kubelet: until a readiness probe first succeeds it is
//! retried every second instead of every `periodSeconds`, so a pod is Ready about as soon as
//! it serves, not up to a period later. Later probes keep the period.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;

/// Where every probe runs (see the module comment). Built once, never dropped.
static PROBES: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("kubelet-probes")
        .enable_all()
        .build()
        .expect("a runtime for the kubelet's probes")
});

/// The probes of one container run; dropping it stops them.
#[derive(Debug)]
pub struct Prober {
    ready: Arc<AtomicBool>,
    unhealthy: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Prober {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Prober {
    /// Starts the probes of container `c` (its pod at `pod_ip`); `exec` probes run with `env`
    /// and the container's paths rewritten by `rewrite`.
    pub fn start(c: &Value, pod_ip: &str, env: Vec<(String, String)>, rewrite: impl Fn(&str) -> String) -> Prober {
        let ready = Arc::new(AtomicBool::new(false));
        let unhealthy = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        match Probe::parse(&c["readinessProbe"], c, pod_ip, &env, &rewrite) {
            Some(p) => {
                let flag = ready.clone();
                tasks.push(PROBES.spawn(async move { p.run(Kind::Readiness, flag).await }));
            }
            None => ready.store(true, Ordering::SeqCst),
        }
        if let Some(p) = Probe::parse(&c["livenessProbe"], c, pod_ip, &env, &rewrite) {
            let flag = unhealthy.clone();
            tasks.push(PROBES.spawn(async move { p.run(Kind::Liveness, flag).await }));
        }
        Prober { ready, unhealthy, tasks }
    }

    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The liveness probe failed `failureThreshold` times in a row.
    pub fn unhealthy(&self) -> bool {
        self.unhealthy.load(Ordering::SeqCst)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Readiness,
    Liveness,
}

#[derive(Debug)]
enum Action {
    Http { host: String, port: u16, path: String },
    Tcp { host: String, port: u16 },
    Exec { argv: Vec<String>, env: Vec<(String, String)> },
}

#[derive(Debug)]
struct Probe {
    action: Action,
    initial_delay: Duration,
    period: Duration,
    timeout: Duration,
    success_threshold: u32,
    failure_threshold: u32,
}

impl Probe {
    fn parse(
        spec: &Value,
        container: &Value,
        pod_ip: &str,
        env: &[(String, String)],
        rewrite: &impl Fn(&str) -> String,
    ) -> Option<Probe> {
        if !spec.is_object() {
            return None;
        }
        // A named port is looked up among the container's ports.
        let port = |v: &Value| -> Option<u16> {
            match v {
                Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
                Value::String(name) => container["ports"]
                    .as_array()?
                    .iter()
                    .find(|p| p["name"] == name.as_str())
                    .and_then(|p| p["containerPort"].as_u64())
                    .and_then(|n| u16::try_from(n).ok())
                    .or_else(|| name.parse().ok()),
                _ => None,
            }
        };
        let host = |v: &Value| v.as_str().filter(|h| !h.is_empty()).unwrap_or(pod_ip).to_string();
        let action = if let Some(h) = spec.get("httpGet") {
            // HTTPS endpoints are checked for a listening port only (no TLS client here).
            if h["scheme"] == "HTTPS" {
                Action::Tcp { host: host(&h["host"]), port: port(&h["port"])? }
            } else {
                let path = h["path"].as_str().unwrap_or("/").to_string();
                Action::Http { host: host(&h["host"]), port: port(&h["port"])?, path }
            }
        } else if let Some(t) = spec.get("tcpSocket") {
            Action::Tcp { host: host(&t["host"]), port: port(&t["port"])? }
        } else if let Some(cmd) = spec["exec"]["command"].as_array() {
            let argv: Vec<String> = cmd.iter().filter_map(Value::as_str).map(rewrite).collect();
            if argv.is_empty() {
                return None;
            }
            Action::Exec { argv, env: env.to_vec() }
        } else {
            return None;
        };
        let secs = |k: &str, default: u64| Duration::from_secs(spec[k].as_u64().unwrap_or(default));
        Some(Probe {
            action,
            initial_delay: secs("initialDelaySeconds", 0),
            period: secs("periodSeconds", 10).max(Duration::from_secs(1)),
            timeout: secs("timeoutSeconds", 1).max(Duration::from_secs(1)),
            success_threshold: spec["successThreshold"].as_u64().unwrap_or(1).max(1) as u32,
            failure_threshold: spec["failureThreshold"].as_u64().unwrap_or(3).max(1) as u32,
        })
    }

    /// Probes until dropped: readiness sets `flag` to the verdict, liveness sets it once the
    /// container is to be restarted (and stops).
    async fn run(self, kind: Kind, flag: Arc<AtomicBool>) {
        tokio::time::sleep(self.initial_delay).await;
        let (mut successes, mut failures) = (0u32, 0u32);
        let mut ever_ready = false;
        loop {
            if tokio::time::timeout(self.timeout, self.once()).await.unwrap_or(false) {
                successes += 1;
                failures = 0;
            } else {
                failures += 1;
                successes = 0;
            }
            match kind {
                Kind::Readiness if successes >= self.success_threshold => {
                    ever_ready = true;
                    flag.store(true, Ordering::SeqCst);
                }
                Kind::Readiness if failures >= self.failure_threshold => flag.store(false, Ordering::SeqCst),
                Kind::Liveness if failures >= self.failure_threshold => {
                    flag.store(true, Ordering::SeqCst);
                    return;
                }
                _ => {}
            }
            let wait = if kind == Kind::Readiness && !ever_ready {
                self.period.min(Duration::from_secs(1))
            } else {
                self.period
            };
            tokio::time::sleep(wait).await;
        }
    }

    async fn once(&self) -> bool {
        match &self.action {
            Action::Tcp { host, port } => tokio::net::TcpStream::connect((host.as_str(), *port)).await.is_ok(),
            Action::Http { host, port, path } => http_ok(host, *port, path).await,
            Action::Exec { argv, env } => tokio::process::Command::new(&argv[0])
                .args(&argv[1..])
                .envs(env.iter().cloned())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .is_ok_and(|s| s.success()),
        }
    }
}

/// A GET answered with 2xx or 3xx, the kubelet's rule for success.
async fn http_ok(host: &str, port: u16, path: &str) -> bool {
    use http_body_util::Empty;
    use hyper_util::rt::TokioIo;
    let Ok(stream) = tokio::net::TcpStream::connect((host, port)).await else { return false };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
        return false;
    };
    let driver = tokio::spawn(conn);
    let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, "kube-probe/1.33")
        .body(Empty::<bytes::Bytes>::new());
    let ok = match request {
        Ok(r) => sender.send_request(r).await.is_ok_and(|resp| resp.status().as_u16() < 400),
        Err(_) => false,
    };
    driver.abort();
    ok
}

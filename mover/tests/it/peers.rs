//! Real peers that the mover's tests and the end-to-end tests both start: Debian packages
//! installed on demand, and nginx. Std only: `e2e/tests/it/main.rs` includes this file by
//! path, so that both suites run one nginx set-up.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Installs a Debian package if `binary` is missing, serialised across test processes.
pub fn ensure_tool(binary: &str, package: &str) {
    if which(binary) {
        return;
    }
    let script = format!(
        "command -v {binary} >/dev/null || {{ [ -f /tmp/cdi-rs-apt-updated ] || {{ apt-get update -qq && touch /tmp/cdi-rs-apt-updated; }}; \
         DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {package} >/dev/null; }}"
    );
    let status = Command::new("flock").args(["/tmp/cdi-rs-apt.lock", "sh", "-c", &script]).status().expect("run flock");
    assert!(status.success() && which(binary), "could not install {package} (needed for {binary})");
}

/// Installs a PyPI package if `import_check` (Python modules, comma-separated) fails,
/// serialised across test processes.
pub fn ensure_python(import_check: &str, package: &str) {
    let imports = |modules: &str| {
        Command::new("python3")
            .args(["-c", &format!("import {modules}")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if imports(import_check) {
        return;
    }
    let script = format!(
        "python3 -c 'import {import_check}' 2>/dev/null || \
         python3 -m pip install -q --disable-pip-version-check '{package}' >/dev/null 2>&1"
    );
    let status = Command::new("flock").args(["/tmp/cdi-rs-pip.lock", "sh", "-c", &script]).status().expect("run flock");
    assert!(status.success() && imports(import_check), "could not install {package} from PyPI");
}

/// Waits until `child` accepts TCP connections on 127.0.0.1:`port`; false if it exited
/// first (port taken, bad configuration) or `timeout` passed.
pub fn wait_listening(child: &mut Child, port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Starts a server on a free loopback port and waits until it listens: `command(port)` makes
/// its command line (writing whatever configuration it needs); a port taken meanwhile means
/// another try on another port.
pub fn spawn_listening(what: &str, mut command: impl FnMut(u16) -> Command) -> (u16, Child) {
    for attempt in 0..5 {
        let port = free_port();
        let mut cmd = command(port);
        let mut child =
            cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap_or_else(|e| panic!("start {what}: {e}"));
        if wait_listening(&mut child, port, Duration::from_secs(10)) {
            return (port, child);
        }
        let _ = child.kill();
        let _ = child.wait();
        eprintln!("{what} attempt {attempt} on port {port} failed to come up; retrying");
    }
    panic!("{what} did not start");
}

pub fn which(binary: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A free TCP port on 127.0.0.1 (the listener is closed before use; nginx retries).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An nginx serving `root` on a loopback port, with extra `server` directives.
pub struct Nginx {
    pub port: u16,
    pub prefix: PathBuf,
    child: Child,
}

impl Nginx {
    /// `server_extra` goes inside the `server` block (locations, ssl settings...).
    pub fn start(dir: &Path, root: &Path, server_extra: &str, listen_extra: &str) -> Nginx {
        ensure_tool("nginx", "nginx-light");
        let prefix_of = |port: u16| dir.join(format!("nginx-{port}"));
        let (port, child) = spawn_listening("nginx", |port| {
            let prefix = prefix_of(port);
            std::fs::create_dir_all(prefix.join("logs")).unwrap();
            let conf = format!(
                r#"daemon off;
master_process off;
worker_processes 1;
error_log {p}/logs/error.log warn;
pid {p}/nginx.pid;
events {{ worker_connections 64; }}
http {{
  access_log {p}/logs/access.log combined;
  log_format detail '$request "$http_range" $status $body_bytes_sent "$http_authorization" "$http_x_extra"';
  client_body_temp_path {p}/body; proxy_temp_path {p}/proxy; fastcgi_temp_path {p}/fcgi;
  uwsgi_temp_path {p}/uwsgi; scgi_temp_path {p}/scgi;
  types {{ application/octet-stream img qcow2 gz; }}
  server {{
    listen 127.0.0.1:{port} {listen_extra};
    root {root};
    access_log {p}/logs/detail.log detail;
    {server_extra}
  }}
}}
"#,
                p = prefix.display(),
                root = root.display(),
            );
            let conf_path = prefix.join("nginx.conf");
            std::fs::write(&conf_path, conf).unwrap();
            let mut nginx = Command::new("nginx");
            nginx.arg("-p").arg(&prefix).arg("-c").arg(&conf_path);
            nginx
        });
        Nginx { port, prefix: prefix_of(port), child }
    }

    pub fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://127.0.0.1:{}/{path}", self.port)
    }

    /// The detailed access log: request, Range header, status, body bytes, Authorization.
    pub fn detail_log(&self) -> String {
        std::fs::read_to_string(self.prefix.join("logs/detail.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

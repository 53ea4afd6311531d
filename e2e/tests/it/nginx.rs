//! A real nginx (Debian's `nginx-light`, installed when missing) serving a directory on a
//! loopback port, for scenarios that need what only a real web server shows: basic auth.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Nginx {
    pub port: u16,
    prefix: PathBuf,
    child: Child,
}

/// Installs a Debian package if `binary` is missing, serialised across test processes.
fn ensure_tool(binary: &str, package: &str) {
    let have = || Command::new("sh").args(["-c", &format!("command -v {binary}")]).stdout(Stdio::null()).status();
    if have().is_ok_and(|s| s.success()) {
        return;
    }
    let script = format!(
        "command -v {binary} >/dev/null || {{ [ -f /tmp/cdi-rs-apt-updated ] || {{ apt-get update -qq && touch /tmp/cdi-rs-apt-updated; }}; \
         DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {package} >/dev/null; }}"
    );
    let status = Command::new("flock").args(["/tmp/cdi-rs-apt.lock", "sh", "-c", &script]).status().expect("run flock");
    assert!(status.success() && have().is_ok_and(|s| s.success()), "could not install {package}");
}

impl Nginx {
    /// `server_extra` goes inside the `server` block.
    pub fn start(dir: &Path, root: &Path, server_extra: &str) -> Nginx {
        ensure_tool("nginx", "nginx-light");
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let prefix = dir.join(format!("nginx-{port}"));
            std::fs::create_dir_all(prefix.join("logs")).unwrap();
            let conf = format!(
                r#"daemon off;
master_process off;
worker_processes 1;
error_log {p}/logs/error.log warn;
pid {p}/nginx.pid;
events {{ worker_connections 64; }}
http {{
  log_format detail '$request $status "$http_authorization"';
  client_body_temp_path {p}/body; proxy_temp_path {p}/proxy; fastcgi_temp_path {p}/fcgi;
  uwsgi_temp_path {p}/uwsgi; scgi_temp_path {p}/scgi;
  server {{
    listen 127.0.0.1:{port};
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
            let child = Command::new("nginx")
                .arg("-p")
                .arg(&prefix)
                .arg("-c")
                .arg(&conf_path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start nginx");
            let mut n = Nginx { port, prefix, child };
            // Up once it accepts; gone if the port was taken meanwhile (then another port).
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && n.child.try_wait().unwrap().is_none() {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return n;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = n.child.kill();
            let _ = n.child.wait();
        }
        panic!("nginx did not start");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// One line per request: request line, status, the `Authorization` header received.
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

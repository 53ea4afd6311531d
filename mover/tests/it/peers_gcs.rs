//! A GCS emulator for tests: PyPI's `gcp-storage-emulator` (installed on demand) on a
//! loopback port, storing under the test's directory; objects uploaded through its JSON
//! API. Std only: the e2e suite includes this file by path, next to `peers.rs`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::peers::{ensure_python, free_port};

/// Installs the emulator if missing, serialised across test processes.
pub fn ensure_gcs_emulator() {
    ensure_python("gcp_storage_emulator", "gcp-storage-emulator");
}

/// A GCS emulator on 127.0.0.1. It serves the JSON API (metadata, `alt=media` downloads
/// with `Range`) and does not check tokens.
pub struct GcsEmulator {
    pub port: u16,
    child: Child,
}

impl GcsEmulator {
    pub fn start(dir: &Path) -> GcsEmulator {
        ensure_gcs_emulator();
        for attempt in 0..5 {
            let port = free_port();
            let data = dir.join(format!("gcs-{port}"));
            std::fs::create_dir_all(&data).unwrap();
            let log = std::fs::File::create(dir.join(format!("gcs-{port}.log"))).unwrap();
            let child = Command::new("python3")
                .args(["-m", "gcp_storage_emulator", "-d"])
                .arg(&data)
                .args(["start", "--host", "127.0.0.1", "--port", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start gcp-storage-emulator");
            let mut g = GcsEmulator { port, child };
            if g.wait_ready() {
                return g;
            }
            let _ = g.child.kill();
            let _ = g.child.wait();
            eprintln!("GCS emulator attempt {attempt} on port {port} failed to come up; retrying");
        }
        panic!("the GCS emulator did not start");
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            if self.request("GET", "/", "text/plain", &[]).is_some_and(|(status, _)| status == 200) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// `http://127.0.0.1:PORT`: the API base URL (what `STORAGE_EMULATOR_HOST` may hold).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates `bucket` if needed and uploads `file` as `object`.
    pub fn put_object(&self, bucket: &str, object: &str, file: &Path) {
        let body = format!("{{\"name\":\"{bucket}\"}}");
        let (status, _) = self
            .request("POST", "/storage/v1/b?project=test", "application/json", body.as_bytes())
            .expect("create bucket");
        assert!(status == 200 || status == 409, "creating bucket {bucket}: HTTP {status}");
        let data = std::fs::read(file).unwrap();
        let path = format!("/upload/storage/v1/b/{bucket}/o?uploadType=media&name={}", encode(object));
        let (status, reply) = self.request("POST", &path, "application/octet-stream", &data).expect("upload");
        assert_eq!(status, 200, "uploading {object}: {}", String::from_utf8_lossy(&reply));
    }

    /// One HTTP/1.0 request; `(status, body)`, or None when the server is not up.
    fn request(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> Option<(u16, Vec<u8>)> {
        let mut conn = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
        let head = format!(
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nContent-Type: {content_type}\r\n\
             Content-Length: {}\r\n\r\n",
            self.port,
            body.len()
        );
        conn.write_all(head.as_bytes()).ok()?;
        conn.write_all(body).ok()?;
        let mut reply = Vec::new();
        conn.read_to_end(&mut reply).ok()?;
        let text = String::from_utf8_lossy(&reply);
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let at = reply.windows(4).position(|w| w == b"\r\n\r\n").map_or(reply.len(), |i| i + 4);
        Some((status, reply[at..].to_vec()))
    }
}

/// Percent-encodes an object name for a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl Drop for GcsEmulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! tinyproxy, the forward proxy of the import proxy's tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::peers::{ensure_tool, free_port, wait_listening};

/// A tinyproxy forward proxy on a loopback port: plain requests and CONNECT tunnels (to
/// `connect_port` only, besides its defaults), each logged.
pub struct Tinyproxy {
    pub port: u16,
    log: PathBuf,
    child: Child,
}

impl Tinyproxy {
    pub fn start(dir: &Path, connect_port: u16) -> Tinyproxy {
        ensure_tool("tinyproxy", "tinyproxy");
        for attempt in 0..5 {
            let port = free_port();
            let log = dir.join(format!("tinyproxy-{port}.log"));
            let conf = dir.join(format!("tinyproxy-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 32\nAllow 127.0.0.1\n\
                     LogLevel Connect\nLogFile \"{}\"\nConnectPort {connect_port}\n",
                    log.display()
                ),
            )
            .unwrap();
            let child = Command::new("tinyproxy")
                .arg("-d")
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start tinyproxy");
            let mut t = Tinyproxy { port, log, child };
            if wait_listening(&mut t.child, port, Duration::from_secs(10)) {
                return t;
            }
            eprintln!("tinyproxy attempt {attempt} on port {port} failed to come up; retrying");
        }
        panic!("tinyproxy did not start");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

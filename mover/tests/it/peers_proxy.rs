//! tinyproxy, the forward proxy of the import proxy's tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use crate::peers::{ensure_tool, spawn_listening};

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
        let log_of = |port: u16| dir.join(format!("tinyproxy-{port}.log"));
        let (port, child) = spawn_listening("tinyproxy", |port| {
            let conf = dir.join(format!("tinyproxy-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 32\nAllow 127.0.0.1\n\
                     LogLevel Connect\nLogFile \"{}\"\nConnectPort {connect_port}\n",
                    log_of(port).display()
                ),
            )
            .unwrap();
            let mut tinyproxy = Command::new("tinyproxy");
            tinyproxy.arg("-d").arg("-c").arg(&conf);
            tinyproxy
        });
        Tinyproxy { port, log: log_of(port), child }
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

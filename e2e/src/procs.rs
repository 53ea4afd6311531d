//! The processes the mini-cluster's kubelets started, as /proc shows them: what the
//! benchmarks and the memory checks of the end-to-end tests read.

use std::path::Path;

use anyhow::Context as _;

/// A `kB` line of /proc/PID/status, in KiB.
pub fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with(key)).with_context(|| format!("no {key} for {pid}"))?;
    line[key.len()..].trim().trim_end_matches("kB").trim().parse().context("parsing /proc status")
}

/// The parent of `pid`, from /proc/PID/stat (the field after the command's closing paren).
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `pid` descends from `ancestor`.
fn descends_from(mut pid: u32, ancestor: u32) -> bool {
    // Bounded: a chain of parents is short, and a pid reused mid-walk must not loop.
    for _ in 0..64 {
        match parent(pid) {
            Some(p) if p == ancestor => return true,
            Some(p) if p > 1 => pid = p,
            _ => return false,
        }
    }
    false
}

/// Peak resident memory (VmHWM) of the upload proxies and node movers.
#[derive(Debug, Default, Clone, Copy)]
pub struct Peaks {
    pub proxy_kib: u64,
    pub mover_kib: u64,
}

impl Peaks {
    /// Reads VmHWM (it only grows) of every upload proxy and node mover process; with
    /// `under`, only of those descending from that process (one test's cluster among many).
    pub fn sample(&mut self, under: Option<u32>) {
        let Ok(entries) = std::fs::read_dir("/proc") else { return };
        for e in entries.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
            let args: Vec<String> = cmd.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            let bin = args.first().and_then(|a| Path::new(a).file_name()).map(|n| n.to_string_lossy().into_owned());
            let second = |want: &str| args.get(1).is_some_and(|a| a == want);
            let slot = match bin.as_deref() {
                Some("cdi-populator") if second("upload-proxy") => &mut self.proxy_kib,
                Some("cdi-mover") if second("serve") => &mut self.mover_kib,
                _ => continue,
            };
            if under.is_some_and(|a| !descends_from(pid, a)) {
                continue;
            }
            *slot = (*slot).max(status_kib(pid, "VmHWM:").unwrap_or(0));
        }
    }
}

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

/// The two cdi-rs processes an upload crosses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    UploadProxy,
    NodeMover,
}

/// The upload proxies and node movers running now, with `under` only those descending from
/// that process (one test's cluster among many).
fn find(under: Option<u32>) -> Vec<(Role, u32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let args: Vec<String> = cmd.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let bin = args.first().and_then(|a| Path::new(a).file_name()).map(|n| n.to_string_lossy().into_owned());
        let second = |want: &str| args.get(1).is_some_and(|a| a == want);
        let role = match bin.as_deref() {
            Some("cdi-populator") if second("upload-proxy") => Role::UploadProxy,
            Some("cdi-mover") if second("serve") => Role::NodeMover,
            _ => continue,
        };
        if under.is_none_or(|a| descends_from(pid, a)) {
            found.push((role, pid));
        }
    }
    found
}

/// CPU time (user + system) `pid` has used so far, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime: fields 14 and 15 of stat, 12 and 13 after the command.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / USER_HZ)
}

/// Clock ticks per second in /proc: fixed at 100 by Linux's user-space ABI.
const USER_HZ: f64 = 100.0;

/// CPU seconds used so far by all upload proxies and all node movers.
#[derive(Debug, Default, Clone, Copy)]
pub struct RoleSeconds {
    pub proxy: f64,
    pub mover: f64,
}

impl RoleSeconds {
    pub fn now() -> RoleSeconds {
        let mut s = RoleSeconds::default();
        for (role, pid) in find(None) {
            let slot = match role {
                Role::UploadProxy => &mut s.proxy,
                Role::NodeMover => &mut s.mover,
            };
            *slot += cpu_seconds(pid).unwrap_or(0.0);
        }
        s
    }
}

/// The machine's CPU time so far, from /proc/stat: (busy, all), in clock ticks.
pub fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let all: u64 = v.iter().sum();
    // idle and iowait are the fourth and fifth.
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (all - idle, all)
}

/// Peak resident memory (VmHWM) of the upload proxies and node movers.
#[derive(Debug, Default, Clone, Copy)]
pub struct Peaks {
    pub proxy_kib: u64,
    pub mover_kib: u64,
}

impl Peaks {
    /// Reads VmHWM (it only grows) of every upload proxy and node mover process; with
    /// `under`, only of those descending from that process.
    pub fn sample(&mut self, under: Option<u32>) {
        for (role, pid) in find(under) {
            let slot = match role {
                Role::UploadProxy => &mut self.proxy_kib,
                Role::NodeMover => &mut self.mover_kib,
            };
            *slot = (*slot).max(status_kib(pid, "VmHWM:").unwrap_or(0));
        }
    }
}

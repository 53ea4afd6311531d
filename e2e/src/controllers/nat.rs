//! kube-proxy's way of reaching a Service: the kernel rewrites the destination of each
//! new connection (DNAT, here with nftables), so no process relays the bytes.
//!
//! One table per cluster, named after its loopback address block and matching only that
//! block's addresses, so clusters running side by side never see each other's rules. The
//! table is replaced whole in one transaction on each change and deleted when the proxy
//! goes; a table left by a run that was killed is replaced by the next cluster to lease
//! the same block. `127.0.0.1:nodePort`, which every cluster on the host would share, is
//! not rewritten here: the userspace proxy listens there, so a port already taken is
//! seen instead of silently shadowed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};

/// Where each Service address sends new connections: the backends, round robin; none
/// means refused, as kube-proxy answers with a reset.
pub type Routes = BTreeMap<SocketAddr, Vec<SocketAddr>>;

/// The cluster's table, kept up to date by a thread of its own: a sweep hands it the routes
/// it wants and goes on at once (running `nft` takes milliseconds, and the sweeps' loop
/// rests in proportion to how long a sweep took).
#[derive(Debug)]
pub struct NatTable {
    shared: Arc<(Mutex<State>, Condvar)>,
    applier: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct State {
    wanted: Routes,
    /// What the kernel has now.
    applied: Routes,
    closed: bool,
}

impl NatTable {
    /// Creates the cluster's (empty) table; `None` where nftables cannot be used here (no
    /// `nft`, not root, no nf_tables in the kernel): the caller relays in userspace.
    pub fn create(block: u8) -> Option<NatTable> {
        let name = format!("cdi_e2e_block_{block}");
        if let Err(e) = nft(&ruleset(&name, &Routes::new())) {
            tracing::info!(error = %e, "no in-kernel Service forwarding (nftables); relaying in userspace");
            return None;
        }
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let state = shared.clone();
        let applier = std::thread::Builder::new()
            .name("service-nat".into())
            .spawn(move || keep_applied(&name, &state))
            .map_err(|e| tracing::warn!(error = %e, "cannot start the Service forwarding thread"))
            .ok()?;
        Some(NatTable { shared, applier: Some(applier) })
    }

    /// Whether `addr` is one this table rewrites.
    pub fn handles(addr: &SocketAddr) -> bool {
        addr.is_ipv4() && addr.ip() != IpAddr::from([127, 0, 0, 1])
    }

    /// Asks for exactly `routes` (replacing what the kernel had); applied in the background.
    pub fn apply(&self, routes: Routes) {
        let (lock, wake) = &*self.shared;
        let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
        if state.wanted != routes {
            state.wanted = routes;
            wake.notify_one();
        }
    }
}

/// Applies the latest wanted routes until closed, then deletes the table.
fn keep_applied(name: &str, shared: &(Mutex<State>, Condvar)) {
    let (lock, wake) = shared;
    loop {
        let routes = {
            let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
            while !state.closed && state.wanted == state.applied {
                state = wake.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            if state.closed {
                break;
            }
            state.wanted.clone()
        };
        match nft(&ruleset(name, &routes)) {
            Ok(()) => lock.lock().unwrap_or_else(|e| e.into_inner()).applied = routes,
            Err(e) => {
                // What the kernel had stays in force; tried again shortly.
                tracing::warn!(table = name, error = %e, "could not update the Service forwarding table");
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    }
    if let Err(e) = nft(&format!("delete table ip {name}\n")) {
        tracing::warn!(table = name, error = %e, "could not remove the Service forwarding table");
    }
}

impl Drop for NatTable {
    /// Returns once the table is gone (after an update in flight, if any).
    fn drop(&mut self) {
        let (lock, wake) = &*self.shared;
        lock.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        wake.notify_one();
        if let Some(applier) = self.applier.take() {
            let _ = applier.join();
        }
    }
}

/// The whole table: declared, emptied and filled in one `nft -f` transaction.
fn ruleset(name: &str, routes: &Routes) -> String {
    let mut nat = String::new();
    let mut refuse = String::new();
    for (service, backends) in routes {
        let (ip, port) = (service.ip(), service.port());
        let backends: Vec<_> = backends.iter().filter(|b| b.is_ipv4()).collect();
        let target = match backends.as_slice() {
            [] => {
                let _ = writeln!(refuse, "    ip daddr {ip} tcp dport {port} reject with tcp reset");
                continue;
            }
            [one] => format!("to {}:{}", one.ip(), one.port()),
            many => {
                let map: Vec<_> =
                    many.iter().enumerate().map(|(i, b)| format!("{i} : {} . {}", b.ip(), b.port())).collect();
                format!("ip addr . port to numgen inc mod {} map {{ {} }}", many.len(), map.join(", "))
            }
        };
        let _ = writeln!(nat, "    ip daddr {ip} tcp dport {port} dnat {target}");
    }
    format!(
        "table ip {name}\ndelete table ip {name}\ntable ip {name} {{\n  \
         chain services {{\n    type nat hook output priority -100; policy accept;\n{nat}  }}\n  \
         chain no_endpoints {{\n    type filter hook output priority 0; policy accept;\n{refuse}  }}\n}}\n"
    )
}

fn nft(script: &str) -> anyhow::Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("running nft: {e}"))?;
    child.stdin.take().expect("piped").write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(out.status.success(), "nft: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_backend_many_and_none() {
        let routes = Routes::from([
            (addr("127.2.128.1:443"), vec![addr("127.3.1.2:8443")]),
            (addr("127.2.1.1:30021"), vec![addr("127.3.1.2:8443"), addr("127.3.2.2:8443")]),
            (addr("127.2.128.2:80"), vec![]),
        ]);
        let text = ruleset("t", &routes);
        assert!(text.contains("ip daddr 127.2.128.1 tcp dport 443 dnat to 127.3.1.2:8443\n"), "{text}");
        assert!(
            text.contains(
                "ip daddr 127.2.1.1 tcp dport 30021 dnat ip addr . port to numgen inc mod 2 \
                 map { 0 : 127.3.1.2 . 8443, 1 : 127.3.2.2 . 8443 }"
            ),
            "{text}"
        );
        assert!(text.contains("ip daddr 127.2.128.2 tcp dport 80 reject with tcp reset"), "{text}");
        assert!(text.starts_with("table ip t\ndelete table ip t\n"), "{text}");
    }

    #[test]
    fn the_shared_localhost_node_port_is_left_to_userspace() {
        assert!(!NatTable::handles(&addr("127.0.0.1:30021")));
        assert!(NatTable::handles(&addr("127.2.1.1:30021")));
    }
}

//! A pod's `/etc/hosts`: the machine's entries, then the pod's own name, then every Service
//! with a ClusterIP under `<svc>.<ns>.svc.cluster.local`, `<svc>.<ns>.svc`, `<svc>.<ns>` and —
//! in the pod's own namespace — `<svc>`, the names cluster DNS would answer. Pods share the
//! host's network, so there is no DNS server of their own to point at; the file is
//! bind-mounted over `/etc/hosts` in the pod process's mount namespace and rewritten in
//! place (same inode, so the mount sees it) as Services come and go.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

use crate::api::store::Store;
use crate::api::util::meta_str;

pub const MOUNT_PATH: &str = "/etc/hosts";

/// Where the pod's hosts file lives on the host.
pub fn path(pod_dir: &Path) -> PathBuf {
    pod_dir.join("etc-hosts")
}

/// (ClusterIP, name, namespace) of every Service with an address, once per kubelet sweep.
pub fn services(store: &Store) -> Vec<(String, String, String)> {
    store
        .all(&store.rt("", "services"))
        .iter()
        .filter_map(|s| {
            let ip = s["spec"]["clusterIP"].as_str().filter(|c| c.parse::<std::net::IpAddr>().is_ok())?;
            Some((ip.to_string(), meta_str(s, "name").to_string(), meta_str(s, "namespace").to_string()))
        })
        .collect()
}

/// The file's content for `pod` at `ip`.
pub fn render(pod: &Value, ip: &str, services: &[(String, String, String)]) -> String {
    static MACHINE: OnceLock<String> = OnceLock::new();
    let mut out = MACHINE
        .get_or_init(|| {
            let mut m = std::fs::read_to_string(MOUNT_PATH).unwrap_or_default();
            if !m.is_empty() && !m.ends_with('\n') {
                m.push('\n');
            }
            m
        })
        .clone();
    let ns = meta_str(pod, "namespace");
    out.push_str("# Kubernetes-managed entries (cdi-e2e)\n");
    out.push_str(&format!("{ip}\t{}\n", meta_str(pod, "name")));
    for (cip, name, sns) in services {
        let short = if sns == ns { format!(" {name}") } else { String::new() };
        out.push_str(&format!("{cip}\t{name}.{sns}.svc.cluster.local {name}.{sns}.svc {name}.{sns}{short}\n"));
    }
    out
}

/// Writes the file when `content` differs from what it holds (`last`).
pub fn write(pod_dir: &Path, content: String, last: &mut String) -> anyhow::Result<()> {
    if *last != content {
        std::fs::write(path(pod_dir), &content)?;
        *last = content;
    }
    Ok(())
}

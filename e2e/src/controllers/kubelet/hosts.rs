//! A pod's `/etc/hosts`: the machine's entries, then the pod's own name, then every Service
//! with a ClusterIP under `<svc>.<ns>.svc.cluster.local`, `<svc>.<ns>.svc`, `<svc>.<ns>` and —
//! in the pod's own namespace — `<svc>`, the names cluster DNS would answer. Pods share the
//! host's network, so there is no DNS server of their own to point at; the file is
//! bind-mounted over `/etc/hosts` in the pod process's mount namespace and rewritten in
//! place (same inode, so the mount sees it) as Services come and go.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::api::store::{Query, Store};
use crate::api::util::meta_str;

pub const MOUNT_PATH: &str = "/etc/hosts";

/// Where the pod's hosts file lives on the host.
pub fn path(pod_dir: &Path) -> PathBuf {
    pod_dir.join("etc-hosts")
}

/// Writes (or refreshes) the pod's hosts file when its content changed.
pub fn write(pod_dir: &Path, pod: &Value, ip: &str, store: &Store) -> anyhow::Result<()> {
    let ns = meta_str(pod, "namespace");
    let mut out = std::fs::read_to_string(MOUNT_PATH).unwrap_or_default();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str("# Kubernetes-managed entries (cdi-e2e)\n");
    out.push_str(&format!("{ip}\t{}\n", meta_str(pod, "name")));
    let services = store.list(&store.rt("", "services"), &Query::default(), None, None)?.items;
    for s in &services {
        let Some(cip) = s["spec"]["clusterIP"].as_str().filter(|c| c.parse::<std::net::IpAddr>().is_ok()) else {
            continue;
        };
        let (name, sns) = (meta_str(s, "name"), meta_str(s, "namespace"));
        let short = if sns == ns { format!(" {name}") } else { String::new() };
        out.push_str(&format!("{cip}\t{name}.{sns}.svc.cluster.local {name}.{sns}.svc {name}.{sns}{short}\n"));
    }
    let file = path(pod_dir);
    if std::fs::read_to_string(&file).ok().as_deref() != Some(out.as_str()) {
        std::fs::write(&file, out)?;
    }
    Ok(())
}

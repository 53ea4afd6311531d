//! A pod's service-account identity, as Kubernetes' projected `kube-api-access` volume gives
//! it: a token of the pod's service account, the cluster's CA and the namespace, at
//! `/var/run/secrets/kubernetes.io/serviceaccount`, refreshed before the token expires.
//!
//! Clients such as kube-rs read that absolute path, which no argument rewriting can move, so
//! a process that has it runs in a mount namespace of its own (`unshare`) where the pod's
//! directory is bind-mounted there; mounts the host makes later still propagate into it.
//! Every pod process gets such a namespace, for its `/etc/hosts` (see `hosts.rs`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::api::auth::Authority;
use crate::api::store::Store;
use crate::api::util::meta_str;

pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// What the kubelet asks for (Kubernetes: 3607 s, refreshed at 80 %).
const LIFETIME: Duration = Duration::from_secs(3607);
const REFRESH_AFTER: Duration = Duration::from_secs(2880);

/// The files of one pod's identity.
#[derive(Debug)]
pub struct Identity {
    pub dir: PathBuf,
    namespace: String,
    service_account: String,
    written: Instant,
}

/// The service account whose token the pod gets, unless it (or its account) opts out with
/// `automountServiceAccountToken: false`.
pub fn service_account(pod: &Value, store: &Store) -> Option<String> {
    let name = pod["spec"]["serviceAccountName"].as_str().filter(|s| !s.is_empty()).unwrap_or("default");
    let automount = match pod["spec"]["automountServiceAccountToken"].as_bool() {
        Some(v) => v,
        None => store
            .get(&store.rt("", "serviceaccounts"), meta_str(pod, "namespace"), name)
            .ok()
            .and_then(|sa| sa["automountServiceAccountToken"].as_bool())
            .unwrap_or(true),
    };
    automount.then(|| name.to_string())
}

impl Identity {
    /// Writes token, `ca.crt` and `namespace` under `pod_dir`.
    ///
    /// # Errors
    /// When the service account does not exist (yet) or the files cannot be written.
    pub fn write(
        pod_dir: &Path,
        authority: &Authority,
        store: &Store,
        namespace: &str,
        sa: &str,
    ) -> anyhow::Result<Identity> {
        let dir = pod_dir.join("volumes/kubernetes.io~projected/kube-api-access");
        std::fs::create_dir_all(&dir)?;
        let mut identity =
            Identity { dir, namespace: namespace.into(), service_account: sa.into(), written: Instant::now() };
        identity.write_token(authority, store)?;
        std::fs::write(identity.dir.join("ca.crt"), authority.ca_pem())?;
        std::fs::write(identity.dir.join("namespace"), namespace)?;
        Ok(identity)
    }

    fn write_token(&mut self, authority: &Authority, store: &Store) -> anyhow::Result<()> {
        let token =
            authority.issue_service_account_token(store, &self.namespace, &self.service_account, LIFETIME).map_err(
                |e| anyhow::anyhow!("service account {}/{}: {}", self.namespace, self.service_account, e.message),
            )?;
        // Replaced whole, so a reader never sees half a token.
        let tmp = self.dir.join("..token");
        std::fs::write(&tmp, token)?;
        std::fs::rename(&tmp, self.dir.join("token"))?;
        self.written = Instant::now();
        Ok(())
    }

    /// A fresh token once the current one is 80 % through its life.
    pub fn refresh(&mut self, authority: &Authority, store: &Store) {
        if self.written.elapsed() >= REFRESH_AFTER
            && let Err(e) = self.write_token(authority, store)
        {
            tracing::warn!(error = %e, "refreshing a pod's service-account token");
        }
    }
}

/// The command that runs `binary argv…` in a mount namespace of its own where each host path
/// of `binds` is bind-mounted at its container path (the identity directory at
/// [`MOUNT_PATH`], the pod's hosts file at `/etc/hosts`).
pub fn wrapped(binds: &[(PathBuf, &str)], binary: &Path, argv: &[String]) -> anyhow::Result<tokio::process::Command> {
    for (_, at) in binds {
        // The mount point must exist on the host; it stays as it was there.
        if *at == MOUNT_PATH {
            std::fs::create_dir_all(MOUNT_PATH)?;
        }
    }
    let mut cmd = tokio::process::Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "slave",
        "sh",
        "-c",
        r#"while [ "$1" != -- ]; do mount --bind "$1" "$2" || exit 1; shift 2; done; shift; exec "$@""#,
        "sh",
    ]);
    for (from, at) in binds {
        cmd.arg(from).arg(at);
    }
    cmd.arg("--").arg(binary).args(argv);
    Ok(cmd)
}

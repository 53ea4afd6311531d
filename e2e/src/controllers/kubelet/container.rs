//! How a container's command line and environment are made on this machine: `$(VAR)`
//! expansion as the kubelet does it, container paths rewritten to where the volumes are on
//! the host, Secret values decoded.

use std::path::PathBuf;
use std::process::Stdio;

use serde_json::Value;

use super::probes::Prober;
use super::{ContainerRt, Kubelet, hosts, identity};
use crate::api::util::{meta_str, now, str_at};

impl Kubelet {
    pub(super) fn spawn(
        &self,
        pod: &Value,
        c: &Value,
        ip: &str,
        map: &[(String, PathBuf)],
        crt: &mut ContainerRt,
    ) -> anyhow::Result<()> {
        let binary = self
            .images
            .binary_for(&crt.image)
            .ok_or_else(|| anyhow::anyhow!("image {} is not one of the project's", crt.image))?
            .to_path_buf();
        let strs = |v: &Value| -> Vec<String> {
            v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
        };
        let command = strs(&c["command"]);
        let mut argv: Vec<String> = command.into_iter().skip(1).collect();
        argv.extend(strs(&c["args"]));
        let env: Vec<(String, String)> =
            self.env(pod, c, ip).into_iter().map(|(k, v)| (k, rewrite(&own_address(&v, ip), map))).collect();
        // `$(VAR)` in command and args expands from the container's environment, as the
        // kubelet does (e.g. `--listen $(POD_IP):7443`).
        let argv: Vec<String> = argv.iter().map(|a| rewrite(&own_address(&expand_vars(a, &env), ip), map)).collect();
        let logs = self.node_dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let log_path = logs.join(format!("{}_{}_{}.log", meta_str(pod, "namespace"), meta_str(pod, "name"), crt.name));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        // Every pod process sees its own /etc/hosts (Service names), and its
        // service-account files where clients look for them.
        let mut binds = vec![(hosts::path(&self.pod_dir(meta_str(pod, "uid"))), hosts::MOUNT_PATH)];
        if let Some((_, dir)) = map.iter().find(|(p, _)| p == identity::MOUNT_PATH) {
            binds.push((dir.clone(), identity::MOUNT_PATH));
        }
        let mut cmd = identity::wrapped(&binds, &binary, &argv)?;
        cmd.envs(env.iter().cloned())
            // The process finds the API server as a pod does, never through the machine's.
            .env_remove("KUBECONFIG")
            .current_dir(&self.node_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| anyhow::anyhow!("running {}: {e}", binary.display()))?;
        let pgid = child.id().map(|p| p as i32);
        if let Some(p) = pgid {
            self.children.add(p);
        }
        crt.child = Some(child);
        crt.pgid = pgid;
        crt.prober = Some(Prober::start(c, ip, env, |a| rewrite(a, map)));
        crt.started_at = now();
        crt.exited = None;
        Ok(())
    }

    /// The container's environment: the machine's (PATH and friends), then the pod spec's
    /// `env`/`envFrom` with field, ConfigMap and Secret references resolved, then NODE_NAME.
    fn env(&self, pod: &Value, c: &Value, ip: &str) -> Vec<(String, String)> {
        let store = &self.store;
        let ns = meta_str(pod, "namespace");
        let mut out = Vec::new();
        let lookup = |kind: &str, name: &str, key: &str| -> Option<String> {
            let (rt, field) =
                if kind == "secret" { (store.rt("", "secrets"), "data") } else { (store.rt("", "configmaps"), "data") };
            let o = store.get(&rt, ns, name).ok()?;
            let v = o[field][key].as_str()?.to_string();
            if kind == "secret" { decode_b64(&v) } else { Some(v) }
        };
        for ef in c["envFrom"].as_array().into_iter().flatten() {
            let prefix = ef["prefix"].as_str().unwrap_or_default();
            let (kind, name) = if let Some(n) = ef["configMapRef"]["name"].as_str() {
                ("configmap", n)
            } else {
                ("secret", ef["secretRef"]["name"].as_str().unwrap_or_default())
            };
            let rt = if kind == "secret" { store.rt("", "secrets") } else { store.rt("", "configmaps") };
            if let Ok(o) = store.get(&rt, ns, name) {
                for (k, _) in o["data"].as_object().into_iter().flatten() {
                    if let Some(v) = lookup(kind, name, k) {
                        out.push((format!("{prefix}{k}"), v));
                    }
                }
            }
        }
        for e in c["env"].as_array().into_iter().flatten() {
            let Some(name) = e["name"].as_str() else { continue };
            let vf = &e["valueFrom"];
            let value = if let Some(path) = vf["fieldRef"]["fieldPath"].as_str() {
                Some(match path {
                    "status.podIP" => ip.to_string(),
                    "status.hostIP" => self.addresses.node_ip(self.index),
                    "spec.nodeName" => self.node.clone(),
                    p => str_at(pod, p).to_string(),
                })
            } else if vf["secretKeyRef"].is_object() {
                lookup("secret", str_at(vf, "secretKeyRef.name"), str_at(vf, "secretKeyRef.key"))
            } else if vf["configMapKeyRef"].is_object() {
                lookup("configmap", str_at(vf, "configMapKeyRef.name"), str_at(vf, "configMapKeyRef.key"))
            } else {
                Some(e["value"].as_str().unwrap_or_default().to_string())
            };
            if let Some(v) = value {
                out.push((name.to_string(), v));
            }
        }
        out.push(("NODE_NAME".into(), self.node.clone()));
        // What Kubernetes puts in every container for the `kubernetes` Service.
        out.push(("KUBERNETES_SERVICE_HOST".into(), self.api.ip().to_string()));
        out.push(("KUBERNETES_SERVICE_PORT".into(), self.api.port().to_string()));
        out.push(("KUBERNETES_SERVICE_PORT_HTTPS".into(), self.api.port().to_string()));
        out
    }
}

/// Expands `$(NAME)` from `env`, leaves unknown references as they are, and turns `$$(`
/// into a literal `$(`, the kubelet's rules.
pub(super) fn expand_vars(arg: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(escaped) = tail.strip_prefix("$$(") {
            out.push_str("$(");
            rest = escaped;
        } else if let Some(inner) = tail.strip_prefix("$(")
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&tail[..end + 3]),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Replaces container paths in an argument or env value by their host paths: the whole
/// value, a path under it, or the value of `--flag=PATH`.
pub(super) fn rewrite(s: &str, map: &[(String, PathBuf)]) -> String {
    if let Some((flag, value)) = s.split_once('=')
        && flag.starts_with('-')
    {
        return format!("{flag}={}", rewrite(value, map));
    }
    for (container, host) in map {
        if s == container {
            return host.display().to_string();
        }
        if let Some(rest) = s.strip_prefix(container.as_str())
            && rest.starts_with('/')
        {
            return format!("{}{rest}", host.display());
        }
    }
    s.to_string()
}

/// A wildcard listen address (`0.0.0.0:9101`, `[::]:9101`) is the pod's own address here:
/// pods share the machine's network, each with a loopback address of its own, so two pods
/// binding the same port on the wildcard would collide.
pub(super) fn own_address(s: &str, pod_ip: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = ["0.0.0.0:", "[::]:"].iter().filter_map(|w| rest.find(w).map(|i| (i, w.len()))).min() {
        let (i, len) = at;
        // Only a whole address: `10.0.0.0:80` contains the pattern but is no wildcard.
        let whole = !out.chars().chain(rest[..i].chars()).last().is_some_and(|c| c.is_ascii_digit() || c == '.');
        out.push_str(&rest[..i]);
        if whole {
            out.push_str(pod_ip);
            out.push(':');
        } else {
            out.push_str(&rest[i..i + len]);
        }
        rest = &rest[i + len..];
    }
    out.push_str(rest);
    out
}

/// A Secret value: base64 (the API server's own encoding, so strict) of UTF-8 text.
pub(super) fn decode_b64(s: &str) -> Option<String> {
    use base64::Engine as _;
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(s).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_in_args_expand_like_the_kubelet() {
        let env = vec![("POD_IP".to_string(), "127.1.1.2".to_string())];
        assert_eq!(expand_vars("--listen=$(POD_IP):7443", &env), "--listen=127.1.1.2:7443");
        assert_eq!(expand_vars("$(MISSING) $$(POD_IP) $x", &env), "$(MISSING) $(POD_IP) $x");
    }

    #[test]
    fn container_paths_in_flags_and_values_become_host_paths() {
        let map = vec![("/var/lib/kubelet".to_string(), PathBuf::from("/tmp/n1/kubelet"))];
        assert_eq!(rewrite("--kubelet-root=/var/lib/kubelet", &map), "--kubelet-root=/tmp/n1/kubelet");
        assert_eq!(rewrite("/var/lib/kubelet/pods", &map), "/tmp/n1/kubelet/pods");
        assert_eq!(rewrite("/var/lib/kubeletx", &map), "/var/lib/kubeletx");
    }

    #[test]
    fn wildcard_listen_addresses_become_the_pods_own() {
        assert_eq!(own_address("0.0.0.0:9101", "127.1.1.2"), "127.1.1.2:9101");
        assert_eq!(own_address("--listen=[::]:80", "127.1.1.2"), "--listen=127.1.1.2:80");
        assert_eq!(own_address("10.0.0.0:80", "127.1.1.2"), "10.0.0.0:80");
    }

    #[test]
    fn base64_decodes_secret_values() {
        assert_eq!(decode_b64("Zm9vYmFy").as_deref(), Some("foobar"));
        assert_eq!(decode_b64("Zm8=").as_deref(), Some("fo"));
    }
}

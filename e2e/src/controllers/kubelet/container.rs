//! How a container's command line and environment are made on this machine: `$(VAR)`
//! expansion as the kubelet does it, container paths rewritten to where the volumes are on
//! the host, Secret values decoded.

use std::path::PathBuf;

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

//! Services: type and session-affinity defaults, port defaults, a ClusterIP that no other
//! Service holds — from the cluster's own loopback block, so it is routable on this machine
//! (the proxy stand-in listens there) — and for `NodePort` Services a node port.

use serde_json::{Value, json};

use super::{Rules, default};
use crate::addresses::AddressBlock;
use crate::api::store::Objects;

/// Kubernetes' default `--service-node-port-range`.
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

#[derive(Debug)]
pub struct Service;

impl Rules for Service {
    fn on_create(&self, obj: &mut Value, objects: &mut Objects) -> Result<(), String> {
        let services: Vec<&Value> = objects.bucket_values("/services").collect();
        let taken: Vec<String> =
            services.iter().filter_map(|s| s["spec"]["clusterIP"].as_str().map(str::to_string)).collect();
        let mut ports_taken: Vec<u64> = services
            .iter()
            .flat_map(|s| s["spec"]["ports"].as_array().into_iter().flatten())
            .filter_map(|p| p["nodePort"].as_u64())
            .collect();
        let block = objects.service_block;
        let spec = &mut obj["spec"];
        default(spec, "type", json!("ClusterIP"));
        default(spec, "sessionAffinity", json!("None"));
        let ty = spec["type"].as_str().unwrap_or_default().to_string();
        if !matches!(ty.as_str(), "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName") {
            return Err(format!(
                "spec.type: Unsupported value: \"{ty}\": supported values: \"ClusterIP\", \"ExternalName\", \
                 \"LoadBalancer\", \"NodePort\""
            ));
        }
        if spec["clusterIP"].as_str().is_none_or(str::is_empty) && ty != "ExternalName" {
            let ip = (0u32..)
                .map_while(|n| {
                    if block == 0 {
                        // A bare store (unit tests) has no block: the classic range.
                        (n < 65_000).then(|| format!("10.96.{}.{}", (n + 11) / 250, (n + 11) % 250 + 1))
                    } else {
                        AddressBlock::service_ip(block, n)
                    }
                })
                .find(|ip| !taken.contains(ip))
                .ok_or("spec.clusterIP: Internal error: the service address range is full")?;
            spec["clusterIP"] = json!(ip);
            spec["clusterIPs"] = json!([ip]);
        }
        let wants_node_port = matches!(ty.as_str(), "NodePort" | "LoadBalancer");
        if let Some(ports) = spec["ports"].as_array_mut() {
            for (i, p) in ports.iter_mut().enumerate() {
                default(p, "protocol", json!("TCP"));
                let port = p["port"].clone();
                default(p, "targetPort", port);
                if !wants_node_port {
                    if !p["nodePort"].is_null() {
                        return Err(format!(
                            "spec.ports[{i}].nodePort: Forbidden: may not be used when `type` is '{ty}'"
                        ));
                    }
                    continue;
                }
                match p["nodePort"].as_u64() {
                    Some(n) if !NODE_PORTS.contains(&u16::try_from(n).unwrap_or(0)) => {
                        return Err(format!(
                            "spec.ports[{i}].nodePort: Invalid value: {n}: provided port is not in the valid \
                             range. The range of valid ports is {}-{}",
                            NODE_PORTS.start(),
                            NODE_PORTS.end()
                        ));
                    }
                    Some(n) if ports_taken.contains(&n) => {
                        return Err(format!(
                            "spec.ports[{i}].nodePort: Invalid value: {n}: provided port is already allocated"
                        ));
                    }
                    Some(n) => ports_taken.push(n),
                    None => {
                        let n = free_node_port(&ports_taken, block)
                            .ok_or("spec.ports: Internal error: the node port range is full")?;
                        ports_taken.push(u64::from(n));
                        p["nodePort"] = json!(n);
                    }
                }
            }
        }
        obj["status"] = json!({"loadBalancer": {}});
        Ok(())
    }

    fn on_update(&self, old: &Value, new: &mut Value) -> Result<(), String> {
        // Allocations stay: an apply that omits them keeps them, a change is refused.
        for f in ["clusterIP", "clusterIPs"] {
            if new["spec"][f].as_str().is_some_and(str::is_empty) || new["spec"][f].is_null() {
                new["spec"][f] = old["spec"][f].clone();
            } else if new["spec"][f] != old["spec"][f] && f == "clusterIP" {
                return Err(format!("spec.clusterIP: Invalid value: {}: field is immutable", new["spec"]["clusterIP"]));
            }
        }
        if matches!(new["spec"]["type"].as_str(), Some("NodePort" | "LoadBalancer"))
            && let Some(ports) = new["spec"]["ports"].as_array_mut()
        {
            for p in ports.iter_mut().filter(|p| p["nodePort"].is_null()) {
                if let Some(o) = old["spec"]["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|o| o["port"] == p["port"] && !o["nodePort"].is_null())
                {
                    p["nodePort"] = o["nodePort"].clone();
                }
            }
        }
        Ok(())
    }
}

/// A node port no Service holds that nothing on this machine listens on now (clusters of
/// parallel tests share the host's 127.0.0.1); each block starts its search elsewhere.
fn free_node_port(taken: &[u64], block: u8) -> Option<u16> {
    let span = u32::from(NODE_PORTS.end() - NODE_PORTS.start()) + 1;
    let start = u32::from(block) * 21;
    (0..span)
        .filter_map(|k| u16::try_from(u32::from(*NODE_PORTS.start()) + (start + k) % span).ok())
        .find(|n| !taken.contains(&u64::from(*n)) && std::net::TcpListener::bind(("127.0.0.1", *n)).is_ok())
}

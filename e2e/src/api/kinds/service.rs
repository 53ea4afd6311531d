//! Services: type and session-affinity defaults, port defaults, and a ClusterIP from
//! 10.96.0.0/16 that no other Service holds.

use serde_json::{Value, json};

use super::{Rules, default};
use crate::api::store::Objects;

#[derive(Debug)]
pub struct Service;

impl Rules for Service {
    fn on_create(&self, obj: &mut Value, objects: &mut Objects) -> Result<(), String> {
        let taken: Vec<String> = objects
            .bucket_values("/services")
            .filter_map(|s| s["spec"]["clusterIP"].as_str().map(str::to_string))
            .collect();
        let spec = &mut obj["spec"];
        default(spec, "type", json!("ClusterIP"));
        default(spec, "sessionAffinity", json!("None"));
        if spec["clusterIP"].as_str().is_none_or(str::is_empty) {
            let ip = (11u32..65_000)
                .map(|n| format!("10.96.{}.{}", n / 250, n % 250 + 1))
                .find(|ip| !taken.contains(ip))
                .ok_or("spec.clusterIP: Internal error: the service address range is full")?;
            spec["clusterIP"] = json!(ip);
            spec["clusterIPs"] = json!([ip]);
        }
        if let Some(ports) = spec["ports"].as_array_mut() {
            for p in ports {
                default(p, "protocol", json!("TCP"));
                let port = p["port"].clone();
                default(p, "targetPort", port);
            }
        }
        obj["status"] = json!({"loadBalancer": {}});
        Ok(())
    }
}

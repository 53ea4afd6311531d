//! From a token's claim to the mover task that takes its bytes: the target PVC must be an
//! upload target and ready; its prime PVC (or itself, for the golden PVC) gives the task id
//! (its UID) and the node (its selected node, else its holder pod's node).

use std::future::Future;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::Api;
use tonic::transport::Channel;

use crate::api::names::{annotations as ann, importer, kinds};
use crate::mover::Movers;

/// What the proxy needs from the cluster: two reads and a mover client. A trait so the
/// proxy's tests run without an API server.
pub trait Cluster: Send + Sync + 'static {
    /// `namespace/name`, `None` if it does not exist.
    fn pvc(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<PersistentVolumeClaim>, String>> + Send;
    /// `namespace/name`, `None` if it does not exist.
    fn pod(&self, namespace: &str, name: &str) -> impl Future<Output = Result<Option<Pod>, String>> + Send;
    /// A gRPC channel to the mover on `node`.
    fn mover(&self, node: &str) -> impl Future<Output = Result<Channel, String>> + Send;
}

/// The real cluster: the proxy's service account reads PVCs and pods; movers are found by
/// label and node as the controller finds them.
pub struct KubeCluster {
    pub client: kube::Client,
    pub movers: Movers,
}

impl std::fmt::Debug for KubeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeCluster").field("movers", &self.movers).finish_non_exhaustive()
    }
}

impl Cluster for KubeCluster {
    async fn pvc(&self, namespace: &str, name: &str) -> Result<Option<PersistentVolumeClaim>, String> {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), namespace);
        api.get_opt(name).await.map_err(|e| format!("cannot read PVC {namespace}/{name}: {e}"))
    }

    async fn pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>, String> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        api.get_opt(name).await.map_err(|e| format!("cannot read pod {namespace}/{name}: {e}"))
    }

    async fn mover(&self, node: &str) -> Result<Channel, String> {
        self.movers.channel_on_node(node).await.map_err(|e| e.to_string())
    }
}

/// Where an upload goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The mover task: the UID of the claim that receives the bytes.
    pub task_id: String,
    pub node: String,
    /// The claim that receives the bytes (the prime PVC, or the target itself).
    pub claim: String,
}

/// Why no upload can go to the claim now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The PVC does not exist.
    NotFound(String),
    /// The PVC is not filled by uploads.
    NotUploadTarget(String),
    /// The upload already succeeded.
    Succeeded(String),
    /// Not ready yet (may become ready: worth waiting and retrying).
    NotReady(String),
    /// The cluster could not be read.
    Lookup(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotFound(m)
            | Refusal::NotUploadTarget(m)
            | Refusal::Succeeded(m)
            | Refusal::NotReady(m)
            | Refusal::Lookup(m) => f.write_str(m),
        }
    }
}

fn annotation<'a>(pvc: &'a PersistentVolumeClaim, key: &str) -> Option<&'a str> {
    pvc.metadata.annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str)
}

/// A claim is filled by uploads when it carries the upload-target annotation (golden PVC,
/// CDI's PVC mode) or its dataSourceRef names a VolumeUploadSource (DataVolume
/// `source.upload`, or a user's populator PVC).
pub fn is_upload_target(pvc: &PersistentVolumeClaim) -> bool {
    annotation(pvc, ann::reserved::UPLOAD_TARGET).is_some()
        || pvc.spec.as_ref().and_then(|s| s.data_source_ref.as_ref()).is_some_and(|r| {
            r.kind == kinds::VOLUME_UPLOAD_SOURCE && r.api_group.as_deref() == Some(crate::api::names::api::GROUP)
        })
}

/// The checks on the target PVC alone; returns the name of the claim that receives the
/// bytes.
pub fn check_target(namespace: &str, name: &str, pvc: Option<&PersistentVolumeClaim>) -> Result<String, Refusal> {
    let Some(pvc) = pvc else {
        return Err(Refusal::NotFound(format!("PVC {namespace}/{name} not found")));
    };
    if !is_upload_target(pvc) {
        return Err(Refusal::NotUploadTarget(format!(
            "PVC {namespace}/{name} is not an upload target (no {} annotation and no VolumeUploadSource dataSourceRef)",
            ann::reserved::UPLOAD_TARGET
        )));
    }
    if annotation(pvc, ann::POD_PHASE) == Some("Succeeded") {
        return Err(Refusal::Succeeded(format!(
            "the upload to PVC {namespace}/{name} already succeeded; create a new claim to upload again"
        )));
    }
    if annotation(pvc, ann::POD_READY) != Some("true") {
        return Err(Refusal::NotReady(format!(
            "PVC {namespace}/{name} is not ready for an upload yet (annotation {} is not \"true\")",
            ann::POD_READY
        )));
    }
    Ok(annotation(pvc, ann::POPULATOR_PVC_PRIME).filter(|p| !p.is_empty()).unwrap_or(name).to_string())
}

/// Resolves the destination of an upload to `namespace/name` once.
pub async fn resolve<C: Cluster>(cluster: &C, namespace: &str, name: &str) -> Result<Destination, Refusal> {
    let target = cluster.pvc(namespace, name).await.map_err(Refusal::Lookup)?;
    let claim = check_target(namespace, name, target.as_ref())?;
    let prime = if claim == name { target } else { cluster.pvc(namespace, &claim).await.map_err(Refusal::Lookup)? };
    let Some(prime) = prime else {
        return Err(Refusal::NotReady(format!(
            "PVC {namespace}/{claim} (the volume PVC {name} is filled through) not found"
        )));
    };
    let task_id = prime
        .metadata
        .uid
        .clone()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| Refusal::NotReady(format!("PVC {namespace}/{claim} has no UID yet")))?;
    let node = match annotation(&prime, ann::SELECTED_NODE).filter(|n| !n.is_empty()) {
        Some(n) => n.to_string(),
        None => {
            // Immediate binding: no selected node; the holder pod says where the volume is.
            let holder = importer::pod_name(&claim);
            let pod = cluster.pod(namespace, &holder).await.map_err(Refusal::Lookup)?;
            pod.and_then(|p| p.spec.and_then(|s| s.node_name)).filter(|n| !n.is_empty()).ok_or_else(|| {
                Refusal::NotReady(format!(
                    "the volume of PVC {namespace}/{claim} is not on a node yet (holder pod {holder})"
                ))
            })?
        }
    };
    Ok(Destination { task_id, node, claim })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pvc(annotations: &[(&str, &str)]) -> PersistentVolumeClaim {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "disk", "namespace": "ns", "uid": "u-disk",
                         "annotations": annotations.iter().map(|(k, v)| (k.to_string(), v.to_string()))
                             .collect::<std::collections::BTreeMap<_, _>>()},
        }))
        .unwrap()
    }

    #[test]
    fn target_checks_in_cdis_order() {
        let up = (ann::reserved::UPLOAD_TARGET, "");
        assert!(matches!(check_target("ns", "disk", None), Err(Refusal::NotFound(_))));
        assert!(matches!(check_target("ns", "disk", Some(&pvc(&[]))), Err(Refusal::NotUploadTarget(_))));
        assert!(matches!(check_target("ns", "disk", Some(&pvc(&[up]))), Err(Refusal::NotReady(_))));
        let done = pvc(&[up, (ann::POD_READY, "true"), (ann::POD_PHASE, "Succeeded")]);
        assert!(matches!(check_target("ns", "disk", Some(&done)), Err(Refusal::Succeeded(_))));
        let golden = pvc(&[up, (ann::POD_READY, "true")]);
        assert_eq!(check_target("ns", "disk", Some(&golden)), Ok("disk".into()));
        let populated = pvc(&[up, (ann::POD_READY, "true"), (ann::POPULATOR_PVC_PRIME, "prime-u")]);
        assert_eq!(check_target("ns", "disk", Some(&populated)), Ok("prime-u".into()));
    }

    #[test]
    fn a_volume_upload_source_ref_makes_an_upload_target() {
        let mut p = pvc(&[]);
        p.spec = Some(
            serde_json::from_value(serde_json::json!({"dataSourceRef": {
                "apiGroup": "cdi.kubevirt.io", "kind": "VolumeUploadSource", "name": "s"}}))
            .unwrap(),
        );
        assert!(is_upload_target(&p));
        p.spec.as_mut().unwrap().data_source_ref.as_mut().unwrap().kind = "VolumeImportSource".into();
        assert!(!is_upload_target(&p));
    }
}

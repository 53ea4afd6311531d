//! `cdi-e2e`: an embedded Kubernetes mini-cluster for end-to-end runs and demos (DESIGN.md §5).
//!
//! ```text
//!  kubectl / kube-rs ──HTTPS──> api::auth ──> api::server ──> api::store  (objects, history)
//!                                                             ^   │ every write wakes the loops below
//!        controllers::gc          (owners, namespaces, protection finalizers, CRD cleanup)
//!        controllers::scheduler   (binds pods to nodes; selected-node for WaitForFirstConsumer)
//!        controllers::binder      (PV <-> PVC binding, pre-bound PVs, Lost claims)
//!        controllers::provisioner (PVs on ext4-on-loop directories or raw loop devices)
//!        controllers::kubelet     (one per node: volume paths, processes, pod status)
//!                                                  │
//!                                     host (loop devices, mounts, child processes)
//! ```
//!
//! Everything runs in one process. [`Cluster::start`] brings it up on an ephemeral loopback
//! port and writes a kubeconfig; [`Cluster::shutdown`] (or dropping the [`Cluster`]) stops
//! every process and removes every mount and loop device it made.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod addresses;
pub mod api;
pub mod bench;
pub mod cluster;
pub mod controllers;
pub mod demo;
pub mod host;
pub mod kubevirt;
pub mod procs;
pub mod system;
pub mod workload;

pub use cluster::{Cluster, ClusterConfig};

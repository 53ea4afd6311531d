//! The control plane: the CDI-compatible kinds (`cdi.kubevirt.io/v1beta1`), their CRDs, and
//! the populate controllers.
//!
//! ```text
//! PVC.spec.dataSourceRef ──> VolumeImportSource ... (api: kube types, the edge)
//!                                  │ TryFrom, once
//!                                  ▼
//!                            ImportPlan ...       (plan: validated, kube-free)
//!                                  │
//!                                  ▼
//!                   controller ──gRPC──> cdi-mover on the node
//! ```
//!
//! The populator never touches volume bytes; it drives the node mover over gRPC
//! (DESIGN.md §4).
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod api;
pub mod api_error;
pub mod app;
pub mod certs;
pub mod cli;
pub mod config;
pub mod controller;
pub mod crds;
pub mod datasource;
pub mod datavolume;
pub mod leader;
pub mod metrics;
pub mod mover;
pub mod plan;
pub mod upload;
pub mod webhook;

#[cfg(test)]
mod deploy_tests;

//! The one integration-test binary of `cdi-e2e` (one link of a big debug binary, not many).
//! Every test starts its own cluster in its own temp dir on an ephemeral loopback port.

mod api_auth;
mod api_kube;
mod api_kubectl;
mod api_openapi;
mod blank;
mod common;
mod config;
mod datavolume;
mod dv_validation;
mod golden;
mod install;
// nginx and on-demand packages, set up as the mover's own tests do.
#[path = "../../../mover/tests/it/peers.rs"]
mod peers;
// The registry, S3 and GCS peers of the mover's own tests.
#[allow(dead_code)] // the suite uses a part of each
#[path = "../../../mover/tests/it/peers_gcs.rs"]
mod peers_gcs;
#[allow(dead_code)]
#[path = "../../../mover/tests/it/peers_registry.rs"]
mod peers_registry;
#[allow(dead_code)]
#[path = "../../../mover/tests/it/peers_s3.rs"]
mod peers_s3;
mod populate;
mod services;
mod snapshots;
mod sources;
mod standins;
mod up;
mod upload;
mod webhooks;
mod workloads;

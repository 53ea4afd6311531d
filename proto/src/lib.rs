//! `cdi.mover.v1`: the gRPC API of the node mover, generated from
//! `proto/cdi/mover/v1/mover.proto` (read that file for the API's documentation).
//!
//! Both ends use this crate: the mover implements [`v1::mover_server::Mover`], the populator
//! and the CLI client use [`v1::mover_client::MoverClient`].
#![forbid(unsafe_code)]

/// The `cdi.mover.v1` package.
#[allow(missing_debug_implementations, clippy::doc_lazy_continuation, clippy::large_enum_variant)]
pub mod v1 {
    tonic::include_proto!("cdi.mover.v1");

    /// The package name, as `Capabilities.api` reports it.
    pub const API: &str = "cdi.mover.v1";
}

/// The `.proto` source, for tools that generate their own clients.
pub const MOVER_PROTO: &str = include_str!("../cdi/mover/v1/mover.proto");

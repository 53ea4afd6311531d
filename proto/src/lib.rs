//! `cdi.mover.v1`: the gRPC API of the node mover.
//!
//! The service definition and its generated code land with the mover-service issue; this
//! crate exists now so the workspace shows its final shape (DESIGN.md §1).
#![forbid(unsafe_code)]

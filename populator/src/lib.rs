//! The control plane: CRD types (`cdi.kubevirt.io/v1beta1`) and the populate controllers.
//!
//! Arrives with the populator issue; the populator never touches volume bytes, it drives
//! the node mover over gRPC (DESIGN.md §4).
#![forbid(unsafe_code)]

//! The embedded mini-cluster (an API server plus stand-in scheduler, binder, provisioner
//! and kubelet) that the end-to-end scenarios run on (DESIGN.md §5). Arrives with the
//! mini-cluster issue.

//! The API server: a store of JSON objects with Kubernetes semantics, and its HTTP front.

pub mod admission;
pub mod aggregator;
pub mod auth;
pub mod discovery;
pub mod error;
pub mod faults;
pub mod fields;
pub mod kinds;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod registry;
pub mod selectors;
pub mod server;
pub mod store;
pub mod table;
pub mod util;

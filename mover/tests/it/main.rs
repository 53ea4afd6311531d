//! Integration tests of `cdi-mover import` against real peers: qemu-img as the conversion
//! oracle, loop devices as block targets, nginx as the HTTP server, moto as
//! the S3 server, a GCS emulator. One test binary, many
//! modules (each binary links the whole crate; one keeps the build quick).

mod peers;
mod peers_gcs;
mod peers_proxy;
mod peers_registry;
mod peers_s3;
mod support;

mod archive;
mod bad_input;
mod blank;
mod cli;
mod clone;
mod disk;
mod faults;
mod format_vhdx;
mod format_vmdk;
mod formats;
mod fuzz;
mod gcs;
mod http;
mod oracle;
mod registry;
mod s3;
mod service;
mod upload;
mod volume;

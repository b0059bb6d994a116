//! `labctl apply` end to end: the built binary against real S3-compatible servers (s3s-fs, moto,
//! Ceph RGW, Garage) and the filesystem store, fetching images from a fixture HTTP server that
//! injects faults; and the store conformance suite (`stores`) against all five.
// The suite reads its own configuration (server caches, paths) from the environment.
#![allow(clippy::disallowed_methods)]

#[path = "../support/mod.rs"]
mod support;

mod cancel;
mod cases;
mod drift;
mod fanout;
mod harness;
mod lease;
mod nas;
mod packer;
mod recovery;
mod served;
mod sources;
mod stores;
mod upstream;
mod workflows;

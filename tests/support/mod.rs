//! Real components for integration tests, started by the tests themselves on 127.0.0.1:
//! S3-compatible servers (s3s-fs, moto), a fixture HTTP server that can inject faults, a
//! proxy that injects S3 errors, and vendor fixtures over TLS (GitHub, Talos Image Factory,
//! Harvester, VyOS) answering in the shapes the vendors document.

#![allow(dead_code)]

pub mod fixture;
pub mod plan_rows;
pub mod proxy;
pub mod servers;
pub mod vendors;

use std::net::TcpListener;

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

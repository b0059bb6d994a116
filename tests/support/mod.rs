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
    // The port is free only until someone binds it: tests start servers in parallel threads, and
    // the kernel may hand the same number to two of them before either server listens (a moto
    // once answered with another test's S3 server behind its port). No port is handed out twice
    // in one test process.
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if HANDED_OUT.lock().unwrap().insert(port) {
            return port;
        }
    }
}

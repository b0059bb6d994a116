//! labctl's pure core: the manifest (parsed and validated from bytes), specs, the dependency
//! graph, the plan and its check, state records, drift findings, the consumer index and the
//! renderings of all of these. Everything here is a function of its inputs.
//!
//! The build keeps it so: this crate depends on no async runtime, HTTP client or AWS SDK, and
//! its `clippy.toml` disallows the filesystem, the environment and processes (the quality gate
//! runs clippy with `-D warnings`). What validation needs from the manifest's directory comes
//! through [`manifest::ManifestDir`].

pub mod checksum;
pub mod consumer_index;
pub mod diagnostic;
pub mod drift;
pub mod fanout;
pub mod graph;
pub mod hint;
pub mod history;
pub mod layout;
pub mod manifest;
pub mod object;
pub mod pin;
pub mod plan;
pub mod render;
pub mod signature;
pub mod signing;
pub mod spec;
pub mod stale;
pub mod state;
pub mod timefmt;
pub mod units;
pub mod upstream;

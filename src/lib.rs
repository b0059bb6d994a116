//! labctl keeps an S3-compatible bucket of machine images in the state a Git-tracked manifest
//! declares: `plan` shows what would change, `apply` makes it so.

pub mod apply;
pub mod checksum;
pub mod cli;
pub mod commands;
pub mod consumer_index;
pub mod desired;
pub mod diagnostic;
pub mod drift;
pub mod failure;
pub mod github;
pub mod graph;
pub mod interrupt;
pub mod manifest;
pub mod pin;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod render;
pub mod signing;
pub mod source;
pub mod spec;
pub mod state;
pub mod store;
pub mod template_hash;
pub mod timefmt;
pub mod units;
pub mod verify;

#[cfg(test)]
mod mutation_tests;

//! Moving image bytes: HTTP sources and checksum lists, Packer builds, and the streaming publish
//! pipeline that verifies and uploads them into a store. Also `verify`, which checks a synced
//! copy of the published images on the machine that boots from it.

pub mod local_file;
pub mod manifest_dir;
pub mod pipeline;
pub mod progress;
pub mod serve;
pub mod source;
pub mod template_hash;
pub mod verify;

//! Where image bytes come from: HTTP downloads (and checksum lists) and Packer builds.

pub mod checksum_list;
pub mod http;
pub mod packer;
pub mod signature;

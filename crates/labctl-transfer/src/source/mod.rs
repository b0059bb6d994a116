//! Where image bytes come from: HTTP downloads (and checksum lists) and Packer builds; and what
//! the upstream channels have released.

pub mod channel;
pub mod checksum_list;
pub mod http;
pub mod packer;
pub mod probe;
pub mod upstream;
/// Signatures and keys are pure, and live in the core.
pub use labctl_core::signature;

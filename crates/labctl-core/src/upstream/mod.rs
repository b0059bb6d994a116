//! Keeping the manifest current: the versions vendors publish, the policy an image applies to
//! them, and the `{{ version }}` templates that make a bump a one-field change. Pure: the
//! channels' answers come in as data.

pub mod assess;
pub mod listing;
pub mod policy;
pub mod report;
pub mod template;
pub mod track;
pub mod verdict;
pub mod version;

pub use assess::{assess, Assessment, Candidate, Held, Hold, Release};
pub use policy::{MinorPolicy, Policy};
pub use track::{Channel, ChannelKind, Templates, Track};
pub use version::{Version, VersionOrder};

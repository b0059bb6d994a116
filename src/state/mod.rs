//! Actual state: the records and objects found in a store.

pub mod record;
pub mod refresh;

pub use record::{Record, RecordError, StateRecord};
pub use refresh::{ActualRecord, ActualState, ObjectState, Unreadable};

//! The next step an error suggests. Each error type with an obvious one says it here, once;
//! the binary asks the causes of a failure in order and prints the first hint under the error
//! (`hint: …`), so no hint is glued into a message and any context wrapped around the error
//! keeps it.

use std::borrow::Cow;

pub trait Hint {
    /// The obvious next step for the user, when there is one.
    fn hint(&self) -> Option<Cow<'static, str>>;
}

//! End-to-end tests of the `labctl` binary: each test runs the built program the way a user
//! does and checks what they would see.

mod examples;
mod output;
mod util;
mod validate;

//! End-to-end tests of the `labctl` binary: each test runs the built program the way a user
//! does and checks what they would see; and seeded mutations of what labctl reads from others
//! (manifests, records, plans) through the library's readers (`mutation`).
// The suite reads its own configuration (server caches, paths) from the environment.
#![allow(clippy::disallowed_methods)]

mod conveniences;
mod dsm;
mod examples;
mod layering;
mod mutation;
mod output;
mod schema;
mod util;
mod validate;

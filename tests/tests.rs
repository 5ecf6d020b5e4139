//! End-to-end tests of the real `hoard` binary, in one test binary (ripgrep's layout):
//! each test makes a temporary directory, runs the binary and checks what it printed and did.

mod util;

mod backup_restore;
mod cli_errors;
mod crash;
mod forget;
mod integrity;
mod keys;
mod prune;
mod streams;

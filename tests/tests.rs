//! End-to-end tests of the real `hoard` binary, in one test binary (ripgrep's layout):
//! each test makes a temporary directory, runs the binary and checks what it printed and did.

mod s3_proxy;
mod s3_server;
mod servers;
mod util;

mod dumps;

mod backup_restore;
mod cli_errors;
mod crash;
mod docker;
mod fixtures;
mod forget;
mod integrity;
mod keys;
mod prune;
mod s3;
mod s3_harness;
mod streams;

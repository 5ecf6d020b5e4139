//! `cargo xtask`: hoard's automation, a small hand-written dispatcher in rust-analyzer's xtask style.
//!
//! `cargo xtask` is an alias (see `.cargo/config.toml`) for `cargo run --quiet --package xtask --`.
//! Every subcommand runs from the workspace root, whatever directory it was started from.

mod bench;
mod ceiling;
mod ci;
mod cmd;
mod compression;
mod deps;
mod fixtures;
mod freed;
mod fuzz;
mod scale;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::bail;

const USAGE: &str = "\
usage: cargo xtask <command> [args]

commands:
  bench [--work DIR] [--tree PATH] [--pgbench-scale N] [--tools LIST] [--rounds N] [--no-install]
                           hoard against restic, borg and rustic on a two-night workload (a real
                           tree and pgbench dumps): time, CPU, peak RSS, repository size
  ceiling [--no-run]       the stream pipeline against the ceiling its per-stage criterion
                           benches imply for this machine's cores
  compression [--small KIB] [--group KIB] [PATH]...
                           how much smaller small files would be stored compressed together
                           (groups, or a trained dictionary) than one by one (default /usr/share)
  ci [--skip STEP]...      run the whole test suite, as CI does (steps: deps, fmt, layering,
                           clippy, test, doc, fuzz; HOARD_CI_FUZZ=0 leaves out fuzz)
  deps [--check] [--list] [GROUP]...
                           install what the test suite needs (default: every group);
                           --check only probes, --list shows the groups
  fixtures [--force] [CASE]...
                           write the test repositories under tests/fixtures/ (broken on purpose,
                           and the compatibility fixture, which is never rewritten)
  fuzz [args]              the fuzz targets (`cargo xtask fuzz --smoke --seconds 10` in CI;
                           `--long` for 10M executions or an hour each)
  scale stream [--gib N] | files [--files N]  [--work DIR] [--keep]
                           hoard on a generated N GiB stream (default 100) or a tree of N small
                           files (default 10,000,000): time, CPU, peak RSS, repository size
  help                     this text
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = std::env::set_current_dir(project_root()) {
        eprintln!("xtask: cannot enter the workspace root {}: {e}", project_root().display());
        return ExitCode::FAILURE;
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> anyhow::Result<()> {
    let Some((command, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        bail!("no command given");
    };
    match command.as_str() {
        "bench" => bench::run(rest),
        "ceiling" => ceiling::run(rest),
        "ci" => ci::run(rest),
        "compression" => compression::run(rest),
        "deps" => deps::run(rest),
        "fixtures" => fixtures::run(rest),
        "fuzz" => fuzz::run(rest),
        "scale" => scale::run(rest),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            eprint!("{USAGE}");
            bail!("unknown command `{other}`")
        }
    }
}

/// The workspace root: the parent of this crate's directory.
pub(crate) fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

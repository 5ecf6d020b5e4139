//! `cargo xtask ci`: the whole test suite, step by step, stopping at the first step that fails.
//!
//! Steps, in order: deps, fmt, layering, clippy, test, doc, fuzz (the last only when HOARD_CI_FUZZ is
//! not "0"). `--skip STEP` leaves a step out. Every step prints a header line and its time; the run
//! ends with a table of the times and one closing line counting the tests, `tests: N passed, N failed,
//! N skipped`, so the tests' tally is the last thing printed whatever ran after them.
//!
//! Build time is what CI spends most of (2 cores): clippy, the tests and rustdoc all use the dev
//! profile and the same flags, so dependencies are built once for checking (clippy, doc) and once for
//! code (tests), never more. Under CI, CARGO_INCREMENTAL defaults to 0: a fresh clone gains nothing
//! from incremental state but its cost.

use std::io::IsTerminal;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd;

const STEPS: &[&str] = &["deps", "fmt", "layering", "clippy", "test", "doc", "fuzz"];

/// Crates that hoard-core, the pure core, must never depend on (normal dependencies).
const NOT_IN_CORE: &[&str] = &["tokio", "rusqlite", "object_store"];

pub fn run(args: &[String]) -> Result<()> {
    let mut skip: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let name = if a == "--skip" {
            it.next().context("--skip needs a step name")?.clone()
        } else if let Some(n) = a.strip_prefix("--skip=") {
            n.to_owned()
        } else {
            bail!("ci: unknown argument `{a}` (usage: cargo xtask ci [--skip STEP]...)");
        };
        if !STEPS.contains(&name.as_str()) {
            bail!("ci: no step `{name}`; the steps are: {}", STEPS.join(", "));
        }
        skip.push(name);
    }
    if std::env::var("HOARD_CI_FUZZ").is_ok_and(|v| v == "0") {
        skip.push("fuzz".to_owned());
    }

    let mut ci = Ci { skip, times: Vec::new(), counts: None, start: Instant::now() };
    let result = ci.all();
    ci.summary(result.as_ref().err().map(|_| ci.times.last().map_or("?", |t| t.0)));
    result
}

struct Ci {
    skip: Vec<String>,
    times: Vec<(&'static str, Duration, bool)>,
    counts: Option<Counts>,
    start: Instant,
}

impl Ci {
    fn all(&mut self) -> Result<()> {
        self.step("deps", "cargo xtask deps", |_| crate::deps::run(&[]))?;

        self.step("fmt", "cargo fmt --all -- --check", |ci| {
            cmd::run(&mut ci.cargo(&["fmt", "--all", "--", "--check"]))
                .context("the code is not formatted as rustfmt would: run `cargo fmt --all`")
        })?;

        self.step("layering", "hoard-core depends on none of tokio, rusqlite, object_store", |ci| {
            for dep in NOT_IN_CORE {
                ci.not_a_dependency("hoard-core", dep)?;
            }
            Ok(())
        })?;

        self.step("clippy", "cargo clippy --workspace --all-targets -- -D warnings", |ci| {
            cmd::run(&mut ci.cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))
        })?;

        let nextest = cmd::output(&mut self.cargo(&["nextest", "--version"])).map(|(ok, _, _)| ok).unwrap_or(false);
        let title = if nextest {
            "cargo nextest run --workspace --no-fail-fast; cargo test --workspace --doc"
        } else {
            "cargo test --workspace (cargo-nextest is not installed); cargo test --workspace --doc"
        };
        self.step("test", title, |ci| {
            let mut counts = Counts::default();
            let color = color_flag();
            let mut unit = if nextest {
                ci.cargo(&["nextest", "run", "--workspace", "--no-fail-fast"])
            } else {
                ci.cargo(&["test", "--workspace", "--no-fail-fast"])
            };
            unit.args(color);
            let r = cmd::run_watching(&mut unit, |line| counts.add_line(line));
            ci.counts = Some(counts);
            r?;
            let mut doc = ci.cargo(&["test", "--workspace", "--doc"]);
            doc.args(color);
            let r = cmd::run_watching(&mut doc, |line| counts.add_line(line));
            ci.counts = Some(counts);
            r
        })?;

        self.step("doc", "RUSTDOCFLAGS='-D warnings' cargo doc --workspace --no-deps", |ci| {
            let mut c = ci.cargo(&["doc", "--workspace", "--no-deps"]);
            c.env("RUSTDOCFLAGS", "-D warnings");
            cmd::run(&mut c)
        })?;

        self.step("fuzz", "cargo xtask fuzz --smoke --seconds 10", |_| {
            let args = ["--smoke", "--seconds", "10"].map(String::from);
            crate::fuzz::run(&args)
        })?;
        Ok(())
    }

    /// Run one step: a header, the work, its time; an error names the step.
    fn step(&mut self, name: &'static str, title: &str, f: impl FnOnce(&mut Self) -> Result<()>) -> Result<()> {
        if self.skip.iter().any(|s| s == name) {
            println!("\n==> [{name}] skipped: {title}");
            return Ok(());
        }
        println!("\n==> [{name}] {title}");
        let t = Instant::now();
        let r = f(self);
        let took = t.elapsed();
        self.times.push((name, took, r.is_ok()));
        match r {
            Ok(()) => {
                println!("<== [{name}] ok in {}", secs(took));
                Ok(())
            }
            Err(e) => Err(e.context(format!("CI step `{name}` failed after {}", secs(took)))),
        }
    }

    /// `cargo ARGS`, under CI without incremental builds.
    fn cargo(&self, args: &[&str]) -> Command {
        // Plain `cargo`: rustup's proxy picks the same toolchain that runs xtask (it sets
        // RUSTUP_TOOLCHAIN for its children), and the command lines printed stay readable.
        let mut c = cmd::new("cargo", args);
        if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) && std::env::var_os("CARGO_INCREMENTAL").is_none() {
            c.env("CARGO_INCREMENTAL", "0");
        }
        c
    }

    /// Fail unless `cargo tree -p krate -e normal -i dep` finds nothing. Cargo says "package ID
    /// specification `dep` did not match any packages" (and exits non-zero) when `dep` is not in
    /// `krate`'s graph: that is the good case. Any tree printed is the path that brings `dep` in.
    fn not_a_dependency(&self, krate: &str, dep: &str) -> Result<()> {
        let mut c = self.cargo(&["tree", "-p", krate, "-e", "normal", "-i", dep]);
        let shown = cmd::show(&c);
        println!("$ {shown}");
        let (ok, out, err) = cmd::output(&mut c)?;
        if !ok && err.contains("did not match any packages") {
            println!("   {dep}: not a dependency of {krate}: good");
            return Ok(());
        }
        if ok && out.trim().is_empty() {
            println!("   {dep}: not a dependency of {krate}: good");
            return Ok(());
        }
        if ok {
            bail!(
                "{krate} must not depend on {dep} (it is the pure core: no I/O, no async); \
                 `{shown}` shows how it comes in:\n{out}"
            );
        }
        bail!("`{shown}` failed in an unexpected way:\n{err}{out}");
    }

    fn summary(&self, failed_at: Option<&str>) {
        println!("\n==> ci: step times");
        for (name, took, ok) in &self.times {
            println!("  {name:<10} {:>9}  {}", secs(*took), if *ok { "ok" } else { "FAILED" });
        }
        println!("  {:<10} {:>9}", "total", secs(self.start.elapsed()));
        match failed_at {
            Some(step) => println!("ci: FAILED at step `{step}`"),
            None => println!("ci: all steps passed"),
        }
        match self.counts {
            Some(c) if c.seen => println!("tests: {} passed, {} failed, {} skipped", c.passed, c.failed, c.skipped),
            Some(_) => println!("ci: found no test runner summary to count the tests from"),
            None => {}
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// `--color always` when a person is watching: piping the runners' output to count the tests would
/// otherwise turn their colours off.
fn color_flag() -> &'static [&'static str] {
    if std::io::stderr().is_terminal() {
        &["--color", "always"]
    } else {
        &[]
    }
}

/// The tests counted from the runners' closing lines.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Counts {
    passed: u64,
    failed: u64,
    skipped: u64,
    /// Whether any closing line was seen at all.
    seen: bool,
}

impl Counts {
    /// Count a runner's closing line: nextest's `Summary [ 1.2s] 7 tests run: 6 passed, 1 failed,
    /// 2 skipped`, or libtest's `test result: ok. 3 passed; 0 failed; 1 ignored; ...`.
    ///
    /// A libtest line counts only at the start of a line: nextest indents the output it shows of
    /// a failed test, libtest's own closing line among it, and that test is already in nextest's
    /// summary.
    fn add_line(&mut self, line: &str) {
        let libtest = line.strip_prefix("test result: ");
        let line = line.trim();
        let parts: Vec<&str> = if line.starts_with("Summary [") {
            match line.split_once(" run: ") {
                Some((_, rest)) => rest.split(',').collect(),
                None => return,
            }
        } else if let Some(rest) = libtest {
            match rest.split_once(". ") {
                Some((_, rest)) => rest.split(';').collect(),
                None => return,
            }
        } else {
            return;
        };
        self.seen = true;
        for part in parts {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" | "timed" | "exec" => self.failed += n,
                "skipped" | "ignored" => self.skipped += n,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_nextest_and_libtest_closing_lines() {
        let mut c = Counts::default();
        c.add_line("   Starting 9 tests across 4 binaries (1 test skipped)");
        c.add_line("     Summary [   1.234s] 9 tests run: 8 passed (1 slow), 1 failed, 1 skipped");
        c.add_line("test result: ok. 3 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.51s");
        c.add_line("test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
        assert_eq!(c, Counts { passed: 11, failed: 1, skipped: 3, seen: true });
    }

    #[test]
    fn a_failed_test_s_own_output_is_not_counted_again() {
        let mut c = Counts::default();
        c.add_line(
            "    test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 87 filtered out; finished in 0.99s",
        );
        c.add_line("     Summary [ 249.876s] 189 tests run: 188 passed (1 slow), 1 failed, 0 skipped");
        assert_eq!((c.passed, c.failed), (188, 1));
    }

    #[test]
    fn counts_timeouts_as_failures() {
        let mut c = Counts::default();
        c.add_line("Summary [  60.000s] 2 tests run: 1 passed, 1 timed out, 0 skipped");
        assert_eq!((c.passed, c.failed), (1, 1));
    }

    #[test]
    fn ignores_other_lines() {
        let mut c = Counts::default();
        c.add_line("        PASS [   0.004s] hoard-core ids::tests::summary_run: 1");
        c.add_line("test result: something else");
        assert!(!c.seen);
    }
}

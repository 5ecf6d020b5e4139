//! `cargo xtask fuzz`: runs the cargo-fuzz targets in `fuzz/` (hoard-core's decoders and
//! chunker), installing cargo-fuzz when it is missing and enabling nightly flags on a stable
//! toolchain with `RUSTC_BOOTSTRAP=1`.
//!
//! ```text
//! cargo xtask fuzz --smoke [--seconds N]        every target for N s (default 20); fails if any crashes
//! cargo xtask fuzz --target NAME [--seconds N]  one target for longer (default 300 s), output shown
//! cargo xtask fuzz --long [--runs N] [--seconds N]  every target until N executions (default
//!                                               10,000,000) or N s (default 3600), whichever first
//! cargo xtask fuzz --list                       the targets
//! ```
//! `--sanitizer NAME` picks cargo-fuzz's sanitizer (default `address`). Long runs use `none`:
//! hoard is safe Rust, and without AddressSanitizer's instrumentation a target runs several
//! times faster, so an hour reaches many more inputs; the allocation cap then rests on the
//! resident-size limit alone, and the smoke run in CI keeps AddressSanitizer on.
//!
//! Every run caps a single allocation at 256 MiB and the process at 1 GiB (libFuzzer's
//! `-malloc_limit_mb`, `-rss_limit_mb`): a decoder that sizes a buffer from a length field it has
//! not checked against its input fails the run instead of passing unnoticed.
//! Anything after `--` goes to libFuzzer unchanged. Before running, seed inputs are written into
//! `fuzz/corpus/<target>/` from the golden vectors in `crates/hoard-core/tests/vectors/` (valid
//! encodings reach deep code at once); crashes land in `fuzz/artifacts/<target>/`, and each run's
//! full output in `fuzz/target/xtask-logs/<target>.log`. Inputs that once failed are committed
//! in `fuzz/regressions/<target>/`; every run loads them as a second corpus, so libFuzzer runs
//! each of them first and a regression fails even the shortest smoke run.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::cmd::{self, show};

const USAGE: &str = "\
usage: cargo xtask fuzz --smoke [--seconds N]        run every target N seconds (default 20)
       cargo xtask fuzz --long [--runs N] [--seconds N]
                                                     run every target to N executions (default
                                                     10000000) or N seconds (default 3600)
       cargo xtask fuzz --target NAME [--seconds N]  run one target N seconds (default 300)
       cargo xtask fuzz --list                       list the targets
       ... --sanitizer NAME                          address (default), none, memory, thread, leak
       ... -- ARGS                                   pass ARGS on to libFuzzer";

/// Longest a single input may run before libFuzzer reports it as a hang.
const UNIT_TIMEOUT_S: u64 = 30;
/// Largest single allocation, and largest resident size, a target may reach (MiB).
const MALLOC_LIMIT_MB: u64 = 256;
const RSS_LIMIT_MB: u64 = 1024;
/// What `--long` runs each target to, unless told otherwise: the issue's bar.
const LONG_RUNS: u64 = 10_000_000;
const LONG_SECONDS: u64 = 3600;

struct Args {
    smoke: bool,
    long: bool,
    runs: Option<u64>,
    sanitizer: String,
    list: bool,
    target: Option<String>,
    seconds: Option<u64>,
    extra: Vec<String>,
}

fn parse(args: &[String]) -> Result<Args> {
    let mut a = Args {
        smoke: false,
        long: false,
        runs: None,
        sanitizer: "address".into(),
        list: false,
        target: None,
        seconds: None,
        extra: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--smoke" => a.smoke = true,
            "--long" => a.long = true,
            "--sanitizer" => {
                let v = it.next().context("--sanitizer needs a name")?;
                if !["address", "none", "memory", "thread", "leak"].contains(&v.as_str()) {
                    bail!("--sanitizer {v:?}: use address, none, memory, thread or leak");
                }
                a.sanitizer = v.clone();
            }
            "--runs" => {
                let v = it.next().context("--runs needs a number")?;
                let n: u64 =
                    v.replace('_', "").parse().with_context(|| format!("--runs {v:?} is not a whole number"))?;
                if n == 0 {
                    bail!("--runs must be at least 1");
                }
                a.runs = Some(n);
            }
            "--list" => a.list = true,
            "--target" => a.target = Some(it.next().context("--target needs a target name")?.clone()),
            "--seconds" => {
                let v = it.next().context("--seconds needs a number")?;
                let n: u64 = v.parse().with_context(|| format!("--seconds {v:?} is not a whole number"))?;
                if n == 0 {
                    bail!("--seconds must be at least 1");
                }
                a.seconds = Some(n);
            }
            "--" => a.extra.extend(it.by_ref().cloned()),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    if [a.smoke, a.long, a.target.is_some()].iter().filter(|&&x| x).count() > 1 {
        bail!("give one of --smoke, --long and --target\n{USAGE}");
    }
    if a.runs.is_some() && a.smoke {
        bail!("--runs is for --long and --target runs\n{USAGE}");
    }
    if !a.smoke && !a.long && !a.list && a.target.is_none() {
        bail!("nothing to do\n{USAGE}");
    }
    Ok(a)
}

/// Entry point of `cargo xtask fuzz ARGS`.
pub fn run(args: &[String]) -> Result<()> {
    let a = parse(args)?;
    let dir = fuzz_dir();
    ensure_cargo_fuzz()?;
    let targets = list_targets(&dir)?;
    if a.list {
        for t in &targets {
            println!("{t}");
        }
        return Ok(());
    }
    let chosen: Vec<String> = match &a.target {
        Some(t) if targets.contains(t) => vec![t.clone()],
        Some(t) => bail!("no fuzz target `{t}`; the targets are: {}", targets.join(", ")),
        None => targets,
    };
    let seconds = a.seconds.unwrap_or(if a.smoke {
        20
    } else if a.long {
        LONG_SECONDS
    } else {
        300
    });
    let runs = a.runs.or(a.long.then_some(LONG_RUNS));
    seed_corpora(&dir);

    // One build of every chosen target first, so the timed runs do not include compiling.
    let mut build = cargo_fuzz(&dir, &["build", "--sanitizer", &a.sanitizer]);
    if chosen.len() == 1 {
        build.arg(&chosen[0]);
    }
    cmd::run(&mut build)?;

    let logs = dir.join("target").join("xtask-logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut results = Vec::new();
    for t in &chosen {
        let r = run_target(&dir, t, &a, seconds, runs, &logs.join(format!("{t}.log")))?;
        results.push(r);
    }

    match runs {
        Some(n) => println!(
            "\nfuzz summary (each target to {n} executions or {seconds} s, whichever first; sanitizer {}):",
            a.sanitizer
        ),
        None => println!("\nfuzz summary ({seconds} s per target; sanitizer {}):", a.sanitizer),
    }
    println!(
        "  {:<14} {:>12} {:>8} {:>9} {:>8} {:>6}  status",
        "target", "executions", "seconds", "exec/s", "peak MB", "cov"
    );
    for r in &results {
        let execs = r.execs.map_or("?".to_string(), |n| n.to_string());
        let rate = r.execs.map_or("?".to_string(), |n| format!("{:.0}", n as f64 / r.secs.max(0.001)));
        let rss = r.peak_rss_mb.map_or("?".to_string(), |n| n.to_string());
        let cov = r.coverage.map_or("?".to_string(), |n| n.to_string());
        let status = if r.ok { "ok".to_string() } else { format!("FAILED ({})", r.why) };
        println!("  {:<14} {:>12} {:>8.0} {:>9} {:>8} {:>6}  {status}", r.target, execs, r.secs, rate, rss, cov);
    }
    let failed: Vec<&TargetRun> = results.iter().filter(|r| !r.ok).collect();
    if !failed.is_empty() {
        for r in &failed {
            eprintln!("\n--- {} failed; last lines of {}:", r.target, r.log.display());
            for line in r.tail.iter() {
                eprintln!("{line}");
            }
        }
        bail!(
            "{} fuzz target(s) failed: {} (inputs saved under fuzz/artifacts/; reproduce with \
             `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET ARTIFACT`)",
            failed.len(),
            failed.iter().map(|r| r.target.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives below the workspace root").to_path_buf()
}

fn fuzz_dir() -> PathBuf {
    root().join("fuzz")
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// `cargo fuzz ARGS` in `fuzz/`, allowed the nightly-only flags it passes on a stable toolchain.
fn cargo_fuzz(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(cargo());
    c.arg("fuzz").args(args).current_dir(dir).env("RUSTC_BOOTSTRAP", "1").stdin(Stdio::null());
    c
}

/// Installs cargo-fuzz unless `cargo fuzz` already answers.
fn ensure_cargo_fuzz() -> Result<()> {
    let present = Command::new(cargo())
        .args(["fuzz", "--version"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    println!("cargo-fuzz is not installed; installing it");
    cmd::run(Command::new(cargo()).args(["install", "cargo-fuzz", "--locked"]).stdin(Stdio::null()))
        .context("installing cargo-fuzz")
}

fn list_targets(dir: &Path) -> Result<Vec<String>> {
    let mut c = cargo_fuzz(dir, &["list"]);
    let out = c.output().with_context(|| format!("could not start `{}`", show(&c)))?;
    if !out.status.success() {
        bail!("`{}` failed: {}", show(&c), String::from_utf8_lossy(&out.stderr));
    }
    let targets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if targets.is_empty() {
        bail!("`{}` listed no targets", show(&c));
    }
    Ok(targets)
}

struct TargetRun {
    target: String,
    ok: bool,
    why: String,
    execs: Option<u64>,
    /// libFuzzer's `stat::peak_rss_mb`.
    peak_rss_mb: Option<u64>,
    /// The last `cov:` figure libFuzzer printed (code edges reached).
    coverage: Option<u64>,
    secs: f64,
    log: PathBuf,
    tail: Vec<String>,
}

/// Runs one target for `seconds` (and at most `runs` inputs), as `a` asks.
fn run_target(dir: &Path, target: &str, a: &Args, seconds: u64, runs: Option<u64>, log: &Path) -> Result<TargetRun> {
    // A single target's run shows libFuzzer's output as it comes; smoke and long runs keep it in
    // the log and print the summary.
    let show_output = !a.smoke && !a.long;
    let mut c = cargo_fuzz(dir, &["run", "--sanitizer", &a.sanitizer, target]);
    // Naming the corpus directories replaces cargo-fuzz's default, so name the default as well.
    let corpus = dir.join("corpus").join(target);
    fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    c.arg(&corpus);
    let regressions = dir.join("regressions").join(target);
    if regressions.is_dir() {
        c.arg(&regressions);
    }
    c.arg("--");
    c.arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={UNIT_TIMEOUT_S}"))
        .arg(format!("-malloc_limit_mb={MALLOC_LIMIT_MB}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg("-print_final_stats=1")
        .args(runs.map(|n| format!("-runs={n}")))
        .args(&a.extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = show(&c);
    println!("\n$ {shown}");
    let start = Instant::now();
    let mut child = c.spawn().with_context(|| format!("could not start `{shown}`"))?;
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let reader = |stream: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if show_output {
                    eprintln!("{line}");
                }
                lines.push(line);
            }
            lines
        })
    };
    let (out, err) = (reader(Box::new(out)), reader(Box::new(err)));
    let status = child.wait().with_context(|| format!("waiting for `{shown}`"))?;
    let secs = start.elapsed().as_secs_f64();
    let mut lines = out.join().unwrap_or_default();
    lines.extend(err.join().unwrap_or_default());
    fs::write(log, lines.join("\n") + "\n").with_context(|| format!("writing {}", log.display()))?;

    let execs = executions(&lines);
    let (ok, why) = if status.success() {
        (true, String::new())
    } else {
        let why = lines
            .iter()
            .find(|l| l.contains("==ERROR:") || l.contains("panicked at") || l.starts_with("SUMMARY:"))
            .cloned()
            .unwrap_or_else(|| status.to_string());
        (false, why.trim().chars().take(160).collect())
    };
    let line = match execs {
        Some(n) => format!("{target}: {n} executions in {secs:.0} s ({:.0}/s)", n as f64 / secs.max(0.001)),
        None => format!("{target}: execution count not reported"),
    };
    println!("{line}{}", if ok { String::new() } else { format!(" — FAILED: {why}") });
    let tail = lines[lines.len().saturating_sub(60)..].to_vec();
    let peak_rss_mb = stat(&lines, "stat::peak_rss_mb:");
    let coverage = coverage(&lines);
    Ok(TargetRun {
        target: target.to_string(),
        ok,
        why,
        execs,
        peak_rss_mb,
        coverage,
        secs,
        log: log.to_path_buf(),
        tail,
    })
}

/// The number of inputs libFuzzer ran: its final `stat::number_of_executed_units: N`, else the
/// `Done N runs` line, else the last `#N` status line.
fn executions(lines: &[String]) -> Option<u64> {
    let number = |s: &str| s.trim().split(|c: char| !c.is_ascii_digit()).next().and_then(|d| d.parse().ok());
    let stat = lines.iter().rev().find_map(|l| l.strip_prefix("stat::number_of_executed_units:").and_then(number));
    let done = || lines.iter().rev().find_map(|l| l.strip_prefix("Done ").and_then(number));
    let status = || lines.iter().rev().find_map(|l| l.strip_prefix('#').and_then(number));
    stat.or_else(done).or_else(status)
}

/// The number after the last line that starts with `prefix` (libFuzzer's final `stat::` lines).
fn stat(lines: &[String], prefix: &str) -> Option<u64> {
    lines.iter().rev().find_map(|l| l.strip_prefix(prefix).and_then(|s| s.trim().parse().ok()))
}

/// The last `cov: N` libFuzzer printed in a status line.
fn coverage(lines: &[String]) -> Option<u64> {
    lines.iter().rev().find_map(|l| {
        let rest = &l[l.find(" cov: ")? + 6..];
        rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    })
}

// ---------------------------------------------------------------------------------------------
// Seeds from the golden vectors.

/// Writes valid encodings from the golden vectors into the targets' corpora (never overwriting),
/// shaped as each target reads its input. Missing vectors just mean no seeds.
fn seed_corpora(dir: &Path) {
    let vectors = root().join("crates/hoard-core/tests/vectors");
    let encodings = fs::read_to_string(vectors.join("encodings.json")).unwrap_or_default();
    let keyfile = fs::read_to_string(vectors.join("samples/v1/keyfile.json")).unwrap_or_default();
    let mut seeds: Vec<(&str, &str, Vec<u8>)> = Vec::new();
    for (target, field) in
        [("tree", "tree"), ("tree", "chunk_list"), ("snapshot", "snapshot"), ("index_segment", "index_segment")]
    {
        if let Some(b) = hex_after(&encodings, &format!("\"{field}\": \"")) {
            seeds.push((target, field, b));
        }
    }
    if let Some(b) = hex_after(&keyfile, "\"bytes\": \"") {
        seeds.push(("keyfile", "keyfile", b));
    }
    // A config under the vectors' key fails the fuzz key's MAC; the config target's mode 0 takes
    // `0 | version | body` and adds a valid MAC itself.
    if let Some(b) = hex_after(&encodings, "\"encoded\": \"") {
        if b.len() > 48 {
            let mut s = vec![0u8];
            s.extend_from_slice(&b[8..12]);
            s.extend_from_slice(&b[16..b.len() - 32]);
            seeds.push(("config", "config", s));
        }
    }
    // The object and pack_header targets seal plaintext themselves in mode 1.
    if let Some(snap) = hex_after(&encodings, "\"snapshot\": \"") {
        let mut s = vec![1u8, 4, 0];
        s.extend_from_slice(&snap);
        seeds.push(("object", "snapshot", s));
    }
    let mut header = vec![1u8];
    header.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
    header.extend_from_slice(&[1, 1, 0]);
    header.extend_from_slice(&[7; 32]);
    header.extend_from_slice(&[0, 40, 24, 0, 0]);
    seeds.push(("pack_header", "one-entry", header));
    for (field, mode) in [("lock", 0u8), ("condemned", 1u8)] {
        if let Some(b) = hex_after(&encodings, &format!("\"{field}\": \"")) {
            let mut s = vec![mode];
            s.extend_from_slice(&b);
            seeds.push(("lock", field, s));
        }
    }
    for (target, name, bytes) in seeds {
        let d = dir.join("corpus").join(target);
        let f = d.join(format!("seed-golden-{name}"));
        if !f.exists() {
            let _ = fs::create_dir_all(&d).and_then(|_| fs::write(&f, bytes));
        }
    }
}

/// Decodes the hex string that follows the first occurrence of `key` in `text`.
fn hex_after(text: &str, key: &str) -> Option<Vec<u8>> {
    let start = text.find(key)? + key.len();
    let hex = &text[start..start + text[start..].find('"')?];
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execution_counts() {
        let lines = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(executions(&lines(&["#1024 pulse cov: 3", "Done 5000 runs in 10 second(s)"])), Some(5000));
        assert_eq!(
            executions(&lines(&["Done 5000 runs in 10 second(s)", "stat::number_of_executed_units: 5001"])),
            Some(5001)
        );
        assert_eq!(executions(&lines(&["#4096\tpulse  cov: 3 ft: 4 corp: 1/1b"])), Some(4096));
        assert_eq!(executions(&lines(&["nothing"])), None);
        let final_lines = lines(&["#9000\tDONE   cov: 812 ft: 2000 corp: 40/1Kb", "stat::peak_rss_mb: 57"]);
        assert_eq!(stat(&final_lines, "stat::peak_rss_mb:"), Some(57));
        assert_eq!(coverage(&final_lines), Some(812));
        assert_eq!(coverage(&lines(&["no figures here"])), None);
    }

    #[test]
    fn arguments() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let a = parse(&s(&["--smoke", "--seconds", "10"])).unwrap();
        assert!(a.smoke && a.seconds == Some(10));
        let a = parse(&s(&["--target", "tree", "--", "-max_len=100"])).unwrap();
        assert_eq!(a.target.as_deref(), Some("tree"));
        assert_eq!(a.extra, s(&["-max_len=100"]));
        assert!(parse(&s(&["--seconds", "x", "--smoke"])).is_err());
        assert!(parse(&s(&[])).is_err());
        assert!(parse(&s(&["--smoke", "--target", "tree"])).is_err());
        let a = parse(&s(&["--long", "--runs", "1_000"])).unwrap();
        assert!(a.long && a.runs == Some(1000) && a.sanitizer == "address");
        assert_eq!(parse(&s(&["--long", "--sanitizer", "none"])).unwrap().sanitizer, "none");
        assert!(parse(&s(&["--long", "--sanitizer", "asan"])).is_err());
        assert!(parse(&s(&["--long", "--smoke"])).is_err());
        assert!(parse(&s(&["--smoke", "--runs", "5"])).is_err());
    }

    #[test]
    fn hex() {
        assert_eq!(hex_after(r#"{"a": "00ff10"}"#, "\"a\": \""), Some(vec![0, 255, 16]));
        assert_eq!(hex_after(r#"{"a": "0"}"#, "\"a\": \""), None);
    }
}

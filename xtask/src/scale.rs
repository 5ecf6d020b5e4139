//! `cargo xtask scale`: hoard at the sizes where memory that grows with the input would show, on
//! generated data.
//!
//! ```text
//! cargo xtask scale stream [--gib N] [--work DIR]            one N GiB stream (default 100) on stdin
//! cargo xtask scale files [--files N] [--work DIR] [--keep]  a tree of N small files (default
//!                                                            10,000,000), backed up twice
//! ```
//!
//! `stream` pipes a generated dump into `hoard backup --stdin --name scale.sql`. It is shaped like
//! `pg_dump`'s copy of pgbench_accounts (`aid TAB bid TAB abalance TAB filler`), with a counter
//! that makes every chunk new and a random balance: nothing deduplicates, and it compresses about
//! as well as a real dump, so the repository fits on the disk. It is written from this process on
//! a thread of its own, so hoard's figures (CPU, peak RSS from `wait4`) are hoard's alone.
//!
//! `files` writes N files of 8 to 200 bytes, each different, 1,000 to a directory, under
//! `DIR/files/tree` (reused by a later run of the same N; removed at the end unless `--keep`), then
//! backs it up twice: night 1 reads everything, night 2 finds nothing changed.
//!
//! Both print one table (wall, CPU, peak RSS, repository size, throughput) and write it as JSON to
//! `DIR/scale-stream.json` or `DIR/scale-files.json`.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;

use crate::bench::{du, measure, measure_fed, remove, s, Measured, Rng};
use crate::cmd;

const USAGE: &str = "\
usage: cargo xtask scale stream [--gib N] [--work DIR]
       cargo xtask scale files [--files N] [--work DIR] [--keep]

  stream     back up one generated N GiB dump from stdin (default 100)
  files      back up a generated tree of N small files twice (default 10000000)
  --work DIR where the repository and the tree go (default target/scale)
  --keep     leave the generated tree (and repository) in place for a later run";

const PASSWORD: &str = "hoard-scale-password";
const SEED: u64 = 0x7363_616c_6521;
const GIB: u64 = 1 << 30;
const MIB: f64 = 1024.0 * 1024.0;
/// Files per directory of the generated tree.
const PER_DIR: u64 = 1000;

struct Args {
    mode: String,
    gib: u64,
    files: u64,
    work: PathBuf,
    keep: bool,
}

fn parse(args: &[String]) -> Result<Args> {
    let mut it = args.iter();
    let mode = it.next().context(USAGE)?.clone();
    ensure!(mode == "stream" || mode == "files", "unknown scale mode `{mode}`\n{USAGE}");
    let mut a = Args { mode, gib: 100, files: 10_000_000, work: PathBuf::from("target/scale"), keep: false };
    let number = |flag: &str, v: Option<&String>| -> Result<u64> {
        let v = v.with_context(|| format!("{flag} needs a number"))?;
        let n: u64 = v.replace('_', "").parse().with_context(|| format!("{flag} {v:?} is not a whole number"))?;
        ensure!(n > 0, "{flag} must be at least 1");
        Ok(n)
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--gib" => a.gib = number("--gib", it.next())?,
            "--files" => a.files = number("--files", it.next())?,
            "--work" => a.work = PathBuf::from(it.next().context("--work needs a directory")?),
            "--keep" => a.keep = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    Ok(a)
}

/// Entry point of `cargo xtask scale ARGS`.
pub fn run(args: &[String]) -> Result<()> {
    let a = parse(args)?;
    let command_line = format!("cargo xtask scale {}", args.join(" "));
    fs::create_dir_all(&a.work).with_context(|| format!("creating {}", a.work.display()))?;
    let work = fs::canonicalize(&a.work)?;
    cmd::run(&mut cmd::new("cargo", &["build", "--release", "--bin", "hoard"]))?;
    let hoard = Hoard { bin: crate::project_root().join("target/release/hoard"), dir: work.join(&a.mode) };
    remove(&hoard.dir)?;
    fs::create_dir_all(hoard.dir.join("logs"))?;
    let mut rows = Vec::new();
    rows.push(hoard.step("init", hoard.command(&["init", "--kdf-memory", "65536"]), None, 0)?);

    let workload = if a.mode == "stream" {
        let bytes = a.gib * GIB;
        let c = hoard.command(&["backup", "--no-progress", "--stdin", "--name", "scale.sql"]);
        rows.push(hoard.step("backup", c, Some(Box::new(move |w| write_dump(w, bytes))), bytes)?);
        json!({ "kind": "stream", "bytes": bytes, "shape": "pgbench_accounts rows, unique aid, random abalance" })
    } else {
        let tree = work.join("files").join("tree");
        let (files, bytes) = generate_tree(&tree, a.files)?;
        for night in ["night1", "night2"] {
            rows.push(hoard.step(night, hoard.command(&["backup", "--no-progress", &s(&tree)]), None, bytes)?);
        }
        if !a.keep {
            remove(&work.join("files"))?;
        }
        json!({ "kind": "files", "files": files, "bytes": bytes, "per_directory": PER_DIR })
    };
    if !a.keep {
        remove(&hoard.dir.join("repo"))?;
    }

    let mut table = String::from(
        "| step     |    wall s |     cpu s |  peak RSS MiB |   repo MiB |  MiB/s |\n|----------|----------:|----------:|--------------:|-----------:|-------:|\n",
    );
    for r in &rows {
        let rate = if r.bytes > 0 { format!("{:.0}", r.bytes as f64 / MIB / r.m.wall.max(1e-9)) } else { "".into() };
        table.push_str(&format!(
            "| {:<8} | {:>9.2} | {:>9.2} | {:>13.1} | {:>10.1} | {:>6} |\n",
            r.step,
            r.m.wall,
            r.m.cpu,
            r.m.maxrss_kib as f64 / 1024.0,
            r.repo as f64 / MIB,
            rate
        ));
    }
    println!("\n{table}");
    let out = work.join(format!("scale-{}.json", a.mode));
    let results = json!({
        "command": command_line,
        "workload": workload,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "steps": rows.iter().map(|r| json!({
            "step": r.step, "wall_s": r.m.wall, "cpu_s": r.m.cpu, "peak_rss_kib": r.m.maxrss_kib,
            "repo_bytes": r.repo, "input_bytes": r.bytes,
        })).collect::<Vec<_>>(),
        "table": table,
    });
    fs::write(&out, serde_json::to_string_pretty(&results)? + "\n")?;
    println!("results written to {}", out.display());
    Ok(())
}

struct Row {
    step: String,
    m: Measured,
    repo: u64,
    bytes: u64,
}

/// The hoard binary, with its repository, cache and logs in `dir`.
struct Hoard {
    bin: PathBuf,
    dir: PathBuf,
}

impl Hoard {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = cmd::new(&s(&self.bin), args);
        c.env("HOARD_REPOSITORY", self.dir.join("repo"))
            .env("HOARD_PASSWORD", PASSWORD)
            .env("HOARD_CACHE_DIR", self.dir.join("cache"));
        c
    }

    fn step(&self, step: &str, c: Command, feed: Option<crate::bench::Feeder>, bytes: u64) -> Result<Row> {
        let log = self.dir.join("logs").join(format!("{step}.log"));
        let m = if feed.is_some() { measure_fed(c, &log, feed)? } else { measure(c, &log)? };
        let repo = du(&self.dir.join("repo"))?;
        println!(
            "  {step:<8} wall {:>8.2} s  cpu {:>8.2} s  peak RSS {:>7.1} MiB  repo {:>9.1} MiB",
            m.wall,
            m.cpu,
            m.maxrss_kib as f64 / 1024.0,
            repo as f64 / MIB
        );
        Ok(Row { step: step.to_string(), m, repo, bytes })
    }
}

/// Writes `total` bytes of pgbench_accounts-shaped rows: `aid TAB bid TAB abalance TAB filler`.
/// `aid` counts up (so no chunk repeats), `abalance` is random, the filler is 84 spaces, as
/// pgbench writes it.
fn write_dump(w: impl Write, total: u64) -> Result<()> {
    let mut w = BufWriter::with_capacity(1 << 20, w);
    let mut rng = Rng(SEED);
    let mut row = Vec::with_capacity(160);
    let mut aid = Counter::default();
    let mut written = 0u64;
    let filler = [b' '; 84];
    while written < total {
        aid.increment();
        row.clear();
        row.extend_from_slice(aid.digits());
        row.push(b'\t');
        decimal(&mut row, aid.value / 100_000 + 1);
        row.push(b'\t');
        let balance = rng.below(200_001) as i64 - 100_000;
        if balance < 0 {
            row.push(b'-');
        }
        decimal(&mut row, balance.unsigned_abs());
        row.push(b'\t');
        row.extend_from_slice(&filler);
        row.push(b'\n');
        let n = row.len().min((total - written) as usize);
        match w.write_all(&row[..n]) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => bail!("hoard stopped reading"),
            Err(e) => return Err(e.into()),
        }
        written += n as u64;
    }
    w.flush()?;
    Ok(())
}

/// A decimal counter kept as ASCII, so counting a billion rows costs no formatting.
#[derive(Default)]
struct Counter {
    value: u64,
    ascii: Vec<u8>,
}

impl Counter {
    fn increment(&mut self) {
        self.value += 1;
        for d in self.ascii.iter_mut().rev() {
            if *d == b'9' {
                *d = b'0';
            } else {
                *d += 1;
                return;
            }
        }
        self.ascii.insert(0, b'1');
    }

    fn digits(&self) -> &[u8] {
        &self.ascii
    }
}

fn decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// Writes `n` small files under `root` (1,000 per directory, two directory levels), each
/// different, unless a finished tree of the same `n` is there. Returns (files, bytes).
fn generate_tree(root: &Path, n: u64) -> Result<(u64, u64)> {
    let marker = root.with_file_name("complete");
    if fs::read_to_string(&marker).ok().as_deref() == Some(&format!("{n}\n")) {
        let bytes = (0..n).map(file_len).sum();
        println!("reusing the tree of {n} files at {}", root.display());
        return Ok((n, bytes));
    }
    remove(root)?;
    let _ = fs::remove_file(&marker);
    // Each file takes a 4 KiB block and an inode: say so before filling the disk.
    let need = n * 4096 + n * 256;
    let free = free_bytes(root.parent().unwrap())?;
    ensure!(
        free > need + (2 << 30),
        "{n} files need about {:.1} GiB of disk under {} and {:.1} GiB is free",
        need as f64 / GIB as f64,
        root.display(),
        free as f64 / GIB as f64
    );
    let started = Instant::now();
    let dirs = n.div_ceil(PER_DIR);
    let threads = std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(2);
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> Result<()> {
                    let mut buf = Vec::with_capacity(256);
                    for d in (t..dirs).step_by(threads as usize) {
                        let dir = root.join(format!("{:04}", d / 1000)).join(format!("{:03}", d % 1000));
                        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                        for i in d * PER_DIR..((d + 1) * PER_DIR).min(n) {
                            file_bytes(i, &mut buf);
                            let p = dir.join(format!("f{:03}", i % PER_DIR));
                            fs::write(&p, &buf).with_context(|| format!("writing {}", p.display()))?;
                        }
                        if t == 0 && d % 500 == 0 {
                            println!("  {} of {n} files written", d * PER_DIR);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("a tree writer panicked"))??;
        }
        Ok(())
    })?;
    fs::write(&marker, format!("{n}\n"))?;
    let bytes = (0..n).map(file_len).sum();
    println!("wrote {n} files ({:.1} MiB) in {:.0} s", bytes as f64 / MIB, started.elapsed().as_secs_f64());
    Ok((n, bytes))
}

/// Length of generated file `i`: 8 to 200 bytes.
fn file_len(i: u64) -> u64 {
    8 + Rng(SEED ^ i).next() % 193
}

/// Contents of generated file `i`: its number, then random hex, `file_len(i)` bytes in all.
fn file_bytes(i: u64, out: &mut Vec<u8>) {
    let len = file_len(i) as usize;
    out.clear();
    decimal(out, i);
    out.push(b'\n');
    let mut rng = Rng(SEED ^ i);
    rng.next();
    while out.len() < len {
        out.push(b"0123456789abcdef"[(rng.next() & 15) as usize]);
    }
    out.truncate(len);
}

fn free_bytes(p: &Path) -> Result<u64> {
    let c = std::ffi::CString::new(s(p))?;
    // SAFETY: statvfs is plain data the call fills in; zeroed is a valid value of it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a NUL-terminated path and st a live local.
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    ensure!(r == 0, "statvfs {}: {}", p.display(), std::io::Error::last_os_error());
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_rows_look_like_pgbench_and_stop_at_the_size() {
        let mut out = Vec::new();
        write_dump(&mut out, 1000).unwrap();
        assert_eq!(out.len(), 1000);
        let first = out.split(|&b| b == b'\n').next().unwrap();
        let fields: Vec<&[u8]> = first.split(|&b| b == b'\t').collect();
        assert_eq!(fields.len(), 4);
        assert_eq!(fields[0], b"1");
        assert_eq!(fields[1], b"1");
        assert_eq!(fields[3], &[b' '; 84][..]);
    }

    #[test]
    fn counter_counts_in_ascii() {
        let mut c = Counter::default();
        for _ in 0..1009 {
            c.increment();
        }
        assert_eq!(c.digits(), b"1009");
        assert_eq!(c.value, 1009);
    }

    #[test]
    fn generated_files_differ_and_have_their_length() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        file_bytes(7, &mut a);
        file_bytes(8, &mut b);
        assert_ne!(a, b);
        assert_eq!(a.len() as u64, file_len(7));
        assert!((8..=200).contains(&file_len(123_456)));
    }
}

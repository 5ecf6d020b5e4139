//! `cargo xtask bench`: hoard against restic, Borg and rustic on a two-night workload built from
//! real data, measured per tool and step.
//!
//! ```text
//! cargo xtask bench [--work DIR] [--tree PATH] [--pgbench-scale N] [--tools LIST] [--rounds N] [--no-install]
//! ```
//!
//! The workload: night 1 is a copy of a real file tree (default `/usr/share`) and a plain
//! `pg_dump` of a pgbench database that a throwaway PostgreSQL 15 cluster (started here, on a
//! private port and socket directory under the work dir, as `nobody` when we are root) holds.
//! Night 2 is the same tree changed in place — 2% of the files rewritten in part, 1% deleted, 1%
//! added, all from a fixed seed so every tool sees the same changes — and a new dump taken after
//! `pgbench -t 2000`.
//!
//! Each tool in turn: init, back up night 1 (the tree directory and the dump file), change the
//! tree in place, back up night 2 (the tool's normal incremental path: same paths, same host),
//! restore the night-2 snapshot into an empty directory and compare it with the source. Each step
//! is timed (wall), and the child's user+sys CPU time and peak RSS come from `wait4`'s rusage; the
//! repository's size is its `du`. One table is printed, with each tool's figures as a ratio to
//! hoard's, and written as JSON to `<work>/results.json`.
//!
//! Beside the three peers runs `tar`, a reference rather than a rival: GNU tar's incremental
//! archives (`--listed-incremental`, level 0 then level 1) piped through `zstd -3` on every core.
//! It is what the seeds' nightly `tar czf` scripts would be with zstd and made incremental: no
//! encryption, no deduplication, no index; read, compress, write. Its times say what this machine
//! does for the same data with nothing but the compression, so the peers' ratios can be read
//! against what is possible. The "fastest other tool" ratio counts the peers only.
//!
//! With `--rounds N` the whole sequence runs N times, each round on fresh copies and starting
//! one tool further along (hoard, restic, Borg, rustic, tar; then restic, Borg, rustic, tar,
//! hoard; …), so that whatever the first runs pay falls on each tool in turn; the table then
//! holds each figure's median over the rounds, and a second table every round's wall times. On a shared virtual
//! machine single runs move by more than the differences being measured (PERFORMANCE.md).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::{cmd, freed};

const USAGE: &str = "\
usage: cargo xtask bench [--work DIR] [--tree PATH] [--pgbench-scale N] [--tools LIST] [--rounds N] [--no-install]

  --work DIR          where everything goes (default target/bench); results in DIR/results.json
  --tree PATH         the real file tree of night 1 (default /usr/share)
  --pgbench-scale N   pgbench -i scale of the database dumped each night (default 20)
  --tools LIST        comma list of hoard, restic, borg, rustic, tar (default: all five;
                      tar is GNU tar --listed-incremental | zstd -3, a reference, not a peer)
  --rounds N          run everything N times, each round starting one tool further along; report medians (default 1)
  --no-install        skip a missing tool instead of installing it (apt-get / cargo install)";

const ALL_TOOLS: [&str; 5] = ["hoard", "restic", "borg", "rustic", "tar"];
/// The tools hoard is measured against; `tar` is a reference for what the machine can do.
const PEERS: [&str; 3] = ["restic", "borg", "rustic"];
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const PG_PORT: &str = "54329";
const PASSWORD: &str = "hoard-bench-password";
/// Seed of the night-2 changes: fixed, so every tool (and every run) sees the same ones.
const SEED: u64 = 0x686f_6172_6421;
/// Transactions pgbench runs between the two dumps.
const PGBENCH_TRANSACTIONS: &str = "2000";

struct Args {
    work: PathBuf,
    tree: PathBuf,
    scale: u32,
    tools: Vec<String>,
    rounds: u32,
    no_install: bool,
}

fn parse(args: &[String]) -> Result<Args> {
    let mut a = Args {
        work: PathBuf::from("target/bench"),
        tree: PathBuf::from("/usr/share"),
        scale: 20,
        tools: ALL_TOOLS.iter().map(|s| s.to_string()).collect(),
        rounds: 1,
        no_install: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--work" => a.work = PathBuf::from(it.next().context("--work needs a directory")?),
            "--tree" => a.tree = PathBuf::from(it.next().context("--tree needs a path")?),
            "--pgbench-scale" => {
                let v = it.next().context("--pgbench-scale needs a number")?;
                a.scale = v.parse().with_context(|| format!("--pgbench-scale {v:?} is not a whole number"))?;
                ensure!(a.scale >= 1, "--pgbench-scale must be at least 1");
            }
            "--tools" => {
                let v = it.next().context("--tools needs a comma list")?;
                a.tools = Vec::new();
                for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    ensure!(ALL_TOOLS.contains(&t), "unknown tool `{t}` (known: {})", ALL_TOOLS.join(", "));
                    if !a.tools.iter().any(|x| x == t) {
                        a.tools.push(t.to_string());
                    }
                }
                ensure!(!a.tools.is_empty(), "--tools names no tool");
            }
            "--rounds" => {
                let v = it.next().context("--rounds needs a number")?;
                a.rounds = v.parse().with_context(|| format!("--rounds {v:?} is not a whole number"))?;
                ensure!((1..=20).contains(&a.rounds), "--rounds must be 1 to 20");
            }
            "--no-install" => a.no_install = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    Ok(a)
}

/// Entry point of `cargo xtask bench ARGS`.
pub fn run(args: &[String]) -> Result<()> {
    let a = parse(args)?;
    let command_line = format!("cargo xtask bench {}", args.join(" "));
    fs::create_dir_all(&a.work).with_context(|| format!("creating {}", a.work.display()))?;
    let work = fs::canonicalize(&a.work)?;
    let tree_src = fs::canonicalize(&a.tree).with_context(|| format!("--tree {}", a.tree.display()))?;
    ensure!(tree_src.is_dir(), "--tree {} is not a directory", tree_src.display());
    ensure!(!work.starts_with(&tree_src), "the work dir {} lies inside --tree", work.display());

    // Which tools run, and why the others do not.
    let mut skipped: Vec<(String, String)> = Vec::new();
    for t in ALL_TOOLS {
        if !a.tools.iter().any(|x| x == t) {
            skipped.push((t.to_string(), "not selected (--tools)".to_string()));
        }
    }
    let mut tools: Vec<Tool> = Vec::new();
    for name in &a.tools {
        match Tool::prepare(name, a.no_install) {
            Ok(t) => tools.push(t),
            Err(e) => {
                eprintln!("bench: skipping {name}: {e:#}");
                skipped.push((name.clone(), format!("{e:#}")));
            }
        }
    }
    ensure!(!tools.is_empty(), "no tool left to run");

    // The dumps of both nights, taken once; every tool backs up the same bytes.
    let dumps = work.join("dumps");
    let dump1 = dumps.join("night1.sql");
    let dump2 = dumps.join("night2.sql");
    make_dumps(&work, a.scale, &dump1, &dump2)?;

    clear_leftovers(&work, &tools)?;
    wait_for_freed_inodes(&work);
    let logs = work.join("logs");
    fs::create_dir_all(&logs)?;

    let mut rows: Vec<Row> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut workload = Value::Null;
    // Every round's copies, repositories and logs have names of their own.
    let runs: Vec<(u32, &Tool, String)> = (1..=a.rounds)
        .flat_map(|round| round_order(&tools, round).map(move |t| (round, t)))
        .map(|(round, t)| (round, t, if a.rounds > 1 { format!("{}-r{round}", t.name) } else { t.name.clone() }))
        .collect();
    for (round, tool, run_name) in &runs {
        let (round, run_name) = (*round, run_name.as_str());
        if a.rounds > 1 {
            println!("\n=== {} ({}), round {round} of {} ===", tool.name, tool.version, a.rounds);
        } else {
            println!("\n=== {} ({}) ===", tool.name, tool.version);
        }
        // Night 1, a fresh copy for every tool (see `clear_leftovers` for why nothing is
        // deleted until all tools have run).
        let data = work.join(format!("data-{run_name}"));
        let tree = data.join("tree");
        let dump = data.join("pgbench.sql");
        fs::create_dir_all(&data)?;
        cmd::run(&mut cmd::new("cp", &["-a", "--", &s(&tree_src), &s(&tree)]))?;
        fs::copy(&dump1, &dump)?;
        let night1 = tree_size(&tree)?;
        settle()?;

        let tdir = work.join("tools").join(run_name);
        fs::create_dir_all(tdir.join("home"))?;
        let repo = tdir.join("repo");
        let restore_dir = tdir.join("restore");
        let paths = [tree.as_path(), dump.as_path()];

        let mut step = |step: &str, c: Command| -> Result<()> {
            let m = measure(c, &logs.join(format!("{run_name}-{step}.log")))
                .with_context(|| format!("{run_name} {step}"))?;
            let repo_bytes = du(&repo)?;
            println!(
                "  {step:<8} wall {:>8.2} s  cpu {:>8.2} s  rss {:>7.1} MiB  repo {:>8.1} MiB",
                m.wall,
                m.cpu,
                m.maxrss_kib as f64 / 1024.0,
                repo_bytes as f64 / MIB
            );
            rows.push(Row {
                tool: tool.name.clone(),
                round,
                step: step.to_string(),
                wall: m.wall,
                cpu: m.cpu,
                rss_kib: m.maxrss_kib,
                repo: repo_bytes,
            });
            Ok(())
        };

        match tool.init(&tdir, &repo) {
            Some(c) => step("init", c)?,
            None => fs::create_dir_all(&repo)?,
        }
        step("night1", tool.backup(&tdir, &repo, &paths, "night1"))?;

        let changes = change_tree(&tree, SEED)?;
        fs::copy(&dump2, &dump)?;
        let night2 = tree_size(&tree)?;
        settle()?;
        if workload.is_null() {
            workload = json!({
                "tree": tree_src.to_string_lossy(),
                "tree_files_night1": night1.0,
                "tree_bytes_night1": night1.1,
                "tree_files_night2": night2.0,
                "tree_bytes_night2": night2.1,
                "changes": { "rewritten": changes.rewritten, "deleted": changes.deleted, "added": changes.added },
                "pgbench_scale": a.scale,
                "pgbench_transactions": PGBENCH_TRANSACTIONS.parse::<u64>().unwrap_or(0),
                "dump_bytes_night1": fs::metadata(&dump1)?.len(),
                "dump_bytes_night2": fs::metadata(&dump2)?.len(),
            });
            println!(
                "  workload: night 1 {} files {:.1} MiB + dump {:.1} MiB; night 2: {} rewritten, {} deleted, {} added",
                night1.0,
                night1.1 as f64 / MIB,
                fs::metadata(&dump1)?.len() as f64 / MIB,
                changes.rewritten,
                changes.deleted,
                changes.added
            );
        }
        step("night2", tool.backup(&tdir, &repo, &paths, "night2"))?;

        fs::create_dir_all(&restore_dir)?;
        step("restore", tool.restore(&tdir, &repo, &restore_dir))?;
        let mut bad = Vec::new();
        for p in paths {
            match locate_restored(&restore_dir, p) {
                Some(r) => compare(p, &r, &mut bad)?,
                None => bad.push(format!("{} not found under {}", p.display(), restore_dir.display())),
            }
        }
        if bad.is_empty() {
            println!("  restore matches the source");
        } else {
            for b in bad.iter().take(10) {
                eprintln!("  MISMATCH {}: {b}", tool.name);
            }
            failures.push(format!("{run_name}: restore differs from the source in {} places", bad.len()));
        }
        if let Some(r) = rows.last_mut() {
            r.step = if bad.is_empty() { "restore".into() } else { "restore!".into() };
        }
    }
    let done: Vec<PathBuf> = runs
        .iter()
        .flat_map(|(_, _, run_name)| {
            [work.join(format!("data-{run_name}")), work.join("tools").join(run_name).join("restore")]
        })
        .collect();
    remove_all(&work, &done)?;
    if let Some(fs) = freed::journalless_ext4(&work) {
        println!(
            "\nremoved the copies and restores; {} is ext4 without a journal, so a bench started in the next {} s \
             waits until then",
            fs.device,
            freed::WINDOW.as_secs()
        );
    }

    let medians = medians(&rows);
    let mut table = render(&medians, &skipped, &failures);
    if a.rounds > 1 {
        table = format!(
            "figures: the median of {} rounds; every round's wall times below\n{table}\n{}",
            a.rounds,
            render_rounds(&rows, a.rounds)
        );
    }
    println!("\n{table}");
    let results = json!({
        "command": command_line,
        "date": date_utc(),
        "host": { "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
        "workload": workload,
        "tools": tools.iter().map(|t| json!({"name": t.name, "version": t.version, "settings": t.settings})).collect::<Vec<_>>(),
        "skipped": skipped.iter().map(|(t, why)| json!({"tool": t, "reason": why})).collect::<Vec<_>>(),
        "rounds": a.rounds,
        "runs": rows.iter().map(|r| json!({
            "tool": r.tool, "round": r.round, "step": step_key(&r.step), "wall_s": r.wall, "cpu_s": r.cpu,
            "peak_rss_kib": r.rss_kib, "repo_bytes": r.repo,
        })).collect::<Vec<_>>(),
        "results": medians.iter().map(|r| {
            let base = medians.iter().find(|b| b.tool == "hoard" && step_key(&b.step) == step_key(&r.step));
            json!({
                "tool": r.tool, "step": step_key(&r.step), "wall_s": r.wall, "cpu_s": r.cpu,
                "peak_rss_kib": r.rss_kib, "repo_bytes": r.repo,
                "ratio_to_hoard": base.map(|b| json!({
                    "wall": ratio(r.wall, b.wall), "cpu": ratio(r.cpu, b.cpu),
                    "peak_rss": ratio(r.rss_kib as f64, b.rss_kib as f64),
                    "repo": ratio(r.repo as f64, b.repo as f64),
                })),
            })
        }).collect::<Vec<_>>(),
        "failures": failures,
        "table": table,
    });
    let out = work.join("results.json");
    fs::write(&out, serde_json::to_string_pretty(&results)? + "\n")?;
    println!("results written to {}", out.display());
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

const MIB: f64 = 1024.0 * 1024.0;

pub(crate) fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Writes the data just prepared for a night to disk before a tool backs it up.
///
/// A night's copy of the tree (525 MiB for `/usr/share`) and its dump are still in the page
/// cache, dirty, when the backup starts; the kernel writes them out while the tool runs, and a
/// tool that makes its writes durable (hoard, restic and Borg `fsync` what they store) then
/// waits for some of it, more or less by chance: hoard's night 1 took 1.98 to 2.65 s over five
/// rounds of one run while tar's, which syncs nothing, took 1.71 to 1.77 s in four of them. A
/// nightly backup reads data that has been on disk for hours, so every tool now starts with
/// none of it dirty.
fn settle() -> Result<()> {
    cmd::run(&mut cmd::new("sync", &[]))
}

/// Removes what an earlier run left in `work` for these tools. The bench deletes nothing while
/// it measures: leftovers go first, every tool gets its own copy of the data, and the copies and
/// restores are removed after the last tool. What was freed is then waited out where the
/// filesystem needs it ([`wait_for_freed_inodes`]).
fn clear_leftovers(work: &Path, tools: &[Tool]) -> Result<()> {
    let mut gone = vec![work.join("data")];
    // A tool's copies and repositories, of a run with or without rounds ("hoard", "hoard-r2").
    let ours = |name: &str, prefix: &str| {
        tools.iter().any(|t| {
            let base = format!("{prefix}{}", t.name);
            name == base || name.strip_prefix(&format!("{base}-r")).is_some_and(|n| n.parse::<u32>().is_ok())
        })
    };
    for (dir, prefix) in [(work.to_path_buf(), "data-"), (work.join("tools"), "")] {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for e in entries {
            let e = e?;
            if ours(&e.file_name().to_string_lossy(), prefix) {
                gone.push(e.path());
            }
        }
    }
    let gone: Vec<_> = gone.into_iter().filter(|p| p.exists()).collect();
    remove_all(work, &gone)
}

/// Removes trees under `work`, syncs, and notes the time if the filesystem remembers freed
/// inodes ([`freed`]).
fn remove_all(work: &Path, gone: &[PathBuf]) -> Result<()> {
    if gone.is_empty() {
        return Ok(());
    }
    for p in gone {
        remove(p)?;
    }
    cmd::run(&mut cmd::new("sync", &[]))?;
    if let Some(fs) = freed::journalless_ext4(work) {
        fs.freed()?;
    }
    Ok(())
}

/// On ext4 without a journal, waits until the inodes freed by this or an earlier run's removals
/// on the same filesystem are out of the window in which ext4 passes over them ([`freed`]);
/// a restore measured inside it measures the filesystem.
fn wait_for_freed_inodes(work: &Path) {
    let Some(fs) = freed::journalless_ext4(work) else { return };
    let wait = fs.remaining();
    if wait.is_zero() {
        return;
    }
    println!(
        "waiting {:.0} s: files were removed on {} less than {} s ago, and ext4 without a journal searches past \
         inodes freed that recently for every new one",
        wait.as_secs_f64(),
        fs.device,
        freed::WINDOW.as_secs()
    );
    std::thread::sleep(wait);
}

/// Removes a directory tree; one that is not there is fine.
pub(crate) fn remove(p: &Path) -> Result<()> {
    match fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
    }
}

// ---------------------------------------------------------------------------------------------
// The tools

struct Tool {
    name: String,
    bin: String,
    version: String,
    settings: String,
}

impl Tool {
    /// Find (or install, unless `no_install`) the tool; an error says why it cannot run.
    fn prepare(name: &str, no_install: bool) -> Result<Tool> {
        let (bin, settings) = match name {
            "hoard" => {
                cmd::run(&mut cmd::new("cargo", &["build", "--release"]))?;
                let bin = crate::project_root().join("target/release/hoard");
                (s(&bin), "defaults (zstd level 3), init --kdf-memory 65536".to_string())
            }
            "restic" => (
                apt_tool("restic", "restic", no_install)?,
                "defaults; --compression auto (restic 0.14 has no zstd level setting)".to_string(),
            ),
            "borg" => (
                apt_tool("borg", "borgbackup", no_install)?,
                "--encryption repokey-blake2, --compression zstd,3".to_string(),
            ),
            "rustic" => (cargo_tool("rustic", "rustic-rs", no_install)?, "init --set-compression 3".to_string()),
            "tar" => {
                let zstd = apt_tool("zstd", "zstd", no_install)?;
                let (_, out, err) = cmd::output(&mut cmd::new(&zstd, &["--version"]))?;
                // "*** Zstandard CLI (64-bit) v1.5.4, by Yann Collet ***"
                let zv = format!("{out}{err}").lines().next().unwrap_or("").trim_matches(['*', ' ']).to_string();
                (
                    apt_tool("tar", "tar", no_install)?,
                    format!(
                        "reference, not a peer: GNU tar --listed-incremental (level 0, then 1) | zstd -3 -T0 ({zv}); \
                         no encryption, no deduplication"
                    ),
                )
            }
            other => bail!("unknown tool {other}"),
        };
        // restic has a `version` command and no `--version` flag.
        let flag = if name == "restic" { "version" } else { "--version" };
        let (_, out, err) = cmd::output(&mut cmd::new(&bin, &[flag]))?;
        let version = format!("{out}{err}").lines().next().unwrap_or("").trim().to_string();
        Ok(Tool { name: name.to_string(), bin, version, settings })
    }

    /// A command for this tool with its repository, password, HOME and cache inside `tdir`.
    fn command(&self, tdir: &Path, repo: &Path, args: &[&str]) -> Command {
        let mut c = cmd::new(&self.bin, args);
        let home = tdir.join("home");
        c.env("HOME", &home).env("XDG_CACHE_HOME", home.join(".cache")).env("XDG_CONFIG_HOME", home.join(".config"));
        match self.name.as_str() {
            "hoard" => {
                c.env("HOARD_REPOSITORY", repo)
                    .env("HOARD_PASSWORD", PASSWORD)
                    .env("HOARD_CACHE_DIR", tdir.join("cache"));
            }
            "restic" => {
                c.env("RESTIC_REPOSITORY", repo)
                    .env("RESTIC_PASSWORD", PASSWORD)
                    .env("RESTIC_CACHE_DIR", tdir.join("cache"));
            }
            "borg" => {
                c.env("BORG_REPO", repo).env("BORG_PASSPHRASE", PASSWORD).env("BORG_BASE_DIR", &home);
            }
            "rustic" => {
                c.env("RUSTIC_REPOSITORY", repo)
                    .env("RUSTIC_PASSWORD", PASSWORD)
                    .env("RUSTIC_CACHE_DIR", tdir.join("cache"));
            }
            _ => {}
        }
        c
    }

    /// The command that creates the repository; none for `tar`, whose repository is a directory.
    fn init(&self, tdir: &Path, repo: &Path) -> Option<Command> {
        let args: &[&str] = match self.name.as_str() {
            "hoard" => &["init", "--kdf-memory", "65536"],
            "restic" => &["init"],
            "borg" => &["init", "--encryption", "repokey-blake2"],
            "tar" => return None,
            _ => &["init", "--set-compression", "3"],
        };
        Some(self.command(tdir, repo, args))
    }

    fn backup(&self, tdir: &Path, repo: &Path, paths: &[&Path], night: &str) -> Command {
        if self.name == "tar" {
            // Level 0 on night 1, level 1 on night 2: tar keeps the state in `snar`. Only the
            // files that changed are read and stored on night 2, the directories' listings
            // record what was deleted.
            let mut c = cmd::new(
                "bash",
                &[
                    "-c",
                    r#"set -o pipefail; "$3" --listed-incremental="$1/snar" -cf - "${@:4}" | zstd -3 -T0 -q -o "$1/$2.tar.zst""#,
                    "bash",
                    &s(repo),
                    night,
                    &self.bin,
                ],
            );
            c.args(paths.iter().map(|p| s(p)));
            return c;
        }
        let mut args: Vec<String> = match self.name.as_str() {
            "hoard" => vec!["backup".into(), "--no-progress".into()],
            "restic" | "rustic" => vec!["backup".into()],
            _ => vec!["create".into(), "--compression".into(), "zstd,3".into(), format!("::{night}")],
        };
        args.extend(paths.iter().map(|p| s(p)));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.command(tdir, repo, &args)
    }

    fn restore(&self, tdir: &Path, repo: &Path, target: &Path) -> Command {
        let t = s(target);
        match self.name.as_str() {
            "hoard" | "restic" => self.command(tdir, repo, &["restore", "latest", "--target", &t]),
            "borg" => {
                let mut c = self.command(tdir, repo, &["extract", "::night2"]);
                c.current_dir(target);
                c
            }
            // Level 0, then level 1, which also deletes what night 2 no longer has.
            "tar" => cmd::new(
                "bash",
                &[
                    "-c",
                    r#"set -o pipefail; for n in night1 night2; do zstd -dc -q "$1/$n.tar.zst" | "$3" --listed-incremental=/dev/null -C "$2" -xf - || exit 1; done"#,
                    "bash",
                    &s(repo),
                    &t,
                    &self.bin,
                ],
            ),
            _ => self.command(tdir, repo, &["restore", "latest", &t]),
        }
    }
}

/// `bin` from PATH, or the Debian package `pkg` installed with apt-get.
fn apt_tool(bin: &str, pkg: &str, no_install: bool) -> Result<String> {
    if let Some(p) = cmd::which(bin) {
        return Ok(p);
    }
    ensure!(!no_install, "`{bin}` is not installed (Debian package {pkg}) and --no-install was given");
    cmd::run(cmd::new("apt-get", &["install", "-y", pkg]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    cmd::which(bin).with_context(|| format!("`{bin}` still missing after installing {pkg}"))
}

/// `bin` from PATH or ~/.cargo/bin, or the crate `krate` installed with cargo install.
fn cargo_tool(bin: &str, krate: &str, no_install: bool) -> Result<String> {
    let in_cargo_home = || {
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
        let p = home.join("bin").join(bin);
        p.is_file().then(|| s(&p))
    };
    if let Some(p) = cmd::which(bin).or_else(in_cargo_home) {
        return Ok(p);
    }
    ensure!(!no_install, "`{bin}` is not installed (cargo install {krate}) and --no-install was given");
    cmd::run(&mut cmd::new("cargo", &["install", "--locked", krate]))?;
    cmd::which(bin).or_else(in_cargo_home).with_context(|| format!("`{bin}` still missing after installing {krate}"))
}

// ---------------------------------------------------------------------------------------------
// Measuring

pub(crate) struct Measured {
    pub(crate) wall: f64,
    pub(crate) cpu: f64,
    pub(crate) maxrss_kib: u64,
}

/// Run `c` with its output in `log`, and measure it: wall time, and from `wait4`'s rusage the
/// child's user+sys CPU time and peak resident set (of it and the descendants it waited for).
pub(crate) fn measure(c: Command, log: &Path) -> Result<Measured> {
    measure_fed(c, log, None)
}

/// What writes a measured child's standard input, on a thread of its own, while it runs.
pub(crate) type Feeder = Box<dyn FnOnce(std::process::ChildStdin) -> Result<()> + Send>;

/// [`measure`], with the child's standard input written by `feed` (then closed) when given. The
/// feeder's own CPU time and memory are this process's, not the child's, so they are not counted.
pub(crate) fn measure_fed(mut c: Command, log: &Path, feed: Option<Feeder>) -> Result<Measured> {
    let shown = cmd::show(&c);
    println!("$ {shown}");
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    c.stdout(out.try_clone()?).stderr(out);
    if feed.is_some() {
        c.stdin(Stdio::piped());
    }
    let start = Instant::now();
    let mut child = c.spawn().with_context(|| format!("could not start `{shown}`"))?;
    let feeder = feed.map(|f| {
        let stdin = child.stdin.take().expect("stdin was piped");
        std::thread::spawn(move || f(stdin))
    });
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data that wait4 fills in; zeroed is a valid value of it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = loop {
        // SAFETY: pid is our own child, not yet reaped (`child` is never waited on through std);
        // status and ru point to live locals.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        break r;
    };
    let wall = start.elapsed().as_secs_f64();
    drop(child);
    ensure!(r == pid, "wait4 on `{shown}`: {}", std::io::Error::last_os_error());
    let fed = feeder.map(|t| t.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the input feeder panicked"))));
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let tail = fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("`{shown}` failed (wait status {status:#x}); end of {}:\n{}", log.display(), tail.join("\n"));
    }
    if let Some(Err(e)) = fed {
        return Err(e.context(format!("writing the input of `{shown}`")));
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Measured { wall, cpu: tv(ru.ru_utime) + tv(ru.ru_stime), maxrss_kib: ru.ru_maxrss.max(0) as u64 })
}

/// Disk usage of `p` as `du` counts it: allocated blocks, each inode once.
pub(crate) fn du(p: &Path) -> Result<u64> {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let m = match fs::symlink_metadata(&d) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("stat {}", d.display())),
        };
        if seen.insert((m.dev(), m.ino())) {
            total += m.blocks() * 512;
        }
        if m.is_dir() {
            for e in fs::read_dir(&d)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------------
// The database dumps

/// Start a throwaway PostgreSQL 15 cluster under `work/pg`, fill a pgbench database of `scale`,
/// dump it to `dump1`, run pgbench transactions, dump it to `dump2`, and stop the cluster.
fn make_dumps(work: &Path, scale: u32, dump1: &Path, dump2: &Path) -> Result<()> {
    ensure!(
        Path::new(PG_BIN).join("initdb").is_file(),
        "PostgreSQL 15 server binaries not found in {PG_BIN} (Debian package postgresql-15)"
    );
    fs::create_dir_all(dump1.parent().expect("dump has a parent"))?;
    let pg = work.join("pg");
    if let Some(pid) = running_postmaster(&pg.join("data")) {
        // A cluster left by an interrupted run: stop it before starting afresh.
        eprintln!("bench: stopping the cluster an earlier run left running (pid {pid})");
        let _ = pg_cmd(&pg, "pg_ctl", &["-D", &s(&pg.join("data")), "-m", "immediate", "-w", "stop"]).status();
    }
    remove(&pg)?;
    fs::create_dir_all(pg.join("sock"))?;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        // The server refuses to run as root: hand its directory to nobody, and make sure nobody
        // can reach it.
        for d in [pg.clone(), pg.join("sock")] {
            chown_nobody(&d)?;
        }
        let mut a = pg.parent();
        while let Some(d) = a {
            let m = fs::metadata(d)?;
            ensure!(
                m.mode() & 0o001 != 0,
                "{} is not searchable by others; nobody cannot reach {}",
                d.display(),
                pg.display()
            );
            a = d.parent();
        }
    }
    let data = s(&pg.join("data"));
    let sock = s(&pg.join("sock"));
    run_pg(&pg, "initdb", &["-D", &data, "-A", "trust", "-U", "bench", "--no-sync", "-E", "UTF8"])?;
    let opts = format!("-p {PG_PORT} -k {sock} -c listen_addresses='' -c fsync=off");
    run_pg(&pg, "pg_ctl", &["-D", &data, "-l", &s(&pg.join("server.log")), "-o", &opts, "-w", "start"])?;
    let cluster = Cluster { pg: pg.clone(), data: data.clone() };
    let conn = ["-h", &sock, "-p", PG_PORT, "-U", "bench"];
    let with = |extra: &[&str]| -> Vec<String> { conn.iter().chain(extra).map(|x| x.to_string()).collect() };
    run_pg(&pg, "createdb", &strs(&with(&["bench"])))?;
    let scale = scale.to_string();
    run_pg(&pg, "pgbench", &strs(&with(&["-i", "-q", "-s", &scale, "bench"])))?;
    dump_to(&pg, &strs(&with(&["bench"])), dump1)?;
    run_pg(&pg, "pgbench", &strs(&with(&["-n", "-t", PGBENCH_TRANSACTIONS, "bench"])))?;
    dump_to(&pg, &strs(&with(&["bench"])), dump2)?;
    drop(cluster);
    Ok(())
}

fn strs(x: &[String]) -> Vec<&str> {
    x.iter().map(String::as_str).collect()
}

/// Stops the cluster when dropped, also when a step before failed.
struct Cluster {
    pg: PathBuf,
    data: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut c = pg_cmd(&self.pg, "pg_ctl", &["-D", &self.data, "-m", "fast", "-w", "stop"]);
        if let Err(e) = cmd::run(&mut c) {
            eprintln!("bench: stopping the PostgreSQL cluster: {e:#}");
        }
    }
}

fn running_postmaster(data: &Path) -> Option<u32> {
    let pid: u32 = fs::read_to_string(data.join("postmaster.pid")).ok()?.lines().next()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

fn chown_nobody(p: &Path) -> Result<()> {
    let c = std::ffi::CString::new(s(p))?;
    // SAFETY: c is a valid NUL-terminated path; 65534 is nobody/nogroup.
    let r = unsafe { libc::chown(c.as_ptr(), 65534, 65534) };
    ensure!(r == 0, "chown nobody {}: {}", p.display(), std::io::Error::last_os_error());
    fs::set_permissions(p, fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// A PostgreSQL program, run as nobody (with `setpriv`) when we are root, in `pg`.
fn pg_cmd(pg: &Path, program: &str, args: &[&str]) -> Command {
    let bin = format!("{PG_BIN}/{program}");
    // SAFETY: geteuid has no preconditions.
    let mut c = if unsafe { libc::geteuid() } == 0 {
        let mut v = vec!["--reuid=nobody", "--regid=nogroup", "--clear-groups", bin.as_str()];
        v.extend_from_slice(args);
        cmd::new("setpriv", &v)
    } else {
        cmd::new(&bin, args)
    };
    c.current_dir(pg).env("HOME", pg).env("PGTZ", "UTC").env_remove("PGPASSWORD").env_remove("PGDATABASE");
    c
}

fn run_pg(pg: &Path, program: &str, args: &[&str]) -> Result<()> {
    cmd::run(&mut pg_cmd(pg, program, args))
}

/// `pg_dump ARGS > out` (plain format), the file written by us, the dump run as nobody.
fn dump_to(pg: &Path, args: &[&str], out: &Path) -> Result<()> {
    let mut c = pg_cmd(pg, "pg_dump", args);
    println!("$ {} > {}", cmd::show(&c), out.display());
    let f = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    c.stdout(Stdio::from(f));
    let st = c.status().context("running pg_dump")?;
    ensure!(st.success(), "pg_dump failed ({st})");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The night-2 changes

/// splitmix64: small, fixed, and the same everywhere.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let x = self.next().to_le_bytes();
            c.copy_from_slice(&x[..c.len()]);
        }
    }
}

struct Changes {
    rewritten: usize,
    deleted: usize,
    added: usize,
}

/// Regular files and directories under `root`, sorted, so a seed picks the same ones each time.
fn walk(root: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        dirs.push(d.clone());
        for e in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                files.push(e.path());
            }
        }
    }
    files.sort();
    dirs.sort();
    Ok((files, dirs))
}

fn tree_size(root: &Path) -> Result<(usize, u64)> {
    let (files, _) = walk(root)?;
    let mut bytes = 0;
    for f in &files {
        bytes += fs::symlink_metadata(f)?.len();
    }
    Ok((files.len(), bytes))
}

/// Change the tree in place, deterministically from `seed`: 2% of the regular files get a part
/// rewritten (a random run of bytes at a random offset, at most a quarter of the file and 64 KiB),
/// 1% are deleted, and 1% new files (random bytes, 1 KiB to 128 KiB) appear in random directories.
fn change_tree(root: &Path, seed: u64) -> Result<Changes> {
    let mut rng = Rng(seed);
    let (files, dirs) = walk(root)?;
    let n = files.len();
    let pct = |p: usize| (n * p).div_ceil(100);
    // A seeded shuffle; its head is rewritten, the next part deleted.
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let (rewrite, rest) = order.split_at(pct(2).min(n));
    let delete = &rest[..pct(1).min(rest.len())];
    let mut buf = Vec::new();
    for &i in rewrite {
        let f = &files[i];
        let len = fs::metadata(f)?.len();
        let run = if len == 0 { 64 } else { (len / 4).clamp(1, 64 * 1024) };
        let at = rng.below(len.saturating_sub(run) + 1);
        buf.resize(run as usize, 0);
        rng.fill(&mut buf);
        let mut h = fs::OpenOptions::new().write(true).open(f).with_context(|| format!("opening {}", f.display()))?;
        h.seek(SeekFrom::Start(at))?;
        h.write_all(&buf)?;
    }
    for &i in delete {
        fs::remove_file(&files[i]).with_context(|| format!("deleting {}", files[i].display()))?;
    }
    let add = pct(1);
    for k in 0..add {
        let d = &dirs[rng.below(dirs.len() as u64) as usize];
        let size = 1024 + rng.below(127 * 1024) as usize;
        buf.resize(size, 0);
        rng.fill(&mut buf);
        let p = d.join(format!("bench-added-{k:05}.bin"));
        fs::write(&p, &buf).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(Changes { rewritten: rewrite.len(), deleted: delete.len(), added: add })
}

// ---------------------------------------------------------------------------------------------
// Checking a restore

/// Where a tool put source path `src` under `restore`: the full path below it (restic, borg), or
/// just its last component.
fn locate_restored(restore: &Path, src: &Path) -> Option<PathBuf> {
    let rel = src.strip_prefix("/").unwrap_or(src);
    let mut candidates = vec![restore.join(rel)];
    if let Some(name) = src.file_name() {
        candidates.push(restore.join(name));
    }
    candidates.into_iter().find(|c| fs::symlink_metadata(c).is_ok())
}

/// Compare `src` with the restored `got`: the same entries, the same contents of regular files,
/// the same symlink targets. Each difference goes into `bad`.
fn compare(src: &Path, got: &Path, bad: &mut Vec<String>) -> Result<()> {
    let ms = fs::symlink_metadata(src)?;
    let mg = match fs::symlink_metadata(got) {
        Ok(m) => m,
        Err(e) => {
            bad.push(format!("{}: missing ({e})", got.display()));
            return Ok(());
        }
    };
    let (ts, tg) = (ms.file_type(), mg.file_type());
    if ts.is_dir() {
        if !tg.is_dir() {
            bad.push(format!("{}: not a directory", got.display()));
            return Ok(());
        }
        let names = |p: &Path| -> Result<BTreeMap<std::ffi::OsString, ()>> {
            let mut m = BTreeMap::new();
            for e in fs::read_dir(p)? {
                m.insert(e?.file_name(), ());
            }
            Ok(m)
        };
        let (a, b) = (names(src)?, names(got)?);
        for extra in b.keys().filter(|k| !a.contains_key(*k)) {
            bad.push(format!("{}: not in the source", got.join(extra).display()));
        }
        for name in a.keys() {
            compare(&src.join(name), &got.join(name), bad)?;
        }
    } else if ts.is_symlink() {
        if !tg.is_symlink() || fs::read_link(src)? != fs::read_link(got)? {
            bad.push(format!("{}: symlink differs", got.display()));
        }
    } else if ts.is_file() {
        if !tg.is_file() || ms.len() != mg.len() || !same_contents(src, got)? {
            bad.push(format!("{}: contents differ", got.display()));
        }
    } else if ts != tg {
        bad.push(format!("{}: file type differs", got.display()));
    }
    Ok(())
}

fn same_contents(a: &Path, b: &Path) -> Result<bool> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// The report

#[derive(Clone)]
struct Row {
    tool: String,
    /// Which round (from 1); 0 in a row of medians.
    round: u32,
    /// The step name; `restore!` marks a restore that did not match the source.
    step: String,
    wall: f64,
    cpu: f64,
    rss_kib: u64,
    repo: u64,
}

fn step_key(step: &str) -> &str {
    step.trim_end_matches('!')
}

fn ratio(x: f64, base: f64) -> Option<f64> {
    (base > 0.0).then(|| (x / base * 100.0).round() / 100.0)
}

/// The median of a list (the mean of the middle two for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One row per tool and step, in the order they first ran, with the median of each figure over
/// the rounds; a step is marked failed (`restore!`) if it failed in any round.
fn medians(rows: &[Row]) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::new();
    for r in rows {
        if out.iter().any(|o| o.tool == r.tool && step_key(&o.step) == step_key(&r.step)) {
            continue;
        }
        let same: Vec<&Row> =
            rows.iter().filter(|o| o.tool == r.tool && step_key(&o.step) == step_key(&r.step)).collect();
        let m = |f: fn(&Row) -> f64| median(same.iter().map(|o| f(o)).collect());
        let failed = same.iter().any(|o| o.step.ends_with('!'));
        out.push(Row {
            tool: r.tool.clone(),
            round: 0,
            step: if failed { format!("{}!", step_key(&r.step)) } else { step_key(&r.step).to_string() },
            wall: m(|o| o.wall),
            cpu: m(|o| o.cpu),
            rss_kib: m(|o| o.rss_kib as f64).round() as u64,
            repo: m(|o| o.repo as f64).round() as u64,
        });
    }
    out
}

/// Every round's wall time per tool and step, and the ratio of the fastest other tool to hoard
/// within each round.
fn render_rounds(rows: &[Row], rounds: u32) -> String {
    let mut t = format!("| {:<7} | {:<8} |", "tool", "step");
    for r in 1..=rounds {
        t.push_str(&format!(" {:>9} |", format!("round {r}")));
    }
    t.push('\n');
    t.push_str("|---------|----------|");
    for _ in 1..=rounds {
        t.push_str("----------:|");
    }
    t.push('\n');
    for m in medians(rows) {
        t.push_str(&format!("| {:<7} | {:<8} |", m.tool, step_key(&m.step)));
        for round in 1..=rounds {
            let cell = rows
                .iter()
                .find(|o| o.round == round && o.tool == m.tool && step_key(&o.step) == step_key(&m.step))
                .map(|o| format!("{:.2}", o.wall))
                .unwrap_or_else(|| "-".into());
            t.push_str(&format!(" {cell:>9} |"));
        }
        t.push('\n');
    }
    let mut line = format!("fastest other tool ({}) / hoard, wall, per round:", PEERS.join(", "));
    for step in ["night1", "night2", "restore"] {
        let per: Vec<String> = (1..=rounds)
            .map(|round| {
                let of = |tool_is_hoard: bool| {
                    rows.iter()
                        .filter(|o| {
                            o.round == round
                                && step_key(&o.step) == step
                                && if tool_is_hoard { o.tool == "hoard" } else { PEERS.contains(&o.tool.as_str()) }
                        })
                        .map(|o| o.wall)
                        .fold(f64::INFINITY, f64::min)
                };
                match ratio(of(false), of(true)) {
                    Some(r) if r.is_finite() => format!("{r:.2}"),
                    _ => "-".into(),
                }
            })
            .collect();
        line.push_str(&format!(" {step} {}", per.join("/")));
        line.push(';');
    }
    line.pop();
    t.push_str(&line);
    t.push('\n');
    t
}

fn render(rows: &[Row], skipped: &[(String, String)], failures: &[String]) -> String {
    let mut t = String::new();
    let header = format!(
        "| {:<7} | {:<8} | {:>9} | {:>9} | {:>10} | {:>10} | {:>7} | {:>7} | {:>7} | {:>7} |",
        "tool", "step", "wall s", "cpu s", "RSS MiB", "repo MiB", "wall ×", "cpu ×", "RSS ×", "repo ×"
    );
    t.push_str(&header);
    t.push('\n');
    t.push_str("|---------|----------|----------:|----------:|-----------:|-----------:|--------:|--------:|--------:|--------:|\n");
    let fmt_ratio = |r: Option<f64>| r.map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into());
    for r in rows {
        let base = rows.iter().find(|b| b.tool == "hoard" && step_key(&b.step) == step_key(&r.step));
        let rat = |f: fn(&Row) -> f64| fmt_ratio(base.and_then(|b| ratio(f(r), f(b))));
        t.push_str(&format!(
            "| {:<7} | {:<8} | {:>9.2} | {:>9.2} | {:>10.1} | {:>10.1} | {:>7} | {:>7} | {:>7} | {:>7} |\n",
            r.tool,
            r.step,
            r.wall,
            r.cpu,
            r.rss_kib as f64 / 1024.0,
            r.repo as f64 / MIB,
            rat(|x| x.wall),
            rat(|x| x.cpu),
            rat(|x| x.rss_kib as f64),
            rat(|x| x.repo as f64),
        ));
    }
    t.push_str("ratios: the tool's figure divided by hoard's for the same step (below 1 = less than hoard)\n");
    for (tool, why) in skipped {
        t.push_str(&format!("skipped: {tool}: {why}\n"));
    }
    for f in failures {
        t.push_str(&format!("FAILED: {f}\n"));
    }
    t
}

/// Now, as `YYYY-MM-DD HH:MM:SS UTC`.
fn date_utc() -> String {
    cmd::output(cmd::new("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]).env("LC_ALL", "C"))
        .map(|(_, out, _)| out.trim().to_string())
        .unwrap_or_default()
}

/// The tools in the order they run in `round` (from 1): each round starts one tool further
/// along. The first runs of a run are slower on this machine (memory the host has taken back
/// is faulted in again, PERFORMANCE.md), and with a fixed order that always fell on hoard.
fn round_order<T>(tools: &[T], round: u32) -> impl Iterator<Item = &T> {
    let k = (round.max(1) as usize - 1) % tools.len().max(1);
    tools[k..].iter().chain(&tools[..k])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_round_starts_one_tool_further_along() {
        let tools = ["hoard", "restic", "borg"];
        let order = |round| round_order(&tools, round).copied().collect::<Vec<_>>();
        assert_eq!(order(1), ["hoard", "restic", "borg"]);
        assert_eq!(order(2), ["restic", "borg", "hoard"]);
        assert_eq!(order(3), ["borg", "hoard", "restic"]);
        assert_eq!(order(4), order(1));
        assert_eq!(round_order(&["hoard"], 5).count(), 1);
    }

    fn row(tool: &str, round: u32, step: &str, wall: f64) -> Row {
        Row {
            tool: tool.into(),
            round,
            step: step.into(),
            wall,
            cpu: wall * 2.0,
            rss_kib: 1024 * round as u64,
            repo: 7,
        }
    }

    #[test]
    fn medians_take_the_middle_round_and_keep_a_failed_restore_marked() {
        let rows = vec![
            row("hoard", 1, "night1", 3.0),
            row("restic", 1, "night1", 6.0),
            row("hoard", 1, "restore", 2.0),
            row("hoard", 2, "night1", 9.0),
            row("restic", 2, "night1", 5.0),
            row("hoard", 2, "restore!", 1.0),
            row("hoard", 3, "night1", 2.5),
            row("restic", 3, "night1", 7.0),
            // A reference, not a peer: faster than hoard, and left out of the per-round ratio.
            row("tar", 1, "night1", 1.0),
            row("tar", 2, "night1", 1.0),
            row("tar", 3, "night1", 1.0),
            row("hoard", 3, "restore", 4.0),
        ];
        let m = medians(&rows);
        let got: Vec<(&str, &str, f64, u64)> =
            m.iter().map(|r| (r.tool.as_str(), r.step.as_str(), r.wall, r.rss_kib)).collect();
        assert_eq!(
            got,
            [
                ("hoard", "night1", 3.0, 2048),
                ("restic", "night1", 6.0, 2048),
                ("hoard", "restore!", 2.0, 2048),
                ("tar", "night1", 1.0, 2048)
            ]
        );
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        let t = render_rounds(&rows, 3);
        assert!(t.contains("| hoard   | night1   |      3.00 |      9.00 |      2.50 |"), "{t}");
        // Per round, restic over hoard: 6/3, 5/9, 7/2.5.
        assert!(t.contains("night1 2.00/0.56/2.80"), "{t}");
    }
}

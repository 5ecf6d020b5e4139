//! Prune: frees what it says, loses nothing kept, survives SIGKILL anywhere, and runs while
//! backups run (including one that is stopped across it).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

/// A small deterministic generator for test timings (no dependency needed).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn snapshot_ids(env: &Env) -> Vec<String> {
    env.json(&["snapshots"]).as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
}

/// Objects in one directory of the repository (not the `.tmp-*` files a killed writer leaves).
fn objects_in(env: &Env, dir: &str) -> usize {
    fs::read_dir(env.repo.join(dir))
        .unwrap()
        .filter(|e| !e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'))
        .count()
}

fn check_clean(env: &Env, what: &str) {
    let o = env.run(&["check"]);
    assert!(o.status.success(), "check after {what} failed:\n{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn prune_frees_what_it_said_and_kept_snapshots_restore() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..6 {
        fs::write(src.join(format!("big{i}")), noise(i, 3 << 20)).unwrap();
    }
    for i in 0..200 {
        fs::write(src.join(format!("small{i:03}")), noise(100 + i, 3000)).unwrap();
    }
    let s = src.to_str().unwrap();
    let first = env.backup(&[s])["id"].as_str().unwrap().to_string();
    fs::remove_file(src.join("big0")).unwrap();
    fs::remove_file(src.join("big1")).unwrap();
    fs::write(src.join("big6"), noise(6, 3 << 20)).unwrap();
    let second = env.backup(&[s])["id"].as_str().unwrap().to_string();
    fs::remove_file(src.join("big2")).unwrap();
    for i in 0..100 {
        fs::remove_file(src.join(format!("small{i:03}"))).unwrap();
    }
    env.backup(&[s]);
    env.ok(&["forget", &first, &second]);

    // check reports what prune would reclaim.
    let c = env.json(&["check"]);
    assert!(c["reclaimable_bytes"].as_u64().unwrap() > 8 << 20, "{c}");

    // By default every pack here is too young to touch: nothing is condemned, and the report
    // says why.
    let d = env.json(&["prune"]);
    assert_eq!(d["deleted_packs"], 0, "{d}");
    assert!(d["recent_packs"].as_u64().unwrap() >= 3, "{d}");
    assert_eq!(d["keep_recent_packs_secs"], 24 * 3600, "{d}");
    assert_eq!(objects_in(&env, "condemned"), 0, "{d}");
    // Durations: d, h, min and s; a bare "m" is refused rather than guessed (forget's m is months).
    let o = env.run(&["prune", "--keep-recent-packs", "5m"]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("90min"), "{}", String::from_utf8_lossy(&o.stderr));
    let long = env.json(&["prune", "--dry-run", "--keep-recent-packs", "1d12h30min15s"]);
    assert_eq!(long["keep_recent_packs_secs"], 86_400 + 12 * 3600 + 30 * 60 + 15, "{long}");
    let text = env.ok(&["prune", "--keep-recent-packs", "1h"]);
    assert!(text.contains("packs") && text.contains("younger than --keep-recent-packs 1h"), "{text}");

    let plan = env.json(&["prune", "--dry-run", "--keep-recent-packs", "0"]);
    let before = env.repo_size();
    assert_eq!(env.repo_size(), before, "a dry run changes nothing");
    let r = env.json(&["prune", "--keep-recent-packs", "0"]);
    let after = env.repo_size();
    let planned_delete = ["unused_bytes", "unindexed_bytes", "repack_bytes", "condemned_bytes"]
        .iter()
        .map(|k| plan[k].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(r["deleted_bytes"].as_u64().unwrap(), planned_delete, "plan {plan}\nresult {r}");
    assert_eq!(r["written_bytes"].as_u64().unwrap(), plan["repack_used_bytes"].as_u64().unwrap(), "{r}");
    let frees = plan["frees_bytes"].as_u64().unwrap();
    let shrink = before - after;
    assert!(frees > 6 << 20, "{plan}");
    // The repository shrank by what the plan said, give or take new packs' padding and index.
    assert!(
        (shrink as f64) > frees as f64 * 0.95 && shrink <= planned_delete,
        "planned to free {frees}, shrank by {shrink}"
    );
    assert_eq!(r["markers_swept"], 1, "{r}");
    assert_eq!(objects_in(&env, "condemned"), 0);
    assert_eq!(objects_in(&env, "locks"), 0);

    env.ok(&["check", "--read-data"]);
    let c = env.json(&["check"]);
    assert_eq!(c["unused_packs"], 0, "{c}");
    let target = env.path("r");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(&src, &target.join(src.strip_prefix("/").unwrap()));
    // A second prune finds nothing to do.
    let again = env.json(&["prune", "--keep-recent-packs", "0"]);
    assert_eq!(again["deleted_packs"], 0, "{again}");
}

#[test]
fn sigkill_during_prune_at_twenty_points_loses_nothing_kept() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    let s = src.to_str().unwrap().to_string();
    let mut round = 0u64;
    let mut churn = |env: &Env| {
        for i in 0..4 {
            fs::write(src.join(format!("f{}", (round * 4 + i) % 12)), noise(round * 10 + i, 2 << 20)).unwrap();
        }
        round += 1;
        env.backup(&[&s]);
    };
    for _ in 0..4 {
        churn(&env);
    }
    env.ok(&["forget", "--keep-last", "2"]);
    env.ok(&["prune", "--max-unused", "0%", "--keep-recent-packs", "0"]);
    // How long a prune takes here, to spread the kill points over it: the shorter of two rounds
    // shaped like the ones below (one new snapshot, one forgotten), shortened whenever a prune
    // turns out to have finished before its kill. Timed once, whole prunes run by `env.ok` took
    // about twice as long as the killed ones, and half the kills came after the prune had
    // finished (9 of 20 in one CI run).
    let mut full = Duration::MAX;
    for _ in 0..2 {
        churn(&env);
        env.ok(&["forget", "--keep-last", "2"]);
        let t = Instant::now();
        env.ok(&["prune", "--max-unused", "0%", "--keep-recent-packs", "0"]);
        full = full.min(t.elapsed());
    }
    let mut full = full.max(Duration::from_millis(50));
    let points = 20;
    let mut killed = 0;
    for k in 0..points {
        churn(&env);
        env.ok(&["forget", "--keep-last", "2"]);
        let kept = snapshot_ids(&env);
        let mut child = env
            .cmd(&["prune", "--max-unused", "0%", "--keep-recent-packs", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(full.mul_f64((k as f64 + 0.5) / points as f64));
        if child.try_wait().unwrap().is_none() {
            killed += 1;
        } else {
            full = full.mul_f64(0.85);
        }
        let _ = child.kill();
        let _ = child.wait();
        check_clean(&env, &format!("kill {k}"));
        assert_eq!(snapshot_ids(&env), kept, "prune never removes snapshots");
    }
    // Enough kills must land inside a prune for the test to mean something (12 or 13 of 20 here).
    assert!(killed >= points / 3, "only {killed} of {points} prunes were still running when killed");
    // The next prune takes over the dead one's lock and finishes the job.
    let r = env.json(&["prune", "--max-unused", "0%", "--keep-recent-packs", "0"]);
    assert!(r["waiting"].as_array().unwrap().is_empty(), "{r}");
    assert_eq!(objects_in(&env, "condemned"), 0, "{r}");
    assert_eq!(objects_in(&env, "locks"), 0, "the dead prunes' locks are gone: {r}");
    env.ok(&["check", "--read-data"]);
    let target = env.path("r");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(&src, &target.join(src.strip_prefix("/").unwrap()));
}

/// Copies a directory's regular files (flat), so a snapshot can be compared later.
fn freeze(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn wait_ok(child: Child, what: &str) -> Vec<u8> {
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{what} failed ({:?}):\n{}", o.status.code(), String::from_utf8_lossy(&o.stderr));
    o.stdout
}

#[test]
fn two_backups_and_a_prune_at_once_twenty_times() {
    let env = Env::new();
    let dirs: Vec<PathBuf> = ["a", "b"].iter().map(|d| env.path(d)).collect();
    for (n, d) in dirs.iter().enumerate() {
        fs::create_dir_all(d).unwrap();
        for i in 0..6 {
            fs::write(d.join(format!("f{i}")), noise(n as u64 * 1000 + i, 1 << 20)).unwrap();
        }
    }
    // Snapshot id -> a frozen copy of what it should restore to.
    let mut expected: HashMap<String, (PathBuf, PathBuf)> = HashMap::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut overlapped = 0;
    for round in 0..20u64 {
        for (n, d) in dirs.iter().enumerate() {
            for j in 0..2 {
                let f = rng.below(6);
                fs::write(d.join(format!("f{f}")), noise(round * 100 + n as u64 * 10 + j, 1 << 20)).unwrap();
            }
        }
        let frozen: Vec<PathBuf> = dirs
            .iter()
            .enumerate()
            .map(|(n, d)| {
                let f = env.path(&format!("frozen/{round}-{n}"));
                freeze(d, &f);
                f
            })
            .collect();
        let spawn = |args: &[&str]| env.cmd(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let a = spawn(&["--json", "backup", dirs[0].to_str().unwrap()]);
        std::thread::sleep(Duration::from_millis(rng.below(60)));
        let b = spawn(&["--json", "backup", dirs[1].to_str().unwrap()]);
        std::thread::sleep(Duration::from_millis(rng.below(120)));
        let p = spawn(&["forget", "--keep-last", "2", "--prune", "--max-unused", "0%", "--keep-recent-packs", "0"]);
        for (child, n) in [(a, 0), (b, 1)] {
            let out = wait_ok(child, &format!("round {round}: backup {n}"));
            let v: Value = serde_json::from_slice(&out).unwrap();
            expected.insert(v["id"].as_str().unwrap().to_string(), (dirs[n].clone(), frozen[n].clone()));
        }
        let pout = wait_ok(p, &format!("round {round}: forget --prune"));
        overlapped += usize::from(String::from_utf8_lossy(&pout).contains("left for the next prune"));
        check_clean(&env, &format!("round {round}"));
    }
    // Timing decides how often a prune meets a backup it must wait for; say so, never assert.
    eprintln!("{overlapped} of 20 prunes left packs for a backup that was still running");
    // A last prune with nothing running sweeps whatever had to wait.
    env.ok(&["prune", "--max-unused", "0%", "--keep-recent-packs", "0"]);
    env.ok(&["check", "--read-data"]);
    let left = snapshot_ids(&env);
    assert!(left.len() >= 4, "each source keeps its last two: {left:?}");
    for id in left {
        let (dir, frozen) = &expected[&id];
        let target = env.path(&format!("restore-{id}"));
        env.ok(&["restore", &id, "--target", target.to_str().unwrap()]);
        let got = target.join(dir.strip_prefix("/").unwrap());
        for e in fs::read_dir(frozen).unwrap() {
            let e = e.unwrap();
            assert_eq!(
                fs::read(e.path()).unwrap(),
                fs::read(got.join(e.file_name())).unwrap(),
                "{id}: {:?}",
                e.file_name()
            );
        }
        fs::remove_dir_all(&target).unwrap();
    }
}

fn stopped(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('T')))
        .unwrap_or(false)
}

#[test]
fn a_backup_stopped_across_a_prune_commits_a_snapshot_that_restores() {
    let env = Env::new();
    let data = env.path("dump.sql");
    fs::write(&data, noise(7, 24 << 20)).unwrap();
    let cmd = format!("cat {}", data.display());
    let first = env.json(&["backup", "--from-command", &cmd, "--name", "dump.sql"])["id"].as_str().unwrap().to_string();
    // The same dump again, by a backup that stops itself (SIGSTOP to hoard, its parent) once the
    // data is piped: it has deduplicated against the first snapshot's packs but not committed.
    let stopping = format!("cat {} && kill -STOP $PPID", data.display());
    // A short stale timeout: stopped for longer than it, the backup knows its lock lapsed and
    // checks everything it references against a fresh listing before it commits. (On its own
    // host a stopped process is still alive, so prune does not call it stale.)
    let child = env
        .cmd(&["--json", "backup", "--from-command", &stopping, "--name", "dump.sql"])
        .env("HOARD_LOCK_STALE_SECS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let t = Instant::now();
    while !stopped(pid) {
        assert!(t.elapsed() < Duration::from_secs(60), "the backup never stopped");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The only committed snapshot that uses that data goes, and a prune runs.
    env.ok(&["forget", &first]);
    let o =
        env.cmd(&["--json", "prune", "--keep-recent-packs", "0"]).env("HOARD_LOCK_STALE_SECS", "1").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["deleted_packs"], 0, "a stopped backup may still need every pack: {r}");
    std::thread::sleep(Duration::from_millis(1200));
    assert!(!r["waiting"].as_array().unwrap().is_empty(), "{r}");
    // Resumed, it commits a complete snapshot.
    // SAFETY: kill(2) with a pid we started.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    let out = wait_ok(child, "the resumed backup");
    let v: Value = serde_json::from_slice(&out).unwrap();
    let id = v["id"].as_str().unwrap();
    // Now that it has ended, the next prune may sweep, and must keep what it references.
    env.ok(&["prune", "--keep-recent-packs", "0"]);
    env.ok(&["check", "--read-data"]);
    let dumped = env.cmd(&["dump", id, "dump.sql"]).output().unwrap();
    assert!(dumped.status.success(), "{}", String::from_utf8_lossy(&dumped.stderr));
    assert!(dumped.stdout == fs::read(&data).unwrap(), "the restored dump differs");
}

/// A lost index segment must not make prune delete the packs it listed: snapshots still use
/// them, and prune cannot see that through the index.
#[test]
fn prune_refuses_when_snapshots_use_blobs_the_index_lost() {
    let env = Env::bare();
    env.ok(&["init", "--kdf-memory", "1024", "--kdf-iterations", "1", "--pack-size", "1MiB"]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    // 40 MiB in 1 MiB packs: well over the 16 packs of one index segment, however the packer
    // fills and merges its packs.
    for i in 0..40 {
        fs::write(src.join(format!("f{i:02}")), noise(i, 1 << 20)).unwrap();
    }
    env.backup(&[src.to_str().unwrap()]);
    // One of the backup's segments, listing data packs only (a segment every 16 packs).
    let segments: Vec<PathBuf> = fs::read_dir(env.repo.join("index")).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(segments.len() >= 2, "{segments:?}");
    let packs = || walk(&env.repo.join("data")).into_iter().filter(|p| p.is_file()).count();
    let packs_before = packs();
    let mut refused = false;
    for s in &segments {
        let saved = fs::read(s).unwrap();
        fs::remove_file(s).unwrap();
        let o = env.run(&["prune", "--keep-recent-packs", "0"]);
        if !o.status.success() {
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains("repair index") || err.contains("cannot read tree"), "{err}");
            refused = true;
        }
        fs::write(s, saved).unwrap();
        env.ok(&["check", "--read-data"]);
    }
    assert!(refused, "prune never noticed the lost segments");
    assert_eq!(packs(), packs_before, "prune deleted packs");
    let target = env.path("r");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(&src, &target.join(src.strip_prefix("/").unwrap()));
}

//! Crash simulation at the storage layer, as SQLite's crash VFS does it: a backup or a prune
//! runs on a repository with earlier snapshots, the storage "crashes" at its Nth call (that call
//! and every later one have no effect), and the state that was durable is reopened from a fresh
//! cache, as after a reboot on another machine. For every N up to the number of calls the
//! operation makes: no earlier snapshot may be lost or broken, and after the next backup and
//! prune `check --read-data` finds nothing wrong.
//!
//! Run with `cargo test -p hoard-repo --test crash_sim -- --nocapture` to see the figures.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hoard_core::Id;
use hoard_repo::backup::fs::backup_paths;
use hoard_repo::backup::BackupOptions;
use hoard_repo::check::{check, Subset};
use hoard_repo::prune::{prune, PruneOptions, PruneReport};
use hoard_repo::Repository;
use hoard_storage::fault::FaultStorage;
use hoard_storage::{MemoryStorage, ObjectKind, Storage};
use support::*;

const EARLIER: u64 = 5;
/// How many of the earlier snapshots the prune scenario forgets.
const FORGET: usize = 3;

/// A repository with five earlier snapshots that share files, and trees not yet backed up: a
/// new one, and the last one with a file changed.
struct World {
    tmp: tempfile::TempDir,
    base: MemoryStorage,
    /// The earlier snapshots, the directory each one backed up and the files it held then.
    earlier: Vec<(Id, PathBuf, BTreeMap<PathBuf, Vec<u8>>)>,
    next_source: PathBuf,
    changed_source: PathBuf,
    caches: std::cell::Cell<u32>,
}

impl World {
    fn new() -> World {
        let tmp = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let repo = init(storage.clone(), &tmp.path().join("init-cache"));
        let mut earlier = Vec::new();
        for i in 1..=EARLIER {
            let src = tmp.path().join(format!("src{i}"));
            make_tree(&src, i, &[1, 2], 160 << 10);
            let r = backup_paths(&repo, std::slice::from_ref(&src), &BackupOptions::default()).unwrap();
            earlier.push((r.id, src.clone(), files(&src)));
        }
        let next_source = tmp.path().join("new");
        make_tree(&next_source, 100, &[2, 3], 400 << 10);
        // The same directory as the last backup, one file rewritten: an incremental backup.
        let changed_source = earlier.last().unwrap().1.clone();
        std::fs::write(changed_source.join("own.bin"), noise(200, 300 << 10)).unwrap();
        drop(repo);
        World { base: copy(&*storage), tmp, earlier, next_source, changed_source, caches: std::cell::Cell::new(0) }
    }

    /// A cache directory nobody has used: every reopen reads the repository afresh.
    fn fresh_cache(&self) -> PathBuf {
        self.caches.set(self.caches.get() + 1);
        self.tmp.path().join(format!("cache-{}", self.caches.get()))
    }

    fn open(&self, storage: Arc<dyn Storage>) -> Repository {
        Repository::open(storage, PASSWORD, &self.fresh_cache()).unwrap()
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scenario {
    /// Back up a new tree.
    Backup,
    /// Back up the last snapshot's directory again with one file changed.
    Incremental,
    /// Forget only the last snapshot and prune: its own packs go, the packs it shares are
    /// repacked.
    ForgetLastAndPrune,
    /// A whole nightly run: back up the new tree, then forget and prune as above.
    BackupForgetPrune,
    /// Forget the first three snapshots, then prune everything unused (`--max-unused 0`), which
    /// repacks the packs they share with the third and deletes the rest.
    ForgetAndPrune,
}

impl Scenario {
    fn run(self, w: &World, repo: &Repository) -> hoard_repo::Result<()> {
        match self {
            Scenario::Backup => {
                backup_paths(repo, std::slice::from_ref(&w.next_source), &BackupOptions::default())?;
            }
            Scenario::Incremental => {
                backup_paths(repo, std::slice::from_ref(&w.changed_source), &BackupOptions::default())?;
            }
            Scenario::ForgetAndPrune | Scenario::ForgetLastAndPrune | Scenario::BackupForgetPrune => {
                if self == Scenario::BackupForgetPrune {
                    backup_paths(repo, std::slice::from_ref(&w.next_source), &BackupOptions::default())?;
                }
                for (id, ..) in w.earlier.iter().filter(|(id, ..)| self.removes(w, id)) {
                    repo.remove_snapshot(id)?;
                }
                prune(repo, &prune_everything())?;
            }
        }
        Ok(())
    }

    /// Whether the operation was told to remove this earlier snapshot.
    fn removes(self, w: &World, id: &Id) -> bool {
        match self {
            Scenario::Backup | Scenario::Incremental => false,
            Scenario::ForgetAndPrune | Scenario::BackupForgetPrune => w.earlier[..FORGET].iter().any(|(e, ..)| e == id),
            Scenario::ForgetLastAndPrune => w.earlier.last().is_some_and(|(e, ..)| e == id),
        }
    }
}

/// `--max-unused 0` and no grace period: every pack here was written seconds ago, and these
/// tests mean prune to repack and delete them (the storage lists consistently).
fn prune_everything() -> PruneOptions {
    PruneOptions { max_unused: 0.0, keep_recent: Duration::ZERO, ..Default::default() }
}

/// How many storage calls the operation makes when nothing goes wrong.
fn calls(w: &World, s: Scenario) -> u64 {
    let fs = Arc::new(FaultStorage::new(copy(&w.base)));
    let repo = w.open(fs.clone());
    let start = fs.faults().ops();
    s.run(w, &repo).unwrap();
    fs.faults().ops() - start
}

/// What one crash point left behind.
#[derive(Default)]
struct Outcome {
    /// The run reached the crash point.
    crashed: bool,
    /// Snapshots the operation was told to remove that were gone after the crash.
    removed: usize,
    /// The new backup's snapshot was committed before the crash.
    committed: bool,
    /// Packs no index segment lists after the next run.
    unindexed: u64,
}

fn crash_at(w: &World, s: Scenario, n: u64) -> Outcome {
    let fs = Arc::new(FaultStorage::new(copy(&w.base)));
    let faults = fs.faults();
    let repo = w.open(fs.clone());
    faults.crash_at(faults.ops() + n);
    let _ = s.run(w, &repo);
    // Uploads run on two threads, so a run's number of calls can differ by one or two from
    // the count taken beforehand; a point the run never reached is not counted.
    let out = Outcome { crashed: faults.crashed(), ..Default::default() };
    drop(repo);

    // The reboot. A real crash also ends the process, so its session locks are stale; this
    // process lives on, so drop them here as the next prune would (it finds them stale by their
    // dead process id).
    let survivors = fs.surviving().unwrap();
    for o in survivors.list(ObjectKind::Lock).unwrap() {
        survivors.delete(ObjectKind::Lock, &o.name).unwrap();
    }
    let storage: Arc<dyn Storage> = Arc::new(survivors);
    let repo = w.open(storage.clone());
    verify(w, s, &format!("crash at call {n}"), &repo, out)
}

/// After a crash or a failed call: the earlier snapshots (and any the operation committed) are
/// whole, `check` finds nothing missing, and after the next backup and prune a full check is
/// clean.
fn verify(w: &World, s: Scenario, at: &str, repo: &Repository, mut out: Outcome) -> Outcome {
    let listed: BTreeMap<Id, _> = repo.snapshots().unwrap().into_iter().map(|e| (e.id, e)).collect();
    let target = w.tmp.path().join("restored");
    for (id, src, want) in &w.earlier {
        match listed.get(id) {
            Some(e) => {
                let (summary, got) = restore_files(repo, e, src, &target)
                    .unwrap_or_else(|err| panic!("{s:?}, {at}: snapshot {id} lists but fails: {err}"));
                assert!(summary.errors.is_empty(), "{s:?}, {at}: {:?}", summary.errors);
                assert!(got == *want, "{s:?}, {at}: snapshot {id} restores different bytes");
            }
            None if s.removes(w, id) => out.removed += 1,
            None => panic!("{s:?}, {at}: earlier snapshot {id} was lost"),
        }
    }
    for e in listed.values().filter(|e| !w.earlier.iter().any(|(id, ..)| *id == e.id)) {
        // Only a backup under test can have added one, and then it is whole.
        let src = match s {
            Scenario::Backup | Scenario::BackupForgetPrune => &w.next_source,
            Scenario::Incremental => &w.changed_source,
            Scenario::ForgetAndPrune | Scenario::ForgetLastAndPrune => {
                panic!("{at}: a prune added snapshot {}", e.id)
            }
        };
        let (summary, got) = restore_files(repo, e, src, &target).unwrap();
        assert!(summary.errors.is_empty() && got == files(src), "{s:?}, {at}: the new snapshot is broken");
        out.committed = true;
    }
    // Right away, before any repair: nothing a snapshot needs is missing (the restores above
    // have read every blob of the earlier snapshots already).
    let report = check(repo, None).unwrap();
    assert!(report.errors.is_empty(), "{s:?}, {at}: check right away: {:?}", report.errors);

    // The next scheduled run: a backup and a prune, then a full check from a fresh cache.
    backup_paths(repo, std::slice::from_ref(&w.next_source), &BackupOptions::default())
        .unwrap_or_else(|e| panic!("{s:?}, {at}: the next backup failed: {e}"));
    prune(repo, &prune_everything()).unwrap_or_else(|e| panic!("{s:?}, {at}: the next prune failed: {e}"));
    let fresh = w.open(repo.storage().clone());
    let report = check(&fresh, Some(Subset::All)).unwrap();
    assert!(report.errors.is_empty(), "{s:?}, {at}: check after the next run: {:?}", report.errors);
    out.unindexed = report.unindexed_packs as u64;
    out
}

fn sweep(w: &World, s: Scenario) -> u64 {
    let total = calls(w, s);
    let t = Instant::now();
    let (mut points, mut removed, mut committed) = (0, 0, 0);
    for n in 1..=total {
        let o = crash_at(w, s, n);
        assert_eq!(o.unindexed, 0, "{s:?}, crash at call {n}: the next prune left packs nobody indexes");
        points += u64::from(o.crashed);
        removed += o.removed;
        committed += usize::from(o.committed);
    }
    println!(
        "{s:?}: {total} storage calls, {points} crash points in {:.1?}; snapshots removed before the crash: {removed}, \
         new snapshot committed before the crash: {committed}",
        t.elapsed()
    );
    points
}

#[test]
fn no_crash_point_of_a_backup_or_a_prune_loses_an_earlier_snapshot() {
    let w = World::new();
    let points = [
        Scenario::Backup,
        Scenario::Incremental,
        Scenario::ForgetAndPrune,
        Scenario::ForgetLastAndPrune,
        Scenario::BackupForgetPrune,
    ]
    .into_iter()
    .map(|s| sweep(&w, s))
    .sum::<u64>();
    println!("crash points in total: {points}");
    assert!(points >= 200, "only {points} crash points: the scenarios have become too small to prove much");
}

#[test]
fn the_sweep_catches_a_lost_snapshot() {
    // The harness itself: losing an earlier snapshot's pack must make the checks above fail.
    let w = World::new();
    let repo = w.open(Arc::new(copy(&w.base)));
    let victim = repo.storage().list(ObjectKind::Pack).unwrap()[0].name.clone();
    repo.storage().delete(ObjectKind::Pack, &victim).unwrap();
    let report = check(&repo, Some(Subset::All)).unwrap();
    assert!(!report.errors.is_empty());
    let broken = w.earlier.iter().any(|(id, src, want)| {
        let e = repo.find_snapshot(&id.to_hex(), &|_| true).unwrap();
        match restore_files(&repo, &e, src, &w.tmp.path().join("r")) {
            Ok((summary, got)) => !summary.errors.is_empty() || got != *want,
            Err(_) => true,
        }
    });
    assert!(broken, "deleting pack {victim} went unnoticed by the restore comparison");
}

/// One failed call, not a crash: the process lives on with the same repository handle and index
/// cache, as a scheduler that retries in-process would. A transient error at any call of a
/// nightly run must leave every earlier snapshot whole and the next run able to finish cleanly.
#[test]
fn one_failed_call_anywhere_in_a_nightly_run_harms_nothing() {
    let w = World::new();
    let s = Scenario::BackupForgetPrune;
    let total = calls(&w, s);
    let t = Instant::now();
    let (mut points, mut failed, mut leftover) = (0, 0, 0);
    for n in 1..=total {
        let fs = Arc::new(FaultStorage::new(copy(&w.base)));
        let faults = fs.faults();
        let repo = w.open(fs.clone());
        let before = faults.ops();
        faults.fail_nth(None, before + n, hoard_storage::ErrorKind::Other);
        let r = s.run(&w, &repo);
        // Uploads run on two threads, so a run can make a call fewer than the clean count; a
        // failure it never reached must not fire in the checks below.
        let reached = faults.ops() - before >= n;
        faults.clear();
        if !reached {
            continue;
        }
        points += 1;
        failed += u64::from(r.is_err());
        let o = verify(&w, s, &format!("failed call {n}"), &repo, Outcome::default());
        leftover += o.unindexed;
    }
    println!(
        "{s:?}: {total} storage calls, one failed call at each of {points} points in {:.1?}; \
         the run reported the failure {failed} times; \
         packs left unindexed after the next run: {leftover}",
        t.elapsed()
    );
    assert!(failed > 0, "no injected failure surfaced: the wrapper is not in the path");
}

/// A day and a bit: earlier packs become older than the default grace period.
const LATER: Duration = Duration::from_secs(25 * 3600);

/// The first earlier snapshot's own packs are what a prune may delete: it is forgotten, and
/// its packs are made old by moving the storage's clock past the default grace period.
fn aged_world(w: &World) -> (Arc<FaultStorage<MemoryStorage>>, Repository) {
    let fs = Arc::new(FaultStorage::new(copy(&w.base)));
    fs.inner().clock().advance(LATER);
    let repo = w.open(fs.clone());
    repo.remove_snapshot(&w.earlier[0].0).unwrap();
    (fs, repo)
}

/// Backs up the new tree, then prunes from another handle while the listing does not show the
/// new snapshot yet (it was the backup's last create), as an object store that lags may.
/// Returns the prune's report and whether the new snapshot then restores whole.
fn prune_on_a_lagging_listing(w: &World, opts: &PruneOptions) -> (PruneReport, bool, Vec<String>) {
    let (fs, repo) = aged_world(w);
    let faults = fs.faults();
    let new = backup_paths(&repo, std::slice::from_ref(&w.next_source), &BackupOptions::default()).unwrap();
    faults.stale_listings(1);
    let other = w.open(fs.clone());
    assert!(other.snapshots().unwrap().iter().all(|e| e.id != new.id), "the listing lags");
    let report = prune(&other, opts).unwrap();
    faults.clear();
    let fresh = w.open(fs.clone());
    let entry = fresh.find_snapshot(&new.id.to_hex(), &|_| true).unwrap();
    let whole = restore_files(&fresh, &entry, &w.next_source, &w.tmp.path().join("r"))
        .map(|(summary, got)| summary.errors.is_empty() && got == files(&w.next_source))
        .unwrap_or(false);
    let errors = check(&fresh, Some(Subset::All)).unwrap().errors;
    (report, whole, errors)
}

/// The storage contract lets listings lag behind creates (object stores). A prune that runs
/// right after a backup finished, while the listing does not show the backup's snapshot yet,
/// sees the new packs as unused and has no live session to wait for. It must leave them alone
/// because they are younger than its grace period (`keep_recent`, by the storage's clock), and
/// still delete the old packs of a forgotten snapshot in the same run.
#[test]
fn a_prune_on_a_lagging_listing_keeps_the_newest_backup() {
    let w = World::new();
    let opts = PruneOptions { max_unused: 0.0, ..Default::default() };
    assert_eq!(opts.keep_recent, hoard_repo::prune::DEFAULT_KEEP_RECENT);
    let (report, whole, errors) = prune_on_a_lagging_listing(&w, &opts);
    println!(
        "lagging listing, default grace period: {} packs left alone as too young, {} deleted; snapshot whole: {whole}",
        report.plan.recent_packs, report.deleted_packs
    );
    assert!(whole, "the newest snapshot was lost: {report:?}");
    assert!(errors.is_empty(), "{errors:?}");
    assert!(report.plan.recent_packs > 0, "{report:?}");
    assert!(report.deleted_packs > 0, "the old packs of the forgotten snapshot should go: {report:?}");
}

/// The control: the same prune with the grace period off loses the snapshot, so the test above
/// passes because of the grace period and not because the scenario stopped exercising the gap.
#[test]
fn without_a_grace_period_a_lagging_listing_loses_the_newest_backup() {
    let w = World::new();
    let opts = prune_everything();
    let (report, whole, errors) = prune_on_a_lagging_listing(&w, &opts);
    println!("lagging listing, no grace period: {} packs deleted; snapshot whole: {whole}", report.deleted_packs);
    assert!(!whole && !errors.is_empty(), "the snapshot survived with no grace period: {report:?}");
}

/// The grace period delays prune, it does not disable it: a pack nothing uses is left alone while
/// it is young, and deleted by a prune once the storage's clock has moved past the period.
#[test]
fn a_pack_older_than_the_grace_period_is_pruned() {
    let w = World::new();
    let (fs, repo) = aged_world(&w);
    let new = backup_paths(&repo, std::slice::from_ref(&w.next_source), &BackupOptions::default()).unwrap();
    repo.remove_snapshot(&new.id).unwrap();
    let opts = PruneOptions { max_unused: 0.0, ..Default::default() };
    let young = prune(&repo, &opts).unwrap();
    assert!(young.plan.recent_packs > 0 && young.plan.recent_bytes > 0, "{young:?}");
    let packs = |r: &Repository| r.storage().list(ObjectKind::Pack).unwrap().len();
    let kept = packs(&repo);
    fs.inner().clock().advance(LATER);
    let old = prune(&repo, &opts).unwrap();
    println!(
        "grace period: the first prune left {} young packs alone (deleted {} old ones); 25 h later the next deleted {}",
        young.plan.recent_packs, young.deleted_packs, old.deleted_packs
    );
    assert_eq!(old.plan.recent_packs, 0, "{old:?}");
    assert!(old.deleted_packs >= young.plan.recent_packs, "young {young:?}\nold {old:?}");
    assert!(packs(&repo) < kept);
    let fresh = w.open(fs.clone());
    let report = check(&fresh, Some(Subset::All)).unwrap();
    assert!(report.errors.is_empty() && report.unused_packs == 0, "{report:?}");
}

/// Storage so slow that a backup's lock refreshes fall behind half its stale timeout, so others
/// could have judged it stale: the backup must still commit a whole snapshot and leave a
/// repository that checks clean.
#[test]
fn a_backup_on_storage_slower_than_its_lock_timeout_commits_whole() {
    let w = World::new();
    let fs = Arc::new(FaultStorage::new(copy(&w.base)));
    let repo = w.open(fs.clone());
    // The shortest stale timeout hoard allows is 300 ms; refreshes are due every 50 ms, and a
    // refresh (a create and a delete) now takes 200 ms.
    fs.faults().delay(Duration::from_millis(100));
    let opts = BackupOptions { lock_stale: Some(Duration::from_millis(300)), ..Default::default() };
    let t = Instant::now();
    let new = backup_paths(&repo, std::slice::from_ref(&w.next_source), &opts).unwrap();
    let calls = fs.faults().ops();
    fs.faults().clear();
    println!("slow backup: {calls} calls in {:.1?}", t.elapsed());
    let fresh = w.open(fs.clone());
    let entry = fresh.find_snapshot(&new.id.to_hex(), &|_| true).unwrap();
    let (summary, got) = restore_files(&fresh, &entry, &w.next_source, &w.tmp.path().join("r")).unwrap();
    assert!(summary.errors.is_empty() && got == files(&w.next_source), "{:?}", summary.errors);
    let report = check(&fresh, Some(Subset::All)).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

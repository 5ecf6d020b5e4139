//! `hoard copy` and `hoard repair index` under storage faults, as crash_sim.rs does it for backup
//! and prune: the storage crashes at its Nth call (that call and every later one have no
//! effect), or fails one call and carries on, for every N up to the number of calls the
//! operation makes.
//!
//! - A copy must leave the source untouched, list in the target only snapshots that restore
//!   byte for byte, and a second copy must finish the job with `check --read-data` clean and no
//!   blob stored twice (the same blobs as a copy that never failed).
//! - A repair of the index must leave every snapshot restorable from a fresh index cache, and a
//!   second repair must finish with `check --read-data` clean.
//!
//! - A repair of snapshots (`--forget --read-data`, a data pack lost) must never lose a snapshot
//!   nor keep in a repaired copy other files than a repair that never failed; a failed read must
//!   not count as lost data; a second repair must finish the job.
//!
//! Run with `cargo test -p hoard-repo --test copy_repair_faults -- --nocapture` for the figures.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use hoard_core::format::lock::LockKind;
use hoard_core::Id;
use hoard_repo::backup::fs::backup_paths;
use hoard_repo::backup::BackupOptions;
use hoard_repo::check::{check, Subset};
use hoard_repo::copy::{copy_snapshots, CopyOptions, COPIED_FROM};
use hoard_repo::inspect::repair_index;
use hoard_repo::lock::{Session, DEFAULT_STALE};
use hoard_repo::repair::{repair_snapshots, RepairOptions, RepairReport, REPAIRED_FROM};
use hoard_repo::{RepoError, Repository};
use hoard_storage::fault::FaultStorage;
use hoard_storage::{ErrorKind, MemoryStorage, ObjectKind, Storage};
use support::*;

const SNAPSHOTS: u64 = 3;

/// A source repository with three snapshots that share files, and an empty target repository
/// with keys of its own (so every blob is read, checked and stored again under a new id).
struct World {
    tmp: tempfile::TempDir,
    source: MemoryStorage,
    target: MemoryStorage,
    /// Each source snapshot, the directory it backed up and the files it held.
    snaps: Vec<(Id, PathBuf, BTreeMap<PathBuf, Vec<u8>>)>,
    caches: std::cell::Cell<u32>,
}

impl World {
    fn new() -> World {
        let tmp = tempfile::tempdir().unwrap();
        let source: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let repo = init(source.clone(), &tmp.path().join("init-source"));
        let mut snaps = Vec::new();
        for i in 1..=SNAPSHOTS {
            let src = tmp.path().join(format!("src{i}"));
            make_tree(&src, i, &[1, 2], 48 << 10);
            let r = backup_paths(&repo, std::slice::from_ref(&src), &BackupOptions::default()).unwrap();
            snaps.push((r.id, src.clone(), files(&src)));
        }
        drop(repo);
        let target: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        drop(init(target.clone(), &tmp.path().join("init-target")));
        World { source: copy(&*source), target: copy(&*target), tmp, snaps, caches: std::cell::Cell::new(0) }
    }

    fn fresh_cache(&self) -> PathBuf {
        self.caches.set(self.caches.get() + 1);
        self.tmp.path().join(format!("cache-{}", self.caches.get()))
    }

    fn open(&self, storage: Arc<dyn Storage>) -> Repository {
        Repository::open(storage, PASSWORD, &self.fresh_cache()).unwrap()
    }
}

fn copy_all(src: &Repository, dst: &Repository) -> hoard_repo::Result<usize> {
    let which = src.snapshots()?;
    let opts = CopyOptions { cancel: Arc::new(AtomicBool::new(false)), lock_stale: None };
    Ok(copy_snapshots(src, dst, &which, &opts)?.copied.len())
}

/// Every object's kind, name and bytes, to tell that a storage was not changed.
fn digest(s: &dyn Storage) -> Vec<(ObjectKind, String, [u8; 32])> {
    let mut out = Vec::new();
    for kind in ObjectKind::ALL {
        for o in s.list(kind).unwrap() {
            out.push((kind, o.name.clone(), *blake3::hash(&s.read(kind, &o.name).unwrap()).as_bytes()));
        }
    }
    out.sort();
    out
}

/// Index entries in all, and distinct blobs: equal when no blob is indexed twice.
fn blob_counts(repo: &Repository) -> (u64, u64) {
    let cache = repo.cache();
    let entries = cache.packs().unwrap().iter().map(|(p, _)| cache.pack_entries(p).unwrap().len() as u64).sum();
    (entries, cache.totals().unwrap().0)
}

/// Every snapshot the target lists is a copy of a source snapshot and restores byte for byte.
/// Returns how many it lists.
fn target_snapshots_whole(w: &World, dst: &Repository, at: &str) -> usize {
    let listed = dst.snapshots().unwrap();
    for e in &listed {
        let from = e.snapshot.labels.iter().find(|(k, _)| k == COPIED_FROM).map(|(_, v)| v.clone());
        let (_, src, want) = w
            .snaps
            .iter()
            .find(|(id, ..)| Some(id.to_hex()) == from)
            .unwrap_or_else(|| panic!("{at}: target snapshot {} is no copy of a source snapshot", e.id));
        let (summary, got) = restore_files(dst, e, src, &w.tmp.path().join("restored"))
            .unwrap_or_else(|err| panic!("{at}: target snapshot {} lists but fails: {err}", e.id));
        assert!(summary.errors.is_empty(), "{at}: {:?}", summary.errors);
        assert!(got == *want, "{at}: target snapshot {} restores different bytes", e.id);
    }
    let distinct: HashSet<_> =
        listed.iter().filter_map(|e| e.snapshot.labels.iter().find(|(k, _)| k == COPIED_FROM)).collect();
    assert_eq!(distinct.len(), listed.len(), "{at}: a source snapshot was copied twice");
    listed.len()
}

/// What a clean copy stores in the target.
struct Clean {
    /// Calls on the source and on the target (after opening both).
    source_calls: u64,
    target_calls: u64,
    /// Distinct blobs in the target's index.
    blobs: u64,
}

fn clean_copy(w: &World) -> Clean {
    let sfs = Arc::new(FaultStorage::new(copy(&w.source)));
    let tfs = Arc::new(FaultStorage::new(copy(&w.target)));
    let src = w.open(sfs.clone());
    let dst = w.open(tfs.clone());
    let (s0, t0) = (sfs.faults().ops(), tfs.faults().ops());
    assert_eq!(copy_all(&src, &dst).unwrap(), SNAPSHOTS as usize);
    let clean = Clean {
        source_calls: sfs.faults().ops() - s0,
        target_calls: tfs.faults().ops() - t0,
        blobs: blob_counts(&w.open(tfs.clone())).1,
    };
    let report = check(&w.open(tfs), Some(Subset::All)).unwrap();
    assert!(report.errors.is_empty() && report.unindexed_packs == 0, "{report:?}");
    clean
}

/// After the fault: the source is as it was, the target lists only whole snapshots; a second
/// copy (same handles, as a retry would) completes, and from a fresh cache the target checks
/// clean with every blob stored once, the same blobs as a clean copy.
fn verify_copy(
    w: &World,
    at: &str,
    src: &Repository,
    dst: &Repository,
    before: &[(ObjectKind, String, [u8; 32])],
    clean: &Clean,
) -> usize {
    assert!(digest(&**src.storage()) == before, "{at}: the source changed");
    let listed = target_snapshots_whole(w, dst, at);
    copy_all(src, dst).unwrap_or_else(|e| panic!("{at}: the second copy failed: {e}"));
    let fresh = w.open(dst.storage().clone());
    assert_eq!(target_snapshots_whole(w, &fresh, at), SNAPSHOTS as usize, "{at}");
    let report = check(&fresh, Some(Subset::All)).unwrap();
    assert!(report.errors.is_empty(), "{at}: check after the second copy: {:?}", report.errors);
    let (entries, distinct) = blob_counts(&fresh);
    assert_eq!(distinct, clean.blobs, "{at}: the target holds other blobs than a clean copy");
    assert_eq!(entries, distinct, "{at}: a blob is indexed twice");
    assert_eq!(report.unindexed_packs, 0, "{at}: packs nobody indexes were left, stored for nothing");
    listed
}

#[test]
fn no_crash_point_of_a_copy_breaks_the_target_or_touches_the_source() {
    let w = World::new();
    let clean = clean_copy(&w);
    let t = Instant::now();
    let (mut points, mut committed, mut tolerated) = (0u64, 0usize, 0u64);
    for n in 1..=clean.target_calls {
        let sfs = Arc::new(copy(&w.source));
        let before = digest(&*sfs);
        let src = w.open(sfs.clone());
        let tfs = Arc::new(FaultStorage::new(copy(&w.target)));
        let faults = tfs.faults();
        // The cache directory of the run that crashes, kept for the run after the reboot: the
        // same host runs the next copy (and finds its journal of packs it never indexed).
        let cache = w.fresh_cache();
        let dst = Repository::open(tfs.clone(), PASSWORD, &cache).unwrap();
        faults.crash_at(faults.ops() + n);
        let r = copy_all(&src, &dst);
        if !faults.crashed() {
            // Uploads run on two threads: a run can make a call fewer than the clean count.
            continue;
        }
        // A crash while the last session's locks are deleted, after its snapshot is written, is
        // only warned about: the copy is done.
        tolerated += u64::from(r.is_ok());
        points += 1;
        drop(dst);
        // The reboot: what was durable, without the dead session's locks (which the next prune
        // would find stale by their dead process id).
        let survivors = tfs.surviving().unwrap();
        for o in survivors.list(ObjectKind::Lock).unwrap() {
            survivors.delete(ObjectKind::Lock, &o.name).unwrap();
        }
        let dst = Repository::open(Arc::new(survivors), PASSWORD, &cache).unwrap();
        committed += verify_copy(&w, &format!("crash at target call {n}"), &src, &dst, &before, &clean);
    }
    println!(
        "copy, target crashes: {} target calls, {points} crash points in {:.1?}; \
         snapshots already in the target at the crash: {committed}; copy returned Ok despite the crash: {tolerated}",
        clean.target_calls,
        t.elapsed()
    );
    assert!(tolerated < points, "no crash made the copy fail: the wrapper is not in the path");
    assert!(points >= 30, "only {points} crash points: the copy has become too small to prove much");
}

#[test]
fn one_failed_call_of_the_source_or_the_target_harms_neither() {
    let w = World::new();
    let clean = clean_copy(&w);
    let t = Instant::now();
    let mut figures = Vec::new();
    for side in ["source", "target"] {
        let total = if side == "source" { clean.source_calls } else { clean.target_calls };
        let (mut points, mut failed) = (0u64, 0u64);
        for n in 1..=total {
            let sfs = Arc::new(FaultStorage::new(copy(&w.source)));
            let tfs = Arc::new(FaultStorage::new(copy(&w.target)));
            let before = digest(sfs.inner());
            let src = w.open(sfs.clone());
            let dst = w.open(tfs.clone());
            let faults = if side == "source" { sfs.faults() } else { tfs.faults() };
            let start = faults.ops();
            faults.fail_nth(None, start + n, ErrorKind::Other);
            let r = copy_all(&src, &dst);
            let reached = faults.ops() - start >= n;
            faults.clear();
            if !reached {
                continue;
            }
            points += 1;
            failed += u64::from(r.is_err());
            verify_copy(&w, &format!("failed {side} call {n}"), &src, &dst, &before, &clean);
        }
        println!(
            "copy, one failed {side} call: {total} calls, {points} points; the copy reported the failure {failed} times"
        );
        assert!(points >= 20, "only {points} points on the {side}");
        assert!(failed > 0, "no failure on the {side} surfaced: the wrapper is not in the path");
        figures.push(points);
    }
    println!("copy, one failed call: {} points in all in {:.1?}", figures.iter().sum::<u64>(), t.elapsed());
}

#[test]
fn no_crash_point_of_repair_index_loses_a_snapshot() {
    let w = World::new();
    let calls = {
        let fs = Arc::new(FaultStorage::new(copy(&w.source)));
        let repo = w.open(fs.clone());
        let start = fs.faults().ops();
        let r = repair_index(&repo, None).unwrap();
        assert!(r.unreadable.is_empty() && r.packs > 0, "{r:?}");
        fs.faults().ops() - start
    };
    let old_segments: Vec<String> = w.source.list(ObjectKind::Index).unwrap().into_iter().map(|o| o.name).collect();
    let t = Instant::now();
    let (mut points, mut tolerated) = (0u64, 0u64);
    let mut segments: HashMap<usize, usize> = HashMap::new();
    for n in 1..=calls {
        let fs = Arc::new(FaultStorage::new(copy(&w.source)));
        let faults = fs.faults();
        let repo = w.open(fs.clone());
        faults.crash_at(faults.ops() + n);
        let r = repair_index(&repo, None);
        if !faults.crashed() {
            continue;
        }
        points += 1;
        drop(repo);
        // The reboot: what was durable, without the dead session's locks (which the next
        // repair or prune would find stale by their dead process id).
        let survivors = fs.surviving().unwrap();
        for o in survivors.list(ObjectKind::Lock).unwrap() {
            survivors.delete(ObjectKind::Lock, &o.name).unwrap();
        }
        let survivors = Arc::new(survivors);
        // Success despite the crash only when it came after the work was done, while the
        // locks were being removed (which is only warned about): every old segment is gone.
        if r.is_ok() {
            tolerated += 1;
            let left: Vec<_> = survivors.list(ObjectKind::Index).unwrap().into_iter().map(|o| o.name).collect();
            assert!(
                old_segments.iter().all(|s| !left.contains(s)),
                "crash at call {n}: repair reported success but left old segments"
            );
        }
        *segments.entry(survivors.list(ObjectKind::Index).unwrap().len()).or_default() += 1;
        let at = format!("repair index, crash at call {n}");
        // Every snapshot restores from a fresh index cache, before any further repair.
        let repo = w.open(survivors.clone());
        let listed: BTreeMap<Id, _> = repo.snapshots().unwrap().into_iter().map(|e| (e.id, e)).collect();
        assert_eq!(listed.len(), w.snaps.len(), "{at}: a snapshot is gone");
        for (id, src, want) in &w.snaps {
            let (summary, got) = restore_files(&repo, &listed[id], src, &w.tmp.path().join("restored"))
                .unwrap_or_else(|e| panic!("{at}: snapshot {id} fails: {e}"));
            assert!(summary.errors.is_empty() && got == *want, "{at}: snapshot {id} is broken: {:?}", summary.errors);
        }
        let r = repair_index(&repo, None).unwrap_or_else(|e| panic!("{at}: the second repair failed: {e}"));
        assert!(r.unreadable.is_empty(), "{at}: {:?}", r.unreadable);
        let fresh = w.open(survivors.clone());
        let report = check(&fresh, Some(Subset::All)).unwrap();
        assert!(report.errors.is_empty() && report.unindexed_packs == 0, "{at}: {report:?}");
        let (entries, distinct) = blob_counts(&fresh);
        assert_eq!(entries, distinct, "{at}: a blob is indexed twice after the second repair");
    }
    let mut seen: Vec<_> = segments.into_iter().collect();
    seen.sort();
    println!(
        "repair index: {calls} storage calls, {points} crash points in {:.1?}; \
         index segments left by the crash (count: points): {seen:?}; \
         repair returned Ok despite the crash (while removing its locks): {tolerated}",
        t.elapsed()
    );
    assert!(tolerated < points, "every crash point was tolerated");
    assert!(points >= 10, "only {points} crash points");
}

/// A repair of the index takes the prune lock: while a prune holds it, the repair stops before
/// it writes anything and says why; once the prune is done, it runs.
#[test]
fn repair_index_waits_for_a_running_prune() {
    let w = World::new();
    let storage: Arc<dyn Storage> = Arc::new(copy(&w.source));
    let repo = w.open(storage.clone());
    let before: Vec<String> = storage.list(ObjectKind::Index).unwrap().into_iter().map(|o| o.name).collect();
    let refused = Session::run(&repo, LockKind::Prune, DEFAULT_STALE, |prune| {
        prune.take_prune_lock()?;
        let r = repair_index(&w.open(storage.clone()), None);
        prune.release_prune_lock()?;
        Ok(r)
    })
    .unwrap();
    match refused {
        Err(RepoError::Locked(why)) => assert!(why.contains("another prune is running"), "{why}"),
        other => panic!("repair ran beside a prune: {other:?}"),
    }
    let after: Vec<String> = storage.list(ObjectKind::Index).unwrap().into_iter().map(|o| o.name).collect();
    assert_eq!(after, before, "the refused repair wrote or deleted index segments");
    assert!(storage.list(ObjectKind::Lock).unwrap().is_empty(), "a lock was left behind");
    let r = repair_index(&w.open(storage.clone()), None).unwrap();
    assert!(r.packs > 0 && r.old_segments == before.len(), "{r:?}");
    assert!(storage.list(ObjectKind::Lock).unwrap().is_empty(), "the repair left its lock");
}

// ---------------------------------------------------------------------------------------------
// repair snapshots

/// The source with one data pack deleted and the index repaired, so that some files of some
/// snapshots are lost and the rest is whole; and what a repair that never fails makes of it.
struct Damaged {
    storage: MemoryStorage,
    /// Storage calls of a clean `repair snapshots --forget --read-data`.
    calls: u64,
    /// For each source snapshot: the files its repaired copy restores, or `None` when it is intact.
    expected: BTreeMap<Id, Option<BTreeMap<PathBuf, Vec<u8>>>>,
}

fn repair_opts(forget: bool) -> RepairOptions {
    RepairOptions {
        dry_run: false,
        forget_original: forget,
        read_data: true,
        cancel: Arc::new(AtomicBool::new(false)),
        lock_stale: None,
    }
}

fn repair_all(repo: &Repository) -> hoard_repo::Result<RepairReport> {
    let which = repo.snapshots()?;
    repair_snapshots(repo, &which, &repair_opts(true))
}

/// The first data pack whose loss damages some snapshot yet leaves some of its files whole.
fn damage(w: &World) -> Damaged {
    let packs = data_packs(&w.open(Arc::new(copy(&w.source))));
    for pack in packs {
        let storage = Arc::new(copy(&w.source));
        storage.delete(ObjectKind::Pack, &pack.to_hex()).unwrap();
        repair_index(&w.open(storage.clone()), None).unwrap();
        let storage = copy(&*storage);
        let fs = Arc::new(FaultStorage::new(copy(&storage)));
        let repo = w.open(fs.clone());
        let start = fs.faults().ops();
        let report = repair_all(&repo).unwrap();
        let calls = fs.faults().ops() - start;
        let dropped: usize = report.repaired.iter().map(|r| r.dropped.len()).sum();
        let total: usize = w.snaps.iter().map(|(_, _, f)| f.len()).sum();
        if report.repaired.is_empty() || dropped * 2 > total {
            continue;
        }
        let mut expected = BTreeMap::new();
        let listed = repo.snapshots().unwrap();
        for (id, src, want) in &w.snaps {
            let r = report.repaired.iter().find(|r| r.original == *id);
            let files = r.map(|r| {
                let new = r.new.expect("not a dry run");
                let e = listed.iter().find(|e| e.id == new).expect("the repaired snapshot is listed");
                let (summary, got) = restore_files(&repo, e, src, &w.tmp.path().join("restored")).unwrap();
                assert!(summary.errors.is_empty(), "{:?}", summary.errors);
                assert!(got.len() < want.len() && got.iter().all(|(p, b)| want.get(p) == Some(b)));
                got
            });
            expected.insert(*id, files);
        }
        return Damaged { storage, calls, expected };
    }
    panic!("no data pack whose loss leaves part of a snapshot");
}

/// After a fault: no source snapshot is lost (it, or its repaired copy, is listed), every
/// listed snapshot restores what it should, and a second repair finishes the job: each damaged
/// snapshot replaced by exactly one repaired copy, `check --read-data` clean.
fn verify_repair(w: &World, at: &str, storage: Arc<dyn Storage>, d: &Damaged) -> usize {
    let repo = w.open(storage.clone());
    let listed = repo.snapshots().unwrap();
    let mut repaired_at_fault = 0;
    for (id, src, want) in &w.snaps {
        let copies: Vec<_> = listed
            .iter()
            .filter(|e| e.snapshot.labels.iter().any(|(k, v)| k == REPAIRED_FROM && *v == id.to_hex()))
            .collect();
        assert!(copies.len() <= 1, "{at}: snapshot {id} was repaired twice");
        let original = listed.iter().find(|e| e.id == *id);
        assert!(original.is_some() || !copies.is_empty(), "{at}: snapshot {id} is gone, and no repaired copy of it");
        match &d.expected[id] {
            None => {
                let e = original.unwrap_or_else(|| panic!("{at}: intact snapshot {id} is gone"));
                let (summary, got) = restore_files(&repo, e, src, &w.tmp.path().join("restored")).unwrap();
                assert!(summary.errors.is_empty() && got == *want, "{at}: intact snapshot {id} restores wrong");
            }
            Some(kept) => {
                for e in &copies {
                    let (summary, got) = restore_files(&repo, e, src, &w.tmp.path().join("restored")).unwrap();
                    assert!(summary.errors.is_empty(), "{at}: repaired copy of {id}: {:?}", summary.errors);
                    assert!(got == *kept, "{at}: the repaired copy of {id} keeps other files than a clean repair");
                }
                repaired_at_fault += copies.len();
            }
        }
    }
    let report = repair_all(&repo).unwrap_or_else(|e| panic!("{at}: the second repair failed: {e}"));
    assert!(report.repaired.iter().all(|r| r.forgotten), "{at}");
    let fresh = w.open(storage);
    let listed = fresh.snapshots().unwrap();
    assert_eq!(listed.len(), w.snaps.len(), "{at}: after the second repair");
    for (id, src, want) in &w.snaps {
        let e = match &d.expected[id] {
            None => listed.iter().find(|e| e.id == *id),
            Some(_) => {
                listed.iter().find(|e| e.snapshot.labels.iter().any(|(k, v)| k == REPAIRED_FROM && *v == id.to_hex()))
            }
        };
        let e = e.unwrap_or_else(|| panic!("{at}: after the second repair, nothing stands for {id}"));
        let (summary, got) = restore_files(&fresh, e, src, &w.tmp.path().join("restored")).unwrap();
        assert!(summary.errors.is_empty(), "{at}: {:?}", summary.errors);
        assert!(got == *d.expected[id].as_ref().unwrap_or(want), "{at}: {id} restores other files than a clean repair");
    }
    let check = check(&fresh, Some(Subset::All)).unwrap();
    assert!(check.errors.is_empty(), "{at}: check after the second repair: {:?}", check.errors);
    repaired_at_fault
}

#[test]
fn no_crash_point_of_repair_snapshots_loses_a_snapshot() {
    let w = World::new();
    let d = damage(&w);
    let t = Instant::now();
    let (mut points, mut repaired) = (0u64, 0usize);
    for n in 1..=d.calls {
        let fs = Arc::new(FaultStorage::new(copy(&d.storage)));
        let faults = fs.faults();
        let repo = w.open(fs.clone());
        faults.crash_at(faults.ops() + n);
        let _ = repair_all(&repo);
        if !faults.crashed() {
            continue;
        }
        points += 1;
        drop(repo);
        let survivors = fs.surviving().unwrap();
        for o in survivors.list(ObjectKind::Lock).unwrap() {
            survivors.delete(ObjectKind::Lock, &o.name).unwrap();
        }
        repaired += verify_repair(&w, &format!("repair snapshots, crash at call {n}"), Arc::new(survivors), &d);
    }
    let damaged = d.expected.values().filter(|e| e.is_some()).count();
    println!(
        "repair snapshots: {} storage calls, {points} crash points in {:.1?}; {damaged} of {} snapshots damaged; \
         repaired copies already committed at the crash: {repaired}",
        d.calls,
        t.elapsed(),
        w.snaps.len()
    );
    assert!(points >= 20, "only {points} crash points");
}

#[test]
fn one_failed_call_never_makes_repair_snapshots_drop_more() {
    let w = World::new();
    let d = damage(&w);
    let t = Instant::now();
    let (mut points, mut failed) = (0u64, 0u64);
    for n in 1..=d.calls {
        for kind in [ErrorKind::Other, ErrorKind::Temporary] {
            let fs = Arc::new(FaultStorage::new(copy(&d.storage)));
            let faults = fs.faults();
            let repo = w.open(fs.clone());
            let start = faults.ops();
            faults.fail_nth(None, start + n, kind);
            let r = repair_all(&repo);
            let reached = faults.ops() - start >= n;
            faults.clear();
            if !reached {
                continue;
            }
            points += 1;
            failed += u64::from(r.is_err());
            verify_repair(&w, &format!("repair snapshots, call {n} failed ({kind:?})"), fs, &d);
        }
    }
    println!(
        "repair snapshots, one failed call: {} calls, {points} points (Other and Temporary) in {:.1?}; \
         the repair reported the failure {failed} times",
        d.calls,
        t.elapsed()
    );
    assert!(points >= 40, "only {points} points");
    assert!(failed > 0, "no failure surfaced: the wrapper is not in the path");
}

/// A nightly `hoard copy` between repositories with different keys reads from the source only
/// the chunks it has not copied before: the target's cache notes which id each copied chunk
/// got. Shown by taking from the source every pack the first night's chunks are in: the
/// second night's copy still succeeds with the target's cache, and fails without it.
#[test]
fn a_nightly_copy_reads_only_chunks_it_has_not_copied_before() {
    let tmp = tempfile::tempdir().unwrap();
    let source = Arc::new(MemoryStorage::new());
    let src_repo = init(source.clone(), &tmp.path().join("source-cache"));
    let tree = tmp.path().join("tree");
    make_tree(&tree, 1, &[1, 2], 48 << 10);
    backup_paths(&src_repo, std::slice::from_ref(&tree), &BackupOptions::default()).unwrap();
    let night1_packs = data_packs(&src_repo);
    let target = Arc::new(MemoryStorage::new());
    let target_cache = tmp.path().join("target-cache");
    drop(init(target.clone(), &target_cache));
    let dst = Repository::open(target.clone(), PASSWORD, &target_cache).unwrap();
    assert_eq!(copy_all(&src_repo, &dst).unwrap(), 1);
    drop(dst);

    // Night 2: one file more. Then the packs of night 1 go missing from the source.
    std::fs::write(tree.join("night2.bin"), noise(77, 40 << 10)).unwrap();
    let r2 = backup_paths(&src_repo, std::slice::from_ref(&tree), &BackupOptions::default()).unwrap();
    assert!(r2.snapshot.summary.files_unmodified > 0);
    for p in &night1_packs {
        source.delete(ObjectKind::Pack, &p.to_hex()).unwrap();
    }

    // Without the notes (a fresh cache for the same target), the copy has to read night 1's
    // chunks, and cannot.
    let without = Repository::open(Arc::new(copy(&*target)), PASSWORD, &tmp.path().join("fresh")).unwrap();
    assert!(copy_all(&src_repo, &without).is_err(), "the copy did not need night 1's packs");

    let dst = Repository::open(target.clone(), PASSWORD, &target_cache).unwrap();
    assert_eq!(copy_all(&src_repo, &dst).unwrap(), 1);
    let copied = dst
        .snapshots()
        .unwrap()
        .into_iter()
        .find(|e| e.snapshot.labels.iter().any(|(k, v)| k == COPIED_FROM && *v == r2.id.to_hex()))
        .unwrap();
    let (summary, got) = restore_files(&dst, &copied, &tree, &tmp.path().join("restored")).unwrap();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert!(got == files(&tree), "night 2's copy does not restore night 2's tree");
    let report = check(&dst, Some(Subset::All)).unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
    let (entries, distinct) = blob_counts(&dst);
    assert_eq!(entries, distinct, "a blob was stored twice");
}

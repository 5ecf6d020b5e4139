//! Random damage at rest: single bit flips and truncations, seeded and repeatable, in packs
//! (data and tree blobs), index segments and snapshots. Each damage must be reported by
//! `check --read-data`; a restore must never write a wrong byte (a file is right, or missing,
//! or named in the restore's errors); and every file the damage did not touch must still
//! restore.
//!
//! Run with `cargo test -p hoard-repo --test corruption -- --nocapture` to see the figures.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use hoard_core::format::tree::{Content, NodeKind};
use hoard_core::format::BlobType;
use hoard_core::Id;
use hoard_repo::backup::fs::backup_paths;
use hoard_repo::backup::BackupOptions;
use hoard_repo::check::{check, Subset};
use hoard_repo::Repository;
use hoard_storage::fault::{Damage, FaultStorage, SplitMix};
use hoard_storage::{MemoryStorage, ObjectKind, Storage};
use support::*;

const DAMAGES: u64 = 1000;

/// What a snapshot holds: for each file, its bytes and every blob needed to reach and read it
/// (the trees on its path, its list blobs and chunks).
struct Expected {
    id: Id,
    source: PathBuf,
    files: BTreeMap<PathBuf, (Vec<u8>, HashSet<Id>)>,
}

fn walk(
    repo: &Repository,
    tree: Id,
    path: PathBuf,
    mut needs: HashSet<Id>,
    src: &Path,
    out: &mut BTreeMap<PathBuf, (Vec<u8>, HashSet<Id>)>,
) {
    needs.insert(tree);
    for node in repo.load_tree(&tree).unwrap().nodes {
        let name = PathBuf::from(String::from_utf8(node.name.clone()).unwrap());
        match node.kind() {
            NodeKind::Dir => walk(repo, node.subtree.unwrap(), path.join(&name), needs.clone(), src, out),
            NodeKind::File => {
                let mut n = needs.clone();
                if let Content::Lists(l) = &node.content {
                    n.extend(l.iter().copied());
                }
                n.extend(repo.content_chunks(&node.content).unwrap());
                let p = path.join(&name);
                // Only files of the backed-up directory; the path above it is directories.
                let rel = p.strip_prefix(src.strip_prefix("/").unwrap()).unwrap().to_path_buf();
                let bytes = std::fs::read(src.join(&rel)).unwrap();
                out.insert(rel, (bytes, n));
            }
            _ => {}
        }
    }
}

/// The blobs a damage makes unreadable, and the snapshot it hides, if any.
struct Hit {
    blobs: HashSet<Id>,
    snapshot: Option<Id>,
    what: &'static str,
}

fn main_repo(tmp: &Path) -> (MemoryStorage, Vec<Expected>) {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let repo = init(storage.clone(), &tmp.join("init-cache"));
    let mut snaps = Vec::new();
    for i in 1..=3u64 {
        let src = tmp.join(format!("src{i}"));
        make_tree(&src, i, &[1, 2], 200 << 10);
        let r = backup_paths(&repo, std::slice::from_ref(&src), &BackupOptions::default()).unwrap();
        let mut files = BTreeMap::new();
        walk(&repo, r.snapshot.tree, PathBuf::new(), HashSet::new(), &src, &mut files);
        snaps.push(Expected { id: r.id, source: src, files });
    }
    drop(repo);
    (copy(&*storage), snaps)
}

#[test]
fn every_damage_is_detected_and_restore_never_writes_a_wrong_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, snaps) = main_repo(tmp.path());
    let fs = Arc::new(FaultStorage::new(base));
    let faults = fs.faults();
    let clean = Repository::open(fs.clone(), PASSWORD, &tmp.path().join("clean-cache")).unwrap();
    assert!(check(&clean, Some(Subset::All)).unwrap().ok(), "the undamaged repository is clean");

    // Where things are, from the undamaged repository.
    let mut segments: Vec<(String, u64, HashSet<Id>)> = Vec::new();
    for o in fs.inner().list(ObjectKind::Index).unwrap() {
        let seg = clean.read_segment(&o.name).unwrap();
        let blobs = seg.packs.iter().flat_map(|p| p.entries.iter().map(|e| e.id)).collect();
        segments.push((o.name, o.size, blobs));
    }
    segments.sort_by(|a, b| a.0.cmp(&b.0));
    // Each pack with its entries and where its padding lies: random bytes between the last
    // blob and the header that nothing reads and nothing authenticates (docs/FORMAT.md, "Packs
    // and blobs").
    let mut packs: Vec<(String, u64, Vec<hoard_core::format::pack::PackEntry>)> = Vec::new();
    let mut padding: HashMap<String, std::ops::Range<u64>> = HashMap::new();
    for o in fs.inner().list(ObjectKind::Pack).unwrap() {
        let entries = clean.cache().pack_entries(&Id::from_hex(&o.name).unwrap()).unwrap();
        let bytes = fs.inner().read(ObjectKind::Pack, &o.name).unwrap();
        let hlen = u64::from(u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap()));
        let blobs_end = entries.iter().map(|e| e.offset + u64::from(e.length)).max().unwrap();
        padding.insert(o.name.clone(), blobs_end..o.size - 4 - hlen);
        packs.push((o.name, o.size, entries));
    }
    packs.sort_by(|a, b| a.0.cmp(&b.0));
    let trees: Vec<(usize, usize)> = packs
        .iter()
        .enumerate()
        .flat_map(|(p, (_, _, es))| {
            es.iter().enumerate().filter(|(_, e)| e.blob_type == BlobType::Tree).map(move |(i, _)| (p, i))
        })
        .collect();
    let mut snapshot_objects: Vec<(String, u64)> =
        fs.inner().list(ObjectKind::Snapshot).unwrap().into_iter().map(|o| (o.name, o.size)).collect();
    snapshot_objects.sort();
    assert!(!trees.is_empty() && packs.len() >= 2 && !segments.is_empty() && snapshot_objects.len() == 3);
    drop(clean);

    let started = Instant::now();
    let mut rng = SplitMix(0x6b61_6f73);
    let mut by_kind: HashMap<&'static str, (u64, u64)> = HashMap::new();
    let (mut flips, mut cuts) = (0u64, 0u64);
    let (mut files_checked, mut files_intact, mut files_lost, mut wrong) = (0u64, 0u64, 0u64, 0u64);
    let (mut files_hidden, mut files_partial, mut partial_wrong) = (0u64, 0u64, 0u64);
    let (mut in_padding, mut padding_detected) = (0u64, 0u64);
    let mut missed = Vec::new();
    for i in 0..DAMAGES {
        let flip = rng.below(2) == 0;
        let target = rng.below(4);
        // Pick the object, the damage, and what it makes unreadable.
        let (kind, name, damage, hit) = match target {
            0 | 1 => {
                // A pack anywhere (0) or inside a tree blob (1).
                let (p, bit) = if target == 0 {
                    let p = rng.below(packs.len() as u64) as usize;
                    (p, rng.below(packs[p].1 * 8))
                } else {
                    let (p, e) = trees[rng.below(trees.len() as u64) as usize];
                    let e = &packs[p].2[e];
                    (p, e.offset * 8 + rng.below(u64::from(e.length) * 8))
                };
                let (name, size, entries) = &packs[p];
                let damage = if flip { Damage::FlipBit(bit) } else { Damage::Truncate(bit / 8 % size) };
                let blobs = entries
                    .iter()
                    .filter(|e| match damage {
                        Damage::FlipBit(b) => (e.offset..e.offset + u64::from(e.length)).contains(&(b / 8)),
                        Damage::Truncate(l) => e.offset + u64::from(e.length) > l,
                    })
                    .map(|e| e.id)
                    .collect();
                let what = if target == 0 { "pack" } else { "tree" };
                (ObjectKind::Pack, name.clone(), damage, Hit { blobs, snapshot: None, what })
            }
            2 => {
                let (name, size, blobs) = &segments[rng.below(segments.len() as u64) as usize];
                let damage =
                    if flip { Damage::FlipBit(rng.below(size * 8)) } else { Damage::Truncate(rng.below(*size)) };
                (ObjectKind::Index, name.clone(), damage, Hit { blobs: blobs.clone(), snapshot: None, what: "index" })
            }
            _ => {
                let (name, size) = &snapshot_objects[rng.below(snapshot_objects.len() as u64) as usize];
                let damage =
                    if flip { Damage::FlipBit(rng.below(size * 8)) } else { Damage::Truncate(rng.below(*size)) };
                let hit = Hit { blobs: HashSet::new(), snapshot: Some(Id::from_hex(name).unwrap()), what: "snapshot" };
                (ObjectKind::Snapshot, name.clone(), damage, hit)
            }
        };
        if flip {
            flips += 1;
        } else {
            cuts += 1;
        }
        faults.clear();
        faults.damage(kind, &name, damage);

        // A machine that has never seen this repository: everything is read from storage.
        let cache = tmp.path().join(format!("cache-{i}"));
        let repo = Repository::open(fs.clone(), PASSWORD, &cache).unwrap();
        let detected = match check(&repo, Some(Subset::All)) {
            Ok(r) => !r.ok(),
            Err(_) => true,
        };
        let e = by_kind.entry(hit.what).or_default();
        e.0 += 1;
        e.1 += u64::from(detected);
        let padded = match damage {
            Damage::FlipBit(b) if kind == ObjectKind::Pack => padding[&name].contains(&(b / 8)),
            _ => false,
        };
        if padded {
            in_padding += 1;
            padding_detected += u64::from(detected);
        } else if !detected {
            missed.push(format!("#{i}: {} {name} {damage:?}", hit.what));
        }

        let listed: HashSet<Id> = repo.snapshots().unwrap().into_iter().map(|e| e.id).collect();
        for s in &snaps {
            if !listed.contains(&s.id) {
                assert_eq!(hit.snapshot, Some(s.id), "#{i}: snapshot {} vanished after {damage:?} of {name}", s.id);
                files_hidden += s.files.len() as u64;
                continue;
            }
            let entry = repo.find_snapshot(&s.id.to_hex(), &|_| true).unwrap();
            let target = tmp.path().join("restored");
            let (summary, got) = match restore_files(&repo, &entry, &s.source, &target) {
                Ok(r) => r,
                Err(_) => {
                    // The whole restore refused: only acceptable when its root tree is hit.
                    assert!(
                        hit.blobs.contains(&entry.snapshot.tree),
                        "#{i}: restore of {} failed for an untouched root",
                        s.id
                    );
                    files_hidden += s.files.len() as u64;
                    let _ = std::fs::remove_dir_all(&target);
                    continue;
                }
            };
            for (path, (want, needs)) in &s.files {
                files_checked += 1;
                let touched = !needs.is_disjoint(&hit.blobs);
                let reported = summary.errors.iter().any(|e| e.contains(&*path.to_string_lossy()));
                match got.get(path) {
                    Some(bytes) if bytes == want => files_intact += 1,
                    Some(bytes) if reported => {
                        // Written in part, then the restore said the file is damaged.
                        files_partial += 1;
                        assert!(touched, "#{i}: untouched {} reported: {:?}", path.display(), summary.errors);
                        if !want.starts_with(bytes) {
                            partial_wrong += 1;
                        }
                    }
                    Some(_) => {
                        wrong += 1;
                        eprintln!(
                            "#{i}: {damage:?} of {} {name}: {} restored with wrong bytes and no error",
                            hit.what,
                            path.display()
                        );
                    }
                    None => {
                        assert!(
                            touched,
                            "#{i}: {damage:?} of {} {name}: untouched {} did not restore: {:?}",
                            hit.what,
                            path.display(),
                            summary.errors
                        );
                        files_lost += 1;
                    }
                }
                if !touched {
                    assert_eq!(got.get(path), Some(want), "#{i}: untouched {} changed", path.display());
                }
            }
        }
        drop(repo);
        let _ = std::fs::remove_dir_all(&cache);
    }
    faults.clear();
    let mut kinds: Vec<_> = by_kind.into_iter().collect();
    kinds.sort();
    let detected: u64 = kinds.iter().map(|(_, (_, d))| d).sum();
    println!(
        "{DAMAGES} damages ({flips} bit flips, {cuts} truncations) in {:.1?}; detected by check --read-data: {detected} ({:.1}%)",
        started.elapsed(),
        detected as f64 * 100.0 / DAMAGES as f64
    );
    let harmful = DAMAGES - in_padding;
    println!(
        "  of which {in_padding} bit flips landed in a pack's random padding, which holds no data ({padding_detected} detected); \
         damages to bytes that mean something: {harmful}, detected: {} ({:.1}%)",
        detected - padding_detected,
        (detected - padding_detected) as f64 * 100.0 / harmful as f64
    );
    for (what, (n, d)) in &kinds {
        println!("  {what}: {n} damages, {d} detected");
    }
    println!(
        "restored files compared: {files_checked}; intact: {files_intact}; missing: {files_lost}; \
         written in part and reported as damaged: {files_partial} (of which not a prefix of the right bytes: {partial_wrong}); \
         in a snapshot or root tree that could not be read: {files_hidden}; restored with wrong bytes: {wrong}"
    );
    assert_eq!(wrong, 0, "restore wrote wrong bytes without saying so (see above)");
    assert!(missed.is_empty(), "{} damages went undetected: {:#?}", missed.len(), missed);
}

/// A read that fails (a network error, say) at any point of a restore: the restore reports it
/// or fails, and never leaves a file with wrong bytes that it calls good.
#[test]
fn a_failed_read_anywhere_in_a_restore_never_leaves_a_wrong_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, snaps) = main_repo(tmp.path());
    let fs = Arc::new(FaultStorage::new(base));
    let faults = fs.faults();
    let s = &snaps[2];
    let target = tmp.path().join("restored");
    let repo = Repository::open(fs.clone(), PASSWORD, &tmp.path().join("cache")).unwrap();
    let entry = repo.find_snapshot(&s.id.to_hex(), &|_| true).unwrap();
    let start = faults.ops();
    let (summary, got) = restore_files(&repo, &entry, &s.source, &target).unwrap();
    let calls = faults.ops() - start;
    assert!(summary.errors.is_empty() && got.len() == s.files.len(), "a clean restore is whole");
    let (mut reported, mut refused, mut intact, mut reached) = (0u64, 0u64, 0u64, 0u64);
    for n in 1..=calls {
        faults.clear();
        let before = faults.ops();
        faults.fail_nth(None, before + n, hoard_storage::ErrorKind::Other);
        let r = restore_files(&repo, &entry, &s.source, &target);
        // Reads run on two threads; a run that made fewer calls never met the failure.
        if faults.ops() - before < n {
            continue;
        }
        reached += 1;
        match r {
            Err(_) => refused += 1,
            Ok((summary, got)) => {
                reported += u64::from(!summary.errors.is_empty());
                for (path, (want, _)) in &s.files {
                    match got.get(path) {
                        Some(bytes) if bytes == want => intact += 1,
                        Some(_) => assert!(
                            summary.errors.iter().any(|e| e.contains(&*path.to_string_lossy())),
                            "failed call {n}: {} has wrong bytes and no error",
                            path.display()
                        ),
                        None => {
                            assert!(!summary.errors.is_empty(), "failed call {n}: {} missing silently", path.display())
                        }
                    }
                }
            }
        }
    }
    println!(
        "restore: one failed call at each of {reached} points: refused {refused}, reported errors {reported}, \
         {} silent; files intact: {intact} of {}",
        reached - refused - reported,
        reached * s.files.len() as u64
    );
    // Every failure a restore sees must surface: there are no calls a restore may ignore.
    assert!(reached > calls / 2, "only {reached} of {calls} failures were reached");
    assert_eq!(refused + reported, reached, "some failed reads went unreported");
}

/// `check --read-data` with one storage call failing, at each of its calls: it must never pass
/// a repository it could not read in full, nor keep quiet about the failure. A call that reads
/// what is checked must end in an error (returned, or in the report); one that only feeds an
/// estimate (what a prune would reclaim) may end in a warning that names it. It must change
/// nothing in storage.
#[test]
fn a_failed_call_anywhere_in_a_check_is_never_a_clean_report() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, _) = main_repo(tmp.path());
    let fs = Arc::new(FaultStorage::new(base));
    let faults = fs.faults();
    let objects = |s: &dyn Storage| -> Vec<(ObjectKind, String, u64)> {
        let mut v: Vec<_> = ObjectKind::ALL
            .iter()
            .flat_map(|&k| s.list(k).unwrap().into_iter().map(move |o| (k, o.name, o.size)))
            .collect();
        v.sort();
        v
    };
    let before = objects(fs.inner());
    let mut caches = 0;
    let mut fresh = || {
        caches += 1;
        Repository::open(fs.clone(), PASSWORD, &tmp.path().join(format!("cache-{caches}"))).unwrap()
    };
    let repo = fresh();
    let start = faults.ops();
    let clean = check(&repo, Some(Subset::All)).unwrap();
    let calls = faults.ops() - start;
    assert!(clean.errors.is_empty() && clean.packs_read > 0, "{clean:?}");
    let t = Instant::now();
    let (mut reached, mut refused, mut reported, mut warned) = (0u64, 0u64, 0u64, 0u64);
    for n in 1..=calls {
        for kind in [hoard_storage::ErrorKind::Other, hoard_storage::ErrorKind::Temporary] {
            // A fresh cache each time: a check from a cache that has already read the index
            // makes fewer calls, and the point is to fail each call of a first check.
            let repo = fresh();
            faults.clear();
            let at = faults.ops();
            faults.fail_nth(None, at + n, kind);
            let r = check(&repo, Some(Subset::All));
            if faults.ops() - at < n {
                continue;
            }
            reached += 1;
            match r {
                Err(_) => refused += 1,
                Ok(report) if !report.errors.is_empty() => reported += 1,
                Ok(report) => {
                    assert!(
                        report
                            .warnings
                            .iter()
                            .any(|w| w.contains("injected failure") && w.contains("prune would reclaim")),
                        "failed call {n} ({kind:?}): check passed and said nothing of it: {report:?}"
                    );
                    warned += 1;
                }
            }
        }
    }
    faults.clear();
    assert!(objects(fs.inner()) == before, "check changed the storage");
    println!(
        "check --read-data: {calls} storage calls; one failed call (Other, Temporary) at {reached} points in {:.1?}: \
         refused {refused}, reported an error {reported}, passed with a warning about the prune estimate {warned}, \
         passed silently 0",
        t.elapsed()
    );
    assert!(reached >= calls, "only {reached} points reached of {calls} calls, two kinds each");
    assert!(refused + reported > 0, "no failure surfaced as an error: the wrapper is not in the path");
}

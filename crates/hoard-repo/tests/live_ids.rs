//! The in-memory set of live blob ids that a night 2 of many unchanged files answers from
//! (`LiveIds`, used when the parent snapshot has at least `live_ids_from` files) must decide
//! exactly as the index does: a file whose chunks are gone from the index is read again, the
//! rest is taken from the parent, and the snapshot restores byte for byte.

mod support;

use std::collections::HashSet;
use std::sync::Arc;

use hoard_repo::backup::fs::backup_paths;
use hoard_repo::backup::BackupOptions;
use hoard_repo::check::{check, Subset};
use hoard_repo::inspect::repair_index;
use hoard_storage::{MemoryStorage, ObjectKind, Storage};
use support::*;

/// A repository with one backup of a tree, after it lost one data pack (and its index was
/// repaired), and the tree.
fn damaged(tmp: &std::path::Path) -> (MemoryStorage, std::path::PathBuf) {
    let storage = Arc::new(MemoryStorage::new());
    let repo = init(storage.clone(), &tmp.join("cache"));
    let src = tmp.join("src");
    for i in 0..6 {
        make_tree(&src.join(format!("d{i}")), i, &[1], 24 << 10);
    }
    backup_paths(&repo, std::slice::from_ref(&src), &BackupOptions::default()).unwrap();
    let data = data_packs(&repo);
    storage.delete(ObjectKind::Pack, &data[0].to_hex()).unwrap();
    repair_index(&repo, None).unwrap();
    (copy(&*storage), src)
}

/// Night 2 on a copy of `storage`, with live ids in memory (`Some(0)`) or asked of SQLite
/// (`Some(u64::MAX)`). Returns the files read again and those taken from the parent, after
/// checking that the snapshot restores the tree and references only what is there.
fn night_two(tmp: &std::path::Path, storage: &MemoryStorage, src: &std::path::Path, live_ids_from: u64) -> (u64, u64) {
    let storage = Arc::new(copy(storage));
    let cache = tmp.join(format!("cache-{live_ids_from}"));
    let repo = hoard_repo::Repository::open(storage, PASSWORD, &cache).unwrap();
    let opts = BackupOptions { live_ids_from: Some(live_ids_from), ..Default::default() };
    let r = backup_paths(&repo, &[src.to_path_buf()], &opts).unwrap();
    let s = &r.snapshot.summary;
    assert!(s.files_changed > 0, "no file lost a chunk: {s:?}");
    assert!(s.files_unmodified > 0, "every file was read again: {s:?}");
    let entry = repo.find_snapshot(&r.id.to_hex(), &|_| true).unwrap();
    let (summary, got) = restore_files(&repo, &entry, src, &tmp.join("restored")).unwrap();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert!(got == files(src), "night 2 does not restore the tree");
    let report = check(&repo, Some(Subset::All)).unwrap();
    let broken: HashSet<_> = report.affected_snapshots.iter().collect();
    assert!(!broken.contains(&r.id.to_hex()), "{report:?}");
    (s.files_changed, s.files_unmodified)
}

#[test]
fn live_ids_in_memory_decide_as_the_index_does() {
    let tmp = tempfile::tempdir().unwrap();
    let (storage, src) = damaged(tmp.path());
    let from_memory = night_two(tmp.path(), &storage, &src, 0);
    let from_sqlite = night_two(tmp.path(), &storage, &src, u64::MAX);
    assert_eq!(from_memory, from_sqlite, "(read again, taken from the parent)");
    println!("night 2 after a lost pack: {} files read again, {} taken from the parent", from_memory.0, from_memory.1);
}

//! What a backup leaves in storage as packs: the partly filled packs of its workers are merged
//! at the end, so a small night writes one data pack and one tree pack.

mod support;

use std::sync::Arc;

use hoard_core::format::BlobType;
use hoard_repo::backup::fs::backup_paths;
use hoard_repo::backup::BackupOptions;
use hoard_repo::check::{check, Subset};
use hoard_storage::MemoryStorage;
use support::*;

#[test]
fn a_small_backup_writes_one_data_pack_and_one_tree_pack() {
    let tmp = tempfile::tempdir().unwrap();
    let storage = Arc::new(MemoryStorage::new());
    let repo = init(storage.clone(), &tmp.path().join("cache"));
    let src = tmp.path().join("src");
    // 100 files of 2 KiB and 4 of 150 KiB of noise (800 KiB in all, under the 1 MiB pack
    // size): the large files are split across the workers, which seal blobs into builders of
    // their own.
    for d in 0..10u64 {
        let dir = src.join(format!("d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..10u64 {
            std::fs::write(dir.join(format!("f{f}")), noise(d * 10 + f, 2048)).unwrap();
        }
    }
    for f in 0..4u64 {
        std::fs::write(src.join(format!("large{f}")), noise(1000 + f, 150 << 10)).unwrap();
    }
    let r = backup_paths(&repo, std::slice::from_ref(&src), &BackupOptions::default()).unwrap();
    assert_eq!(r.snapshot.summary.files_new, 104);
    let data = data_packs(&repo);
    let types: Vec<Vec<BlobType>> = {
        let cache = repo.cache();
        let packs = cache.packs().unwrap();
        packs
            .iter()
            .map(|(p, _)| {
                let mut t: Vec<BlobType> = cache.pack_entries(p).unwrap().iter().map(|e| e.blob_type).collect();
                t.dedup();
                t
            })
            .collect()
    };
    assert_eq!(data.len(), 1, "one data pack expected, got {types:?}");
    assert_eq!(types.len(), 2, "one data and one tree pack expected, got {types:?}");
    let report = check(&repo, Some(Subset::All)).unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
    let entry = repo.find_snapshot(&r.id.to_hex(), &|_| true).unwrap();
    let (summary, got) = restore_files(&repo, &entry, &src, &tmp.path().join("restored")).unwrap();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert!(got == files(&src), "the backup does not restore the tree");
}

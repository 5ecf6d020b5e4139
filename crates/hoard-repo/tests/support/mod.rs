//! Helpers shared by the crash-simulation and corruption tests: source trees with known bytes,
//! copies of in-memory repositories, and restoring a snapshot into a map of its files.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use hoard_core::format::BlobType;
use hoard_core::{ChunkerParams, Id, KdfParams};
use hoard_repo::restore::{self, RestoreOptions, RestoreSummary};
use hoard_repo::{InitOptions, Repository, SnapshotEntry};
use hoard_storage::{MemoryStorage, ObjectKind, Storage};

pub const PASSWORD: &[u8] = b"pw";

/// Cheap key derivation, small chunks (many blobs) and the smallest pack size the format allows
/// (several packs per backup).
pub fn init(storage: Arc<dyn Storage>, cache: &Path) -> Repository {
    let opts = InitOptions {
        kdf: KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 },
        files_chunker: ChunkerParams::with_avg(8 << 10).unwrap(),
        pack_size: 1 << 20,
        ..Default::default()
    };
    Repository::init(storage, PASSWORD, opts, cache).unwrap()
}

pub fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    blake3::Hasher::new().update(&seed.to_le_bytes()).finalize_xof().fill(&mut v);
    v
}

/// Writes a small source tree: files shared by every tree (`shared` seeds), files of its own,
/// a nested directory and an empty file.
pub fn make_tree(dir: &Path, own: u64, shared: &[u64], size: usize) {
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    for &s in shared {
        std::fs::write(dir.join(format!("shared-{s}")), noise(1000 + s, size)).unwrap();
    }
    std::fs::write(dir.join("own.bin"), noise(own, size * 2)).unwrap();
    std::fs::write(dir.join("sub/small.txt"), format!("tree {own}\n")).unwrap();
    std::fs::write(dir.join("sub/deeper/mid.bin"), noise(own + 500, size / 3)).unwrap();
    std::fs::write(dir.join("sub/empty"), b"").unwrap();
}

/// Every regular file under `dir`, by path relative to it.
pub fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.insert(e.path().strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

/// A copy of every object, as a new storage.
pub fn copy(s: &dyn Storage) -> MemoryStorage {
    let out = MemoryStorage::new();
    for kind in ObjectKind::ALL {
        for o in s.list(kind).unwrap() {
            out.create(kind, &o.name, &[Bytes::from(s.read(kind, &o.name).unwrap())]).unwrap();
        }
    }
    out
}

/// Restores a snapshot into `target` and returns what the restore said, and the files it wrote
/// that belong to the backed-up `source` directory.
pub fn restore_files(
    repo: &Repository,
    snap: &SnapshotEntry,
    source: &Path,
    target: &Path,
) -> hoard_repo::Result<(RestoreSummary, BTreeMap<PathBuf, Vec<u8>>)> {
    let _ = std::fs::remove_dir_all(target);
    let opts = RestoreOptions { target: target.to_path_buf(), threads: 2, ..Default::default() };
    let summary = restore::restore(repo, &restore::root_node(snap.snapshot.tree), &opts)?;
    let inside = target.join(source.strip_prefix("/").unwrap());
    let got = if inside.exists() { files(&inside) } else { BTreeMap::new() };
    Ok((summary, got))
}

/// The packs of `repo` that hold only data blobs, sorted by id.
pub fn data_packs(repo: &Repository) -> Vec<Id> {
    let cache = repo.cache();
    let mut data: Vec<Id> = cache
        .packs()
        .unwrap()
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| cache.pack_entries(p).unwrap().iter().all(|e| e.blob_type == BlobType::Data))
        .collect();
    data.sort();
    data
}

//! Library-level tests of the repository on in-memory storage: tar streams become the same
//! trees a filesystem walk makes, streams round-trip, and the index cache is rebuilt from the
//! repository alone.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use hoard_core::format::tree::NodeKind;
use hoard_core::KdfParams;
use hoard_repo::backup::stream::{backup_stream, StreamSource};
use hoard_repo::backup::tar::backup_tar;
use hoard_repo::backup::BackupOptions;
use hoard_repo::restore::{self, RestoreOptions};
use hoard_repo::{InitOptions, Repository};
use hoard_storage::{MemoryStorage, Storage};

fn repo(storage: Arc<dyn Storage>, cache: &std::path::Path) -> Repository {
    let opts = InitOptions { kdf: KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 }, ..Default::default() };
    Repository::init(storage, b"pw", opts, cache).unwrap()
}

fn noise(seed: u8, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    blake3::Hasher::new().update(&[seed]).finalize_xof().fill(&mut v);
    v
}

fn sample_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let dir = |path: &str, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        h.set_mtime(1_600_000_000);
        h.set_uid(999);
        h.set_gid(999);
        (h, path.to_string())
    };
    let (mut h, p) = dir("vol/", 0o755);
    b.append_data(&mut h, &p, std::io::empty()).unwrap();
    let (mut h, p) = dir("vol/keys/", 0o700);
    b.append_data(&mut h, &p, std::io::empty()).unwrap();
    let mut file = |path: &str, data: &[u8], mode: u32, uid: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_650_000_000);
        h.set_uid(uid);
        h.set_gid(uid);
        b.append_data(&mut h, path, data).unwrap();
    };
    file("vol/keys/id", b"secret", 0o600, 472);
    file("vol/big.bin", &noise(1, 5 << 20), 0o644, 0);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    b.append_link(&mut h, "vol/link", "keys/id").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    h.set_mode(0o644);
    b.append_link(&mut h, "vol/big-hardlink", "vol/big.bin").unwrap();
    // A file inside a directory whose own entry never appears.
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(3);
    h.set_mode(0o640);
    b.append_data(&mut h, "vol/implicit/dir/f", &b"abc"[..]).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn tar_stream_becomes_a_restorable_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let r = repo(storage, &tmp.path().join("cache"));
    let t = sample_tar();
    let res = backup_tar(&r, &mut t.as_slice(), 1, "docker-volume", "vol", &BackupOptions::default()).unwrap();
    assert_eq!(res.snapshot.source_kind, "docker-volume");
    let root = restore::root_node(res.snapshot.tree);
    let names: Vec<String> = r
        .load_tree(&res.snapshot.tree)
        .unwrap()
        .nodes
        .iter()
        .map(|n| String::from_utf8_lossy(&n.name).into_owned())
        .collect();
    assert_eq!(names, ["big-hardlink", "big.bin", "implicit", "keys", "link"]);
    let target = tmp.path().join("out");
    let s = restore::restore(
        &r,
        &root,
        &RestoreOptions { target: target.clone(), owners: true, sparse: true, threads: 2, ..Default::default() },
    )
    .unwrap();
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert_eq!(std::fs::read(target.join("big.bin")).unwrap(), noise(1, 5 << 20));
    assert_eq!(std::fs::read(target.join("keys/id")).unwrap(), b"secret");
    assert_eq!(std::fs::read_link(target.join("link")).unwrap().to_str().unwrap(), "keys/id");
    let a = std::fs::metadata(target.join("big.bin")).unwrap();
    let b = std::fs::metadata(target.join("big-hardlink")).unwrap();
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "hard link restored as a link");
    let k = std::fs::metadata(target.join("keys")).unwrap();
    assert_eq!(k.mode() & 0o7777, 0o700);
    assert_eq!(k.mtime(), 1_600_000_000);
    let id = std::fs::metadata(target.join("keys/id")).unwrap();
    assert_eq!((id.uid(), id.mode() & 0o777), (472, 0o600));
    // And back out as tar: the same entries and bytes.
    let mut out = Vec::new();
    restore::dump_tar(&r, &root, &mut out).unwrap();
    let mut a = tar::Archive::new(out.as_slice());
    let mut seen = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path().unwrap().display().to_string();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        if p == "big.bin" {
            assert_eq!(data, noise(1, 5 << 20));
        }
        seen.push(p);
    }
    assert!(seen.contains(&"keys/id".to_string()) && seen.contains(&"implicit/dir/f".to_string()), "{seen:?}");
}

#[test]
fn streams_round_trip_and_the_cache_rebuilds_from_the_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let r = repo(storage.clone(), &tmp.path().join("cache"));
    let data = noise(2, 3 << 20);
    let src = StreamSource { kind: "stdin", name: "dump.sql" };
    let res = backup_stream(&r, &mut data.as_slice(), &src, &BackupOptions::default(), &mut || Ok(())).unwrap();
    let root = r.load_tree(&res.snapshot.tree).unwrap();
    assert_eq!(root.nodes.len(), 1);
    assert_eq!(root.nodes[0].kind(), NodeKind::File);
    let mut out = Vec::new();
    restore::dump_file(&r, &root.nodes[0], &mut out).unwrap();
    assert_eq!(out, data);
    drop(r);
    // A new machine: another cache directory, only the storage and the password.
    let fresh = Repository::open(storage.clone(), b"pw", &tmp.path().join("other-cache")).unwrap();
    let snaps = fresh.snapshots().unwrap();
    assert_eq!(snaps.len(), 1);
    let node = &fresh.load_tree(&snaps[0].snapshot.tree).unwrap().nodes[0];
    let mut out2 = Vec::new();
    restore::dump_file(&fresh, node, &mut out2).unwrap();
    assert_eq!(out2, data);
    // The second, identical stream stores nothing new.
    let again = backup_stream(&fresh, &mut data.as_slice(), &src, &BackupOptions::default(), &mut || Ok(())).unwrap();
    // Only the one-entry tree (its mtime is the backup time) is new; no data. The tree holds the
    // stream's chunk ids, 32 bytes per chunk: about 200 chunks at the 16 KiB dumps average.
    assert_eq!(again.snapshot.summary.blobs_new, 1, "{:?}", again.snapshot.summary);
    assert!(again.snapshot.summary.bytes_new < 16 << 10, "{:?}", again.snapshot.summary);
    assert_eq!(again.snapshot.parent, Some(snaps[0].id));
    assert!(matches!(
        Repository::open(storage, b"wrong", &tmp.path().join("c3")),
        Err(hoard_repo::RepoError::WrongPassword(_))
    ));
}

/// Hands out its bytes in reads of irregular, mostly small sizes, as a pipe from a dump tool
/// does.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.step = (self.step * 7 + 3) % 50_000;
        let n = (self.step + 1).min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

#[test]
fn a_stream_read_in_blocks_is_cut_where_the_whole_input_would_be() {
    // Several of the reader's blocks (3 MiB each for dumps), fed in small reads: every chunk,
    // including those that straddle two blocks, must be cut where the chunker cuts the whole
    // input at once, and the bytes must come back unchanged. A block's cutting is shared with
    // a pool thread when one is free, so each run may split differently: all must agree.
    let tmp = tempfile::tempdir().unwrap();
    let r = repo(Arc::new(MemoryStorage::new()), &tmp.path().join("cache"));
    let mut data = noise(5, 14 << 20);
    // A compressible stretch, so that both sealing paths are taken.
    data[1 << 20..3 << 20].iter_mut().enumerate().for_each(|(i, b)| *b = (i / 3000) as u8);
    let whole = hoard_core::Chunker::new(r.config().dumps_chunker, r.keys()).lengths(&data);
    assert!(whole.len() > 400, "{}", whole.len());
    for run in 0..3 {
        let src = StreamSource { kind: "stdin", name: "dump.sql" };
        let mut input = Trickle { data: &data, step: 1 + run };
        let opts = BackupOptions { force: true, ..BackupOptions::default() };
        let res = backup_stream(&r, &mut input, &src, &opts, &mut || Ok(())).unwrap();
        let node = &r.load_tree(&res.snapshot.tree).unwrap().nodes[0];
        let stored: Vec<usize> =
            r.content_chunks(&node.content).unwrap().iter().map(|id| r.read_blob(id).unwrap().len()).collect();
        assert_eq!(stored, whole, "run {run}");
        let mut out = Vec::new();
        restore::dump_file(&r, node, &mut out).unwrap();
        assert!(out == data, "run {run}: the restored stream differs");
    }
}

/// A tar of `n` small files, every fifth a copy of an earlier one, under a top directory `vol/`.
fn small_files_tar(n: usize) -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    let mut b = tar::Builder::new(Vec::new());
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..n {
        // Distinct content beyond the 251 seeds: a counter in front.
        let data = match i % 5 {
            4 => files[i / 2].1.clone(),
            _ => [i.to_le_bytes().as_slice(), &noise((i % 251) as u8, 100 + (i * 977) % 9000)].concat(),
        };
        let path = format!("d{}/f{i}", i % 7);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1_650_000_000);
        b.append_data(&mut h, format!("vol/{path}"), data.as_slice()).unwrap();
        files.push((path, data));
    }
    (b.into_inner().unwrap(), files)
}

#[test]
fn a_tar_of_many_small_files_is_sealed_in_batches_and_restores() {
    // Small files' new chunks go to the pool in batches of up to 256 chunks or 1 MiB while the
    // stream is read on: 3,000 files make a dozen batches, with duplicates within and across
    // them. Everything must be stored once and come back byte for byte, and the same stream
    // again must give the same tree and store no data.
    let tmp = tempfile::tempdir().unwrap();
    let r = repo(Arc::new(MemoryStorage::new()), &tmp.path().join("cache"));
    let (t, files) = small_files_tar(3000);
    let res = backup_tar(&r, &mut t.as_slice(), 1, "docker-volume", "vol", &BackupOptions::default()).unwrap();
    let s = &res.snapshot.summary;
    assert_eq!(s.files_new, 3000);
    let unique: std::collections::HashSet<&[u8]> = files.iter().map(|(_, d)| d.as_slice()).collect();
    // One blob per distinct file (all are under a chunk), plus the trees.
    assert!(s.blobs_new >= unique.len() as u64 && s.blobs_new <= unique.len() as u64 + 10, "{s:?}");
    let target = tmp.path().join("out");
    let out = restore::restore(
        &r,
        &restore::root_node(res.snapshot.tree),
        &RestoreOptions { target: target.clone(), threads: 2, ..Default::default() },
    )
    .unwrap();
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    for (path, data) in &files {
        assert_eq!(&std::fs::read(target.join(path)).unwrap(), data, "{path}");
    }
    let opts = BackupOptions { force: true, ..BackupOptions::default() };
    let again = backup_tar(&r, &mut t.as_slice(), 1, "docker-volume", "vol", &opts).unwrap();
    assert_eq!(again.snapshot.tree, res.snapshot.tree);
    assert_eq!(again.snapshot.summary.blobs_new, 0, "{:?}", again.snapshot.summary);
}

#[test]
fn a_tar_backup_whose_uploads_fail_saves_nothing() {
    // 24 MiB of incompressible small files fill packs of 4 MiB while the stream is read, and one
    // upload fails: the backup's lock at first, then (the next try) a pack, after which later
    // batches find the uploaders gone. Each backup must fail with the storage's own error and
    // leave no snapshot, on this machine or a fresh one.
    use hoard_storage::fault::{FaultStorage, Op};
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..3000u32 {
        let data = [i.to_le_bytes().as_slice(), &noise((i % 251) as u8, 8 << 10)].concat();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, format!("vol/f{i}"), data.as_slice()).unwrap();
    }
    let t = b.into_inner().unwrap();
    let mut failed_pack = false;
    for k in 1..=8 {
        let tmp = tempfile::tempdir().unwrap();
        let fs = Arc::new(FaultStorage::new(MemoryStorage::new()));
        let faults = fs.faults();
        let opts = InitOptions {
            kdf: KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 },
            pack_size: 4 << 20,
            ..Default::default()
        };
        let r = Repository::init(fs.clone(), b"pw", opts, &tmp.path().join("cache")).unwrap();
        faults.fail_nth(Some(Op::Create), faults.count(Op::Create) + k, hoard_storage::ErrorKind::Other);
        let e = backup_tar(&r, &mut t.as_slice(), 1, "docker-volume", "vol", &BackupOptions::default()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("injected failure"), "the storage's own error, not a generic one: {msg}");
        assert!(r.snapshots().unwrap().is_empty());
        let fresh = Repository::open(fs, b"pw", &tmp.path().join("other-cache")).unwrap();
        assert!(fresh.snapshots().unwrap().is_empty());
        if msg.contains("Create pack") {
            failed_pack = true;
            break;
        }
    }
    assert!(failed_pack, "no pack upload was made to fail");
}

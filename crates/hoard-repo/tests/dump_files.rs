//! A database dump that reaches a file backup as a file (`pg_dumpall > backup.sql`, a copied
//! `dump.rdb`: what the stacks hoard replaces do every night) is cut with the repository's dump
//! chunker, as `hoard backup postgres` cuts it: a few changed rows in the middle then store a
//! few small chunks, not megabytes. A file that only looks similar keeps the file chunker. The
//! same holds for a dump inside a tar stream (a Docker volume read through the Engine's API).

mod support;

use std::sync::Arc;

use hoard_core::KdfParams;
use hoard_repo::backup::content::looks_like_dump;
use hoard_repo::backup::fs::backup_paths;
use hoard_repo::backup::tar::backup_tar;
use hoard_repo::backup::BackupOptions;
use hoard_repo::{InitOptions, Repository};
use hoard_storage::MemoryStorage;
use support::*;

/// 6 MiB of rows of incompressible text under `header`.
fn dump(header: &[u8]) -> Vec<u8> {
    let mut out = header.to_vec();
    let noise = noise(7, 3 << 20);
    for (i, row) in noise.chunks(96).enumerate() {
        let hex: String = row.iter().map(|b| format!("{b:02x}")).collect();
        out.extend_from_slice(format!("{i}\t{hex}\n").as_bytes());
    }
    out
}

/// Backs the file up, changes one row in the middle (same length), backs it up again; returns
/// the bytes night 2 stored as new chunks, after checking both nights restore.
fn night_two_new_bytes(header: &[u8]) -> u64 {
    let tmp = tempfile::tempdir().unwrap();
    // The default chunkers (support's `init` makes the file chunker small).
    let opts = InitOptions { kdf: KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 }, ..Default::default() };
    let repo = Repository::init(Arc::new(MemoryStorage::new()), PASSWORD, opts, &tmp.path().join("cache")).unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut data = dump(header);
    std::fs::write(src.join("backup.sql"), &data).unwrap();
    backup_paths(&repo, std::slice::from_ref(&src), &BackupOptions::default()).unwrap();
    let mid = data.len() / 2;
    let row = mid + data[mid..].iter().position(|&b| b == b'\t').unwrap() + 1;
    data[row..row + 8].copy_from_slice(b"deadbeef");
    std::fs::write(src.join("backup.sql"), &data).unwrap();
    let r = backup_paths(&repo, std::slice::from_ref(&src), &BackupOptions::default()).unwrap();
    let entry = repo.find_snapshot(&r.id.to_hex(), &|_| true).unwrap();
    let (summary, got) = restore_files(&repo, &entry, &src, &tmp.path().join("restored")).unwrap();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert!(got == files(&src), "night 2 does not restore the file");
    assert_eq!(r.snapshot.summary.files_changed, 1);
    r.snapshot.summary.bytes_new
}

/// A tar stream of a volume holding `backup.sql` (and a small file before it).
fn volume_tar(sql: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in [("vol/notes.txt", &b"kept next to the dump"[..]), ("vol/backup.sql", sql)] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// [`night_two_new_bytes`] for a dump that arrives in a tar stream, as a Docker volume does.
fn night_two_new_bytes_in_a_volume(header: &[u8]) -> u64 {
    let tmp = tempfile::tempdir().unwrap();
    let opts = InitOptions { kdf: KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 }, ..Default::default() };
    let repo = Repository::init(Arc::new(MemoryStorage::new()), PASSWORD, opts, &tmp.path().join("cache")).unwrap();
    let mut data = dump(header);
    let backup = |data: &[u8]| {
        let t = volume_tar(data);
        backup_tar(&repo, &mut t.as_slice(), 1, "docker-volume", "vol", &BackupOptions::default()).unwrap()
    };
    backup(&data);
    let mid = data.len() / 2;
    let row = mid + data[mid..].iter().position(|&b| b == b'\t').unwrap() + 1;
    data[row..row + 8].copy_from_slice(b"deadbeef");
    let r = backup(&data);
    // The dump's first bytes, read to tell what it is, are part of its content all the same.
    let entry = repo.find_snapshot(&r.id.to_hex(), &|_| true).unwrap();
    let (summary, got) = restore_files(&repo, &entry, std::path::Path::new("/"), &tmp.path().join("restored")).unwrap();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_eq!(got.len(), 2, "{:?}", got.keys().collect::<Vec<_>>());
    assert!(got.values().any(|v| v == &data), "night 2 does not restore the dump");
    assert!(got.values().any(|v| v == b"kept next to the dump"));
    r.snapshot.summary.bytes_new
}

#[test]
fn a_dump_in_a_volume_tar_stream_with_one_changed_row_stores_small_chunks_again() {
    let pg = night_two_new_bytes_in_a_volume(
        b"--\n-- PostgreSQL database dump\n--\n\n-- Dumped from database version 15.18\n",
    );
    let other = night_two_new_bytes_in_a_volume(b"--\n-- A text file that is not a dump\n--\n");
    eprintln!("night 2 in a volume stored {pg} new bytes for the dump, {other} for the file that is not one");
    assert!(pg <= 128 << 10, "the dump stored {pg} new bytes for one changed row");
    assert!(other >= 256 << 10, "the plain file stored only {other} new bytes: was it cut as a dump?");
}

#[test]
fn a_dump_file_with_one_changed_row_stores_small_chunks_again() {
    let pg = night_two_new_bytes(b"--\n-- PostgreSQL database dump\n--\n\n-- Dumped from database version 15.18\n");
    let other = night_two_new_bytes(b"--\n-- A text file that is not a dump\n--\n");
    // The dump chunker's chunks are 16 KiB on average (64 KiB at most); the file chunker's
    // are 256 KiB at least.
    assert!(pg <= 128 << 10, "the dump stored {pg} new bytes for one changed row");
    assert!(other >= 256 << 10, "the plain file stored only {other} new bytes: was it cut as a dump?");
}

#[test]
fn the_headers_of_real_dump_tools_are_recognised() {
    // pg_dump 15 and pg_dumpall, as Debian's packages write them.
    assert!(looks_like_dump(b"--\n-- PostgreSQL database dump\n--\n\n\\restrict eKw6f7eLIFVnvHD\n\n-- Dumped from"));
    assert!(looks_like_dump(b"--\n-- PostgreSQL database cluster dump\n--\n\n\\restrict x\n"));
    // mysqldump, and mariadb-dump with and without its sandbox-mode first line.
    assert!(looks_like_dump(b"-- MySQL dump 10.13  Distrib 8.0.36, for Linux (x86_64)\n--\n-- Host: db"));
    assert!(looks_like_dump(b"-- MariaDB dump 10.19  Distrib 10.11.6-MariaDB, for debian-linux-gnu (x86_64)\n"));
    assert!(looks_like_dump(b"/*M!999999\\- enable the sandbox mode */ \n-- MariaDB dump 10.19-11.4.5-MariaDB\n"));
    // A Redis RDB file.
    assert!(looks_like_dump(b"REDIS0011\xfa\tredis-ver\x057.0.15"));
    // Not dumps: custom-format pg_dump (compressed), gzip, SQL that is not a dump, text.
    assert!(!looks_like_dump(b"PGDMP\x01\x0e\x00\x04\x08\x01\x01\x01"));
    assert!(!looks_like_dump(b"\x1f\x8b\x08\x00\x00\x00\x00\x00"));
    assert!(!looks_like_dump(b"CREATE TABLE t (a int);\nINSERT INTO t VALUES (1);\n"));
    assert!(!looks_like_dump(b"--\n-- PostgreSQL database dump complete\n"));
    assert!(!looks_like_dump(b""));
}

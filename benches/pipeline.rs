//! Criterion benches of the backup pipeline, one group per stage, so a regression shows which
//! stage moved:
//!
//! | group              | what one iteration does                                              |
//! | ------------------ | -------------------------------------------------------------------- |
//! | `chunking`         | `Chunker::lengths` over the whole input (FILES and DUMPS parameters)  |
//! | `hashing`          | `Keys::blob_id` of every 1 MiB piece, and of every DUMPS chunk        |
//! | `compression`      | `compress::compress` at level 3 of every 1 MiB piece                  |
//! | `encryption`       | `Cipher::seal` of every 1 MiB piece (copied into a reused buffer)     |
//! | `pack_writing`     | `PackBuilder::add` (level 3) of every 1 MiB piece, or of every DUMPS  |
//! |                    | chunk (packs of 16 MiB, as the repository's default), then `finish`   |
//! | `index_lookup`     | one `IndexCache::lookup` in a cache of 100,000 blobs (present/absent) |
//! | `index_insert`     | `IndexCache::add_segment` of 45,000 blobs in 15 packs (a night 1 of  |
//! |                    | `/usr/share`) into an empty cache                                    |
//! | `pipeline_backup`  | `backup_stream` into a fresh repository on `MemoryStorage`            |
//! | `pipeline_restore` | `restore::dump_file` of that stream into `io::sink()`                 |
//!
//! Every group but `index_lookup` and `index_insert` reports bytes per second of input, on two inputs of 64 MiB
//! made in-process: `incompressible` (BLAKE3 XOF of a seed) and `compressible` (log lines with
//! pseudo-random fields, about 4x by zstd -3). The pipeline runs on the global rayon pool, so it
//! uses every core; the other stages are single-threaded.
//!
//! The `-chunks` variants cut the input where the DUMPS chunker cuts it, as `backup_stream` does:
//! `cargo xtask ceiling` adds up chunking, hashing, pack writing and an index lookup per chunk
//! into what two cores could do at best, and sets `pipeline_backup` against it.
//!
//! Run: `cargo bench --bench pipeline` (about two minutes on 2 cores); one group:
//! `cargo bench --bench pipeline -- chunking`. `cargo test --benches` runs each bench once, on
//! 4 MiB inputs so that it stays quick.

use std::fmt::Write as _;
use std::hint::black_box;
use std::io;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput};
use hoard_core::compress;
use hoard_core::crypto::Cipher;
use hoard_core::format::index::{IndexPack, IndexSegment};
use hoard_core::format::pack::{PackBuilder, PackEntry};
use hoard_core::format::tree::Node;
use hoard_core::format::BlobType;
use hoard_core::{Chunker, ChunkerParams, Id, KdfParams, MasterKey};
use hoard_index::IndexCache;
use hoard_repo::backup::stream::{backup_stream, StreamSource};
use hoard_repo::backup::BackupOptions;
use hoard_repo::{restore, InitOptions, Repository};
use hoard_storage::MemoryStorage;
use tempfile::TempDir;

/// Size of each input in a real run.
const SIZE: usize = 64 << 20;
/// Size of each input when criterion runs in test mode (`cargo test --benches`): every bench
/// runs once there, to prove it works, and 64 MiB would only make that slow.
const TEST_SIZE: usize = 4 << 20;
/// The piece size of the per-stage benches: a file chunk's average size.
const PIECE: usize = 1 << 20;
/// Blobs in the index cache of `index_lookup`.
const INDEX_BLOBS: usize = 100_000;
const STREAM_NAME: &str = "bench";
/// Pack size of the `-chunks` pack writing bench: the repository's default.
const PACK_SIZE: usize = 16 << 20;

/// Whether this is a measuring run (`cargo bench` passes `--bench`).
fn measuring() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn size() -> usize {
    if measuring() {
        SIZE
    } else {
        TEST_SIZE
    }
}

/// The two inputs, made once per process.
fn inputs() -> &'static [(&'static str, Vec<u8>)] {
    static INPUTS: OnceLock<Vec<(&'static str, Vec<u8>)>> = OnceLock::new();
    INPUTS.get_or_init(|| {
        let n = size();
        vec![("incompressible", incompressible(n)), ("compressible", compressible(n))]
    })
}

/// Bytes nothing can compress: BLAKE3's XOF of a fixed seed.
fn incompressible(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    blake3::Hasher::new().update(b"hoard bench incompressible").finalize_xof().fill(&mut v);
    v
}

/// Web-server-like log lines whose timestamps, ids, users, paths, sizes and durations come from
/// a fixed xorshift sequence: about 4x by zstd -3 (64 MiB -> 16.4 MB with the `zstd` CLI).
fn compressible(n: usize) -> Vec<u8> {
    const LEVELS: [&str; 4] = ["INFO", "INFO", "WARN", "DEBUG"];
    const PATHS: [&str; 6] = ["items", "users", "orders", "carts", "search", "health"];
    let mut s = String::with_capacity(n + 256);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut ts: u64 = 1_767_225_600_000;
    while s.len() < n {
        let r = next();
        ts += r % 50;
        let _ = writeln!(
            s,
            "{}.{:03} {} worker-{} req={:08x} user=u{} GET /api/v1/{}/{} status={} bytes={} dur={}ms",
            ts / 1000,
            ts % 1000,
            LEVELS[(r >> 8) as usize % 4],
            (r >> 12) % 8,
            next() as u32,
            (r >> 16) % 5000,
            PATHS[(r >> 30) as usize % 6],
            (r >> 33) % 100_000,
            if (r >> 50) % 20 == 0 { 404 } else { 200 },
            (r >> 20) % 65536,
            (r >> 40) % 300,
        );
    }
    let mut v = s.into_bytes();
    v.truncate(n);
    v
}

/// A group for one stage: short, flat sampling (one iteration is a whole input, tens to
/// hundreds of milliseconds), throughput in bytes of input.
fn stage_group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sampling_mode(SamplingMode::Flat).throughput(Throughput::Bytes(size() as u64));
    g
}

fn chunking(c: &mut Criterion) {
    let keys = MasterKey::from_bytes([7; 64]).keys();
    let mut g = stage_group(c, "chunking");
    for (params, pname) in [(ChunkerParams::FILES, "files"), (ChunkerParams::DUMPS, "dumps")] {
        let chunker = Chunker::new(params, &keys);
        for (name, data) in inputs() {
            g.bench_with_input(BenchmarkId::new(pname, name), data, |b, d| b.iter(|| chunker.lengths(d)));
        }
    }
    g.finish();
}

/// The pieces of `data` where the DUMPS chunker (under the benches' key) cuts it.
fn dump_chunks(data: &[u8]) -> Vec<&[u8]> {
    let keys = MasterKey::from_bytes([7; 64]).keys();
    let mut rest = data;
    Chunker::new(ChunkerParams::DUMPS, &keys)
        .lengths(data)
        .into_iter()
        .map(|n| {
            let (piece, tail) = rest.split_at(n);
            rest = tail;
            piece
        })
        .collect()
}

fn hashing(c: &mut Criterion) {
    let keys = MasterKey::from_bytes([7; 64]).keys();
    let mut g = stage_group(c, "hashing");
    for (name, data) in inputs() {
        let pieces = dump_chunks(data);
        g.bench_with_input(BenchmarkId::new("blob_id-chunks", name), &pieces, |b, pieces| {
            b.iter(|| {
                for p in pieces {
                    black_box(keys.blob_id(p));
                }
            })
        });
        g.bench_with_input(BenchmarkId::new("blob_id-1MiB", name), data, |b, d| {
            b.iter(|| {
                for p in d.chunks(PIECE) {
                    black_box(keys.blob_id(p));
                }
            })
        });
    }
    g.finish();
}

fn compression(c: &mut Criterion) {
    let mut g = stage_group(c, "compression");
    for (name, data) in inputs() {
        let stored: usize = data.chunks(PIECE).map(|p| compress::compress(p, 3).map_or(p.len(), |z| z.len())).sum();
        eprintln!("compression/{name}: zstd -3 in 1 MiB pieces stores {:.2}x less", data.len() as f64 / stored as f64);
        g.bench_with_input(BenchmarkId::new("zstd3-1MiB", name), data, |b, d| {
            b.iter(|| {
                for p in d.chunks(PIECE) {
                    black_box(compress::compress(p, 3));
                }
            })
        });
    }
    g.finish();
}

fn encryption(c: &mut Criterion) {
    let cipher = Cipher::new(&[9; 32]);
    let mut g = stage_group(c, "encryption");
    for (name, data) in inputs() {
        g.bench_with_input(BenchmarkId::new("aes256gcm-1MiB", name), data, |b, d| {
            let mut buf = Vec::with_capacity(PIECE + 16);
            b.iter(|| {
                for (i, p) in d.chunks(PIECE).enumerate() {
                    buf.clear();
                    buf.extend_from_slice(p);
                    cipher.seal(i as u32, b"hoard bench", &mut buf);
                    black_box(&buf);
                }
            })
        });
    }
    g.finish();
}

fn pack_writing(c: &mut Criterion) {
    let keys = MasterKey::from_bytes([7; 64]).keys();
    let mut g = stage_group(c, "pack_writing");
    for (name, data) in inputs() {
        let pieces = dump_chunks(data);
        let ids: Vec<Id> = pieces.iter().map(|p| keys.blob_id(p)).collect();
        g.bench_with_input(BenchmarkId::new("add-zstd3+finish-chunks", name), &pieces, |b, pieces| {
            // Sized as the backup's packer sizes its builders, so no buffer grows.
            let new = || PackBuilder::with_capacity(&keys, PACK_SIZE + PACK_SIZE / 4);
            b.iter(|| {
                let mut pack = new();
                let mut packs = Vec::new();
                for (p, id) in pieces.iter().zip(&ids) {
                    pack.add(BlobType::Data, *id, p, 3);
                    if pack.is_full(PACK_SIZE) {
                        packs.push(std::mem::replace(&mut pack, new()).finish());
                    }
                }
                packs.push(pack.finish());
                packs
            })
        });
        // Ids are computed outside the measurement: hashing has its own group.
        let ids: Vec<Id> = data.chunks(PIECE).map(|p| keys.blob_id(p)).collect();
        g.bench_with_input(BenchmarkId::new("add-zstd3+finish-1MiB", name), data, |b, d| {
            b.iter(|| {
                let mut pack = PackBuilder::with_capacity(&keys, d.len() + d.len() / 4);
                for (p, id) in d.chunks(PIECE).zip(&ids) {
                    pack.add(BlobType::Data, *id, p, 3);
                }
                pack.finish()
            })
        });
    }
    g.finish();
}

fn fake_id(domain: &[u8], i: u64) -> Id {
    let mut h = blake3::Hasher::new();
    h.update(domain).update(&i.to_le_bytes());
    Id(*h.finalize().as_bytes())
}

/// An index segment of `packs` packs of `per_pack` blobs, each stored in `1 << shift` bytes (and
/// twice that before compression when `compressed`).
fn fake_segment(packs: usize, per_pack: usize, shift: u32, compressed: bool) -> IndexSegment {
    let raw_len = if compressed { 2 << shift } else { 1 << shift };
    IndexSegment {
        packs: (0..packs)
            .map(|p| IndexPack {
                id: fake_id(b"pack", p as u64),
                len: (per_pack as u64) << shift,
                entries: (0..per_pack)
                    .map(|e| PackEntry {
                        blob_type: BlobType::Data,
                        id: fake_id(b"blob", (p * per_pack + e) as u64),
                        offset: (e as u64) << shift,
                        length: (1 << shift) + 16,
                        raw_len,
                        compressed,
                        nonce: e as u32,
                    })
                    .collect(),
            })
            .collect(),
        superseded: vec![],
    }
}

fn index_lookup(c: &mut Criterion) {
    let dir = TempDir::new().unwrap();
    let repo_id = fake_id(b"repo", 0);
    let mut cache = IndexCache::open(&dir.path().join("index.sqlite"), &repo_id).unwrap();
    // 100 packs of 1,000 blobs of 64 KiB, as a dump's chunks would be.
    cache.add_segment("bench", &fake_segment(INDEX_BLOBS / 1000, 1000, 16, false)).unwrap();

    let mut g = c.benchmark_group("index_lookup");
    g.throughput(Throughput::Elements(1));
    // A stride coprime with the count walks every blob in an order unrelated to insertion.
    let mut i = 0u64;
    g.bench_function(BenchmarkId::new("lookup", "present-100k"), |b| {
        b.iter(|| {
            i = (i + 7919) % INDEX_BLOBS as u64;
            let hit = cache.lookup(&fake_id(b"blob", i)).unwrap();
            assert!(hit.is_some());
            hit
        })
    });
    let mut j = 0u64;
    g.bench_function(BenchmarkId::new("lookup", "absent-100k"), |b| {
        b.iter(|| {
            j += 1;
            let miss = cache.lookup(&fake_id(b"absent", j)).unwrap();
            assert!(miss.is_none());
            miss
        })
    });
    g.finish();
}

/// A backup's last index segment going into the cache: on a first backup it lists nearly every
/// blob, and the backup waits for it before it writes its snapshot.
fn index_insert(c: &mut Criterion) {
    let (packs, per_pack) = (15usize, 3000usize);
    // Blobs of 8 KiB that compressed to 4 KiB, as small files' would be.
    let seg = fake_segment(packs, per_pack, 12, true);
    let mut g = c.benchmark_group("index_insert");
    g.throughput(Throughput::Elements((packs * per_pack) as u64));
    g.bench_function(BenchmarkId::new("add_segment", "45k-into-empty"), |b| {
        b.iter_batched(
            || {
                let dir = TempDir::new().unwrap();
                let cache = IndexCache::open(&dir.path().join("index.sqlite"), &fake_id(b"repo", 0)).unwrap();
                (dir, cache)
            },
            |(dir, mut cache)| {
                cache.add_segment("bench", &seg).unwrap();
                (cache, dir)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// An empty repository on `MemoryStorage` with a cheap KDF, its index cache in `cache`.
fn fresh_repo(cache: &Path) -> Repository {
    let opts =
        InitOptions { kdf: KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 }, ..InitOptions::default() };
    Repository::init(Arc::new(MemoryStorage::new()), b"bench", opts, cache).unwrap()
}

fn backup(repo: &Repository, data: &[u8]) -> hoard_repo::backup::BackupResult {
    let src = StreamSource { kind: "stdin", name: STREAM_NAME };
    let mut input = data;
    backup_stream(repo, &mut input, &src, &BackupOptions::default(), &mut || Ok(())).unwrap()
}

fn pipeline_backup(c: &mut Criterion) {
    let mut g = stage_group(c, "pipeline_backup");
    for (name, data) in inputs() {
        // A fresh repository per iteration, made outside the measurement: into the same one,
        // every backup after the first would find all its chunks already stored.
        g.bench_with_input(BenchmarkId::new("backup_stream", name), data, |b, d| {
            b.iter_batched(
                || {
                    let dir = TempDir::new().unwrap();
                    let repo = fresh_repo(dir.path());
                    (dir, repo)
                },
                |(dir, repo)| {
                    let r = backup(&repo, d);
                    // Every chunk was new (bytes_new also counts the tree and list blobs).
                    assert!(r.snapshot.summary.bytes_new >= d.len() as u64);
                    // Returned, so that freeing the repository is not measured.
                    (r, repo, dir)
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

fn pipeline_restore(c: &mut Criterion) {
    let mut g = stage_group(c, "pipeline_restore");
    for (name, data) in inputs() {
        let dir = TempDir::new().unwrap();
        let repo = fresh_repo(dir.path());
        let snap = backup(&repo, data).snapshot;
        let node: Node = restore::resolve(&repo, &snap.tree, &[STREAM_NAME.as_bytes().to_vec()]).unwrap().unwrap();
        g.bench_with_input(BenchmarkId::new("dump_file", name), data, |b, d| {
            b.iter(|| {
                let n = restore::dump_file(&repo, &node, &mut io::sink()).unwrap();
                assert_eq!(n, d.len() as u64);
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args()
}

criterion_group! {
    name = benches;
    config = config();
    targets = chunking, hashing, compression, encryption, pack_writing, index_lookup, index_insert, pipeline_backup, pipeline_restore
}
criterion_main!(benches);

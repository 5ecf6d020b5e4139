//! `cargo xtask compression [--small KIB] [--group KIB] [PATH]...`: how much smaller a tree
//! would be stored if small files were compressed together rather than one by one.
//!
//! hoard compresses every blob by itself (one zstd frame each), so a blob can be read, checked
//! and repacked alone. Small files lose most from that: zstd has no context from their
//! neighbours. This measures, at zstd level 3 and on the blobs hoard's own chunker cuts:
//! every blob by itself (what hoard stores, before encryption and packing), the small ones with
//! a dictionary trained on a sample of them, and the small ones compressed in groups in walk
//! order. Nothing is written.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hoard_core::keys::MASTER_LEN;
use hoard_core::{Chunker, ChunkerParams, MasterKey};

/// Dictionary size: zstd's own default for `--train`.
const DICT_LEN: usize = 112_640;

pub fn run(args: &[String]) -> Result<()> {
    let mut small = 64usize << 10;
    let mut group = 1usize << 20;
    let mut paths = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut kib = |name: &str| -> Result<usize> {
            let v = it.next().with_context(|| format!("{name} needs a value in KiB"))?;
            Ok(v.parse::<usize>().with_context(|| format!("{name} {v}: not a number of KiB"))? << 10)
        };
        match a.as_str() {
            "--small" => small = kib("--small")?,
            "--group" => group = kib("--group")?,
            s if s.starts_with('-') => bail!("compression: unknown option {s}"),
            p => paths.push(PathBuf::from(p)),
        }
    }
    if paths.is_empty() {
        paths.push(PathBuf::from("/usr/share"));
    }
    let mut files = Vec::new();
    for p in &paths {
        walk(p, &mut files).with_context(|| format!("walking {}", p.display()))?;
    }
    let m = measure(&files, small, group)?;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let paths: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    println!(
        "{}: {} files, {:.1} MiB ({:.1} MiB of it duplicate blobs); {} blobs under {} KiB ({:.1} MiB), {} larger ({:.1} MiB)",
        paths.join(" "),
        files.len(),
        mib(m.total),
        mib(m.duplicate),
        m.small_n,
        small >> 10,
        mib(m.small_raw),
        m.large_n,
        mib(m.large_raw)
    );
    println!("zstd level 3; a blob or group that does not shrink counts at its own size\n");
    println!(
        "| small blobs compressed | small blobs, MiB | with the larger blobs ({:.1} MiB), MiB |",
        mib(m.large_stored)
    );
    println!("|---|---:|---:|");
    let row = |how: &str, b: u64| println!("| {how} | {:.1} | {:.1} |", mib(b), mib(b + m.large_stored));
    row("each by itself (hoard)", m.each);
    row(&format!("each with a {} KiB dictionary trained on every 10th", DICT_LEN >> 10), m.with_dict);
    row(&format!("in groups of {} KiB, in walk order", group >> 10), m.grouped);
    Ok(())
}

/// Stored bytes, at zstd 3, of the distinct blobs of `files` cut by hoard's chunker.
struct Measures {
    /// Bytes of the files, and of blobs seen before.
    total: u64,
    duplicate: u64,
    /// Distinct blobs under `small` bytes: count, bytes, and stored bytes each by itself,
    /// each with a trained dictionary, and in groups of `group` bytes.
    small_n: u64,
    small_raw: u64,
    each: u64,
    with_dict: u64,
    grouped: u64,
    /// The other distinct blobs: count, bytes, stored bytes each by itself.
    large_n: u64,
    large_raw: u64,
    large_stored: u64,
}

fn measure(files: &[PathBuf], small: usize, group: usize) -> Result<Measures> {
    // Chunk boundaries depend on the repository's key, and so does which pieces of large files
    // deduplicate: a fixed key makes the figures the same every run.
    let chunker = Chunker::new(ChunkerParams::FILES, &MasterKey::from_bytes([7; MASTER_LEN]).keys());
    let mut small_blobs: Vec<Vec<u8>> = Vec::new();
    let (mut large_raw, mut large_stored, mut large_n, mut total) = (0u64, 0u64, 0u64, 0u64);
    let mut c = zstd::bulk::Compressor::new(3)?;
    // hoard stores a blob once however often it occurs.
    let mut seen = std::collections::HashSet::new();
    let mut duplicate = 0u64;
    for f in files {
        let Ok(data) = std::fs::read(f) else { continue };
        total += data.len() as u64;
        let mut at = 0;
        for len in chunker.lengths(&data) {
            let blob = &data[at..at + len];
            at += len;
            if !seen.insert(*blake3::hash(blob).as_bytes()) {
                duplicate += len as u64;
                continue;
            }
            if len < small {
                small_blobs.push(blob.to_vec());
            } else {
                large_raw += len as u64;
                large_stored += stored(&mut c, blob)?;
                large_n += 1;
            }
        }
    }
    let small_raw: u64 = small_blobs.iter().map(|b| b.len() as u64).sum();
    let small_n = small_blobs.len() as u64;
    let mut each = 0u64;
    for b in &small_blobs {
        each += stored(&mut c, b)?;
    }
    // Every tenth small blob trains the dictionary, as a repository would train one on a
    // sample of its first backup.
    let sample: Vec<&[u8]> = small_blobs.iter().step_by(10).map(|b| b.as_slice()).collect();
    let dict = zstd::dict::from_samples(&sample, DICT_LEN).context("training a dictionary")?;
    let mut cd = zstd::bulk::Compressor::with_dictionary(3, &dict)?;
    let mut with_dict = 0u64;
    for b in &small_blobs {
        with_dict += stored(&mut cd, b)?;
    }
    let mut grouped = 0u64;
    let mut buf = Vec::with_capacity(group + small);
    for b in &small_blobs {
        buf.extend_from_slice(b);
        if buf.len() >= group {
            grouped += stored(&mut c, &buf)?;
            buf.clear();
        }
    }
    if !buf.is_empty() {
        grouped += stored(&mut c, &buf)?;
    }
    Ok(Measures { total, duplicate, small_n, small_raw, each, with_dict, grouped, large_n, large_raw, large_stored })
}

/// Bytes `data` takes compressed at level 3, or raw when that is not smaller.
fn stored(c: &mut zstd::bulk::Compressor, data: &[u8]) -> Result<u64> {
    Ok(c.compress(data)?.len().min(data.len()) as u64)
}

/// Regular files under `p`, directories in name order, symbolic links not followed.
fn walk(p: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let meta = std::fs::symlink_metadata(p)?;
    if meta.is_file() {
        out.push(p.to_path_buf());
    } else if meta.is_dir() {
        let mut names: Vec<PathBuf> = std::fs::read_dir(p)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        names.sort();
        for n in names {
            // A directory that cannot be read is left out, as `tar` would warn and go on.
            let _ = walk(&n, out);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_files_alike_compress_better_together_and_duplicates_count_once() {
        let dir = std::env::temp_dir().join(format!("xtask-compression-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // 200 files of 3 KiB that share a 2 KiB preamble and differ in 1 KiB of noise: each
        // alone cannot use what the others share, a group can.
        let mut preamble = vec![0u8; 2048];
        blake3::Hasher::new().update(b"preamble").finalize_xof().fill(&mut preamble);
        for i in 0..200u32 {
            let mut data = preamble.clone();
            let mut x = blake3::Hasher::new();
            x.update(&i.to_le_bytes());
            let mut noise = [0u8; 1024];
            x.finalize_xof().fill(&mut noise);
            data.extend_from_slice(&noise);
            std::fs::write(dir.join(format!("f{i:03}")), &data).unwrap();
        }
        std::fs::write(dir.join("g000"), std::fs::read(dir.join("f000")).unwrap()).unwrap();
        let mut files = Vec::new();
        walk(&dir, &mut files).unwrap();
        let m = measure(&files, 64 << 10, 1 << 20).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!((m.small_n, m.large_n), (200, 0));
        assert_eq!(m.duplicate, 3072);
        assert_eq!(m.small_raw, 200 * 3072);
        assert!(m.grouped < m.each * 3 / 4, "{} grouped against {} each", m.grouped, m.each);
        assert!(m.grouped >= 200 * 1024, "the noise cannot compress: {}", m.grouped);
        assert!(m.with_dict < m.each, "{} with a dictionary against {} each", m.with_dict, m.each);
    }
}

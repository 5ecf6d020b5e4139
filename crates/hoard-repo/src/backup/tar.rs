//! Building a snapshot tree from a tar stream (the Docker Engine hands out volumes this way).
//! Entries may come in any order; the tree is assembled in memory (metadata only: content is
//! chunked and stored as each entry streams past) and stored bottom-up at the end.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;
use std::time::Instant;

use hoard_core::format::snapshot::Summary;
use hoard_core::format::tree::{Node, NodeKind};
use hoard_core::Chunker;
use tar::EntryType;

use super::content::{chunk_stream, looks_like_dump, Batch, Flight, DUMP_HEAD, DUMP_SNIFF_MIN, FLIGHT_BYTES};
use super::treebuild::{MemDir, MemEntry};
use super::{commit, BackupOptions, BackupResult};
use crate::error::{RepoError, Result};
use crate::packer::Packer;
use crate::repo::Repository;

fn components(p: &Path) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n.as_bytes().to_vec()),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(RepoError::Invalid(format!("tar entry {} escapes the archive", p.display())))
            }
        }
    }
    Ok(out)
}

/// Stores the content of a tar stream and returns the root tree id and the summary. `strip`
/// leading components are removed from every path (Docker's archive API puts a volume's
/// content under one top directory).
pub fn tree_from_tar(
    packer: &Packer,
    input: &mut dyn Read,
    strip: usize,
    opts: &BackupOptions,
) -> Result<(hoard_core::Id, Summary)> {
    tree_from_tar_with(packer, input, strip, opts, false).map(|(tree, summary, _)| (tree, summary))
}

/// [`tree_from_tar`], with nodes in the portable form of [`super::volume::portable`] when
/// `portable` is set; also returns the top directory's own entry when `strip` is 1 and the
/// stream has one (a volume's root: its owner and mode).
pub(crate) fn tree_from_tar_with(
    packer: &Packer,
    input: &mut dyn Read,
    strip: usize,
    opts: &BackupOptions,
    portable: bool,
) -> Result<(hoard_core::Id, Summary, Option<Node>)> {
    let flight = Flight::new(FLIGHT_BYTES);
    let failed = Mutex::new(None);
    // Small files' new chunks are sealed on the pool in batches while this thread reads on; the
    // scope ends when the last is sealed.
    let read = rayon::in_place_scope(|s| {
        let mut batch = Batch::new(s, packer, &flight, &failed);
        let r = read_entries(packer, input, strip, opts, &flight, &mut batch);
        batch.flush();
        r
    });
    if let Some(e) = failed.into_inner().unwrap() {
        return Err(e);
    }
    let (mut root, summary, mut top) = read?;
    if portable {
        // After the whole stream: hard links have their final counts only now.
        portable_tree(&mut root);
        top.iter_mut().for_each(super::volume::portable);
    }
    let tree = root.store(packer)?;
    Ok((tree, summary, top))
}

/// Reads the stream's entries into a tree in memory, storing file content on the way.
fn read_entries(
    packer: &Packer,
    input: &mut dyn Read,
    strip: usize,
    opts: &BackupOptions,
    flight: &Flight,
    batch: &mut Batch<'_, '_>,
) -> Result<(MemDir, Summary, Option<Node>)> {
    let mut top = None;
    let repo = packer.repo();
    let chunker = Chunker::new(repo.config().files_chunker, repo.keys());
    let dumps = Chunker::new(repo.config().dumps_chunker, repo.keys());
    let mut root = MemDir::default();
    let mut summary = Summary::default();
    let mut archive = tar::Archive::new(input);
    let mut next_inode = 1u64;
    let bad = |e: std::io::Error| RepoError::io("reading the tar stream", e);
    for entry in archive.entries().map_err(bad)? {
        if opts.cancel.load(Relaxed) {
            return Err(RepoError::Interrupted);
        }
        if batch.failed() || packer.failed() {
            return Err(RepoError::Invalid("storage failed; see the error below".into()));
        }
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        let mut comps = components(&path)?;
        let is_top = comps.len() == strip && strip > 0 && entry.header().entry_type() == EntryType::Directory;
        if comps.len() <= strip && !is_top {
            continue;
        }
        comps.drain(..strip);
        let h = entry.header().clone();
        let mut node = Node {
            name: comps.last().cloned().unwrap_or_default(),
            // Numeric fields some writers leave blank read as 0 rather than failing the backup.
            mode: h.mode().unwrap_or(0o644) & 0o7777,
            uid: h.uid().unwrap_or(0) as u32,
            gid: h.gid().unwrap_or(0) as u32,
            user: h.username().ok().flatten().unwrap_or("").to_string(),
            group: h.groupname().ok().flatten().unwrap_or("").to_string(),
            mtime_ns: (h.mtime().unwrap_or(0) as i64) * 1_000_000_000,
            links: 1,
            ..Default::default()
        };
        if let Some(exts) = entry.pax_extensions().map_err(bad)? {
            for ext in exts {
                let ext = ext.map_err(bad)?;
                let key = ext.key_bytes();
                if key == b"mtime" {
                    if let Some(ns) = std::str::from_utf8(ext.value_bytes()).ok().and_then(parse_pax_time) {
                        node.mtime_ns = ns;
                    }
                } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    node.xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
                }
            }
            node.xattrs.sort();
        }
        if is_top {
            node.kind = Some(NodeKind::Dir);
            top = Some(node);
            continue;
        }
        let (dirs, _) = comps.split_at(comps.len() - 1);
        match h.entry_type() {
            EntryType::Directory => {
                node.kind = Some(NodeKind::Dir);
                root.dir_mut(&comps).node = Some(node);
                summary.dirs += 1;
                continue;
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                node.kind = Some(NodeKind::File);
                node.inode = next_inode;
                next_inode += 1;
                let progress = &opts.progress;
                // A database dump in a volume is cut as a file backup cuts one (`fs::read_file`):
                // its first bytes are read here to tell, then streamed on ahead of the rest.
                let mut head = Vec::new();
                let mut cut = &chunker;
                if entry.size() >= DUMP_SNIFF_MIN {
                    (&mut entry).take(DUMP_HEAD as u64).read_to_end(&mut head).map_err(bad)?;
                    if looks_like_dump(&head) {
                        cut = &dumps;
                    }
                }
                let mut content = head.as_slice().chain(&mut entry);
                let chunked = chunk_stream(
                    &mut content,
                    cut,
                    packer,
                    flight,
                    &opts.cancel,
                    &|n| {
                        progress.bytes_read.fetch_add(n, Relaxed);
                    },
                    Some(&mut *batch),
                )?;
                node.size = chunked.size;
                node.content = chunked.content;
                summary.files_new += 1;
                summary.bytes_total += node.size;
                summary.bytes_read += node.size;
                progress.files.fetch_add(1, Relaxed);
            }
            EntryType::Symlink => {
                node.kind = Some(NodeKind::Symlink);
                node.link_target = entry.link_name_bytes().map(|b| b.into_owned()).unwrap_or_default();
                summary.other_entries += 1;
            }
            EntryType::Link => {
                let target = entry.link_name().map_err(bad)?.map(|p| p.into_owned()).unwrap_or_default();
                let mut tcomps = components(&target)?;
                if tcomps.len() <= strip {
                    return Err(RepoError::Invalid(format!("hard link {} points outside the volume", path.display())));
                }
                tcomps.drain(..strip);
                let Some(t) = root.leaf_mut(&tcomps) else {
                    return Err(RepoError::Invalid(format!(
                        "hard link {} to {} which is not in the stream before it",
                        path.display(),
                        target.display()
                    )));
                };
                t.links += 1;
                let mut copy = t.clone();
                copy.name = node.name.clone();
                node = copy;
                summary.files_new += 1;
                summary.bytes_total += node.size;
                // Every node of the link group carries the final count.
                let (inode, links) = (node.inode, node.links);
                fix_links(&mut root, inode, links);
            }
            EntryType::Fifo => {
                node.kind = Some(NodeKind::Fifo);
                summary.other_entries += 1;
            }
            EntryType::Char | EntryType::Block => {
                node.kind =
                    Some(if h.entry_type() == EntryType::Char { NodeKind::CharDevice } else { NodeKind::BlockDevice });
                let major = h.device_major().map_err(bad)?.unwrap_or(0) as u64;
                let minor = h.device_minor().map_err(bad)?.unwrap_or(0) as u64;
                node.rdev = libc::makedev(major as u32, minor as u32);
                summary.other_entries += 1;
            }
            other => {
                tracing::debug!("skipping tar entry {} of type {other:?}", path.display());
                continue;
            }
        }
        root.dir_mut(dirs).children.insert(node.name.clone(), MemEntry::Leaf(node));
    }
    Ok((root, summary, top))
}

fn portable_tree(d: &mut MemDir) {
    if let Some(n) = &mut d.node {
        super::volume::portable(n);
    }
    for e in d.children.values_mut() {
        match e {
            MemEntry::Leaf(n) => super::volume::portable(n),
            MemEntry::Dir(sub) => portable_tree(sub),
        }
    }
}

fn fix_links(d: &mut MemDir, inode: u64, links: u64) {
    for e in d.children.values_mut() {
        match e {
            MemEntry::Leaf(n) if n.inode == inode && n.kind() == NodeKind::File => n.links = links,
            MemEntry::Dir(sub) => fix_links(sub, inode, links),
            _ => {}
        }
    }
}

fn parse_pax_time(s: &str) -> Option<i64> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut ns: i64 = 0;
    for (i, c) in frac.chars().take(9).enumerate() {
        ns += c.to_digit(10)? as i64 * 10i64.pow(8 - i as u32);
    }
    Some(secs * 1_000_000_000 + if secs < 0 { -ns } else { ns })
}

/// Backs up a tar stream as a tree snapshot.
pub fn backup_tar(
    repo: &Repository,
    input: &mut dyn Read,
    strip: usize,
    kind: &str,
    name: &str,
    opts: &BackupOptions,
) -> Result<BackupResult> {
    let started = Instant::now();
    super::locked(repo, opts, |session| {
        let ((tree, summary), stats) =
            Packer::run(repo, repo.storage().connections(), |packer| tree_from_tar(packer, input, strip, opts))?;
        commit(session, repo, opts, kind, name, vec![], opts.parent, tree, summary, stats, started, vec![])
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn pax_times() {
        assert_eq!(super::parse_pax_time("1700000000.5"), Some(1_700_000_000_500_000_000));
        assert_eq!(super::parse_pax_time("12"), Some(12_000_000_000));
        assert_eq!(super::parse_pax_time("x"), None);
    }
}

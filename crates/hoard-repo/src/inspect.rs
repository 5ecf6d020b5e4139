//! Reading snapshots without restoring them: listing, comparing, sizing, and rebuilding the
//! index from the packs.

use std::collections::HashSet;
use std::time::Duration;

use hoard_core::format::index::IndexPack;
use hoard_core::format::pack;
use hoard_core::format::tree::{Node, NodeKind};
use hoard_core::format::ObjectKind;
use hoard_core::Id;

use crate::error::Result;
use crate::lock::{Session, DEFAULT_STALE};
use crate::repo::{Repository, SnapshotEntry};

/// Calls `f(path, node)` for every entry below `node` (depth first, sorted), paths starting
/// with `prefix`.
pub fn walk(
    repo: &Repository,
    node: &Node,
    prefix: &str,
    recursive: bool,
    f: &mut dyn FnMut(&str, &Node) -> Result<()>,
) -> Result<()> {
    if node.kind() != NodeKind::Dir {
        return f(prefix, node);
    }
    let tree = repo.load_tree(&node.subtree.unwrap())?;
    for n in &tree.nodes {
        let p = join(prefix, &n.name);
        f(&p, n)?;
        if recursive && n.kind() == NodeKind::Dir {
            walk(repo, n, &p, true, f)?;
        }
    }
    Ok(())
}

/// `prefix/name`, the path a walk of a snapshot shows for an entry (names that are not UTF-8
/// shown lossily).
pub(crate) fn join(prefix: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if prefix.ends_with('/') {
        format!("{prefix}{name}")
    } else {
        format!("{prefix}/{name}")
    }
}

/// How an entry differs between two snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Added,
    Removed,
    /// Content differs.
    Modified,
    /// Only metadata (mode, owner, times, xattrs) differs.
    Metadata,
    /// The entry changed kind (file to directory, …).
    TypeChanged,
}

impl Change {
    pub fn symbol(self) -> char {
        match self {
            Change::Added => '+',
            Change::Removed => '-',
            Change::Modified => 'M',
            Change::Metadata => 'U',
            Change::TypeChanged => 'T',
        }
    }
}

fn same_meta(a: &Node, b: &Node) -> bool {
    a.mode == b.mode
        && a.uid == b.uid
        && a.gid == b.gid
        && a.mtime_ns == b.mtime_ns
        && a.xattrs == b.xattrs
        && a.link_target == b.link_target
        && a.rdev == b.rdev
}

/// Called for each difference: path, change, old node, new node.
pub type DiffVisitor<'a> = dyn FnMut(&str, Change, Option<&Node>, Option<&Node>) + 'a;

/// Compares two trees, calling `f` for every difference, in path order. Identical subtrees
/// (same id) are skipped without being read.
pub fn diff(repo: &Repository, a: Option<&Node>, b: Option<&Node>, path: &str, f: &mut DiffVisitor) -> Result<()> {
    let (ta, tb) = (
        match a {
            Some(n) if n.kind() == NodeKind::Dir => repo.load_tree(&n.subtree.unwrap())?.nodes,
            _ => vec![],
        },
        match b {
            Some(n) if n.kind() == NodeKind::Dir => repo.load_tree(&n.subtree.unwrap())?.nodes,
            _ => vec![],
        },
    );
    let (mut i, mut j) = (0, 0);
    while i < ta.len() || j < tb.len() {
        let ord = match (ta.get(i), tb.get(j)) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match ord {
            std::cmp::Ordering::Less => {
                let n = &ta[i];
                let p = join(path, &n.name);
                f(&p, Change::Removed, Some(n), None);
                if n.kind() == NodeKind::Dir {
                    diff(repo, Some(n), None, &p, f)?;
                }
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                let n = &tb[j];
                let p = join(path, &n.name);
                f(&p, Change::Added, None, Some(n));
                if n.kind() == NodeKind::Dir {
                    diff(repo, None, Some(n), &p, f)?;
                }
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (&ta[i], &tb[j]);
                let p = join(path, &x.name);
                if x.kind() != y.kind() {
                    f(&p, Change::TypeChanged, Some(x), Some(y));
                    diff(repo, Some(x), Some(y), &p, f)?;
                } else if x.kind() == NodeKind::Dir {
                    if !same_meta(x, y) {
                        f(&p, Change::Metadata, Some(x), Some(y));
                    }
                    if x.subtree != y.subtree {
                        diff(repo, Some(x), Some(y), &p, f)?;
                    }
                } else if x.content != y.content || x.size != y.size {
                    f(&p, Change::Modified, Some(x), Some(y));
                } else if !same_meta(x, y) {
                    f(&p, Change::Metadata, Some(x), Some(y));
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}

/// Sizes of a set of snapshots.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub snapshots: usize,
    pub files: u64,
    /// Sum of file sizes over all snapshots, counting every snapshot in full.
    pub logical_bytes: u64,
    /// Plaintext bytes of the distinct blobs they reference.
    pub unique_bytes: u64,
    /// Bytes those distinct blobs take in the repository.
    pub stored_bytes: u64,
    pub blobs: u64,
}

/// Walks the snapshots' trees and sums what they reference, counting each blob once.
pub fn stats(repo: &Repository, snaps: &[SnapshotEntry]) -> Result<Stats> {
    let mut st = Stats { snapshots: snaps.len(), ..Default::default() };
    let mut seen_trees: HashSet<Id> = HashSet::new();
    let mut seen_blobs: HashSet<Id> = HashSet::new();
    let count_blob = |id: &Id, st: &mut Stats, seen: &mut HashSet<Id>| -> Result<()> {
        if seen.insert(*id) {
            if let Some(loc) = repo.cache().lookup(id)? {
                st.unique_bytes += loc.entry.raw_len as u64;
                st.stored_bytes += loc.entry.length as u64;
                st.blobs += 1;
            }
        }
        Ok(())
    };
    for s in snaps {
        st.logical_bytes += s.snapshot.summary.bytes_total;
        let mut stack = vec![s.snapshot.tree];
        while let Some(t) = stack.pop() {
            if !seen_trees.insert(t) {
                continue;
            }
            count_blob(&t, &mut st, &mut seen_blobs)?;
            for n in repo.load_tree(&t)?.nodes {
                match n.kind() {
                    NodeKind::Dir => stack.push(n.subtree.unwrap()),
                    NodeKind::File => {
                        st.files += 1;
                        if let hoard_core::format::tree::Content::Lists(l) = &n.content {
                            for id in l {
                                count_blob(id, &mut st, &mut seen_blobs)?;
                            }
                        }
                        for id in repo.content_chunks(&n.content)? {
                            count_blob(&id, &mut st, &mut seen_blobs)?;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(st)
}

/// What `repair index` did.
#[derive(Debug, Default)]
pub struct RepairIndexReport {
    pub packs: usize,
    pub blobs: usize,
    /// Packs left out of the new index, and why; with what was saved of each.
    pub unreadable: Vec<String>,
    /// Blobs read back from packs whose header could not be read, and stored again.
    pub salvaged: usize,
    pub old_segments: usize,
}

/// Rebuilds the index from the packs alone: reads every pack's header and writes new index
/// segments that supersede all existing ones, then removes the old ones. Safe to interrupt: the
/// old segments go only after the new ones are durable.
///
/// A pack whose header cannot be read (cut short, or damaged at its end) is left out, but not
/// everything in it is lost: the old index says where its blobs were, and each one that is still
/// whole (authenticated against the pack, its type and id, and hashing to its id) is stored
/// again in a new pack before the old segments go, unless another pack holds a copy. What it
/// held that is not saved is named in [`RepairIndexReport::unreadable`]; `repair snapshots`
/// then leaves out only the files that needed it, and prune removes the damaged pack.
///
/// It holds the exclusive prune lock throughout (in a prune session, `lock_stale` as for
/// prune): a prune running alongside would delete packs this run lists and replace segments
/// it is about to supersede. Backups go on as usual; a segment one writes after the old
/// segments were listed is not superseded, and its packs were written before it.
pub fn repair_index(repo: &Repository, lock_stale: Option<Duration>) -> Result<RepairIndexReport> {
    let stale = lock_stale.unwrap_or(DEFAULT_STALE);
    Session::with_prune_lock(repo, stale, |session| rebuild_index(repo, session))
}

fn rebuild_index(repo: &Repository, session: &Session) -> Result<RepairIndexReport> {
    let mut report = RepairIndexReport::default();
    let old: Vec<Id> =
        repo.storage().list(ObjectKind::Index)?.into_iter().filter_map(|o| Id::from_hex(&o.name).ok()).collect();
    report.old_segments = old.len();
    let mut packs = Vec::new();
    let mut damaged = Vec::new();
    for o in repo.storage().list(ObjectKind::Pack)? {
        let Ok(id) = Id::from_hex(&o.name) else {
            continue;
        };
        match crate::check::pack_header(repo, &id, o.size) {
            Ok(entries) => {
                report.blobs += entries.len();
                packs.push(IndexPack { id, len: o.size, entries });
            }
            Err(e) => damaged.push((id, e)),
        }
    }
    if !damaged.is_empty() {
        let healthy: HashSet<Id> = packs.iter().map(|p| p.id).collect();
        let (notes, _) = crate::packer::Packer::run(repo, repo.storage().connections(), |p| {
            let mut notes = Vec::new();
            for (id, why) in &damaged {
                let known = repo.cache().pack_entries(id)?;
                let (mut saved, mut elsewhere) = (0usize, 0usize);
                // A pack that cannot be read at all saves nothing; the note says so.
                let bytes =
                    if known.is_empty() { None } else { repo.storage().read(ObjectKind::Pack, &id.to_hex()).ok() };
                for e in &known {
                    let copies = repo.cache().locations(&e.id)?;
                    if copies.iter().any(|l| healthy.contains(&l.pack)) {
                        elsewhere += 1;
                        continue;
                    }
                    let stored = bytes.as_ref().and_then(|b| {
                        let start = usize::try_from(e.offset).ok()?;
                        b.get(start..)?.get(..e.length as usize)
                    });
                    if let Some(plain) = stored.and_then(|s| pack::open_blob(repo.keys(), id, e, s).ok()) {
                        p.store(e.blob_type, e.id, &plain)?;
                        saved += 1;
                    }
                }
                // The header's error names the pack; a storage error may not.
                let why = why.to_string();
                let why = if why.contains(&id.to_hex()) { why } else { format!("pack {id}: {why}") };
                notes.push((format!(
                    "{why}; of the {} blobs the index knew in it, {saved} were read back and stored again, {elsewhere} have another copy, {} are lost",
                    known.len(),
                    known.len() - saved - elsewhere
                ), saved));
            }
            Ok(notes)
        })?;
        for (note, saved) in notes {
            report.salvaged += saved;
            report.unreadable.push(note);
        }
    }
    report.packs = packs.len();
    repo.replace_segments(packs, &old)?;
    // Still the holder of the prune lock, with a fresh session lock, right before deleting.
    session.ensure_prune_lock()?;
    for s in &old {
        repo.delete_object(ObjectKind::Index, &s.to_hex())?;
    }
    repo.sync_index()?;
    Ok(report)
}

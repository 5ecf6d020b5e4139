//! `hoard repair snapshots`: new snapshots that leave out what is lost.
//!
//! For each snapshot, its trees are walked. A tree blob that is missing or does not
//! authenticate becomes an empty directory; a file whose content references a chunk, or a
//! chunk-list blob, that is missing or unreadable is left out; everything else is kept as it
//! is, and an intact subtree keeps its tree blob (its id), so nothing is stored twice.
//!
//! Which blobs exist comes from the index (after `repair index`, a lost pack's blobs are no
//! longer in it) and from one listing of the packs (so an indexed pack that is gone counts as
//! lost even before the index is rebuilt). Trees and chunk lists are read, so they are
//! authenticated; data chunks are only read with `read_data` (`--read-data`), since reading
//! them all costs as much as `check --read-data`.
//!
//! A snapshot that needs no change is left alone. For one that does, the new trees are stored,
//! then a new snapshot object, committed like a backup (a session lock, the rescue check, the
//! snapshot written last), with the same time, host, user, source, paths, tags and labels and
//! the label [`REPAIRED_FROM`] naming the original. Nothing is modified in place; the original
//! is removed only when asked (`forget_original`), and only after its replacement is committed.
//! An original that already has a repaired copy is skipped, so that running the command again
//! adds nothing.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hoard_core::format::tree::{decode_list, Content, Node, NodeKind};
use hoard_core::format::ObjectKind;
use hoard_core::Id;
use hoard_storage::ErrorKind;

use crate::backup::treebuild::store_tree;
use crate::backup::{commit, BackupOptions};
use crate::error::{RepoError, Result};
use crate::inspect::join;
use crate::packer::Packer;
use crate::repo::{Repository, SnapshotEntry};

/// The label that names the snapshot a repaired snapshot replaces.
pub const REPAIRED_FROM: &str = "hoard.repaired-from";

pub struct RepairOptions {
    /// Only say what would change; write nothing.
    pub dry_run: bool,
    /// Remove each original once its repaired snapshot is committed.
    pub forget_original: bool,
    /// Also read and authenticate every data chunk, so that a chunk damaged in a pack that is
    /// still there counts as lost too. Each distinct chunk is read once per run.
    pub read_data: bool,
    pub cancel: Arc<AtomicBool>,
    pub lock_stale: Option<Duration>,
}

/// What was left out of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped {
    /// The entry's path in the snapshot, from its root ("/dir/file").
    pub path: String,
    /// `"file"` (the file is left out) or `"dir"` (the directory is kept, empty).
    pub what: &'static str,
    /// Why: the error that reading it gave, or the blob that is missing.
    pub why: String,
}

/// What repairing one snapshot did (or, in a dry run, would do).
#[derive(Debug)]
pub struct Repaired {
    pub original: Id,
    pub dropped: Vec<Dropped>,
    /// The new snapshot; `None` in a dry run.
    pub new: Option<Id>,
    /// Whether the original was removed.
    pub forgotten: bool,
}

#[derive(Debug, Default)]
pub struct RepairReport {
    /// Snapshots that needed no change.
    pub intact: Vec<Id>,
    /// Snapshots not repaired again because a repaired copy of them exists (an earlier run
    /// without `--forget`, or one stopped between committing the copy and removing the
    /// original): repairing them again would only add another copy.
    pub already: Vec<Already>,
    pub repaired: Vec<Repaired>,
}

/// A snapshot an earlier run repaired.
#[derive(Debug)]
pub struct Already {
    pub original: Id,
    pub repaired: Id,
    /// Removed by this run (`--forget`): the earlier run was told to and did not get to it.
    pub forgotten: bool,
}

/// Repairs `which`.
pub fn repair_snapshots(repo: &Repository, which: &[SnapshotEntry], opts: &RepairOptions) -> Result<RepairReport> {
    repo.sync_index()?;
    let packs: HashSet<Id> =
        repo.storage().list(ObjectKind::Pack)?.into_iter().filter_map(|o| Id::from_hex(&o.name).ok()).collect();
    let mut repairs: HashMap<Id, Id> = HashMap::new();
    for e in repo.snapshots()? {
        if let Some((_, v)) = e.snapshot.labels.iter().find(|(k, _)| k == REPAIRED_FROM) {
            if let Ok(id) = Id::from_hex(v) {
                repairs.insert(id, e.id);
            }
        }
    }
    let mut report = RepairReport::default();
    // With `read_data`: chunks read so far, and whether each one was whole.
    let mut verified: HashMap<Id, bool> = HashMap::new();
    let mut seen = HashSet::new();
    for e in which {
        if !seen.insert(e.id) {
            continue;
        }
        if let Some(copy) = repairs.get(&e.id) {
            let forget = opts.forget_original && !opts.dry_run;
            if forget {
                repo.remove_snapshot(&e.id)?;
            }
            report.already.push(Already { original: e.id, repaired: *copy, forgotten: forget });
            continue;
        }
        if opts.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(RepoError::Interrupted);
        }
        // First pass: find what is lost, writing nothing.
        let mut walker = Walker {
            repo,
            packs: &packs,
            read: opts.read_data.then_some(&mut verified),
            packer: None,
            dropped: Vec::new(),
            intact: HashSet::new(),
        };
        walker.tree(&e.snapshot.tree, "/")?;
        if walker.dropped.is_empty() {
            report.intact.push(e.id);
            continue;
        }
        let dropped = walker.dropped;
        if opts.dry_run {
            report.repaired.push(Repaired { original: e.id, dropped, new: None, forgotten: false });
            continue;
        }
        let started = Instant::now();
        let s = &e.snapshot;
        let bopts = BackupOptions::recommit(s, &e.id, REPAIRED_FROM, opts.cancel.clone(), opts.lock_stale);
        let result = crate::backup::locked(repo, &bopts, |session| {
            let (tree, stats) = Packer::run(repo, repo.storage().connections(), |packer| {
                let mut w = Walker {
                    repo,
                    packs: &packs,
                    read: opts.read_data.then_some(&mut verified),
                    packer: Some(packer),
                    dropped: Vec::new(),
                    intact: HashSet::new(),
                };
                let t = w.tree(&s.tree, "/")?;
                Ok(t.unwrap_or(s.tree))
            })?;
            commit(
                session,
                repo,
                &bopts,
                &s.source_kind,
                &s.source_name,
                s.paths.clone(),
                s.parent,
                tree,
                s.summary.clone(),
                stats,
                started,
                Vec::new(),
            )
        })?;
        let forgotten = if opts.forget_original {
            repo.remove_snapshot(&e.id)?;
            true
        } else {
            false
        };
        report.repaired.push(Repaired { original: e.id, dropped, new: Some(result.id), forgotten });
    }
    Ok(report)
}

struct Walker<'a, 'r> {
    repo: &'r Repository,
    /// The packs that exist in storage.
    packs: &'a HashSet<Id>,
    /// With `read_data`: every chunk is read, and the outcome kept here.
    read: Option<&'a mut HashMap<Id, bool>>,
    /// Where new trees go; `None` while only looking.
    packer: Option<&'a Packer<'r>>,
    dropped: Vec<Dropped>,
    /// Trees found intact in this snapshot (a changed tree is walked again wherever it
    /// appears, so that every path left out is reported).
    intact: HashSet<Id>,
}

impl Walker<'_, '_> {
    /// Whether an error reading blob `id` proves the blob lost (missing, damaged, cut short),
    /// rather than that the storage could not answer right now. A repair drops for good what it
    /// calls lost, so anything short of proof is returned as the error instead: an I/O error,
    /// a refused or throttled request, a crash. A read past the end of a pack is `Other` on
    /// every backend, as are those; it counts as lost once the pack's size confirms the cut.
    fn lost(&self, id: &Id, e: &RepoError) -> Result<bool> {
        match e {
            RepoError::Core { .. } | RepoError::BlobMissing(_) | RepoError::Invalid(_) => Ok(true),
            RepoError::Storage(s) if s.kind() == ErrorKind::NotFound => Ok(true),
            RepoError::Storage(s) if s.kind() == ErrorKind::Other => {
                for l in self.repo.cache().locations(id)? {
                    if !self.packs.contains(&l.pack) {
                        continue;
                    }
                    let size = self.repo.storage().size(ObjectKind::Pack, &l.pack.to_hex())?;
                    if l.entry.offset + u64::from(l.entry.length) > size {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    /// Whether the index lists `id` in a pack that exists.
    fn present(&self, id: &Id) -> Result<bool> {
        Ok(self.repo.cache().locations(id)?.iter().any(|l| self.packs.contains(&l.pack)))
    }

    /// Why `content` cannot be restored, if it cannot.
    fn content_lost(&mut self, content: &Content) -> Result<Option<String>> {
        let chunks = match content {
            Content::None => return Ok(None),
            Content::Chunks(ids) => ids.clone(),
            Content::Lists(lists) => {
                let mut out = Vec::new();
                for l in lists {
                    if !self.present(l)? {
                        return Ok(Some(format!("chunk list {} is missing", l.short())));
                    }
                    let b = match self.repo.read_blob(l) {
                        Ok(b) => b,
                        Err(e) if self.lost(l, &e)? => return Ok(Some(e.to_string())),
                        Err(e) => return Err(e),
                    };
                    match decode_list(&b) {
                        Ok(ids) => out.extend(ids),
                        Err(e) => return Ok(Some(format!("chunk list {}: {e}", l.short()))),
                    }
                }
                out
            }
        };
        for c in &chunks {
            if !self.present(c)? {
                return Ok(Some(format!("chunk {} is missing", c.short())));
            }
        }
        if self.read.is_some() {
            for c in &chunks {
                let known = self.read.as_deref().and_then(|r| r.get(c).copied());
                let whole = match known {
                    Some(w) => w,
                    None => {
                        let w = match self.repo.read_blob(c) {
                            Ok(_) => true,
                            Err(e) if self.lost(c, &e)? => false,
                            Err(e) => return Err(e),
                        };
                        if let Some(read) = self.read.as_deref_mut() {
                            read.insert(*c, w);
                        }
                        w
                    }
                };
                if !whole {
                    return Ok(Some(format!("chunk {} is damaged", c.short())));
                }
            }
        }
        Ok(None)
    }

    /// Walks tree `id` at `path`. Returns the id of its replacement, or `None` when it is intact.
    fn tree(&mut self, id: &Id, path: &str) -> Result<Option<Id>> {
        if self.intact.contains(id) {
            return Ok(None);
        }
        let tree = if self.present(id)? {
            match self.repo.load_tree(id) {
                Ok(t) => Ok(t),
                Err(e) if self.lost(id, &e)? => Err(e.to_string()),
                Err(e) => return Err(e),
            }
        } else {
            Err(format!("tree {} is missing", id.short()))
        };
        let nodes = match tree {
            Ok(t) => t.nodes,
            Err(why) => {
                self.dropped.push(Dropped { path: path.to_owned(), what: "dir", why });
                let new = match self.packer {
                    Some(p) => store_tree(p, Vec::new())?,
                    None => Id([0; 32]),
                };
                return Ok(Some(new));
            }
        };
        let mut changed = false;
        let mut out: Vec<Node> = Vec::with_capacity(nodes.len());
        for mut n in nodes {
            let p = join(path, &n.name);
            match n.kind() {
                NodeKind::Dir => {
                    if let Some(sub) = n.subtree {
                        if let Some(new) = self.tree(&sub, &p)? {
                            n.subtree = Some(new);
                            changed = true;
                        }
                    }
                }
                NodeKind::File => {
                    if let Some(why) = self.content_lost(&n.content)? {
                        self.dropped.push(Dropped { path: p, what: "file", why });
                        changed = true;
                        continue;
                    }
                }
                _ => {}
            }
            out.push(n);
        }
        if !changed {
            self.intact.insert(*id);
            return Ok(None);
        }
        Ok(Some(match self.packer {
            Some(p) => store_tree(p, out)?,
            None => Id([0; 32]),
        }))
    }
}

//! `hoard copy`: snapshots from one repository into another (a local repository seeding an
//! offsite one on S3, or back), copying only what the target lacks.
//!
//! Blob ids are keyed, so two repositories with different keys give the same bytes different
//! ids: every chunk is read from the source, authenticated, and stored under the id the target's
//! key gives it (compressed and encrypted again with the target's keys), and every tree is
//! rewritten with the new ids. When both repositories share their keys (one was made from the
//! other's key material), ids are the same and a chunk the target has is never read.
//!
//! With different keys, the target's local cache also keeps which target id each copied chunk
//! got (`IndexCache::note_copied`), so the next night's copy reads from the source only the
//! chunks it has not copied before: a chunk whose noted id the target still has is not read.
//!
//! A copied snapshot keeps the source's time, host, user, source, paths, tags and labels, and
//! gets the label `hoard.copied-from` = the source snapshot's id: a later copy skips every
//! source snapshot the target already has a copy of, so `hoard copy` can run every night.
//! Each snapshot is committed like a backup (a session lock, the rescue check, the snapshot
//! object last), so a copy interrupted at any point leaves the target as it was, plus packs
//! that the next copy reuses.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hoard_core::format::snapshot::Summary;
use hoard_core::format::tree::Content;
use hoard_core::format::BlobType;
use hoard_core::Id;

use crate::backup::content::ContentBuilder;
use crate::backup::treebuild::store_tree;
use crate::backup::{commit, BackupOptions, BackupResult};
use crate::error::{RepoError, Result};
use crate::packer::Packer;
use crate::repo::{Repository, SnapshotEntry};

/// The label that names the source snapshot of a copy.
pub const COPIED_FROM: &str = "hoard.copied-from";

pub struct CopyOptions {
    pub cancel: Arc<AtomicBool>,
    pub lock_stale: Option<Duration>,
}

/// What one snapshot's copy did.
pub struct Copied {
    pub source: Id,
    pub result: BackupResult,
}

#[derive(Default)]
pub struct CopyReport {
    pub copied: Vec<Copied>,
    /// Source snapshots the target already had a copy of.
    pub skipped: Vec<Id>,
}

/// Copies `which` (source snapshots, oldest first is best: parents are then mapped) from `src`
/// into `dst`.
pub fn copy_snapshots(
    src: &Repository,
    dst: &Repository,
    which: &[SnapshotEntry],
    opts: &CopyOptions,
) -> Result<CopyReport> {
    if src.config().id == dst.config().id {
        return Err(RepoError::Invalid("the source and the target are the same repository".into()));
    }
    // Source snapshot id → its copy in the target.
    let mut copies: HashMap<Id, Id> = HashMap::new();
    for e in dst.snapshots()? {
        if let Some((_, v)) = e.snapshot.labels.iter().find(|(k, _)| k == COPIED_FROM) {
            if let Ok(id) = Id::from_hex(v) {
                copies.insert(id, e.id);
            }
        }
    }
    let same_keys = src.keys().blob_id(b"hoard copy key probe") == dst.keys().blob_id(b"hoard copy key probe");
    let mut mapper =
        Mapper { src, dst, same_keys, trees: HashMap::new(), recent: HashMap::new(), cancel: &opts.cancel };
    let mut report = CopyReport::default();
    let mut order: Vec<&SnapshotEntry> = which.iter().collect();
    order.sort_by_key(|e| e.snapshot.time_ns);
    let mut seen = HashSet::new();
    for e in order {
        if !seen.insert(e.id) {
            continue;
        }
        if copies.contains_key(&e.id) {
            report.skipped.push(e.id);
            continue;
        }
        let started = Instant::now();
        let s = &e.snapshot;
        let bopts = BackupOptions::recommit(s, &e.id, COPIED_FROM, opts.cancel.clone(), opts.lock_stale);
        let parent = s.parent.and_then(|p| copies.get(&p).copied());
        let result = crate::backup::locked(dst, &bopts, |session| {
            let (tree, stats) = Packer::run(dst, dst.storage().connections(), |packer| mapper.tree(packer, &s.tree))?;
            let summary: Summary = s.summary.clone();
            commit(
                session,
                dst,
                &bopts,
                &s.source_kind,
                &s.source_name,
                s.paths.clone(),
                parent,
                tree,
                summary,
                stats,
                started,
                Vec::new(),
            )
        });
        // Noted whether or not the snapshot was committed: a chunk stored by a copy that failed
        // later is still in the target (its pack was indexed), and one that is not is read
        // again, since a noted id counts only while the target has it.
        let noted = mapper.note_recent();
        let result = result?;
        noted?;
        copies.insert(e.id, result.id);
        report.copied.push(Copied { source: e.id, result });
    }
    Ok(report)
}

/// Copied chunks noted in the target's cache at a time.
const NOTE_BATCH: usize = 4096;

struct Mapper<'a> {
    src: &'a Repository,
    dst: &'a Repository,
    same_keys: bool,
    /// Source tree id → target tree id, for this run (one per directory, not per file).
    trees: HashMap<Id, Id>,
    /// Chunks copied and not yet noted in the target's cache: source id → target id. At most
    /// [`NOTE_BATCH`]: memory does not grow with the snapshot.
    recent: HashMap<Id, Id>,
    cancel: &'a AtomicBool,
}

impl Mapper<'_> {
    fn tree(&mut self, packer: &Packer, id: &Id) -> Result<Id> {
        if let Some(d) = self.trees.get(id) {
            return Ok(*d);
        }
        if self.cancel.load(Ordering::Relaxed) {
            return Err(RepoError::Interrupted);
        }
        let tree = self.src.load_tree(id)?;
        let mut nodes = Vec::with_capacity(tree.nodes.len());
        for mut n in tree.nodes {
            if let Some(sub) = n.subtree {
                n.subtree = Some(self.tree(packer, &sub)?);
            }
            n.content = match &n.content {
                Content::None => Content::None,
                c => {
                    let mut b = ContentBuilder::new();
                    for chunk in self.src.content_chunks(c)? {
                        let d = self.chunk(packer, &chunk)?;
                        b.push(d, packer)?;
                    }
                    b.finish(packer)?
                }
            };
            nodes.push(n);
        }
        let new = store_tree(packer, nodes)?;
        self.trees.insert(*id, new);
        Ok(new)
    }

    fn chunk(&mut self, packer: &Packer, id: &Id) -> Result<Id> {
        if self.same_keys {
            if packer.claim(id)? {
                let plain = self.src.read_blob(id)?;
                packer.store(BlobType::Data, *id, &plain)?;
            }
            return Ok(*id);
        }
        let noted = match self.recent.get(id) {
            Some(d) => Some(*d),
            None => self.dst.cache().copied_id(&self.src.config().id, id)?,
        };
        if let Some(d) = noted {
            // Pending first: the packer forgets a blob only once the cache has it.
            if packer.is_pending(&d) || self.dst.has_blob(&d)? {
                return Ok(d);
            }
        }
        if self.cancel.load(Ordering::Relaxed) {
            return Err(RepoError::Interrupted);
        }
        let plain = self.src.read_blob(id)?;
        let (d, _) = packer.add(BlobType::Data, &plain)?;
        if noted != Some(d) {
            self.recent.insert(*id, d);
            if self.recent.len() >= NOTE_BATCH {
                self.note_recent()?;
            }
        }
        Ok(d)
    }

    /// Notes the chunks copied since the last call in the target's cache.
    fn note_recent(&mut self) -> Result<()> {
        if self.recent.is_empty() {
            return Ok(());
        }
        let pairs: Vec<(Id, Id)> = self.recent.drain().collect();
        Ok(self.dst.cache().note_copied(&self.src.config().id, &pairs)?)
    }
}

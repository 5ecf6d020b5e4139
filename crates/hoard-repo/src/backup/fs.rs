//! Backing up paths of the local filesystem.
//!
//! The walk runs on the calling thread in sorted order and builds each directory's tree after
//! its children; files that must be read go to reader threads as jobs, so reading, chunking
//! and hashing of many files overlap, and sealing runs on the rayon pool. A file whose size,
//! mtime, ctime and inode match its entry in the parent snapshot is not read at all.

use std::fs::{self, Metadata, OpenOptions};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender};
use hoard_core::format::snapshot::Summary;
use hoard_core::format::tree::{Content, Node, NodeKind, Tree};
use hoard_core::{Chunker, Id};

use super::content::{chunk_stream, looks_like_dump, Flight, DUMP_HEAD, DUMP_SNIFF_MIN, FLIGHT_BYTES};
use super::listing::{is_cachedir, Filter, Lookahead, Selection};
use super::treebuild::store_tree;
use super::{commit, BackupOptions, BackupResult};
use crate::error::{RepoError, Result};
use crate::meta::{node_from_metadata, read_xattrs, Names};
use crate::packer::Packer;
use crate::repo::Repository;

/// The source kind of filesystem snapshots.
pub const SOURCE_KIND: &str = "path";

/// Makes a path absolute and removes `.` and `..` lexically (as `restic` does), keeping
/// symlinks in it as they are.
pub fn normalize(p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p).map_err(|e| RepoError::io(format!("resolving {}", p.display()), e))?;
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    Ok(out)
}

struct FileRead {
    content: Content,
    size: u64,
    changed: bool,
}

struct Job {
    path: PathBuf,
    before: Metadata,
    reply: Sender<Result<FileRead>>,
}

enum Pending {
    Ready(Node),
    Reading(Node, Receiver<Result<FileRead>>),
    /// A subdirectory whose tree id will be in this slot.
    Sub(Node, usize),
}

/// A directory entry to back up: its name, what of it was selected (`None`: all of it), and its
/// metadata when the listing already read it.
type Listed<'a> = (Vec<u8>, Option<&'a Selection>, Option<fs::Metadata>);

/// A directory whose entries are known but whose files may still be being read.
struct OpenDir {
    path: PathBuf,
    nodes: Vec<Pending>,
    slot: usize,
}

/// Directories waiting for their files, oldest first. The walk runs ahead of the readers by
/// up to this many directories or files, so a tree of small directories keeps every reader busy
/// instead of waiting at the end of each one. Children always enter before their parent, so
/// finishing in order finds every subtree id ready.
const AHEAD_DIRS: usize = 512;
const AHEAD_FILES: usize = 2048;

#[derive(Default)]
struct Pipeline {
    open: std::collections::VecDeque<OpenDir>,
    reading: usize,
    slots: Vec<Option<Id>>,
    free: Vec<usize>,
}

impl Pipeline {
    fn slot(&mut self, v: Option<Id>) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = v;
                i
            }
            None => {
                self.slots.push(v);
                self.slots.len() - 1
            }
        }
    }

    fn take(&mut self, i: usize) -> Id {
        let id = self.slots[i].take().expect("a subtree is finished before its parent");
        self.free.push(i);
        id
    }
}

struct Walker<'a, 'r> {
    packer: &'a Packer<'r>,
    opts: &'a BackupOptions,
    filter: &'a Filter,
    /// Listings made ahead of the walk, when a lister runs.
    lookahead: Option<&'a Lookahead>,
    names: Names,
    jobs: Sender<Job>,
    summary: Mutex<Summary>,
    warnings: Mutex<Vec<String>>,
    pipeline: std::cell::RefCell<Pipeline>,
    /// Record nodes in the portable form of [`super::volume::portable`] (Docker volumes), and
    /// read every file modified at or after this time (Unix ns), since portable nodes keep
    /// neither ctime nor inode to tell a change within the same second.
    portable: Option<i64>,
    /// Files in the parent snapshot: whether to hold the live blob ids in memory.
    parent_files: u64,
    /// The live blob ids, read at the first unchanged file when `parent_files` asks for it
    /// (after the backup's lock and the prune markers it honours).
    live: std::cell::RefCell<Option<Option<crate::repo::LiveIds>>>,
}

/// Where the node named `name` is in `tree`. `next` is where the search starts: a listing
/// comes in the tree's order, so an entry is usually the node after the one found before it,
/// and one comparison finds it instead of a binary search's ten (in a directory of a thousand
/// files). It is moved past the node found.
fn find(tree: Option<&Tree>, name: &[u8], next: &mut usize) -> Option<usize> {
    let nodes = &tree?.nodes;
    let at = match nodes.get(*next) {
        Some(n) if n.name.as_slice() == name => Some(*next),
        _ => nodes.binary_search_by(|n| n.name.as_slice().cmp(name)).ok(),
    };
    if let Some(i) = at {
        *next = i + 1;
    }
    at
}

impl Walker<'_, '_> {
    fn warn(&self, msg: String) {
        tracing::warn!("{msg}");
        self.warnings.lock().unwrap().push(msg);
    }

    fn error(&self, msg: String) {
        self.summary.lock().unwrap().errors += 1;
        self.warn(msg);
    }

    fn parent_subtree(&self, node: Option<&Node>) -> Option<Tree> {
        let id = node.filter(|n| n.kind() == NodeKind::Dir)?.subtree?;
        match self.packer.repo().load_tree(&id) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!("parent tree {} unreadable, reading everything below it: {e}", id.short());
                None
            }
        }
    }

    /// Archives the entries `names` of directory `dir`; returns the slot where the directory's
    /// tree id will be once [`Walker::drain`] has finished it.
    ///
    /// `parent` is the directory's tree in the parent snapshot. An unchanged file's content and
    /// extended attributes are moved out of it, not copied (an allocation and a free less for
    /// every file of a night with few changes), so it is not whole afterwards.
    fn dir(
        &self,
        dir: &Path,
        names: Vec<Listed<'_>>,
        mut parent: Option<&mut Tree>,
        root_dev: Option<u64>,
    ) -> Result<usize> {
        let mut pending = Vec::with_capacity(names.len());
        // Files that look unchanged: their slot in `pending`, and their metadata.
        let mut unchanged: Vec<(usize, fs::Metadata)> = Vec::new();
        // The parent node after the one the last entry matched.
        let mut next = 0;
        // An entry's path is made only where it is needed: an unchanged file needs none.
        let join = |name: &[u8]| dir.join(std::ffi::OsStr::from_bytes(name));
        for (name, sel, listed) in names {
            if self.opts.cancel.load(Relaxed) {
                return Err(RepoError::Interrupted);
            }
            let meta = match listed.map_or_else(|| fs::symlink_metadata(join(&name)), Ok) {
                Ok(m) => m,
                Err(e) => {
                    self.error(format!("{}: {e}", join(&name).display()));
                    continue;
                }
            };
            let at = find(parent.as_deref(), &name, &mut next);
            let reuse = match (at, parent.as_deref_mut()) {
                (Some(i), Some(t)) => Some(&mut t.nodes[i]),
                _ => None,
            };
            let mut node = node_from_metadata(name, &meta, &self.names, reuse);
            let pnode = at.and_then(|i| parent.as_deref().map(|t| &t.nodes[i]));
            let xattrs = |node: &mut Node| {
                let path = join(&node.name);
                match read_xattrs(&path) {
                    Ok(x) => node.xattrs = x,
                    Err(e) => self.warn(format!("{}: extended attributes not read: {e}", path.display())),
                }
            };
            if self.portable.is_some() {
                xattrs(&mut node);
                super::volume::portable(&mut node);
            }
            // Unchanged by its metadata: the same size, times and inode as in the parent.
            let same = node.kind() == NodeKind::File
                && !self.opts.force
                && pnode.is_some_and(|p| {
                    p.kind() == NodeKind::File
                        && p.size == node.size
                        && p.mtime_ns == node.mtime_ns
                        && p.ctime_ns == node.ctime_ns
                        && p.inode == node.inode
                        && (p.size == 0 || p.content != Content::None)
                })
                && self.portable.is_none_or(|racy| node.mtime_ns < racy);
            if self.portable.is_none() {
                // A change of extended attributes moves ctime, so the attributes of an entry of
                // any kind whose inode and ctime are the parent's are the parent's: one
                // listxattr call less per unchanged file (an eighth of night 2's time), and per
                // unchanged directory and symlink.
                let xattrs_same = !self.opts.force
                    && pnode.is_some_and(|p| {
                        p.kind() == node.kind() && p.ctime_ns == node.ctime_ns && p.inode == node.inode
                    });
                match (at, parent.as_deref_mut()) {
                    (Some(i), Some(t)) if xattrs_same => node.xattrs = std::mem::take(&mut t.nodes[i].xattrs),
                    _ => xattrs(&mut node),
                }
            }
            match node.kind() {
                NodeKind::Dir => {
                    let path = join(&node.name);
                    let root_dev = root_dev.or(Some(meta.dev()));
                    let mut psub = self.parent_subtree(at.and_then(|i| parent.as_deref().map(|t| &t.nodes[i])));
                    let slot = match sel {
                        Some(s) if !s.whole => {
                            let children = s.children.iter().map(|(n, s)| (n.clone(), Some(s), None)).collect();
                            self.dir(&path, children, psub.as_mut(), None)?
                        }
                        _ => {
                            if self.opts.one_file_system && root_dev != Some(meta.dev()) {
                                self.empty()?
                            } else if self.opts.exclude_caches && is_cachedir(&path) {
                                continue;
                            } else {
                                match self.list(&path) {
                                    Ok(children) => self.dir(&path, children, psub.as_mut(), root_dev)?,
                                    Err(e) => {
                                        self.error(format!("{}: {e}", path.display()));
                                        self.empty()?
                                    }
                                }
                            }
                        }
                    };
                    self.summary.lock().unwrap().dirs += 1;
                    pending.push(Pending::Sub(node, slot));
                }
                NodeKind::File => {
                    self.opts.progress.bytes_seen.fetch_add(node.size, Relaxed);
                    if same {
                        // Whether the parent's chunks are all still there (and not condemned by
                        // a prune) is asked for the whole directory at once, below.
                        let t = parent.as_deref_mut().expect("an unchanged file has a parent tree");
                        node.content = std::mem::take(&mut t.nodes[at.expect("and a node in it")].content);
                        unchanged.push((pending.len(), meta));
                        pending.push(Pending::Ready(node));
                    } else {
                        let new = at.is_none();
                        let path = join(&node.name);
                        pending.push(self.read_file(node, path, meta, new)?);
                    }
                }
                NodeKind::Symlink => {
                    let path = join(&node.name);
                    match fs::read_link(&path) {
                        Ok(t) => node.link_target = t.into_os_string().into_vec(),
                        Err(e) => {
                            self.error(format!("{}: {e}", path.display()));
                            continue;
                        }
                    }
                    self.summary.lock().unwrap().other_entries += 1;
                    pending.push(Pending::Ready(node));
                }
                _ => {
                    self.summary.lock().unwrap().other_entries += 1;
                    pending.push(Pending::Ready(node));
                }
            }
        }
        if !unchanged.is_empty() {
            let live = {
                let contents: Vec<&Content> = unchanged
                    .iter()
                    .map(|(i, ..)| match &pending[*i] {
                        Pending::Ready(n) => &n.content,
                        _ => unreachable!("an unchanged file's slot holds its node"),
                    })
                    .collect();
                if self.live.borrow().is_none() {
                    let min = self.opts.live_ids_from.unwrap_or(crate::repo::LIVE_IDS_MIN_FILES);
                    let live = self.packer.repo().live_ids_for(self.parent_files, min)?;
                    *self.live.borrow_mut() = Some(live);
                }
                let live = self.live.borrow();
                self.packer.repo().contents_live(&contents, live.as_ref().and_then(Option::as_ref))?
            };
            for ((i, meta), live) in unchanged.into_iter().zip(live) {
                if live {
                    let Pending::Ready(n) = &pending[i] else { unreachable!("checked above") };
                    let mut s = self.summary.lock().unwrap();
                    s.files_unmodified += 1;
                    s.bytes_total += n.size;
                    self.opts.progress.files.fetch_add(1, Relaxed);
                } else {
                    let Pending::Ready(mut n) = std::mem::replace(&mut pending[i], Pending::Ready(Node::default()))
                    else {
                        unreachable!("checked above")
                    };
                    n.content = Content::None;
                    let path = join(&n.name);
                    pending[i] = self.read_file(n, path, meta, false)?;
                }
            }
        }
        let reading = pending.iter().filter(|p| matches!(p, Pending::Reading(..))).count();
        let slot = {
            let mut p = self.pipeline.borrow_mut();
            let slot = p.slot(None);
            p.reading += reading;
            p.open.push_back(OpenDir { path: dir.to_path_buf(), nodes: pending, slot });
            slot
        };
        self.drain(false)?;
        Ok(slot)
    }

    /// Hands a file to the reader threads; `new` when the parent snapshot did not have it.
    fn read_file(&self, node: Node, path: PathBuf, meta: fs::Metadata, new: bool) -> Result<Pending> {
        {
            let mut s = self.summary.lock().unwrap();
            if new {
                s.files_new += 1;
            } else {
                s.files_changed += 1;
            }
        }
        let (tx, rx) = bounded(1);
        self.jobs
            .send(Job { path, before: meta, reply: tx })
            .map_err(|_| RepoError::Invalid("reader threads stopped".into()))?;
        Ok(Pending::Reading(node, rx))
    }

    /// A slot holding the empty tree.
    fn empty(&self) -> Result<usize> {
        let id = store_tree(self.packer, vec![])?;
        Ok(self.pipeline.borrow_mut().slot(Some(id)))
    }

    /// Finishes open directories, oldest first: all of them, or until the walk is no more than
    /// the allowed distance ahead.
    fn drain(&self, all: bool) -> Result<()> {
        loop {
            let next = {
                let mut p = self.pipeline.borrow_mut();
                if !all && p.open.len() <= AHEAD_DIRS && p.reading <= AHEAD_FILES {
                    return Ok(());
                }
                match p.open.pop_front() {
                    Some(d) => d,
                    None => return Ok(()),
                }
            };
            self.finish(next)?;
        }
    }

    fn finish(&self, d: OpenDir) -> Result<()> {
        let mut nodes = Vec::with_capacity(d.nodes.len());
        for p in d.nodes {
            match p {
                Pending::Ready(n) => nodes.push(n),
                Pending::Sub(mut n, slot) => {
                    n.subtree = Some(self.pipeline.borrow_mut().take(slot));
                    nodes.push(n);
                }
                Pending::Reading(mut n, rx) => {
                    let r = rx.recv().map_err(|_| RepoError::Invalid("reader thread stopped".into()))?;
                    self.pipeline.borrow_mut().reading -= 1;
                    match r {
                        Ok(read) => {
                            if read.changed {
                                self.summary.lock().unwrap().changed_during_read += 1;
                                self.warn(format!(
                                    "{}: changed while it was read",
                                    d.path.join(std::ffi::OsStr::from_bytes(&n.name)).display()
                                ));
                            }
                            n.content = read.content;
                            n.size = read.size;
                            {
                                let mut s = self.summary.lock().unwrap();
                                s.bytes_total += read.size;
                                s.bytes_read += read.size;
                            }
                            self.opts.progress.files.fetch_add(1, Relaxed);
                            nodes.push(n);
                        }
                        Err(RepoError::Io { context, source }) => {
                            self.error(format!("{context}: {source}"));
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        let id = store_tree(self.packer, nodes)?;
        self.pipeline.borrow_mut().slots[d.slot] = Some(id);
        Ok(())
    }

    /// The entries of `dir`, sorted by name, minus exclusions, with their metadata: from the
    /// lookahead when it listed `dir` next, else listed here.
    fn list(&self, dir: &Path) -> std::io::Result<Vec<Listed<'static>>> {
        let entries = match self.lookahead.and_then(|l| l.take(dir)) {
            Some(listed) => listed?,
            None => self.filter.list(dir)?,
        };
        Ok(entries.into_iter().map(|(n, m)| (n, None, m)).collect())
    }
}

/// The file chunker, and the dump chunker for files that [`looks_like_dump`] says are dumps.
struct Chunkers {
    files: Chunker,
    dumps: Chunker,
}

fn read_file(
    job: &Job,
    chunkers: &Chunkers,
    packer: &Packer,
    flight: &Flight,
    opts: &BackupOptions,
) -> Result<FileRead> {
    let ctx = || job.path.display().to_string();
    let open = |flags: i32| OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | flags).open(&job.path);
    // O_NOATIME keeps backups from touching access times; it is refused on files we do not own.
    let mut f = match open(libc::O_NOATIME) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0).map_err(|e| RepoError::io(ctx(), e))?,
        Err(e) => return Err(RepoError::io(ctx(), e)),
    };
    let mut chunker = &chunkers.files;
    if job.before.size() >= DUMP_SNIFF_MIN {
        let mut head = [0u8; DUMP_HEAD];
        let n = f.read_at(&mut head, 0).map_err(|e| RepoError::io(ctx(), e))?;
        if looks_like_dump(&head[..n]) {
            chunker = &chunkers.dumps;
        }
    }
    let progress = &opts.progress;
    let chunked = chunk_stream(
        &mut f,
        chunker,
        packer,
        flight,
        &opts.cancel,
        &|n| {
            progress.bytes_read.fetch_add(n, Relaxed);
        },
        None,
    )
    .map_err(|e| match e {
        RepoError::Io { source, .. } => RepoError::io(ctx(), source),
        e => e,
    })?;
    let after = f.metadata().map_err(|e| RepoError::io(ctx(), e))?;
    let b = &job.before;
    let changed = after.size() != b.size()
        || after.mtime() != b.mtime()
        || after.mtime_nsec() != b.mtime_nsec()
        || after.ctime() != b.ctime()
        || after.ctime_nsec() != b.ctime_nsec()
        || chunked.size != b.size();
    Ok(FileRead { content: chunked.content, size: chunked.size, changed })
}

/// Backs up `paths` and commits a snapshot.
pub fn backup_paths(repo: &Repository, paths: &[PathBuf], opts: &BackupOptions) -> Result<BackupResult> {
    backup_listed(repo, Lookahead::start(paths, opts)?, opts)
}

/// Backs up the paths of `lookahead` (started by [`Lookahead::start`], before the repository
/// was opened when the caller could) and commits a snapshot.
pub fn backup_listed(repo: &Repository, lookahead: Lookahead, opts: &BackupOptions) -> Result<BackupResult> {
    let started = Instant::now();
    let filter = Filter::new(opts)?;
    // Listings made by other rules than these would be wrong, not only late.
    let ahead = lookahead.agrees(opts).then_some(&lookahead);
    let (root, shown) = (&lookahead.selection, &lookahead.shown);
    let parent =
        super::parent(repo, opts, &|s| s.source_kind == SOURCE_KIND && s.host == opts.host && s.paths == *shown)?;
    let (mut parent_tree, parent_files) = match parent {
        Some(p) => {
            let snap = repo.find_snapshot(&p.to_hex(), &|_| true)?;
            let s = &snap.snapshot.summary;
            (Some(repo.load_tree(&snap.snapshot.tree)?), s.files_new + s.files_changed + s.files_unmodified)
        }
        None => (None, 0),
    };
    super::locked(repo, opts, |session| {
        let ((tree, summary, warnings), stats) = Packer::run(repo, repo.storage().connections(), |packer| {
            walk(packer, opts, &filter, ahead, None, parent_files, |walker| {
                if root.whole {
                    // Everything under "/" is on the root's file system (--one-file-system).
                    let dev = fs::symlink_metadata("/").map_err(|e| RepoError::io("/", e))?.dev();
                    walker
                        .list(Path::new("/"))
                        .map_err(|e| RepoError::io("/", e))
                        .and_then(|children| walker.dir(Path::new("/"), children, parent_tree.as_mut(), Some(dev)))
                } else {
                    let children = root.children.iter().map(|(n, s)| (n.clone(), Some(s), None)).collect();
                    walker.dir(Path::new("/"), children, parent_tree.as_mut(), None)
                }
            })
        })?;
        commit(
            session,
            repo,
            opts,
            SOURCE_KIND,
            &shown.join(" "),
            shown.clone(),
            parent,
            tree,
            summary,
            stats,
            started,
            warnings,
        )
    })
}

/// Runs the reader threads and a walker; `start` walks and returns the root's slot.
fn walk(
    packer: &Packer,
    opts: &BackupOptions,
    filter: &Filter,
    lookahead: Option<&Lookahead>,
    portable: Option<i64>,
    parent_files: u64,
    start: impl FnOnce(&Walker) -> Result<usize>,
) -> Result<(Id, Summary, Vec<String>)> {
    let repo = packer.repo();
    let chunkers = Chunkers {
        files: Chunker::new(repo.config().files_chunker, repo.keys()),
        dumps: Chunker::new(repo.config().dumps_chunker, repo.keys()),
    };
    let flight = Flight::new(FLIGHT_BYTES);
    let readers = opts.readers.max(1);
    let (jobs_tx, jobs_rx) = bounded::<Job>(256);
    std::thread::scope(|s| {
        for _ in 0..readers {
            let rx = jobs_rx.clone();
            let (chunkers, flight) = (&chunkers, &flight);
            s.spawn(move || {
                for job in rx {
                    let r = read_file(&job, chunkers, packer, flight, opts);
                    let _ = job.reply.send(r);
                }
            });
        }
        let walker = Walker {
            packer,
            opts,
            filter,
            lookahead,
            names: Names::default(),
            jobs: jobs_tx,
            summary: Mutex::new(Summary::default()),
            warnings: Mutex::new(Vec::new()),
            pipeline: Default::default(),
            portable,
            parent_files,
            live: Default::default(),
        };
        let r = start(&walker).and_then(|slot| {
            walker.drain(true)?;
            Ok(walker.pipeline.borrow_mut().take(slot))
        });
        let Walker { summary, warnings, .. } = walker; // closes the job channel
        r.map(|t| (t, summary.into_inner().unwrap(), warnings.into_inner().unwrap()))
    })
}

/// Stores the content of directory `dir` as a tree of its own (paths relative to `dir`), its
/// nodes in portable form, against the tree `parent` (which it takes unchanged files' contents
/// out of). Returns the tree, the summary, warnings,
/// and `dir`'s own metadata (portable).
pub(crate) fn tree_of_dir(
    packer: &Packer,
    dir: &Path,
    parent: Option<&mut Tree>,
    opts: &BackupOptions,
    started_ns: i64,
) -> Result<(Id, Summary, Vec<String>, Node)> {
    let meta = fs::symlink_metadata(dir).map_err(|e| RepoError::io(dir.display().to_string(), e))?;
    if !meta.is_dir() {
        return Err(RepoError::Invalid(format!("{} is not a directory", dir.display())));
    }
    let mut root = node_from_metadata(Vec::new(), &meta, &Names::default(), None);
    super::volume::portable(&mut root);
    let filter = Filter::new(opts)?;
    let lookahead = Lookahead::start(&[dir.to_path_buf()], opts)?;
    // Files modified in the second before the walk started, or later, are always read.
    let racy = (started_ns.div_euclid(1_000_000_000) - 1) * 1_000_000_000;
    let (tree, summary, warnings) = walk(packer, opts, &filter, Some(&lookahead), Some(racy), 0, |walker| {
        let children = walker.list(dir).map_err(|e| RepoError::io(dir.display().to_string(), e))?;
        walker.dir(dir, children, parent, Some(meta.dev()).filter(|_| opts.one_file_system))
    })?;
    Ok((tree, summary, warnings, root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_gives_the_binary_searchs_answer_whatever_the_order_of_the_names() {
        let names: [&[u8]; 5] = [b"a", b"b", b"c", b"e", b"f"];
        let tree = Tree { nodes: names.iter().map(|n| Node { name: n.to_vec(), ..Default::default() }).collect() };
        let expect = |name: &[u8]| names.iter().position(|n| *n == name);
        let orders: [&[&[u8]]; 4] = [
            &[b"a", b"b", b"c", b"e", b"f"],
            &[b"a", b"b", b"d", b"e", b"f", b"g"],
            &[b"f", b"e", b"a", b"a", b"c", b"0"],
            &[b"b", b"c", b"x", b"a", b"f"],
        ];
        for order in orders {
            let mut next = 0;
            for name in order {
                assert_eq!(find(Some(&tree), name, &mut next), expect(name), "{order:?}: {name:?}");
                if let Some(i) = expect(name) {
                    assert_eq!(next, i + 1);
                }
            }
        }
        assert_eq!(find(None, b"a", &mut 0), None);
    }
}

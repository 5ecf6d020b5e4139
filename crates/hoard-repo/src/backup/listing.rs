//! Listing directories for a filesystem backup: a directory's entries, sorted by name, minus
//! exclusions, each with its metadata; and [`Lookahead`], a thread that lists the directories a
//! walk will visit, in the order it will visit them, ahead of it.
//!
//! On a night when little changed, a backup's walk is two halves of about equal cost: listing
//! (`getdents` and a `statx` per entry) and comparing each entry with the parent snapshot and
//! building trees. The lookahead moves the first half to a second thread. It needs no key, so
//! the binary starts it before it opens the repository, and the listing overlaps the password's
//! key derivation (argon2id, about 0.1 s at the default parameters, on both cores since it has
//! four lanes) too.
//!
//! When the kernel no longer has a tree's inodes cached, the `statx` calls wait on the disk and
//! one thread cannot keep a core busy. So the lister times the first entries of each large
//! directory, and when the kernel is slow to answer it leaves the rest of the directory to
//! `STAT_THREADS` stat threads; their listings take their place in the queue in the walk's
//! order.
//!
//! The lookahead follows the walk's rules (exclusions, cache directories, one file system), but
//! the walk stays the judge of what it visits: it asks for each directory by path, and the first
//! answer for another path (a directory that changed between the two looks at it) ends the
//! lookahead; the walk lists for itself from there on. So a lookahead can make a backup slower
//! than it would be, never different.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::BackupOptions;
use crate::error::{RepoError, Result};

const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// Entries the lookahead may hold that the walk has not taken yet (about 230 bytes each with
/// their metadata, so about 7 MiB). Enough to keep ahead of a walk through directories of any
/// usual size; a single larger directory is still handed over whole.
pub(crate) const LOOKAHEAD_ENTRIES: usize = 4 * 1024;

/// Threads that look at the entries of large directories for the lister. When the kernel no
/// longer has a tree's inodes cached, reading them back (`statx`) is most of a night's time, and
/// it waits on the disk: several threads keep both cores and the disk busy.
const STAT_THREADS: usize = 3;

/// Directories with fewer entries the lister looks at itself; handing them over would cost more
/// than it saves.
const HAND_OVER: usize = 64;

/// Entries of a larger directory the lister looks at itself before it decides.
const PROBE: usize = 32;

/// What a `statx` takes, at most, on average, when the kernel has the inode cached (about 1 µs on
/// the machine of docs/PERFORMANCE.md; one that has to be read back takes tens of µs).
const CACHED_STAT: Duration = Duration::from_micros(4);

/// A directory entry: its name and its metadata (`None` when it could not be looked at through
/// the directory; the walk then looks again by path, and reports the error against the file).
pub(crate) type Entry = (Vec<u8>, Option<fs::Metadata>);

/// Which parts of the tree were named on the command line.
#[derive(Default, Debug)]
pub(crate) struct Selection {
    pub(crate) whole: bool,
    pub(crate) children: BTreeMap<Vec<u8>, Selection>,
}

/// The paths of a backup, made absolute (see [`super::fs::normalize`]) and checked to exist:
/// the selection the walk starts from and the paths as the snapshot records them.
pub(crate) fn select(paths: &[PathBuf]) -> Result<(Selection, Vec<String>)> {
    if paths.is_empty() {
        return Err(RepoError::Invalid("no paths to back up".into()));
    }
    let mut root = Selection::default();
    let mut shown = Vec::new();
    for p in paths {
        let abs = super::fs::normalize(p)?;
        fs::symlink_metadata(&abs).map_err(|e| RepoError::io(format!("{}", p.display()), e))?;
        shown.push(abs.display().to_string());
        let mut s = &mut root;
        for c in abs.components().skip(1) {
            s = s.children.entry(c.as_os_str().as_bytes().to_vec()).or_default();
        }
        s.whole = true;
    }
    if root.whole {
        // "/" itself was named.
        root.children.clear();
    }
    shown.sort();
    shown.dedup();
    Ok((root, shown))
}

/// The rules that decide what of a directory is backed up and which subdirectories are entered.
pub(crate) struct Filter {
    patterns: Vec<String>,
    excludes: GlobSet,
    basename_excludes: GlobSet,
    pub(crate) exclude_caches: bool,
    pub(crate) one_file_system: bool,
}

impl Filter {
    pub(crate) fn new(opts: &BackupOptions) -> Result<Filter> {
        let mut full = GlobSetBuilder::new();
        let mut base = GlobSetBuilder::new();
        for p in &opts.excludes {
            let g = globset::GlobBuilder::new(p)
                .literal_separator(true)
                .build()
                .map_err(|e| RepoError::Invalid(format!("exclude pattern {p:?}: {e}")))?;
            if p.contains('/') {
                full.add(g);
                // "dir/**"-style patterns should also exclude the directory itself.
                if let Some(stripped) = p.strip_suffix("/**") {
                    full.add(
                        Glob::new(stripped).map_err(|e| RepoError::Invalid(format!("exclude pattern {p:?}: {e}")))?,
                    );
                }
            } else {
                base.add(g);
            }
        }
        let err = |e: globset::Error| RepoError::Invalid(format!("exclude patterns: {e}"));
        Ok(Filter {
            patterns: opts.excludes.clone(),
            excludes: full.build().map_err(err)?,
            basename_excludes: base.build().map_err(err)?,
            exclude_caches: opts.exclude_caches,
            one_file_system: opts.one_file_system,
        })
    }

    /// Whether two filters decide alike.
    fn same(&self, o: &Filter) -> bool {
        self.patterns == o.patterns
            && self.exclude_caches == o.exclude_caches
            && self.one_file_system == o.one_file_system
    }

    pub(crate) fn excluded(&self, path: &Path) -> bool {
        if self.excludes.is_match(path) {
            return true;
        }
        path.file_name().is_some_and(|n| self.basename_excludes.is_match(n))
    }

    /// The entries of `dir`, sorted by name, minus exclusions, with their metadata read through
    /// the directory's handle (`statx` on the open directory and a name: no path walk from the
    /// root for every file, which was a seventh of night 2's time on a tree of small files).
    pub(crate) fn list(&self, dir: &Path) -> io::Result<Vec<Entry>> {
        Ok(self.read(dir)?.into_iter().map(|(name, e)| (name, e.metadata().ok())).collect())
    }

    /// The entries of `dir`, sorted by name, minus exclusions, not yet looked at.
    fn read(&self, dir: &Path) -> io::Result<Vec<(Vec<u8>, fs::DirEntry)>> {
        let mut found = Vec::new();
        // Without patterns no entry's path is made: that is an allocation and a copy of the
        // directory's path per entry, on the thread that night 2 of many small files waits for.
        let patterns = !self.excludes.is_empty() || !self.basename_excludes.is_empty();
        for e in fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().into_vec();
            if patterns && self.excluded(&dir.join(OsStr::from_bytes(&name))) {
                continue;
            }
            found.push((name, e));
        }
        found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(found)
    }

    /// Whether the walk enters the directory at `path` (with metadata `meta`) below a root on
    /// device `root_dev`.
    pub(crate) fn enters(&self, path: &Path, meta: &fs::Metadata, root_dev: u64) -> bool {
        let other_fs = self.one_file_system && meta.dev() != root_dev;
        let cache = self.exclude_caches && is_cachedir(path);
        !(other_fs || cache)
    }
}

/// Whether `dir` holds a `CACHEDIR.TAG` with the signature of the Cache Directory Tagging
/// Specification.
pub(crate) fn is_cachedir(dir: &Path) -> bool {
    let mut buf = [0u8; CACHEDIR_SIGNATURE.len()];
    match File::open(dir.join("CACHEDIR.TAG")) {
        Ok(f) => io::Read::read_exact(&mut &f, &mut buf).is_ok() && buf == CACHEDIR_SIGNATURE,
        Err(_) => false,
    }
}

/// A directory's listing, or why it could not be listed.
type Listing = io::Result<Vec<Entry>>;

/// A listed entry the lister has not looked at yet (`None`), or has (`Some`, with what it found).
type Found = (Vec<u8>, fs::DirEntry, Option<Option<fs::Metadata>>);

/// A listing for the stat threads to finish: the entries of the directory at `dir`, which is
/// item `seq` of the queue.
struct Job {
    seq: u64,
    dir: PathBuf,
    found: Vec<Found>,
}

/// A directory's listing as the lister hands it over.
enum Listed {
    Done(Listing),
    Todo(Vec<Found>),
}

#[derive(Default)]
struct Queue {
    /// Listings not taken yet, in the walk's order: the directory, its listing (`None` while
    /// a stat thread is still looking at its entries) and what it counts against the budget.
    items: VecDeque<(PathBuf, Option<Listing>, usize)>,
    /// The sequence number of `items.front()`; each item's is one more than the one before.
    front: u64,
    /// Entries in `items`.
    entries: usize,
    /// Listings waiting for a stat thread, in the walk's order.
    jobs: VecDeque<Job>,
    /// The lister has listed everything it will.
    finished: bool,
    /// The walk needs no more listings (it finished, failed, or lost step with the lister).
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when an item is added, finished or taken, and when the queue closes.
    changed: Condvar,
    /// Signalled when a job is added, the lister finishes, or the queue closes.
    work: Condvar,
}

impl Shared {
    /// Hands a listing to the walk (and its entries to the stat threads, when it has any left
    /// to look at), waiting while the queue is over its budget; `false` when the walk wants no
    /// more.
    fn push(&self, dir: PathBuf, listed: Listed, budget: usize) -> bool {
        let n = match &listed {
            Listed::Done(l) => l.as_ref().map_or(1, |v| v.len().max(1)),
            Listed::Todo(found) => found.len().max(1),
        };
        let mut q = self.queue.lock().unwrap();
        while !q.closed && !q.items.is_empty() && q.entries + n > budget {
            q = self.changed.wait(q).unwrap();
        }
        if q.closed {
            return false;
        }
        q.entries += n;
        match listed {
            Listed::Done(l) => q.items.push_back((dir, Some(l), n)),
            Listed::Todo(found) => {
                let seq = q.front + q.items.len() as u64;
                q.items.push_back((dir.clone(), None, n));
                q.jobs.push_back(Job { seq, dir, found });
                self.work.notify_one();
            }
        }
        self.changed.notify_all();
        true
    }

    /// The next job for a stat thread; `None` when there will be none.
    fn job(&self) -> Option<Job> {
        let mut q = self.queue.lock().unwrap();
        loop {
            if q.closed {
                return None;
            }
            if let Some(j) = q.jobs.pop_front() {
                return Some(j);
            }
            if q.finished {
                return None;
            }
            q = self.work.wait(q).unwrap();
        }
    }

    /// Puts a finished job's listing in its place in the queue.
    fn done(&self, seq: u64, entries: Vec<Entry>) {
        let mut q = self.queue.lock().unwrap();
        if q.closed {
            return;
        }
        // Items leave the queue only from the front and only once finished, so an unfinished
        // one is still where it was put.
        let at = (seq - q.front) as usize;
        q.items[at].1 = Some(Ok(entries));
        self.changed.notify_all();
    }

    fn finish(&self) {
        self.queue.lock().unwrap().finished = true;
        self.changed.notify_all();
        self.work.notify_all();
    }

    fn closed(&self) -> bool {
        self.queue.lock().unwrap().closed
    }

    fn close(&self) {
        let mut q = self.queue.lock().unwrap();
        q.closed = true;
        q.items.clear();
        q.jobs.clear();
        q.entries = 0;
        self.changed.notify_all();
        self.work.notify_all();
    }
}

/// Sets [`Queue::finished`] (the lister) or closes the queue (a stat thread) when dropped, also
/// when the thread panics: the walk must never wait for it in vain.
struct Guard<'a>(&'a Shared, bool);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.finish();
        } else if std::thread::panicking() {
            self.0.close();
        }
    }
}

/// The paths of a filesystem backup, checked, and a thread listing their directories ahead of
/// the walk (see the module's documentation). Dropping it stops the thread.
pub struct Lookahead {
    pub(crate) selection: Selection,
    pub(crate) shown: Vec<String>,
    filter: Filter,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Lookahead {
    /// Checks `paths` and starts listing what a backup of them with `opts` will visit. Fails
    /// as [`super::fs::backup_paths`] would on a path that does not exist or an exclude pattern
    /// that does not parse.
    pub fn start(paths: &[PathBuf], opts: &BackupOptions) -> Result<Lookahead> {
        let (selection, shown) = select(paths)?;
        Lookahead::over(selection, shown, opts, LOOKAHEAD_ENTRIES, CACHED_STAT)
    }

    /// `cached_stat`: see [`CACHED_STAT`] (tests set zero, so that every large directory is handed
    /// over).
    fn over(
        selection: Selection,
        shown: Vec<String>,
        opts: &BackupOptions,
        budget: usize,
        cached_stat: Duration,
    ) -> Result<Lookahead> {
        let mut roots = Vec::new();
        roots_of(&selection, Path::new("/"), &mut roots);
        let shared =
            Arc::new(Shared { queue: Mutex::new(Queue::default()), changed: Condvar::new(), work: Condvar::new() });
        // Dropped on an early return: stops and joins the threads already started.
        let mut la =
            Lookahead { selection, shown, filter: Filter::new(opts)?, shared: shared.clone(), threads: Vec::new() };
        for i in 0..STAT_THREADS {
            let shared = shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("hoard-stat-{i}"))
                .spawn(move || {
                    let _guard = Guard(&shared, false);
                    while let Some(job) = shared.job() {
                        let entries = job
                            .found
                            .into_iter()
                            .map(|(name, e, meta)| {
                                let meta = meta.unwrap_or_else(|| look(&job.dir, &name, &e));
                                (name, meta)
                            })
                            .collect();
                        shared.done(job.seq, entries);
                    }
                })
                .map_err(|e| RepoError::io("starting a directory stat thread", e))?;
            la.threads.push(t);
        }
        let lister = Lister { filter: Filter::new(opts)?, shared: shared.clone(), budget, cached_stat };
        let thread = std::thread::Builder::new()
            .name("hoard-lister".into())
            .spawn(move || {
                let _guard = Guard(&lister.shared, true);
                for root in roots {
                    let Ok(meta) = fs::symlink_metadata(&root) else { continue };
                    if meta.is_dir()
                        && lister.filter.enters(&root, &meta, meta.dev())
                        && !lister.visit(root, meta.dev())
                    {
                        return;
                    }
                }
            })
            .map_err(|e| RepoError::io("starting the directory lister thread", e))?;
        la.threads.push(thread);
        Ok(la)
    }

    /// Whether this lookahead lists by the same rules as a backup with `opts`.
    pub(crate) fn agrees(&self, opts: &BackupOptions) -> bool {
        Filter::new(opts).is_ok_and(|f| f.same(&self.filter))
    }

    /// The listing of `dir`, when it is the next one the lister made; `None` when the walk must
    /// list it itself (the lister went elsewhere, or has stopped).
    pub(crate) fn take(&self, dir: &Path) -> Option<Listing> {
        let mut q = self.shared.queue.lock().unwrap();
        loop {
            if q.closed {
                return None;
            }
            if let Some((path, listed, _)) = q.items.front() {
                if path != dir {
                    tracing::debug!(
                        "the directory lister went to {} where the walk went to {}; the walk lists for itself",
                        path.display(),
                        dir.display()
                    );
                    drop(q);
                    self.shared.close();
                    return None;
                }
                if listed.is_some() {
                    let (_, listed, n) = q.items.pop_front().expect("front exists");
                    q.front += 1;
                    q.entries -= n;
                    self.shared.changed.notify_all();
                    return listed;
                }
            } else if q.finished {
                return None;
            }
            q = self.shared.changed.wait(q).unwrap();
        }
    }
}

impl Drop for Lookahead {
    fn drop(&mut self) {
        self.shared.close();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The directories named whole, in the order the walk reaches them.
fn roots_of(sel: &Selection, path: &Path, out: &mut Vec<PathBuf>) {
    if sel.whole {
        out.push(path.to_path_buf());
        return;
    }
    for (name, s) in &sel.children {
        roots_of(s, &path.join(OsStr::from_bytes(name)), out);
    }
}

/// The metadata of entry `name` of `dir`: through the directory's handle, or by path when that
/// fails (the walk would look by path; so does the lister, sparing it that).
fn look(dir: &Path, name: &[u8], e: &fs::DirEntry) -> Option<fs::Metadata> {
    e.metadata().ok().or_else(|| fs::symlink_metadata(dir.join(OsStr::from_bytes(name))).ok())
}

struct Lister {
    filter: Filter,
    shared: Arc<Shared>,
    budget: usize,
    cached_stat: Duration,
}

impl Lister {
    /// Lists `dir` and, depth first in name order, the directories below it that the walk will
    /// enter; `false` once the walk wants no more.
    fn visit(&self, dir: PathBuf, root_dev: u64) -> bool {
        if self.shared.closed() {
            return false;
        }
        let mut subdirs = Vec::new();
        let listed = match self.filter.read(&dir) {
            Err(e) => Listed::Done(Err(e)),
            Ok(found) => {
                // The lister looks at subdirectories itself (the file type from the listing
                // tells them apart), since it goes on into them next. Of a large directory it
                // looks at the first entries and times them: when the kernel answers from its
                // caches, handing the rest over would only cost, and it goes on by itself;
                // when the kernel has to read the inodes back, it leaves the rest to the stat
                // threads.
                let mut inline = true;
                let started = Instant::now();
                let n = found.len();
                let mut found: Vec<Found> = found.into_iter().map(|(name, e)| (name, e, None)).collect();
                for (i, (name, e, meta)) in found.iter_mut().enumerate() {
                    if i == PROBE && n >= HAND_OVER {
                        inline = started.elapsed() < PROBE as u32 * self.cached_stat;
                    }
                    if inline || e.file_type().map_or(true, |t| t.is_dir()) {
                        let m = look(&dir, name, e);
                        if let Some(m) = &m {
                            let path = dir.join(OsStr::from_bytes(name));
                            if m.is_dir() && self.filter.enters(&path, m, root_dev) {
                                subdirs.push(path);
                            }
                        }
                        *meta = Some(m);
                    }
                }
                if inline {
                    Listed::Done(Ok(found.into_iter().map(|(name, _, meta)| (name, meta.flatten())).collect()))
                } else {
                    Listed::Todo(found)
                }
            }
        };
        if !self.shared.push(dir, listed, self.budget) {
            return false;
        }
        subdirs.into_iter().all(|s| self.visit(s, root_dev))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree with nested directories, an excluded directory, a tagged cache directory, a
    /// symlink to a directory and an empty directory.
    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for d in ["a/b/c", "a/d", "e", "skip/inner", "cache/x", "empty"] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        for (i, f) in ["a/1", "a/b/2", "a/b/c/3", "a/d/4", "e/5", "skip/inner/6", "cache/x/7", "top"].iter().enumerate()
        {
            fs::write(r.join(f), vec![b'x'; i]).unwrap();
        }
        let mut tag = CACHEDIR_SIGNATURE.to_vec();
        tag.extend_from_slice(b"\n# a cache\n");
        fs::write(r.join("cache/CACHEDIR.TAG"), tag).unwrap();
        std::os::unix::fs::symlink(r.join("a"), r.join("link")).unwrap();
        t
    }

    fn opts() -> BackupOptions {
        BackupOptions { excludes: vec!["skip".into()], exclude_caches: true, ..BackupOptions::default() }
    }

    /// The walk's order, as `fs::Walker::dir` takes it: a directory's listing, then each
    /// subdirectory it enters, depth first in name order. Takes every listing from `la` and
    /// returns the directories, and how many listings the walk had to make itself.
    fn walk(la: &Lookahead, filter: &Filter, dir: &Path, root_dev: u64, seen: &mut Vec<PathBuf>) -> usize {
        let (entries, mut own) = match la.take(dir) {
            Some(l) => (l.unwrap(), 0),
            None => (filter.list(dir).unwrap(), 1),
        };
        // Names, and what a stat thread or the lister found: the same as listing it here.
        type Seen = (Vec<u8>, Option<(u64, u64, bool)>);
        let seen_as = |l: &[Entry]| -> Vec<Seen> {
            l.iter().map(|(n, m)| (n.clone(), m.as_ref().map(|m| (m.ino(), m.len(), m.is_dir())))).collect()
        };
        assert_eq!(seen_as(&entries), seen_as(&filter.list(dir).unwrap()), "{}", dir.display());
        seen.push(dir.to_path_buf());
        for (name, meta) in entries {
            let path = dir.join(OsStr::from_bytes(&name));
            let meta = meta.unwrap();
            if meta.is_dir() && filter.enters(&path, &meta, root_dev) {
                own += walk(la, filter, &path, root_dev, seen);
            }
        }
        own
    }

    /// Walks the whole tree at `root` with a lookahead of `budget` entries, checking that the
    /// walk never had to list for itself; returns the lookahead and the directories, relative
    /// to `root`, in the order visited.
    fn walk_whole(root: &Path, budget: usize, cached_stat: Duration) -> (Lookahead, Vec<String>) {
        let (sel, shown) = select(&[root.to_path_buf()]).unwrap();
        let la = Lookahead::over(sel, shown, &opts(), budget, cached_stat).unwrap();
        let filter = Filter::new(&opts()).unwrap();
        let mut seen = Vec::new();
        let dev = fs::metadata(root).unwrap().dev();
        assert_eq!(walk(&la, &filter, root, dev, &mut seen), 0, "budget {budget}: the walk listed for itself");
        let rel = seen.iter().map(|p| p.strip_prefix(root).unwrap().to_str().unwrap().to_owned()).collect();
        (la, rel)
    }

    #[test]
    fn the_lister_lists_every_directory_the_walk_enters_in_the_walks_order() {
        let t = tree();
        let root = t.path().to_path_buf();
        // A budget far below the tree's size: the lister must wait for the walk and go on.
        for budget in [1, 3, LOOKAHEAD_ENTRIES] {
            let (la, rel) = walk_whole(&root, budget, CACHED_STAT);
            assert_eq!(rel, ["", "a", "a/b", "a/b/c", "a/d", "e", "empty"], "budget {budget}");
            // Nothing is left over, and a further question is answered by the walk itself.
            assert!(la.take(&root.join("a")).is_none());
        }
    }

    #[test]
    fn large_directories_handed_to_the_stat_threads_come_back_in_the_walks_order() {
        let t = tree();
        let r = t.path();
        // Two directories past HAND_OVER, one inside the other, with subdirectories between
        // their files and a file after them.
        for d in ["big/m", "big/sub/x", "big/zz", "big/sub/large"] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        for i in 0..(HAND_OVER * 3) {
            fs::write(r.join(format!("big/f{i:04}")), vec![b'y'; i]).unwrap();
            fs::write(r.join(format!("big/sub/large/g{i:04}")), vec![b'z'; i % 7]).unwrap();
        }
        let root = r.to_path_buf();
        for budget in [1, 50, LOOKAHEAD_ENTRIES] {
            // Every directory of HAND_OVER entries or more goes to the stat threads.
            let (la, rel) = walk_whole(&root, budget, Duration::ZERO);
            assert_eq!(
                rel,
                [
                    "",
                    "a",
                    "a/b",
                    "a/b/c",
                    "a/d",
                    "big",
                    "big/m",
                    "big/sub",
                    "big/sub/large",
                    "big/sub/x",
                    "big/zz",
                    "e",
                    "empty"
                ],
                "budget {budget}"
            );
            assert!(la.take(&root.join("a")).is_none());
        }
        // Dropped while the stat threads still have work: nothing hangs.
        let (sel, shown) = select(std::slice::from_ref(&root)).unwrap();
        let la = Lookahead::over(sel, shown, &opts(), 1, Duration::ZERO).unwrap();
        assert!(la.take(&root).is_some());
        drop(la);
    }

    #[test]
    fn several_named_paths_are_listed_in_the_walks_order() {
        let t = tree();
        let r = t.path();
        // Named out of order, one inside another's parent, one a file.
        let paths = [r.join("e"), r.join("a/d"), r.join("top"), r.join("a/b")];
        let (sel, shown) = select(&paths).unwrap();
        let la = Lookahead::over(sel, shown, &opts(), LOOKAHEAD_ENTRIES, CACHED_STAT).unwrap();
        let filter = Filter::new(&opts()).unwrap();
        let mut seen = Vec::new();
        for d in ["a/b", "a/d", "e"] {
            let p = r.join(d);
            let dev = fs::metadata(&p).unwrap().dev();
            assert_eq!(walk(&la, &filter, &p, dev, &mut seen), 0, "{d}");
        }
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn a_walk_that_goes_elsewhere_ends_the_lookahead_and_lists_for_itself() {
        let t = tree();
        let root = t.path().to_path_buf();
        let (sel, shown) = select(std::slice::from_ref(&root)).unwrap();
        let la = Lookahead::over(sel, shown, &opts(), LOOKAHEAD_ENTRIES, CACHED_STAT).unwrap();
        assert!(la.take(&root).is_some());
        // The walk skips "a" (as if it had become a file since the lister looked).
        assert!(la.take(&root.join("e")).is_none());
        assert!(la.take(&root.join("e")).is_none(), "a lookahead that lost step stays off");
        assert!(la.take(&root.join("empty")).is_none());
    }

    #[test]
    fn a_lookahead_dropped_early_stops_its_lister() {
        let t = tree();
        for i in 0..200 {
            fs::create_dir_all(t.path().join(format!("many/{i:03}"))).unwrap();
        }
        let (sel, shown) = select(&[t.path().to_path_buf()]).unwrap();
        // The lister blocks at its budget after the first listing; dropping must not hang.
        let la = Lookahead::over(sel, shown, &opts(), 1, CACHED_STAT).unwrap();
        assert!(la.take(t.path()).is_some());
        drop(la);
    }

    #[test]
    fn a_lookahead_by_other_rules_is_not_used() {
        let t = tree();
        let la = Lookahead::start(&[t.path().to_path_buf()], &opts()).unwrap();
        assert!(la.agrees(&opts()));
        assert!(!la.agrees(&BackupOptions::default()));
        assert!(!la.agrees(&BackupOptions { one_file_system: true, ..opts() }));
    }

    #[test]
    fn a_path_that_does_not_exist_is_refused_at_the_start() {
        let t = tree();
        let e = Lookahead::start(&[t.path().join("nope")], &opts()).err().expect("refused");
        assert!(e.to_string().contains("nope"), "{e}");
        assert!(Lookahead::start(&[], &opts()).is_err());
    }
}

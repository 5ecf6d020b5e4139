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

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::BackupOptions;
use crate::error::{RepoError, Result};

const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// Entries the lookahead may hold that the walk has not taken yet (about 230 bytes each with
/// their metadata, so about 7 MiB). Enough to keep ahead of a walk through directories of any
/// usual size; a single larger directory is still handed over whole.
pub(crate) const LOOKAHEAD_ENTRIES: usize = 4 * 1024;

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
        let mut entries: Vec<Entry> = Vec::new();
        for e in fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().into_vec();
            if self.excluded(&dir.join(OsStr::from_bytes(&name))) {
                continue;
            }
            entries.push((name, e.metadata().ok()));
        }
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(entries)
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

#[derive(Default)]
struct Queue {
    /// Listings not taken yet, in the walk's order.
    items: VecDeque<(PathBuf, io::Result<Vec<Entry>>)>,
    /// Entries in `items`.
    entries: usize,
    /// The lister has listed everything it will.
    finished: bool,
    /// The walk needs no more listings (it finished, failed, or lost step with the lister).
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    changed: Condvar,
}

impl Shared {
    /// Hands a listing to the walk, waiting while the queue is over its budget; `false` when
    /// the walk wants no more.
    fn push(&self, dir: PathBuf, listed: io::Result<Vec<Entry>>, budget: usize) -> bool {
        let n = listed.as_ref().map_or(1, |v| v.len().max(1));
        let mut q = self.queue.lock().unwrap();
        while !q.closed && !q.items.is_empty() && q.entries + n > budget {
            q = self.changed.wait(q).unwrap();
        }
        if q.closed {
            return false;
        }
        q.entries += n;
        q.items.push_back((dir, listed));
        self.changed.notify_all();
        true
    }

    fn closed(&self) -> bool {
        self.queue.lock().unwrap().closed
    }

    fn close(&self) {
        let mut q = self.queue.lock().unwrap();
        q.closed = true;
        q.items.clear();
        q.entries = 0;
        self.changed.notify_all();
    }
}

/// The paths of a filesystem backup, checked, and a thread listing their directories ahead of
/// the walk (see the module's documentation). Dropping it stops the thread.
pub struct Lookahead {
    pub(crate) selection: Selection,
    pub(crate) shown: Vec<String>,
    filter: Filter,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Lookahead {
    /// Checks `paths` and starts listing what a backup of them with `opts` will visit. Fails
    /// as [`super::fs::backup_paths`] would on a path that does not exist or an exclude pattern
    /// that does not parse.
    pub fn start(paths: &[PathBuf], opts: &BackupOptions) -> Result<Lookahead> {
        let (selection, shown) = select(paths)?;
        Lookahead::over(selection, shown, opts, LOOKAHEAD_ENTRIES)
    }

    fn over(selection: Selection, shown: Vec<String>, opts: &BackupOptions, budget: usize) -> Result<Lookahead> {
        let mut roots = Vec::new();
        roots_of(&selection, Path::new("/"), &mut roots);
        let shared = Arc::new(Shared { queue: Mutex::new(Queue::default()), changed: Condvar::new() });
        let lister = Lister { filter: Filter::new(opts)?, shared: shared.clone(), budget };
        let thread = std::thread::Builder::new()
            .name("hoard-lister".into())
            .spawn(move || {
                struct Finish<'a>(&'a Shared);
                impl Drop for Finish<'_> {
                    // Also when the lister panics: the walk must never wait for it in vain.
                    fn drop(&mut self) {
                        self.0.queue.lock().unwrap().finished = true;
                        self.0.changed.notify_all();
                    }
                }
                let _finish = Finish(&lister.shared);
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
        Ok(Lookahead { selection, shown, filter: Filter::new(opts)?, shared, thread: Some(thread) })
    }

    /// Whether this lookahead lists by the same rules as a backup with `opts`.
    pub(crate) fn agrees(&self, opts: &BackupOptions) -> bool {
        Filter::new(opts).is_ok_and(|f| f.same(&self.filter))
    }

    /// The listing of `dir`, when it is the next one the lister made; `None` when the walk must
    /// list it itself (the lister went elsewhere, or has stopped).
    pub(crate) fn take(&self, dir: &Path) -> Option<io::Result<Vec<Entry>>> {
        let mut q = self.shared.queue.lock().unwrap();
        loop {
            if q.closed {
                return None;
            }
            if let Some((path, _)) = q.items.front() {
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
                let (_, listed) = q.items.pop_front().expect("front exists");
                q.entries -= listed.as_ref().map_or(1, |v| v.len().max(1));
                self.shared.changed.notify_all();
                return Some(listed);
            }
            if q.finished {
                return None;
            }
            q = self.shared.changed.wait(q).unwrap();
        }
    }
}

impl Drop for Lookahead {
    fn drop(&mut self) {
        self.shared.close();
        if let Some(t) = self.thread.take() {
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

struct Lister {
    filter: Filter,
    shared: Arc<Shared>,
    budget: usize,
}

impl Lister {
    /// Lists `dir` and, depth first in name order, the directories below it that the walk will
    /// enter; `false` once the walk wants no more.
    fn visit(&self, dir: PathBuf, root_dev: u64) -> bool {
        if self.shared.closed() {
            return false;
        }
        let mut listed = self.filter.list(&dir);
        let mut subdirs = Vec::new();
        if let Ok(entries) = &mut listed {
            for (name, meta) in entries.iter_mut() {
                let path = dir.join(OsStr::from_bytes(name));
                if meta.is_none() {
                    // The walk would look by path; so does the lister, sparing it that.
                    *meta = fs::symlink_metadata(&path).ok();
                }
                if let Some(m) = meta {
                    if m.is_dir() && self.filter.enters(&path, m, root_dev) {
                        subdirs.push(path);
                    }
                }
            }
        }
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
        assert_eq!(
            entries.iter().map(|e| &e.0).collect::<Vec<_>>(),
            filter.list(dir).unwrap().iter().map(|e| &e.0).collect::<Vec<_>>(),
            "{}",
            dir.display()
        );
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

    #[test]
    fn the_lister_lists_every_directory_the_walk_enters_in_the_walks_order() {
        let t = tree();
        let root = t.path().to_path_buf();
        // A budget far below the tree's size: the lister must wait for the walk and go on.
        for budget in [1, 3, LOOKAHEAD_ENTRIES] {
            let (sel, shown) = select(std::slice::from_ref(&root)).unwrap();
            let la = Lookahead::over(sel, shown, &opts(), budget).unwrap();
            let filter = Filter::new(&opts()).unwrap();
            let mut seen = Vec::new();
            let dev = fs::metadata(&root).unwrap().dev();
            assert_eq!(walk(&la, &filter, &root, dev, &mut seen), 0, "budget {budget}: the walk listed for itself");
            let rel: Vec<_> =
                seen.iter().map(|p| p.strip_prefix(&root).unwrap().to_str().unwrap().to_owned()).collect();
            assert_eq!(rel, ["", "a", "a/b", "a/b/c", "a/d", "e", "empty"], "budget {budget}");
            // Nothing is left over, and a further question is answered by the walk itself.
            assert!(la.take(&root.join("a")).is_none());
        }
    }

    #[test]
    fn several_named_paths_are_listed_in_the_walks_order() {
        let t = tree();
        let r = t.path();
        // Named out of order, one inside another's parent, one a file.
        let paths = [r.join("e"), r.join("a/d"), r.join("top"), r.join("a/b")];
        let (sel, shown) = select(&paths).unwrap();
        let la = Lookahead::over(sel, shown, &opts(), LOOKAHEAD_ENTRIES).unwrap();
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
        let la = Lookahead::over(sel, shown, &opts(), LOOKAHEAD_ENTRIES).unwrap();
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
        let la = Lookahead::over(sel, shown, &opts(), 1).unwrap();
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

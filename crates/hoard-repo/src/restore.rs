//! Restoring a snapshot (or part of it) to a directory, and reading file content back as a
//! stream.
//!
//! **Architecture Invariant:** restore never writes a byte it has not authenticated and
//! checked against its id; a file whose data cannot be verified is removed and reported, never
//! left with wrong content. Entries that already exist in the target are replaced, never
//! followed: files are opened with `O_NOFOLLOW` and a symlink where a directory should be is
//! removed first, so a restore cannot write outside its target.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use crossbeam_channel::bounded;
use filetime::FileTime;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use hoard_core::format::tree::{Node, NodeKind, Tree};
use hoard_core::Id;

use crate::error::{RepoError, Result};
use crate::repo::Repository;

mod direct;

/// How to restore.
#[derive(Clone, Default)]
pub struct RestoreOptions {
    pub target: PathBuf,
    /// Only paths matching one of these (or below a match) are restored.
    pub includes: Vec<String>,
    pub excludes: Vec<String>,
    /// Restore owners (needs root; by default done when running as root).
    pub owners: bool,
    /// Leave holes where a sparse file had zero chunks.
    pub sparse: bool,
    pub threads: usize,
    pub cancel: std::sync::Arc<AtomicBool>,
}

/// What a restore did.
#[derive(Debug, Default)]
pub struct RestoreSummary {
    pub files: u64,
    pub dirs: u64,
    pub other: u64,
    pub bytes: u64,
    pub errors: Vec<String>,
}

/// Finds the node at `path` (components relative to the snapshot root) and its tree.
pub fn resolve(repo: &Repository, root: &Id, path: &[Vec<u8>]) -> Result<Option<Node>> {
    let mut tree = root_node(*root);
    for c in path {
        let sub = tree.subtree.ok_or_else(|| {
            RepoError::NotFound(format!("{} is not a directory", String::from_utf8_lossy(&tree.name)))
        })?;
        let t = repo.load_tree(&sub)?;
        match t.nodes.into_iter().find(|n| &n.name == c) {
            Some(n) => tree = n,
            None => return Ok(None),
        }
    }
    Ok(Some(tree))
}

/// A synthetic directory node for a snapshot's root tree.
pub fn root_node(tree: Id) -> Node {
    Node { name: b"/".to_vec(), kind: Some(NodeKind::Dir), mode: 0o755, subtree: Some(tree), ..Default::default() }
}

/// Splits "a/b/c" (or "/a/b/c") into components; `..` is refused.
pub fn split_path(p: &str) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(RepoError::Invalid(format!("{p:?}: '..' is not allowed in a snapshot path"))),
            c => out.push(c.as_bytes().to_vec()),
        }
    }
    Ok(out)
}

fn globs(patterns: &[String]) -> Result<GlobSet> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let p = if p.starts_with('/') { p.clone() } else { format!("**/{p}") };
        b.add(
            GlobBuilder::new(&p)
                .literal_separator(true)
                .build()
                .map_err(|e| RepoError::Invalid(format!("pattern {p:?}: {e}")))?,
        );
    }
    b.build().map_err(|e| RepoError::Invalid(format!("patterns: {e}")))
}

struct FileJob {
    path: PathBuf,
    node: Node,
    /// The file as the walker created it (empty, exclusive), so the worker need not open it
    /// again.
    file: std::fs::File,
}

struct Restorer<'a> {
    repo: &'a Repository,
    opts: &'a RestoreOptions,
    includes: GlobSet,
    excludes: GlobSet,
    summary: Mutex<RestoreSummary>,
    links: Mutex<HashMap<(u64, u64), PathBuf>>,
    bytes: AtomicU64,
}

/// Runs `create` (which makes something at `path` and fails if anything is there); when
/// something is there, removes it and tries once more. Restoring into an empty directory, the
/// usual case, then costs no lookup per entry.
fn create_fresh<T>(path: &Path, create: impl Fn() -> io::Result<T>) -> io::Result<T> {
    match create() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            clear(path, false)?;
            create()
        }
        r => r,
    }
}

/// Removes whatever is at `path` unless it is a directory (when `keep_dir`).
fn clear(path: &Path, keep_dir: bool) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() && keep_dir => Ok(()),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl Restorer<'_> {
    fn error(&self, msg: String) {
        tracing::warn!("{msg}");
        self.summary.lock().unwrap().errors.push(msg);
    }

    fn selected(&self, rel: &Path) -> bool {
        self.includes.is_empty() || rel.ancestors().any(|a| self.includes.is_match(a))
    }

    /// Walks one directory. `rel` is its path relative to the snapshot root (starting "/");
    /// `parents` are the directories from the target down to `dir`, with whether each has been
    /// created yet (with include patterns, a directory is made only when something in it is
    /// restored).
    fn walk(
        &self,
        dir: &Path,
        rel: &Path,
        tree: &Tree,
        jobs: &crossbeam_channel::Sender<FileJob>,
        dirs: &mut Vec<(PathBuf, Node)>,
        parents: &mut Vec<(PathBuf, bool)>,
    ) -> Result<()> {
        for node in &tree.nodes {
            if self.opts.cancel.load(Relaxed) {
                return Err(RepoError::Interrupted);
            }
            let name = OsStr::from_bytes(&node.name);
            let path = dir.join(name);
            let rel = rel.join(name);
            if self.excludes.is_match(&rel) {
                continue;
            }
            let selected = self.selected(&rel);
            if node.kind() == NodeKind::Dir {
                let sub = match self.repo.load_tree(&node.subtree.unwrap()) {
                    Ok(t) => t,
                    Err(e) => {
                        self.error(format!("{}: directory not restored: {e}", rel.display()));
                        continue;
                    }
                };
                if selected {
                    if let Err(e) = self.ensure_parents(parents).and_then(|()| self.make_dir(&path)) {
                        self.error(format!("{}: {e}", path.display()));
                        continue;
                    }
                }
                parents.push((path.clone(), selected));
                self.walk(&path, &rel, &sub, jobs, dirs, parents)?;
                let (_, made) = parents.pop().unwrap();
                if made {
                    dirs.push((path, node.clone()));
                    self.summary.lock().unwrap().dirs += 1;
                }
                continue;
            }
            if !selected {
                continue;
            }
            if let Err(e) = self.ensure_parents(parents) {
                self.error(format!("{}: {e}", path.display()));
                continue;
            }
            if let Err(e) = self.entry(&path, node, jobs) {
                self.error(format!("{}: {e}", path.display()));
            }
        }
        Ok(())
    }

    fn make_dir(&self, path: &Path) -> io::Result<()> {
        match fs::create_dir(path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // A directory already there is kept (and restored into); anything else goes.
                clear(path, true)?;
                match fs::create_dir(path) {
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
                    r => r,
                }
            }
            r => r,
        }
    }

    fn ensure_parents(&self, parents: &mut [(PathBuf, bool)]) -> io::Result<()> {
        for (p, made) in parents.iter_mut() {
            if !*made {
                self.make_dir(p)?;
                *made = true;
            }
        }
        Ok(())
    }

    fn entry(&self, path: &Path, node: &Node, jobs: &crossbeam_channel::Sender<FileJob>) -> Result<()> {
        let ioe = |e: io::Error| RepoError::io("creating", e);
        match node.kind() {
            NodeKind::File => {
                if node.links > 1 {
                    let key = (node.device, node.inode);
                    let mut links = self.links.lock().unwrap();
                    if let Some(first) = links.get(&key) {
                        create_fresh(path, || fs::hard_link(first, path)).map_err(ioe)?;
                        self.summary.lock().unwrap().files += 1;
                        return Ok(());
                    }
                    links.insert(key, path.to_path_buf());
                }
                // Created here so hard links to it can be made before its content is written.
                let file = create_fresh(path, || {
                    OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(path)
                })
                .map_err(ioe)?;
                jobs.send(FileJob { path: path.to_path_buf(), node: node.clone(), file })
                    .map_err(|_| RepoError::Invalid("restore workers stopped".into()))?;
            }
            NodeKind::Symlink => {
                create_fresh(path, || std::os::unix::fs::symlink(OsStr::from_bytes(&node.link_target), path))
                    .map_err(ioe)?;
                self.finish_meta(path, At::Symlink, node).map_err(ioe)?;
                self.summary.lock().unwrap().other += 1;
            }
            NodeKind::Fifo | NodeKind::Socket | NodeKind::CharDevice | NodeKind::BlockDevice => {
                let c = std::ffi::CString::new(path.as_os_str().as_bytes())
                    .map_err(|_| RepoError::Invalid("path with NUL".into()))?;
                let fmt = match node.kind() {
                    NodeKind::Fifo => libc::S_IFIFO,
                    NodeKind::Socket => libc::S_IFSOCK,
                    NodeKind::CharDevice => libc::S_IFCHR,
                    _ => libc::S_IFBLK,
                };
                create_fresh(path, || {
                    // SAFETY: c is a valid C string.
                    if unsafe { libc::mknod(c.as_ptr(), fmt | (node.mode & 0o7777), node.rdev as libc::dev_t) } != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                })
                .map_err(ioe)?;
                self.finish_meta(path, At::Path, node).map_err(ioe)?;
                self.summary.lock().unwrap().other += 1;
            }
            NodeKind::Dir => unreachable!(),
        }
        Ok(())
    }

    /// Owner, mode, xattrs, times: in that order, because chown clears set-id bits and
    /// everything else changes ctime/mtime. A file still open for writing is changed through
    /// its descriptor: no path lookups, three fewer per file on a tree of small files.
    fn finish_meta(&self, path: &Path, at: At<'_>, node: &Node) -> io::Result<()> {
        use xattr::FileExt;
        if self.opts.owners {
            match at {
                At::Open(f) => std::os::unix::fs::fchown(f, Some(node.uid), Some(node.gid))?,
                _ => std::os::unix::fs::lchown(path, Some(node.uid), Some(node.gid))?,
            }
        }
        let mode = fs::Permissions::from_mode(node.mode & 0o7777);
        match at {
            At::Open(f) => f.set_permissions(mode)?,
            At::Path => fs::set_permissions(path, mode)?,
            At::Symlink => {}
        }
        for (k, v) in &node.xattrs {
            let set = match at {
                At::Open(f) => f.set_xattr(OsStr::from_bytes(k), v),
                _ => xattr::set(path, OsStr::from_bytes(k), v),
            };
            if let Err(e) = set {
                // Some attributes (security.*, trusted.*) need privileges; report but go on.
                tracing::warn!(
                    "{}: extended attribute {} not restored: {e}",
                    path.display(),
                    String::from_utf8_lossy(k)
                );
            }
        }
        let t = FileTime::from_unix_time(
            node.mtime_ns.div_euclid(1_000_000_000),
            node.mtime_ns.rem_euclid(1_000_000_000) as u32,
        );
        match at {
            At::Open(f) => filetime::set_file_handle_times(f, Some(t), Some(t)),
            _ => filetime::set_symlink_file_times(path, t, t),
        }
    }

    /// Writes one file's content. `direct_bufs` are the worker's buffers for writing large
    /// files around the page cache ([`direct`]), made on its first large file.
    fn write_file(&self, job: FileJob, direct_bufs: &mut Vec<direct::AlignedBuf>) -> Result<()> {
        let path = &job.path;
        let chunks = self.repo.content_chunks(&job.node.content)?;
        let f = job.file;
        let mut written = 0u64;
        let sparse = self.opts.sparse && job.node.sparse;
        let ioe = |e: io::Error| RepoError::io(path.display().to_string(), e);
        let mut direct =
            (!sparse && job.node.size >= direct::MIN_SIZE).then(|| direct::DirectWriter::new(&f, direct_bufs));
        for id in &chunks {
            if self.opts.cancel.load(Relaxed) {
                return Err(RepoError::Interrupted);
            }
            let data = self.repo.read_blob(id)?;
            if let Some(d) = &mut direct {
                d.write(&data).map_err(ioe)?;
            } else if sparse {
                write_sparse(&f, &data).map_err(ioe)?;
            } else {
                (&f).write_all(&data).map_err(ioe)?;
            }
            written += data.len() as u64;
            self.bytes.fetch_add(data.len() as u64, Relaxed);
        }
        if let Some(d) = direct {
            d.finish().map_err(ioe)?;
        }
        if written != job.node.size {
            return Err(RepoError::Invalid(format!(
                "{}: content has {written} bytes but the snapshot says {}",
                path.display(),
                job.node.size
            )));
        }
        if sparse {
            // Trailing holes: the writes stopped at the last non-zero block.
            f.set_len(written).map_err(|e| RepoError::io(path.display().to_string(), e))?;
        }
        self.finish_meta(path, At::Open(&f), &job.node).map_err(|e| RepoError::io(path.display().to_string(), e))?;
        Ok(())
    }
}

/// What [`Restorer::finish_meta`] changes: a file still open, or by path a symlink (whose mode
/// is not its own) or anything else.
#[derive(Clone, Copy)]
enum At<'a> {
    Open(&'a std::fs::File),
    Symlink,
    Path,
}

/// Writes `data` at the current position, seeking over whole 4 KiB blocks of zeros so they
/// stay holes (the final `set_len` makes trailing holes).
fn write_sparse(mut f: &std::fs::File, data: &[u8]) -> io::Result<()> {
    const BLOCK: usize = 4096;
    let zero = |a: usize| data[a..(a + BLOCK).min(data.len())].iter().all(|&b| b == 0);
    let mut i = 0;
    while i < data.len() {
        let kind = zero(i);
        let mut j = (i + BLOCK).min(data.len());
        while j < data.len() && zero(j) == kind {
            j = (j + BLOCK).min(data.len());
        }
        if kind {
            f.seek(SeekFrom::Current((j - i) as i64))?;
        } else {
            f.write_all(&data[i..j])?;
        }
        i = j;
    }
    Ok(())
}

/// One read transaction on the index cache for a whole restore (see
/// [`hoard_index::IndexCache::begin_read`]); without it the restore still works, only slower.
struct ReadTransaction<'a>(Option<&'a Repository>);

impl<'a> ReadTransaction<'a> {
    fn begin(repo: &'a Repository) -> ReadTransaction<'a> {
        match repo.cache().begin_read() {
            Ok(()) => ReadTransaction(Some(repo)),
            Err(e) => {
                tracing::debug!("restoring without one read transaction: {e}");
                ReadTransaction(None)
            }
        }
    }
}

impl Drop for ReadTransaction<'_> {
    fn drop(&mut self) {
        if let Some(repo) = self.0 {
            if let Err(e) = repo.cache().end_read() {
                tracing::debug!("ending the restore's read transaction: {e}");
            }
        }
    }
}

/// Restores `node` (a directory's contents, or one file) into `opts.target`.
pub fn restore(repo: &Repository, node: &Node, opts: &RestoreOptions) -> Result<RestoreSummary> {
    let r = Restorer {
        repo,
        opts,
        includes: globs(&opts.includes)?,
        excludes: globs(&opts.excludes)?,
        summary: Mutex::new(RestoreSummary::default()),
        links: Mutex::new(HashMap::new()),
        bytes: AtomicU64::new(0),
    };
    fs::create_dir_all(&opts.target).map_err(|e| RepoError::io(format!("creating {}", opts.target.display()), e))?;
    let _read = ReadTransaction::begin(repo);
    let threads = opts.threads.max(1);
    let mut dirs: Vec<(PathBuf, Node)> = Vec::new();
    let walk_result = std::thread::scope(|s| {
        // Each queued job holds its file open: few enough to stay far below the usual limit
        // of 1024 descriptors, enough to keep every worker busy.
        let (tx, rx) = bounded::<FileJob>(128);
        for _ in 0..threads {
            let rx = rx.clone();
            let r = &r;
            s.spawn(move || {
                let mut direct_bufs = Vec::new();
                for job in rx {
                    let path = job.path.clone();
                    match r.write_file(job, &mut direct_bufs) {
                        Ok(()) => r.summary.lock().unwrap().files += 1,
                        Err(e) => {
                            let _ = fs::remove_file(&path);
                            r.error(format!("{}: not restored: {e}", path.display()));
                        }
                    }
                }
            });
        }
        let mut parents = Vec::new();
        let tree = if node.kind() == NodeKind::Dir {
            repo.load_tree(&node.subtree.unwrap())?
        } else {
            Tree { nodes: vec![node.clone()] }
        };
        let r = r.walk(&opts.target, Path::new("/"), &tree, &tx, &mut dirs, &mut parents);
        drop(tx);
        r
    });
    walk_result?;
    // Directory metadata last, deepest first, so writing children does not change it again.
    for (path, node) in dirs.iter().rev() {
        if let Err(e) = r.finish_meta(path, At::Path, node) {
            r.error(format!("{}: {e}", path.display()));
        }
    }
    let mut summary = r.summary.into_inner().unwrap();
    summary.bytes = r.bytes.load(Relaxed);
    Ok(summary)
}

/// Reads a file's content from the repository as a stream, verifying every chunk.
pub struct ContentReader<'a> {
    repo: &'a Repository,
    chunks: std::vec::IntoIter<Id>,
    current: Vec<u8>,
    pos: usize,
}

impl<'a> ContentReader<'a> {
    pub fn new(repo: &'a Repository, node: &Node) -> Result<ContentReader<'a>> {
        Ok(ContentReader { repo, chunks: repo.content_chunks(&node.content)?.into_iter(), current: Vec::new(), pos: 0 })
    }
}

impl Read for ContentReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            match self.chunks.next() {
                None => return Ok(0),
                Some(id) => {
                    self.current = self.repo.read_blob(&id).map_err(|e| io::Error::other(e.to_string()))?;
                    self.pos = 0;
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Writes a file's content to `out`.
pub fn dump_file(repo: &Repository, node: &Node, out: &mut dyn Write) -> Result<u64> {
    let mut n = 0u64;
    for id in repo.content_chunks(&node.content)? {
        let data = repo.read_blob(&id)?;
        out.write_all(&data).map_err(|e| RepoError::io("writing output", e))?;
        n += data.len() as u64;
    }
    Ok(n)
}

/// Writes a directory tree as a tar stream to `out` (what `hoard dump` does for a directory,
/// and how volumes go back into Docker).
pub fn dump_tar(repo: &Repository, node: &Node, out: &mut dyn Write) -> Result<()> {
    let mut b = tar::Builder::new(out);
    b.mode(tar::HeaderMode::Complete);
    let ioe = |e: io::Error| RepoError::io("writing tar output", e);
    fn add(repo: &Repository, b: &mut tar::Builder<&mut dyn Write>, prefix: &Path, node: &Node) -> Result<()> {
        let ioe = |e: io::Error| RepoError::io("writing tar output", e);
        let path = prefix.join(OsStr::from_bytes(&node.name));
        let mut h = tar::Header::new_gnu();
        h.set_mode(node.mode);
        h.set_uid(node.uid.into());
        h.set_gid(node.gid.into());
        let _ = h.set_username(&node.user);
        let _ = h.set_groupname(&node.group);
        h.set_mtime(node.mtime_ns.div_euclid(1_000_000_000).max(0) as u64);
        match node.kind() {
            NodeKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, &path, io::empty()).map_err(ioe)?;
                let t = repo.load_tree(&node.subtree.unwrap())?;
                for n in &t.nodes {
                    add(repo, b, &path, n)?;
                }
            }
            NodeKind::File => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(node.size);
                let r = ContentReader::new(repo, node)?;
                b.append_data(&mut h, &path, r).map_err(ioe)?;
            }
            NodeKind::Symlink => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, &path, OsStr::from_bytes(&node.link_target)).map_err(ioe)?;
            }
            NodeKind::Fifo | NodeKind::CharDevice | NodeKind::BlockDevice => {
                h.set_entry_type(match node.kind() {
                    NodeKind::Fifo => tar::EntryType::Fifo,
                    NodeKind::CharDevice => tar::EntryType::Char,
                    _ => tar::EntryType::Block,
                });
                h.set_size(0);
                let _ = h.set_device_major(libc::major(node.rdev as libc::dev_t));
                let _ = h.set_device_minor(libc::minor(node.rdev as libc::dev_t));
                b.append_data(&mut h, &path, io::empty()).map_err(ioe)?;
            }
            NodeKind::Socket => {}
        }
        Ok(())
    }
    if node.kind() == NodeKind::Dir {
        for n in &repo.load_tree(&node.subtree.unwrap())?.nodes {
            add(repo, &mut b, Path::new(""), n)?;
        }
    } else {
        add(repo, &mut b, Path::new(""), node)?;
    }
    b.finish().map_err(ioe)
}

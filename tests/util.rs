//! Helpers for end-to-end tests: a scratch repository, running the binary, comparing trees.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub const PASSWORD: &str = "correct horse battery staple";

/// A scratch directory with a repository and its cache.
pub struct Env {
    pub dir: tempfile::TempDir,
    /// The repository: a directory, or an S3 URL.
    pub repo: PathBuf,
    pub cache: PathBuf,
    /// More environment for every command (credentials of an S3 server, tuning).
    pub extra: Vec<(String, String)>,
}

impl Env {
    /// A new, initialised repository (cheap argon2 parameters to keep tests fast).
    pub fn new() -> Env {
        let env = Env::bare();
        env.ok(&["init", "--kdf-memory", "1024", "--kdf-iterations", "1"]);
        env
    }

    /// A scratch directory without a repository.
    pub fn bare() -> Env {
        let dir = tempfile::Builder::new().prefix("hoard-e2e-").tempdir().unwrap();
        let repo = dir.path().join("repo");
        let cache = dir.path().join("cache");
        Env { dir, repo, cache, extra: Vec::new() }
    }

    /// The same, with one more environment variable for every command.
    pub fn with(mut self, key: &str, value: &str) -> Env {
        self.extra.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hoard"));
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("HOARD_PASSWORD", PASSWORD)
            .env("HOARD_REPOSITORY", &self.repo)
            .env("HOARD_CACHE_DIR", &self.cache)
            .stdin(std::process::Stdio::null());
        for (k, v) in &self.extra {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "hoard {args:?} failed with {:?}\nstdout:\n{}\nstderr:\n{}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// Backs up and returns the summary JSON of the snapshot.
    pub fn backup(&self, args: &[&str]) -> Value {
        let mut a = vec!["backup"];
        a.extend_from_slice(args);
        self.json(&a)
    }

    /// Total bytes of the repository's files.
    pub fn repo_size(&self) -> u64 {
        dir_size(&self.repo)
    }
}

pub fn dir_size(p: &Path) -> u64 {
    let mut n = 0;
    for e in walk(p) {
        let m = fs::symlink_metadata(&e).unwrap();
        if m.is_file() {
            n += m.len();
        }
    }
    n
}

/// Every path below `root` (not following symlinks), sorted.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
        out.push(p);
    }
    out.sort();
    out
}

/// What a comparison looks at for one entry.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime_ns: i64,
    link: Option<PathBuf>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    content: Option<[u8; 32]>,
    rdev: u64,
    /// Index of the first path sharing this inode (hard links), within the tree.
    link_group: Option<usize>,
}

/// A snapshot of a directory tree's content and metadata, for equality checks.
pub fn describe(root: &Path, with_dir_mtime: bool) -> BTreeMap<Vec<u8>, Entry> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), usize> = BTreeMap::new();
    for (i, p) in walk(root).into_iter().enumerate() {
        let rel = p.strip_prefix(root).unwrap().as_os_str().as_bytes().to_vec();
        let m = fs::symlink_metadata(&p).unwrap();
        let t = m.file_type();
        let kind = if t.is_dir() {
            "dir"
        } else if t.is_symlink() {
            "symlink"
        } else if t.is_fifo() {
            "fifo"
        } else if t.is_file() {
            "file"
        } else {
            "other"
        };
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = xattr::list(&p)
            .map(|it| {
                it.filter_map(|n| xattr::get(&p, &n).ok().flatten().map(|v| (n.as_bytes().to_vec(), v))).collect()
            })
            .unwrap_or_default();
        xattrs.sort();
        let link_group = (t.is_file() && m.nlink() > 1).then(|| *inodes.entry((m.dev(), m.ino())).or_insert(i));
        out.insert(
            rel,
            Entry {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                size: if t.is_file() { m.len() } else { 0 },
                mtime_ns: if t.is_dir() && !with_dir_mtime { 0 } else { m.mtime() * 1_000_000_000 + m.mtime_nsec() },
                link: t.is_symlink().then(|| fs::read_link(&p).unwrap()),
                xattrs,
                content: t.is_file().then(|| *blake3::hash(&fs::read(&p).unwrap()).as_bytes()),
                rdev: m.rdev(),
                link_group: link_group.map(|_| 0),
            },
        );
    }
    // Hard-link groups compared by membership, not by walk index.
    let mut groups: BTreeMap<(u64, u64), Vec<Vec<u8>>> = BTreeMap::new();
    for p in walk(root) {
        let m = fs::symlink_metadata(&p).unwrap();
        if m.is_file() && m.nlink() > 1 {
            groups
                .entry((m.dev(), m.ino()))
                .or_default()
                .push(p.strip_prefix(root).unwrap().as_os_str().as_bytes().to_vec());
        }
    }
    for members in groups.values() {
        let first = out.keys().position(|k| k == &members[0]).unwrap();
        for m in members {
            out.get_mut(m).unwrap().link_group = Some(first);
        }
    }
    out
}

/// Asserts two trees are identical in content and metadata.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (da, db) = (describe(a, true), describe(b, true));
    let ka: Vec<_> = da.keys().collect();
    let kb: Vec<_> = db.keys().collect();
    if ka != kb {
        let only_a: Vec<_> = da
            .keys()
            .filter(|k| !db.contains_key(*k))
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .take(10)
            .collect();
        let only_b: Vec<_> = db
            .keys()
            .filter(|k| !da.contains_key(*k))
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .take(10)
            .collect();
        panic!("trees differ in entries: only in {}: {only_a:?}; only in {}: {only_b:?}", a.display(), b.display());
    }
    for (k, ea) in &da {
        let eb = &db[k];
        assert_eq!(ea, eb, "entry {:?} differs", String::from_utf8_lossy(k));
    }
}

/// Copies directories with `cp -a` (keeps owners, modes, times, links, xattrs).
pub fn copy_tree(from: &[&str], to: &Path) {
    fs::create_dir_all(to).unwrap();
    for f in from {
        let st = Command::new("cp").arg("-a").arg(f).arg(to).status().unwrap();
        assert!(st.success(), "cp -a {f} failed");
    }
}

/// Deterministic pseudo-random bytes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    blake3::Hasher::new().update(&seed.to_le_bytes()).finalize_xof().fill(&mut v);
    v
}

/// A small tree with every kind of entry and awkward metadata.
pub fn awkward_tree(root: &Path) {
    use std::os::unix::fs::{symlink, PermissionsExt};
    fs::create_dir_all(root.join("keys")).unwrap();
    fs::write(root.join("keys/id_ed25519"), b"secret").unwrap();
    fs::set_permissions(root.join("keys"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(root.join("keys/id_ed25519"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir_all(root.join("empty/dir")).unwrap();
    fs::write(root.join("owned-999"), b"postgres").unwrap();
    fs::write(root.join("owned-472"), b"grafana").unwrap();
    std::os::unix::fs::chown(root.join("owned-999"), Some(999), Some(999)).unwrap();
    std::os::unix::fs::chown(root.join("owned-472"), Some(472), Some(472)).unwrap();
    symlink("keys/id_ed25519", root.join("link-rel")).unwrap();
    symlink("/nonexistent/target", root.join("link-dangling")).unwrap();
    fs::write(root.join(OsStr::from_bytes(b"latin1-\xe9t\xe9")), b"not utf-8 name").unwrap();
    fs::write(root.join("new\nline"), b"newline in name").unwrap();
    fs::write(root.join("hard-a"), noise(7, 100_000)).unwrap();
    fs::hard_link(root.join("hard-a"), root.join("hard-b")).unwrap();
    // Restores write files of 256 KiB and more with O_DIRECT in 2 MiB buffers, the last partial
    // 4 KiB block through the page cache: one at the threshold, one a block short of it, one that
    // spans buffers and ends mid-block.
    fs::write(root.join("large-256k"), noise(10, 256 << 10)).unwrap();
    fs::write(root.join("large-below"), noise(11, (256 << 10) - 4096)).unwrap();
    fs::write(root.join("large-odd"), noise(12, (5 << 20) + 4097)).unwrap();
    let sparse = fs::File::create(root.join("sparse")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_at(&sparse, b"middle", 32 << 20).unwrap();
    drop(sparse);
    xattr::set(root.join("owned-999"), "user.hoard.test", b"value").unwrap();
    let c = std::ffi::CString::new(root.join("fifo").as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o640) }, 0);
    fs::write(root.join("setuid"), b"x").unwrap();
    fs::set_permissions(root.join("setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
    filetime::set_file_mtime(
        root.join("keys/id_ed25519"),
        filetime::FileTime::from_unix_time(1_000_000_000, 123_456_789),
    )
    .unwrap();
}

/// The rule for a test that needs a component the machine may lack (a server, Docker, mount(2)):
/// under CI (`CI` set and not empty) a missing component fails the test; elsewhere the test prints
/// why it does not run and returns. Use as `let Some(x) = found(probe(), "why") else { return };`.
pub fn found<T, E: std::fmt::Display>(probe: Result<T, E>, what: &str) -> Option<T> {
    match probe {
        Ok(x) => Some(x),
        Err(e) => {
            let in_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
            assert!(!in_ci, "{what} is needed under CI and is not available: {e}");
            eprintln!("not run: {what} is not available here: {e}");
            None
        }
    }
}

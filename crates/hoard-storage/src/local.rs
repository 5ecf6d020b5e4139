//! A repository in a local directory (or anything mounted like one).
//!
//! Layout: `config`, `keys/ID`, `data/XX/ID` (packs, fanned out by the first two hex digits),
//! `index/ID`, `snapshots/ID`, `locks/ID`, `condemned/ID`.
//!
//! Writes follow the classic durable-create sequence: write a temporary file in the target
//! directory, fsync it, hard-link it to its final name (which fails if the name exists, giving
//! create-only semantics with no window where a partial object is visible), unlink the
//! temporary, fsync the directory. Assumptions about the media, as redb states them: fsync on a
//! file makes its data durable; fsync on a directory makes the names in it durable.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use hoard_core::id::random_u64;

use crate::{
    kind_dir, object_key, valid_name, Counters, ErrorKind, ObjectInfo, ObjectKind, RequestCounts, Result, Storage,
    StorageError, CONFIG_NAME,
};

/// A repository directory.
pub struct LocalStorage {
    root: PathBuf,
    counts: Counters,
    open_packs: OpenPacks,
}

/// Packs opened for ranged reads, most recently used last. A restore reads one blob at a time,
/// often many from the same pack; opening and closing the file for each was two thirds of its
/// system calls. Packs never change once written, so a cached descriptor reads what a fresh
/// open would; `delete` drops the pack's descriptor.
#[derive(Default)]
struct OpenPacks(std::sync::Mutex<Vec<(String, std::sync::Arc<File>)>>);

impl OpenPacks {
    const KEEP: usize = 32;

    fn get(&self, name: &str, path: &Path) -> io::Result<std::sync::Arc<File>> {
        let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = v.iter().position(|(n, _)| n == name) {
            let hit = v.remove(i);
            let f = hit.1.clone();
            v.push(hit);
            return Ok(f);
        }
        let f = std::sync::Arc::new(File::open(path)?);
        if v.len() == Self::KEEP {
            v.remove(0);
        }
        v.push((name.to_owned(), f.clone()));
        Ok(f)
    }

    fn forget(&self, name: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).retain(|(n, _)| n != name);
    }
}

fn mtime_ns(m: &fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    m.mtime().saturating_mul(1_000_000_000).saturating_add(m.mtime_nsec())
}

/// Writes `pieces` back to back, up to [`IOV_MAX`] of them per system call (a pack of small
/// files has thousands of blobs, each its own piece), and drops each once it is written, so its
/// memory can go before the caller waits on `fsync`.
fn write_pieces(f: &mut File, pieces: Vec<Bytes>) -> io::Result<()> {
    /// Linux's limit on the slices of one `writev`.
    const IOV_MAX: usize = 1024;
    let mut left: std::collections::VecDeque<Bytes> = pieces.into_iter().filter(|p| !p.is_empty()).collect();
    while !left.is_empty() {
        let slices: Vec<io::IoSlice<'_>> = left.iter().take(IOV_MAX).map(|p| io::IoSlice::new(p)).collect();
        let mut written = match f.write_vectored(&slices) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "the file took no more bytes")),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        drop(slices);
        while written > 0 {
            let first = left.front_mut().expect("writev wrote no more than it was given");
            if written < first.len() {
                bytes::Buf::advance(first, written);
                break;
            }
            written -= first.len();
            left.pop_front();
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl LocalStorage {
    /// Opens an existing directory (no check that a repository is in it).
    pub fn open(root: impl Into<PathBuf>) -> LocalStorage {
        LocalStorage { root: root.into(), counts: Counters::default(), open_packs: OpenPacks::default() }
    }

    /// Creates the directory layout for a new repository. The directory may exist but must be
    /// empty.
    pub fn create_layout(root: impl Into<PathBuf>) -> Result<LocalStorage> {
        let root = root.into();
        let what = || format!("creating repository directory {}", root.display());
        match fs::read_dir(&root) {
            Ok(mut it) => {
                if it.next().is_some() {
                    return Err(StorageError::new(
                        ErrorKind::AlreadyExists,
                        format!("{} exists and is not empty", root.display()),
                    ));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&root).map_err(|e| StorageError::io(what(), e))?
            }
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
                return Err(StorageError::new(
                    ErrorKind::Other,
                    format!("{} is a file, not a directory", root.display()),
                ))
            }
            Err(e) => return Err(StorageError::io(what(), e)),
        }
        for d in ["keys", "index", "snapshots", "locks", "condemned", "data"] {
            fs::create_dir(root.join(d)).map_err(|e| StorageError::io(what(), e))?;
        }
        for i in 0..256 {
            fs::create_dir(root.join("data").join(format!("{i:02x}"))).map_err(|e| StorageError::io(what(), e))?;
        }
        for d in ["data", ""] {
            sync_dir(&root.join(d)).map_err(|e| StorageError::io(what(), e))?;
        }
        if let Some(parent) = root.parent() {
            let _ = sync_dir(parent);
        }
        Ok(LocalStorage { root, counts: Counters::default(), open_packs: OpenPacks::default() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file path of an object.
    pub fn path(&self, kind: ObjectKind, name: &str) -> Result<PathBuf> {
        Ok(self.root.join(object_key(kind, name)?))
    }

    fn label(&self, kind: ObjectKind, name: &str) -> String {
        format!("{} {name} in {}", kind.name(), self.root.display())
    }

    fn write_new(&self, dir: &Path, final_path: &Path, pieces: Vec<Bytes>) -> io::Result<()> {
        if !dir.is_dir() {
            fs::create_dir_all(dir)?;
            if let Some(p) = dir.parent() {
                sync_dir(p)?;
            }
        }
        let tmp = dir.join(format!(".tmp-{:016x}", random_u64()));
        let result = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            write_pieces(&mut f, pieces)?;
            f.sync_all()?;
            drop(f);
            fs::hard_link(&tmp, final_path)
        })();
        let _ = fs::remove_file(&tmp);
        result?;
        sync_dir(dir)
    }
}

impl Storage for LocalStorage {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn create(&self, kind: ObjectKind, name: &str, pieces: &[Bytes]) -> Result<()> {
        self.create_owned(kind, name, pieces.to_vec())
    }

    fn create_owned(&self, kind: ObjectKind, name: &str, pieces: Vec<Bytes>) -> Result<()> {
        let path = self.path(kind, name)?;
        let dir = path.parent().unwrap().to_path_buf();
        Counters::add(&self.counts.put, 1);
        Counters::add(&self.counts.bytes_up, pieces.iter().map(|p| p.len() as u64).sum());
        self.write_new(&dir, &path, pieces)
            .map_err(|e| StorageError::io(format!("writing {}", self.label(kind, name)), e))
    }

    fn read(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>> {
        let path = self.path(kind, name)?;
        Counters::add(&self.counts.get, 1);
        let b = fs::read(&path).map_err(|e| StorageError::io(format!("reading {}", self.label(kind, name)), e))?;
        Counters::add(&self.counts.bytes_down, b.len() as u64);
        Ok(b)
    }

    fn read_range(&self, kind: ObjectKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let path = self.path(kind, name)?;
        let what = || format!("reading {} bytes at {offset} of {}", len, self.label(kind, name));
        Counters::add(&self.counts.get, 1);
        Counters::add(&self.counts.bytes_down, len);
        let f = if kind == ObjectKind::Pack {
            self.open_packs.get(name, &path)
        } else {
            File::open(&path).map(std::sync::Arc::new)
        }
        .map_err(|e| StorageError::io(what(), e))?;
        let mut buf = vec![0u8; usize::try_from(len).map_err(|_| StorageError::new(ErrorKind::Other, what()))?];
        f.read_exact_at(&mut buf, offset).map_err(|e| StorageError::io(what(), e))?;
        Ok(buf)
    }

    fn size(&self, kind: ObjectKind, name: &str) -> Result<u64> {
        let path = self.path(kind, name)?;
        Counters::add(&self.counts.head, 1);
        Ok(fs::metadata(&path).map_err(|e| StorageError::io(format!("reading {}", self.label(kind, name)), e))?.len())
    }

    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>> {
        let what = || format!("listing {}s in {}", kind.name(), self.root.display());
        Counters::add(&self.counts.list, 1);
        if kind == ObjectKind::Config {
            return match fs::metadata(self.root.join(CONFIG_NAME)) {
                Ok(m) => Ok(vec![ObjectInfo { name: CONFIG_NAME.into(), size: m.len(), modified_ns: mtime_ns(&m) }]),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(vec![]),
                Err(e) => Err(StorageError::io(what(), e)),
            };
        }
        let base = self.root.join(kind_dir(kind));
        if !base.is_dir() {
            // A kind this repository has no directory for yet (format v1 made no `condemned/`).
            return Ok(vec![]);
        }
        let mut dirs = vec![base.clone()];
        if kind == ObjectKind::Pack {
            dirs.clear();
            for e in fs::read_dir(&base).map_err(|e| StorageError::io(what(), e))? {
                let e = e.map_err(|e| StorageError::io(what(), e))?;
                if e.file_type().map_err(|e| StorageError::io(what(), e))?.is_dir() {
                    dirs.push(e.path());
                }
            }
        }
        let mut out = Vec::new();
        for d in dirs {
            for e in fs::read_dir(&d).map_err(|e| StorageError::io(what(), e))? {
                let e = e.map_err(|e| StorageError::io(what(), e))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if !valid_name(kind, &name) {
                    continue;
                }
                let m = match e.metadata() {
                    Ok(m) => m,
                    // Deleted between read_dir and stat: a listing may lag, never invent.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(StorageError::io(what(), e)),
                };
                out.push(ObjectInfo { name, size: m.len(), modified_ns: mtime_ns(&m) });
            }
        }
        Ok(out)
    }

    fn delete(&self, kind: ObjectKind, name: &str) -> Result<()> {
        let path = self.path(kind, name)?;
        Counters::add(&self.counts.delete, 1);
        if kind == ObjectKind::Pack {
            self.open_packs.forget(name);
        }
        fs::remove_file(&path).map_err(|e| StorageError::io(format!("deleting {}", self.label(kind, name)), e))?;
        sync_dir(path.parent().unwrap())
            .map_err(|e| StorageError::io(format!("deleting {}", self.label(kind, name)), e))
    }

    fn counts(&self) -> RequestCounts {
        self.counts.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStorage::create_layout(d.path().join("repo")).unwrap();
        crate::contract::run(&s);
        // Temporary files never show in listings and never remain after a create.
        let names: Vec<_> =
            fs::read_dir(d.path().join("repo/snapshots")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_pack_of_more_pieces_than_one_writev_takes_is_written_whole_and_in_order() {
        // 3,000 pieces (three writev calls' worth), some empty, all sliced from one buffer as
        // a finished pack's are, handed over so they are freed as written.
        let d = tempfile::tempdir().unwrap();
        let s = LocalStorage::create_layout(d.path().join("repo")).unwrap();
        let all: Vec<u8> = (0..3000u32 * 700).map(|i| (i % 251) as u8).collect();
        let shared = Bytes::from(all.clone());
        let mut pieces = Vec::new();
        let mut at = 0;
        for i in 0..3000usize {
            let len = [0, 1, 700, 1399][i % 4];
            pieces.push(shared.slice(at..at + len));
            at += len;
        }
        drop(shared);
        s.create_owned(ObjectKind::Pack, "abcd", pieces).unwrap();
        assert_eq!(s.read(ObjectKind::Pack, "abcd").unwrap(), &all[..at]);
    }

    #[test]
    fn refuses_non_empty_or_file() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("f"), b"x").unwrap();
        assert!(LocalStorage::create_layout(d.path()).is_err());
        assert!(LocalStorage::create_layout(d.path().join("f")).is_err());
    }
}

//! A local copy of a remote repository's metadata packs (those holding only trees and chunk
//! lists), so that a nightly backup compares against its parent snapshot, and `ls`, `diff` and
//! restore planning walk trees, without a request per directory.
//!
//! Packs are kept as stored (sealed): every blob read from here is authenticated like one read
//! from the repository, so a damaged or tampered cache costs a download, never a wrong byte.
//! Packs this host writes go in as they are uploaded; packs another host wrote are fetched whole
//! on first use. A pack this host deletes (prune) leaves the cache with it; one that another
//! host's prune deletes leaves it when this host next sees the index segments that listed it
//! go ([`PackCache::retain`]).

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use bytes::Bytes;
use hoard_core::id::{random_u64, Id};

pub struct PackCache {
    dir: PathBuf,
}

impl PackCache {
    pub fn new(dir: PathBuf) -> PackCache {
        PackCache { dir }
    }

    fn path(&self, pack: &Id) -> PathBuf {
        self.dir.join(pack.to_hex())
    }

    /// `len` bytes at `offset` of a cached pack; `None` when it is not cached (or unreadable).
    pub fn read_range(&self, pack: &Id, offset: u64, len: u64) -> Option<Vec<u8>> {
        let f = File::open(self.path(pack)).ok()?;
        let mut buf = vec![0u8; usize::try_from(len).ok()?];
        f.read_exact_at(&mut buf, offset).ok()?;
        Some(buf)
    }

    /// Keeps a copy of a pack. A failure only costs a later download, so it is logged, not
    /// returned.
    pub fn put(&self, pack: &Id, pieces: &[Bytes]) {
        let r = (|| -> std::io::Result<()> {
            fs::create_dir_all(&self.dir)?;
            let tmp = self.dir.join(format!(".tmp-{:016x}", random_u64()));
            let mut f = File::create(&tmp)?;
            for p in pieces {
                f.write_all(p)?;
            }
            drop(f);
            fs::rename(&tmp, self.path(pack))
        })();
        if let Err(e) = r {
            tracing::debug!("could not keep pack {} in the local cache {}: {e}", pack.short(), self.dir.display());
        }
    }

    pub fn remove(&self, pack: &Id) {
        let _ = fs::remove_file(self.path(pack));
    }

    /// Removes every cached pack not in `live`; returns how many. Files that are not packs
    /// (another process's `.tmp-` copy in progress) are left alone.
    pub fn retain(&self, live: &HashSet<Id>) -> usize {
        let Ok(entries) = fs::read_dir(&self.dir) else { return 0 };
        let mut removed = 0;
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(id) = name.to_str().and_then(|n| Id::from_hex(n).ok()) else { continue };
            if !live.contains(&id) && fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retain_removes_the_packs_no_longer_indexed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PackCache::new(dir.path().join("packs"));
        let ids: Vec<Id> = (0..3).map(|_| Id::random()).collect();
        for id in &ids {
            cache.put(id, &[Bytes::from_static(b"sealed pack")]);
        }
        fs::write(dir.path().join("packs/.tmp-0123456789abcdef"), b"in progress").unwrap();
        let live: HashSet<Id> = [ids[1]].into_iter().collect();
        assert_eq!(cache.retain(&live), 2);
        assert!(cache.read_range(&ids[0], 0, 6).is_none());
        assert_eq!(cache.read_range(&ids[1], 0, 6).unwrap(), b"sealed");
        assert!(cache.read_range(&ids[2], 0, 6).is_none());
        assert!(dir.path().join("packs/.tmp-0123456789abcdef").exists());
        // An empty or missing cache is nothing to do.
        assert_eq!(PackCache::new(dir.path().join("none")).retain(&live), 0);
    }
}

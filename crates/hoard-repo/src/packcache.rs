//! A local copy of a remote repository's metadata packs (those holding only trees and chunk
//! lists), so that a nightly backup compares against its parent snapshot, and `ls`, `diff` and
//! restore planning walk trees, without a request per directory.
//!
//! Packs are kept as stored (sealed): every blob read from here is authenticated like one read
//! from the repository, so a damaged or tampered cache costs a download, never a wrong byte.
//! Packs this host writes go in as they are uploaded; packs another host wrote are fetched whole
//! on first use. A pack this host deletes (prune) leaves the cache with it.

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
}

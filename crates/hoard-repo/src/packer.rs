//! The write path shared by every backup: deduplicate blobs, seal them into packs on the
//! calling worker, upload finished packs on their own threads, and write index segments for
//! what was uploaded.
//!
//! **Architecture Invariant:** an index segment is written only after every pack it lists is
//! durable, and a snapshot only after every segment it needs ([`Packer::run`] returns only
//! then). A crash at any point leaves at most packs that nothing references.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Condvar, Mutex};

use crossbeam_channel::{bounded, Receiver, Sender};
use hoard_core::format::index::{IndexPack, IndexSegment};
use hoard_core::format::pack::{FinishedPack, PackBuilder, MAX_ENTRIES};
use hoard_core::format::{BlobType, ObjectKind};
use hoard_core::Id;

use crate::error::{RepoError, Result};
use crate::repo::Repository;

/// Packs per index segment: a segment is written at least this often during a long backup, so
/// a crash loses the index of at most this many packs (they stay in storage and
/// `hoard repair index` can recover them).
const PACKS_PER_SEGMENT: usize = 16;

/// What a packer wrote.
#[derive(Clone, Copy, Debug, Default)]
pub struct PackerStats {
    pub blobs_new: u64,
    pub bytes_new: u64,
    pub bytes_stored: u64,
    pub packs: u64,
    pub segments: u64,
}

/// Deduplicates and stores blobs. Shared by all workers of one backup.
pub struct Packer<'r> {
    repo: &'r Repository,
    level: i32,
    target: usize,
    data: Pool,
    trees: Pool,
    /// Blobs stored by this backup and not yet findable through the index cache.
    pending: Mutex<HashSet<Id>>,
    tx: Mutex<Option<Sender<FinishedPack>>>,
    uploaded: Mutex<Vec<IndexPack>>,
    error: Mutex<Option<RepoError>>,
    blobs_new: AtomicU64,
    bytes_new: AtomicU64,
    bytes_stored: AtomicU64,
    packs: AtomicU64,
    segments: AtomicU64,
}

impl<'r> Packer<'r> {
    /// Runs `f` with a packer, then flushes every open pack, waits for all uploads and writes
    /// the last index segment. Returns `f`'s result only when all of that succeeded.
    ///
    /// When `f` fails, open packs are dropped rather than uploaded (nothing will reference
    /// them), but packs already in storage still get an index segment, so the next backup finds
    /// their blobs and does not upload them again. When an upload failed, that error is
    /// returned whatever `f` returned: workers stop early once an upload fails, so it is the
    /// cause of their failure (a full disk must be reported as a full disk).
    pub fn run<T>(
        repo: &'r Repository,
        uploaders: usize,
        f: impl FnOnce(&Packer<'r>) -> Result<T>,
    ) -> Result<(T, PackerStats)> {
        repo.recover_unindexed()?;
        // One finished pack waits while each uploader sends one: with the open builders, what a
        // backup holds in packs is (builders + uploaders + 1) × pack size.
        let (tx, rx) = bounded::<FinishedPack>(1);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let packer = Packer {
            repo,
            level: repo.config().compression,
            target: repo.config().pack_size as usize,
            data: Pool::new(cores),
            trees: Pool::new(usize::MAX),
            pending: Mutex::new(HashSet::new()),
            tx: Mutex::new(Some(tx)),
            uploaded: Mutex::new(Vec::new()),
            error: Mutex::new(None),
            blobs_new: AtomicU64::new(0),
            bytes_new: AtomicU64::new(0),
            bytes_stored: AtomicU64::new(0),
            packs: AtomicU64::new(0),
            segments: AtomicU64::new(0),
        };
        let result = std::thread::scope(|s| {
            for _ in 0..uploaders.max(1) {
                let rx = rx.clone();
                let p = &packer;
                s.spawn(move || p.upload_loop(rx));
            }
            drop(rx);
            let r = f(&packer).and_then(|t| packer.flush().map(|()| t));
            *packer.tx.lock().unwrap() = None;
            r
        });
        // Every uploader has stopped here.
        let upload_error = packer.error.lock().unwrap().take();
        let rest = std::mem::take(&mut *packer.uploaded.lock().unwrap());
        let result = match (result, upload_error) {
            (Ok(t), None) => packer.write_segment(rest).map(|()| t),
            (result, upload_error) => {
                if let Err(e) = packer.write_segment(rest) {
                    tracing::warn!("could not index the packs this failed backup uploaded: {e}");
                }
                match upload_error {
                    Some(e) => Err(e),
                    None => result,
                }
            }
        };
        let stats = packer.stats();
        result.map(|t| (t, stats))
    }

    pub fn stats(&self) -> PackerStats {
        PackerStats {
            blobs_new: self.blobs_new.load(Relaxed),
            bytes_new: self.bytes_new.load(Relaxed),
            bytes_stored: self.bytes_stored.load(Relaxed),
            packs: self.packs.load(Relaxed),
            segments: self.segments.load(Relaxed),
        }
    }

    pub fn repo(&self) -> &'r Repository {
        self.repo
    }

    /// The first upload error, if any: workers stop early instead of sealing more data.
    pub fn failed(&self) -> bool {
        self.error.lock().unwrap().is_some()
    }

    /// Claims a blob for storing: true when it is new to the repository and to this backup,
    /// in which case the caller must [`Packer::store`] it.
    pub fn claim(&self, id: &Id) -> Result<bool> {
        let mut pending = self.pending.lock().unwrap();
        if pending.contains(id) {
            return Ok(false);
        }
        // Lock order: pending, then the cache. The uploader never holds the cache while taking
        // `pending`, so this cannot deadlock.
        if self.repo.has_blob(id)? {
            return Ok(false);
        }
        pending.insert(*id);
        Ok(true)
    }

    /// Whether this run has claimed `id` and the cache does not list it yet.
    pub fn is_pending(&self, id: &Id) -> bool {
        self.pending.lock().unwrap().contains(id)
    }

    /// Compresses, encrypts and packs a claimed blob on the calling thread.
    pub fn store(&self, t: BlobType, id: Id, plaintext: &[u8]) -> Result<()> {
        let pool = if t == BlobType::Tree { &self.trees } else { &self.data };
        // Room for a full pack, the blobs that fill its padding (at most 1/16 of the target)
        // and the blob that ends it, so the buffer never grows: only the bytes written to it
        // take memory.
        let capacity = self.target + self.target / 16 + self.target / 4;
        let mut b = pool.take(|| PackBuilder::with_capacity(self.repo.keys(), capacity));
        let stored = b.add(t, id, plaintext, self.level);
        self.blobs_new.fetch_add(1, Relaxed);
        self.bytes_new.fetch_add(plaintext.len() as u64, Relaxed);
        self.bytes_stored.fetch_add(stored as u64, Relaxed);
        if b.is_full(self.target) {
            pool.retire();
            self.send(b.finish())?;
        } else {
            pool.give_back(b);
        }
        Ok(())
    }

    /// Hashes a blob and stores it unless the repository has it. Returns its id and whether it
    /// was new.
    pub fn add(&self, t: BlobType, plaintext: &[u8]) -> Result<(Id, bool)> {
        let id = self.repo.keys().blob_id(plaintext);
        let new = self.claim(&id)?;
        if new {
            self.store(t, id, plaintext)?;
        }
        Ok((id, new))
    }

    fn send(&self, p: FinishedPack) -> Result<()> {
        let tx = self.tx.lock().unwrap().clone();
        match tx {
            Some(tx) => tx.send(p).map_err(|_| self.take_error()),
            None => Err(RepoError::Invalid("packer used after it was closed".into())),
        }
    }

    fn take_error(&self) -> RepoError {
        self.error.lock().unwrap().take().unwrap_or_else(|| RepoError::Invalid("the upload threads stopped".into()))
    }

    fn flush(&self) -> Result<()> {
        for pool in [&self.data, &self.trees] {
            for b in merge_partial(pool.drain(), self.target)? {
                self.send(b.finish())?;
            }
        }
        Ok(())
    }

    fn upload_loop(&self, rx: Receiver<FinishedPack>) {
        for p in rx {
            if self.failed() {
                continue; // Drain so senders never block; the error is reported once.
            }
            let r = self.upload(p);
            if let Err(e) = r {
                let mut err = self.error.lock().unwrap();
                if err.is_none() {
                    *err = Some(e);
                }
            }
        }
    }

    fn upload(&self, p: FinishedPack) -> Result<()> {
        let pieces = p.pieces;
        // Noted before the upload: a process killed while the request is in flight may still
        // leave the whole pack in storage, and the note lets the next run find it.
        let ip = IndexPack { id: p.id, len: p.len, entries: p.entries };
        self.repo.journal_pack(&ip);
        // A tree pack also goes into the local pack cache; a data pack's memory is handed to
        // the storage, which frees it once written rather than after its fsync.
        let tree_pack = ip.entries.iter().all(|e| e.blob_type == BlobType::Tree).then(|| pieces.clone());
        self.repo.storage().create_owned(ObjectKind::Pack, &p.id.to_hex(), pieces)?;
        if let Some(pieces) = tree_pack {
            self.repo.cache_pack(&p.id, &pieces);
        }
        self.packs.fetch_add(1, Relaxed);
        let ready = {
            let mut u = self.uploaded.lock().unwrap();
            u.push(ip);
            (u.len() >= PACKS_PER_SEGMENT).then(|| std::mem::take(&mut *u))
        };
        if let Some(packs) = ready {
            self.write_segment(packs)?;
        }
        Ok(())
    }

    /// Writes one index segment for durable packs, teaches the cache about it, and then stops
    /// tracking its blobs as pending (the cache finds them now).
    fn write_segment(&self, packs: Vec<IndexPack>) -> Result<()> {
        if packs.is_empty() {
            return Ok(());
        }
        let seg = IndexSegment { packs, superseded: vec![] };
        let name = self.repo.write_object(ObjectKind::Index, &seg.encode())?;
        self.segments.fetch_add(1, Relaxed);
        self.repo.cache().add_segment(&name.to_hex(), &seg)?;
        self.repo.journal_done(&seg.packs);
        let mut pending = self.pending.lock().unwrap();
        for p in &seg.packs {
            for e in &p.entries {
                pending.remove(&e.id);
            }
        }
        Ok(())
    }
}

/// The partly filled packs a backup ends with, merged where they fit together within `target`
/// (first fit, largest first): one pack per worker would mean more objects and more padding
/// for a night that stores little. Merging re-seals blobs but never compresses them again.
fn merge_partial(mut builders: Vec<PackBuilder>, target: usize) -> Result<Vec<PackBuilder>> {
    builders.retain(|b| !b.is_empty());
    builders.sort_by_key(|b| std::cmp::Reverse(b.size()));
    let mut merged: Vec<PackBuilder> = Vec::with_capacity(builders.len());
    for b in builders {
        let fits = |m: &&mut PackBuilder| m.size() + b.size() <= target && m.len() + b.len() <= MAX_ENTRIES;
        match merged.iter_mut().find(fits) {
            Some(m) => m.absorb(b).map_err(|e| RepoError::core("merging the last packs of a backup", e))?,
            None => merged.push(b),
        }
    }
    Ok(merged)
}

/// Open pack builders, at most `limit` at once. Each holds up to a pack's worth of sealed blobs
/// until it is full, so the limit bounds a backup's memory however many threads store blobs;
/// a thread that finds every builder busy waits for one. A data pool has one builder per core:
/// only that many threads can be compressing at once anyway, and a spare builder measured no
/// faster while its partly filled pack cost about 20 MiB of the night-1 peak (PERFORMANCE.md,
/// "One data pack builder per core").
struct Pool {
    state: Mutex<PoolState>,
    returned: Condvar,
    limit: usize,
}

struct PoolState {
    free: Vec<PackBuilder>,
    /// Builders in existence: free ones and those a thread is adding to.
    open: usize,
}

impl Pool {
    fn new(limit: usize) -> Pool {
        Pool {
            state: Mutex::new(PoolState { free: Vec::new(), open: 0 }),
            returned: Condvar::new(),
            limit: limit.max(1),
        }
    }

    /// A free builder, or a new one while fewer than `limit` are open.
    fn take(&self, new: impl FnOnce() -> PackBuilder) -> PackBuilder {
        let mut s = self.state.lock().unwrap();
        loop {
            if let Some(b) = s.free.pop() {
                return b;
            }
            if s.open < self.limit {
                s.open += 1;
                return new();
            }
            s = self.returned.wait(s).unwrap();
        }
    }

    fn give_back(&self, b: PackBuilder) {
        self.state.lock().unwrap().free.push(b);
        self.returned.notify_one();
    }

    /// The builder taken last is full and leaves the pool.
    fn retire(&self) {
        self.state.lock().unwrap().open -= 1;
        self.returned.notify_one();
    }

    /// Every free builder (at the end, all of them).
    fn drain(&self) -> Vec<PackBuilder> {
        let mut s = self.state.lock().unwrap();
        s.open -= s.free.len();
        std::mem::take(&mut s.free)
    }
}

#[cfg(test)]
mod tests {
    use hoard_core::keys::MasterKey;

    use super::*;

    #[test]
    fn partial_packs_merge_first_fit_largest_first() {
        let k = MasterKey::generate().keys();
        let mut ids = Vec::new();
        let builders: Vec<PackBuilder> = [400usize, 0, 300, 700]
            .iter()
            .enumerate()
            .map(|(i, &kib)| {
                let mut b = PackBuilder::new(&k);
                for j in 0..kib / 100 {
                    let mut x = vec![0u8; 100 << 10];
                    hoard_core::id::fill_random(&mut x);
                    x[0] = i as u8;
                    x[1] = j as u8;
                    let id = k.blob_id(&x);
                    ids.push(id);
                    b.add(BlobType::Data, id, &x, 3);
                }
                b
            })
            .collect();
        let merged = merge_partial(builders, 1 << 20).unwrap();
        // 700 + 300 fit in 1 MiB, 400 does not fit with them; the empty one is dropped.
        let kib: Vec<usize> = merged.iter().map(|b| b.size() >> 10).collect();
        assert_eq!(kib, [1000, 400]);
        let mut got = Vec::new();
        for b in merged {
            let id = b.id();
            let p = b.finish();
            let bytes: Vec<u8> = p.pieces.concat();
            for e in hoard_core::format::pack::decode_header(&k, &id, &bytes, p.len).unwrap() {
                let blob =
                    hoard_core::format::pack::open_blob(&k, &id, &e, &bytes[e.offset as usize..][..e.length as usize]);
                assert_eq!(k.blob_id(&blob.unwrap()), e.id);
                got.push(e.id);
            }
        }
        got.sort();
        ids.sort();
        assert_eq!(got, ids);
    }
}

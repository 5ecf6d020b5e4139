//! Opening, creating and reading a repository: keys, config, the index cache kept in step with
//! the index segments in storage, snapshots, and verified blob reads.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use hoard_core::format::config::Config;
use hoard_core::format::index::{IndexPack, IndexSegment};
use hoard_core::format::keyfile::{KeyFile, KeyMeta};
use hoard_core::format::snapshot::Snapshot;
use hoard_core::format::tree::{decode_list, Content, Tree};
use hoard_core::format::{object, pack, BlobType, ObjectKind};
use hoard_core::{ChunkerParams, Id, KdfParams, Keys, MasterKey, FORMAT_VERSION};
use hoard_index::IndexCache;
use hoard_storage::{ErrorKind, Storage, CONFIG_NAME};

use crate::error::{RepoError, Result};
use crate::packcache::PackCache;

/// An open, unlocked repository.
pub struct Repository {
    storage: Arc<dyn Storage>,
    config: Config,
    master: MasterKey,
    keys: Keys,
    key_name: String,
    cache: Mutex<IndexCache>,
    /// Metadata packs kept locally, for repositories on remote storage.
    packs: Option<PackCache>,
    /// Packs this host uploaded and has not indexed yet (see [`Repository::journal_pack`]).
    journal: PathBuf,
}

/// Settings chosen at `hoard init`.
#[derive(Clone, Debug)]
pub struct InitOptions {
    pub kdf: KdfParams,
    pub files_chunker: ChunkerParams,
    pub dumps_chunker: ChunkerParams,
    pub pack_size: u32,
    pub compression: i32,
    pub meta: KeyMeta,
}

impl Default for InitOptions {
    fn default() -> Self {
        let c = Config::new(Id::default());
        InitOptions {
            kdf: KdfParams::default(),
            files_chunker: c.files_chunker,
            dumps_chunker: c.dumps_chunker,
            pack_size: c.pack_size,
            compression: c.compression,
            meta: KeyMeta { created_ns: 0, host: String::new(), user: String::new() },
        }
    }
}

/// A snapshot with its id.
#[derive(Clone, Debug)]
pub struct SnapshotEntry {
    pub id: Id,
    pub snapshot: Snapshot,
}

/// One key of the repository, as `hoard key list` shows it.
#[derive(Clone, Debug)]
pub struct KeyInfo {
    pub name: String,
    pub meta: KeyMeta,
    pub current: bool,
    /// Why the key file cannot be read, when it cannot.
    pub problem: Option<String>,
}

fn cache_path(cache_root: &Path, id: &Id) -> PathBuf {
    cache_root.join(id.to_hex()).join("index.sqlite")
}

fn journal_dir(cache_root: &Path, id: &Id) -> PathBuf {
    cache_root.join(id.to_hex()).join("unindexed")
}

fn pack_cache(storage: &dyn Storage, cache_root: &Path, id: &Id) -> Option<PackCache> {
    storage.is_remote().then(|| PackCache::new(cache_root.join(id.to_hex()).join("packs")))
}

fn read_config(storage: &dyn Storage) -> Result<Vec<u8>> {
    match storage.read(ObjectKind::Config, CONFIG_NAME) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(RepoError::NoRepository(storage.location())),
        Err(e) => Err(e.into()),
    }
}

impl Repository {
    /// Creates a repository in empty storage. The config is written last: until it exists,
    /// there is no repository, so an interrupted init leaves nothing that looks like one.
    pub fn init(
        storage: Arc<dyn Storage>,
        password: &[u8],
        opts: InitOptions,
        cache_root: &Path,
    ) -> Result<Repository> {
        match storage.read(ObjectKind::Config, CONFIG_NAME) {
            Ok(_) => return Err(RepoError::Invalid(format!("a repository already exists at {}", storage.location()))),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let master = MasterKey::generate();
        let keys = master.keys();
        let mut config = Config::new(Id::random());
        config.files_chunker = opts.files_chunker;
        config.dumps_chunker = opts.dumps_chunker;
        config.pack_size = opts.pack_size;
        config.compression = opts.compression;
        config.validate().map_err(|e| RepoError::core("repository settings", e))?;
        let key_bytes = KeyFile::create(&master, &config.id, password, opts.kdf, opts.meta)
            .map_err(|e| RepoError::core("creating key", e))?;
        let key_name = Id::random().to_hex();
        storage.create(ObjectKind::Key, &key_name, &[Bytes::from(key_bytes)])?;
        storage.create(ObjectKind::Config, CONFIG_NAME, &[Bytes::from(config.encode(&keys))])?;
        let cache = IndexCache::open(&cache_path(cache_root, &config.id), &config.id)?;
        let packs = pack_cache(&*storage, cache_root, &config.id);
        let journal = journal_dir(cache_root, &config.id);
        Ok(Repository { storage, config, master, keys, key_name, cache: Mutex::new(cache), packs, journal })
    }

    /// The format version of the repository, without a password.
    pub fn peek_version(storage: &dyn Storage) -> Result<u32> {
        let b = read_config(storage)?;
        Config::peek_version(&b)
            .map_err(|e| RepoError::core(format!("reading the config at {}", storage.location()), e))
    }

    /// Opens and unlocks a repository, then brings the index cache up to date.
    pub fn open(storage: Arc<dyn Storage>, password: &[u8], cache_root: &Path) -> Result<Repository> {
        let config_bytes = read_config(&*storage)?;
        let version = Config::peek_version(&config_bytes)
            .map_err(|e| RepoError::core(format!("reading the config at {}", storage.location()), e))?;
        if version > FORMAT_VERSION || version == 0 {
            return Err(RepoError::UnsupportedVersion {
                location: storage.location(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let mut names: Vec<String> = storage.list(ObjectKind::Key)?.into_iter().map(|k| k.name).collect();
        names.sort();
        let mut opened = None;
        // A key that opens with the password but not this repository's config: a key file
        // copied from another repository (tried past), or a damaged config (reported).
        let mut mismatch = None;
        for name in names {
            let bytes = storage.read(ObjectKind::Key, &name)?;
            let kf = match KeyFile::decode(&bytes) {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!("key {name} is unreadable and was skipped: {e}");
                    continue;
                }
            };
            match kf.open(password) {
                Ok((master, key_repo)) => {
                    let keys = master.keys();
                    match Config::decode(&config_bytes, &keys) {
                        Ok(config) if config.id == key_repo => {
                            opened = Some((name, master, keys, config));
                            break;
                        }
                        Ok(_) | Err(_) => {
                            tracing::warn!("key {name} opens with this password but belongs to another repository");
                            mismatch = Some(name);
                        }
                    }
                }
                Err(hoard_core::Error::WrongPassword) => continue,
                Err(e) => tracing::warn!("key {name}: {e}"),
            }
        }
        let (key_name, master, keys, config) = match (opened, mismatch) {
            (Some(o), _) => o,
            (None, Some(name)) => {
                return Err(RepoError::Invalid(format!(
                    "key {name} at {} opens with this password, but the repository config does not \
                     authenticate under it: the key was copied from another repository, or the config is damaged",
                    storage.location()
                )))
            }
            (None, None) => return Err(RepoError::WrongPassword(storage.location())),
        };
        let cache = IndexCache::open(&cache_path(cache_root, &config.id), &config.id)?;
        let packs = pack_cache(&*storage, cache_root, &config.id);
        let journal = journal_dir(cache_root, &config.id);
        let repo = Repository { storage, config, master, keys, key_name, cache: Mutex::new(cache), packs, journal };
        repo.sync_index()?;
        Ok(repo)
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn cache(&self) -> MutexGuard<'_, IndexCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads index segments the cache has not seen, forgets those gone from storage. A segment
    /// named as superseded by another is ignored.
    pub fn sync_index(&self) -> Result<()> {
        let listed: HashSet<String> = self.storage.list(ObjectKind::Index)?.into_iter().map(|o| o.name).collect();
        let mut cache = self.cache();
        let known = cache.segments()?;
        for gone in known.difference(&listed) {
            cache.remove_segment(gone)?;
        }
        let mut new: Vec<(String, IndexSegment)> = Vec::new();
        for name in listed.difference(&known) {
            match self.read_segment(name) {
                Ok(seg) => new.push((name.clone(), seg)),
                // A damaged segment must not lock the user out of everything else: its packs
                // are still in storage, `check` reports it and `repair index` rebuilds it.
                Err(e @ RepoError::Core { .. }) => {
                    tracing::warn!("{e}; the blobs it lists are unavailable until `hoard repair index`")
                }
                Err(e) => return Err(e),
            }
        }
        let superseded: HashSet<String> =
            new.iter().flat_map(|(_, s)| s.superseded.iter().map(|i| i.to_hex())).collect();
        // Superseded by a segment ingested earlier: a prune or `repair index` wrote the
        // replacement and has not yet deleted (or crashed before deleting) this one.
        let earlier = cache.superseded()?;
        for (name, seg) in &new {
            if superseded.contains(name) || earlier.contains(name) {
                cache.add_segment(name, &IndexSegment::default())?;
            } else {
                cache.add_segment(name, seg)?;
            }
        }
        for name in superseded.intersection(&known) {
            cache.remove_segment(name)?;
            cache.add_segment(name, &IndexSegment::default())?;
        }
        // Segments went (a prune or `repair index`, maybe another host's): the cached copies of
        // packs no segment lists any more would otherwise stay on this host's disk for good.
        let dropped = known.difference(&listed).next().is_some() || !superseded.is_empty();
        if let (Some(packs), true) = (&self.packs, dropped) {
            let live: HashSet<Id> = cache.packs()?.into_iter().map(|(id, _)| id).collect();
            let n = packs.retain(&live);
            if n > 0 {
                tracing::debug!("removed {n} packs no longer in the index from the local pack cache");
            }
        }
        Ok(())
    }

    /// Reads and authenticates one index segment from storage.
    pub fn read_segment(&self, name: &str) -> Result<IndexSegment> {
        let id = Id::from_hex(name).map_err(|e| RepoError::core("index segment name", e))?;
        let bytes = self.storage.read(ObjectKind::Index, name)?;
        let body = object::open(&self.keys, ObjectKind::Index, &id, &bytes)
            .map_err(|e| RepoError::core(format!("index segment {name}"), e))?;
        IndexSegment::decode(&body).map_err(|e| RepoError::core(format!("index segment {name}"), e))
    }

    /// Writes a sealed object under a fresh random name and returns the name.
    pub fn write_object(&self, kind: ObjectKind, body: &[u8]) -> Result<Id> {
        let name = Id::random();
        let sealed = object::seal(&self.keys, kind, &name, body, self.config.compression.max(1));
        self.storage.create(kind, &name.to_hex(), &[Bytes::from(sealed)])?;
        Ok(name)
    }

    /// Commits a snapshot: the last write of a backup.
    pub fn save_snapshot(&self, snap: &Snapshot) -> Result<Id> {
        let body = snap.encode();
        let name = Id::random();
        let sealed = object::seal(&self.keys, ObjectKind::Snapshot, &name, &body, self.config.compression.max(1));
        self.storage.create(ObjectKind::Snapshot, &name.to_hex(), &[Bytes::copy_from_slice(&sealed)])?;
        self.cache().put_snapshot(&name.to_hex(), &sealed)?;
        Ok(name)
    }

    /// Deletes a snapshot object (`hoard forget`). Its data stays until a prune finds it
    /// unreferenced. Deleting a snapshot that is already gone is not an error.
    pub fn remove_snapshot(&self, id: &Id) -> Result<()> {
        self.delete_object(ObjectKind::Snapshot, &id.to_hex())?;
        self.cache().remove_snapshot(&id.to_hex())?;
        Ok(())
    }

    /// Writes index segments (of at most 256 packs each) that together list `packs` and replace
    /// the segments `old`. Only the last one names `old` as superseded, so readers drop the old
    /// segments only once every new one exists. Returns how many segments it wrote. The caller
    /// deletes `old` afterwards.
    pub fn replace_segments(&self, packs: Vec<IndexPack>, old: &[Id]) -> Result<u64> {
        let mut chunks: Vec<Vec<IndexPack>> = packs.chunks(256).map(<[IndexPack]>::to_vec).collect();
        if chunks.is_empty() {
            chunks.push(vec![]);
        }
        let n = chunks.len();
        for (i, packs) in chunks.into_iter().enumerate() {
            let superseded = if i + 1 == n { old.to_vec() } else { vec![] };
            self.write_object(ObjectKind::Index, &IndexSegment { packs, superseded }.encode())?;
        }
        Ok(n as u64)
    }

    /// Deletes an object; one that is already gone (another process deleted it, or a run that
    /// was killed had) is not an error. Returns whether this call deleted it.
    pub fn delete_object(&self, kind: ObjectKind, name: &str) -> Result<bool> {
        if let (Some(c), ObjectKind::Pack, Ok(id)) = (&self.packs, kind, Id::from_hex(name)) {
            c.remove(&id);
        }
        match self.storage.delete(kind, name) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn open_snapshot(&self, name: &str, sealed: &[u8]) -> Result<Snapshot> {
        let id = Id::from_hex(name).map_err(|e| RepoError::core("snapshot name", e))?;
        let body = object::open(&self.keys, ObjectKind::Snapshot, &id, sealed)
            .map_err(|e| RepoError::core(format!("snapshot {name}"), e))?;
        Snapshot::decode(&body).map_err(|e| RepoError::core(format!("snapshot {name}"), e))
    }

    /// Reads one snapshot straight from storage, bypassing the cache (for `check`).
    pub fn read_snapshot_uncached(&self, id: &Id) -> Result<Snapshot> {
        let sealed = self.storage.read(ObjectKind::Snapshot, &id.to_hex())?;
        self.open_snapshot(&id.to_hex(), &sealed)
    }

    /// All snapshots, oldest first. Only snapshots new since the last call are downloaded.
    pub fn snapshots(&self) -> Result<Vec<SnapshotEntry>> {
        let listed: HashSet<String> = self.storage.list(ObjectKind::Snapshot)?.into_iter().map(|o| o.name).collect();
        let cache = self.cache();
        for gone in cache.snapshot_names()?.difference(&listed) {
            cache.remove_snapshot(gone)?;
        }
        let mut out = Vec::with_capacity(listed.len());
        for name in &listed {
            let sealed = match cache.snapshot(name)? {
                Some(s) => s,
                None => {
                    let s = match self.storage.read(ObjectKind::Snapshot, name) {
                        Ok(s) => s,
                        // Deleted between list and read (a concurrent forget).
                        Err(e) if e.kind() == ErrorKind::NotFound => continue,
                        Err(e) => return Err(e.into()),
                    };
                    cache.put_snapshot(name, &s)?;
                    s
                }
            };
            let snapshot = match self.open_snapshot(name, &sealed) {
                Ok(s) => s,
                Err(e) => {
                    // One damaged snapshot must not hide the others; `check` reports it.
                    tracing::warn!("{e}; skipped");
                    cache.remove_snapshot(name)?;
                    continue;
                }
            };
            out.push(SnapshotEntry {
                id: Id::from_hex(name).map_err(|e| RepoError::core("snapshot name", e))?,
                snapshot,
            });
        }
        out.sort_by(|a, b| a.snapshot.time_ns.cmp(&b.snapshot.time_ns).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Resolves a snapshot reference: a full id, a unique id prefix, or `latest` (the newest
    /// snapshot passing `filter`).
    pub fn find_snapshot(&self, reference: &str, filter: &dyn Fn(&Snapshot) -> bool) -> Result<SnapshotEntry> {
        let all = self.snapshots()?;
        if reference == "latest" {
            return all
                .into_iter()
                .rev()
                .find(|e| filter(&e.snapshot))
                .ok_or_else(|| RepoError::SnapshotNotFound(reference.into()));
        }
        let r = reference.to_ascii_lowercase();
        let mut hits = all.into_iter().filter(|e| e.id.to_hex().starts_with(&r));
        let first = hits.next().ok_or_else(|| RepoError::SnapshotNotFound(reference.into()))?;
        if hits.next().is_some() {
            return Err(RepoError::AmbiguousSnapshot(reference.into()));
        }
        Ok(first)
    }

    /// Reads, authenticates and verifies one blob. Tries every copy the index knows of.
    pub fn read_blob(&self, id: &Id) -> Result<Vec<u8>> {
        let locations = self.cache().locations(id)?;
        if locations.is_empty() {
            return Err(RepoError::BlobMissing(*id));
        }
        let mut last = None;
        for loc in locations {
            let blob_error = |e| RepoError::core(format!("blob {} in pack {}", id.short(), loc.pack), e);
            let open = |stored: &[u8]| pack::open_blob(&self.keys, &loc.pack, &loc.entry, stored).map_err(blob_error);
            let (offset, len) = (loc.entry.offset, u64::from(loc.entry.length));
            if let (Some(cache), BlobType::Tree) = (&self.packs, loc.entry.blob_type) {
                if let Some(stored) = cache.read_range(&loc.pack, offset, len) {
                    match open(&stored) {
                        Ok(b) => return Ok(b),
                        Err(e) => {
                            tracing::warn!(
                                "the local copy of pack {} is damaged; reading it again: {e}",
                                loc.pack.short()
                            );
                            cache.remove(&loc.pack);
                        }
                    }
                }
                // Fetch the whole metadata pack once instead of one request per tree.
                let r =
                    self.storage.read(ObjectKind::Pack, &loc.pack.to_hex()).map_err(RepoError::from).and_then(|all| {
                        let end = offset.checked_add(len).filter(|&e| e <= all.len() as u64).ok_or_else(|| {
                            RepoError::Invalid(format!("pack {} is shorter than the index says", loc.pack.short()))
                        })?;
                        let b = open(&all[offset as usize..end as usize])?;
                        cache.put(&loc.pack, &[Bytes::from(all)]);
                        Ok(b)
                    });
                match r {
                    Ok(b) => return Ok(b),
                    Err(e) => {
                        last = Some(e);
                        continue;
                    }
                }
            }
            let r = self
                .storage
                .read_range(ObjectKind::Pack, &loc.pack.to_hex(), offset, len)
                .map_err(RepoError::from)
                .and_then(|stored| {
                    pack::open_blob_owned(&self.keys, &loc.pack, &loc.entry, stored).map_err(blob_error)
                });
            match r {
                Ok(b) => return Ok(b),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap())
    }

    /// Notes locally that a pack is in storage but not yet in an index segment. When the process
    /// dies (or the storage goes away) before the segment is written, the next writer on this
    /// host indexes the pack ([`Repository::recover_unindexed`]) instead of uploading its blobs
    /// again. Best effort: without the note, the pack is only stored twice until a prune.
    pub(crate) fn journal_pack(&self, p: &IndexPack) {
        let seg = IndexSegment { packs: vec![p.clone()], superseded: vec![] };
        let r = std::fs::create_dir_all(&self.journal)
            .and_then(|()| std::fs::write(self.journal.join(p.id.to_hex()), seg.encode()));
        if let Err(e) = r {
            tracing::debug!("could not note pack {} in {}: {e}", p.id.short(), self.journal.display());
        }
    }

    /// Forgets the notes of packs that an index segment now lists.
    pub(crate) fn journal_done(&self, packs: &[IndexPack]) {
        for p in packs {
            let _ = std::fs::remove_file(self.journal.join(p.id.to_hex()));
        }
    }

    /// Indexes the packs an earlier, interrupted run on this host uploaded but never indexed,
    /// after checking that each is in storage at its full length. Returns how many.
    pub fn recover_unindexed(&self) -> Result<usize> {
        let Ok(dir) = std::fs::read_dir(&self.journal) else { return Ok(0) };
        let mut found = Vec::new();
        let mut files = Vec::new();
        for e in dir.flatten() {
            let path = e.path();
            let Some(p) = std::fs::read(&path)
                .ok()
                .and_then(|b| IndexSegment::decode(&b).ok())
                .and_then(|s| s.packs.into_iter().next())
            else {
                let _ = std::fs::remove_file(&path);
                continue;
            };
            files.push(path);
            if self.cache().segment_of(&p.id)?.is_some() {
                continue;
            }
            match self.storage.size(ObjectKind::Pack, &p.id.to_hex()) {
                Ok(n) if n == p.len => found.push(p),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        let n = found.len();
        if !found.is_empty() {
            let seg = IndexSegment { packs: found, superseded: vec![] };
            let name = self.write_object(ObjectKind::Index, &seg.encode())?;
            self.cache().add_segment(&name.to_hex(), &seg)?;
            tracing::info!("indexed {n} packs an interrupted run uploaded");
        }
        for f in files {
            let _ = std::fs::remove_file(f);
        }
        Ok(n)
    }

    /// Keeps a copy of a metadata pack this process uploaded, when the repository is remote.
    pub(crate) fn cache_pack(&self, id: &Id, pieces: &[Bytes]) {
        if let Some(c) = &self.packs {
            c.put(id, pieces);
        }
    }

    pub fn load_tree(&self, id: &Id) -> Result<Tree> {
        let b = self.read_blob(id)?;
        Tree::decode(&b).map_err(|e| RepoError::core(format!("tree {}", id.short()), e))
    }

    /// The chunk ids of a file's content, in order, reading list blobs when there are any.
    pub fn content_chunks(&self, content: &Content) -> Result<Vec<Id>> {
        match content {
            Content::None => Ok(vec![]),
            Content::Chunks(ids) => Ok(ids.clone()),
            Content::Lists(lists) => {
                let mut out = Vec::new();
                for l in lists {
                    let b = self.read_blob(l)?;
                    out.extend(decode_list(&b).map_err(|e| RepoError::core(format!("chunk list {}", l.short()), e))?);
                }
                Ok(out)
            }
        }
    }

    /// Whether deduplication may rely on the repository's copy of a blob: it is indexed in a
    /// pack that no condemnation marker this process has seen names.
    pub fn has_blob(&self, id: &Id) -> Result<bool> {
        Ok(self.cache().contains_live(id)?)
    }

    /// Whether a new snapshot may reference `content` as it is (an unchanged file taken from the
    /// parent snapshot): every chunk, and every list blob, passes [`Repository::has_blob`].
    /// When not, the caller reads the file again, so a backup never references a blob that is
    /// missing or that a prune may be deleting.
    pub fn content_live(&self, content: &Content) -> Result<bool> {
        let lists = match content {
            Content::None => return Ok(true),
            Content::Chunks(ids) => return all_live(&self.cache(), ids),
            Content::Lists(lists) => lists,
        };
        if !all_live(&self.cache(), lists)? {
            return Ok(false);
        }
        for l in lists {
            let b = self.read_blob(l)?;
            let ids = decode_list(&b).map_err(|e| RepoError::core(format!("chunk list {}", l.short()), e))?;
            if !all_live(&self.cache(), &ids)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The ids of the live blobs in memory ([`LiveIds`]), when a backup whose parent snapshot
    /// has `parent_files` files will ask about enough of them to pay for reading them all: at
    /// least `min_files` files ([`LIVE_IDS_MIN_FILES`] by default), and at least a quarter as
    /// many as the index has blobs.
    pub fn live_ids_for(&self, parent_files: u64, min_files: u64) -> Result<Option<LiveIds>> {
        if parent_files < min_files {
            return Ok(None);
        }
        let cache = self.cache();
        let rows = cache.blob_rows()?;
        if parent_files.saturating_mul(4) < rows {
            return Ok(None);
        }
        let mut ids = Vec::with_capacity(rows as usize);
        cache.for_each_live_id(|id| {
            if let Some(p) = id.get(..16) {
                ids.push(<[u8; 16]>::try_from(p).expect("16 bytes"));
            }
        })?;
        // In id order already; prefixes of distinct ids are distinct but for a 2^-128 chance.
        ids.dedup();
        Ok(Some(LiveIds::new(ids)))
    }

    /// [`Repository::content_live`] of many contents at once. With `live`, every answer comes
    /// from memory. Without, the lookups of inline chunk lists share one read transaction: a
    /// directory of unchanged files costs one lock of the index and a warm page cache, not a
    /// transaction per chunk (a third of night 2's time before).
    pub fn contents_live(&self, contents: &[&Content], live: Option<&LiveIds>) -> Result<Vec<bool>> {
        if let Some(live) = live {
            return contents.iter().map(|c| self.content_live_in(c, live)).collect();
        }
        let mut out = vec![false; contents.len()];
        let mut lists = Vec::new();
        {
            let cache = self.cache();
            cache.begin_read()?;
            let r = (|| -> Result<()> {
                for (i, c) in contents.iter().enumerate() {
                    match c {
                        Content::None => out[i] = true,
                        Content::Chunks(ids) => out[i] = all_live(&cache, ids)?,
                        Content::Lists(_) => lists.push(i),
                    }
                }
                Ok(())
            })();
            let ended = cache.end_read();
            r?;
            ended?;
        }
        // List blobs are read through the cache, which the transaction above held.
        for i in lists {
            out[i] = self.content_live(contents[i])?;
        }
        Ok(out)
    }

    /// [`Repository::content_live`], answered from `live`.
    fn content_live_in(&self, content: &Content, live: &LiveIds) -> Result<bool> {
        match content {
            Content::None => Ok(true),
            Content::Chunks(ids) => Ok(ids.iter().all(|i| live.contains(i))),
            Content::Lists(lists) => {
                for l in lists {
                    if !live.contains(l) {
                        return Ok(false);
                    }
                    let b = self.read_blob(l)?;
                    let ids = decode_list(&b).map_err(|e| RepoError::core(format!("chunk list {}", l.short()), e))?;
                    if !ids.iter().all(|i| live.contains(i)) {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
        }
    }

    /// Treats the packs of these condemnation markers as absent for deduplication.
    pub fn set_condemned(&self, packs: &HashSet<Id>) -> Result<()> {
        Ok(self.cache().set_condemned(packs)?)
    }

    /// The blob type the index records for an id.
    pub fn blob_type(&self, id: &Id) -> Result<Option<BlobType>> {
        Ok(self.cache().lookup(id)?.map(|l| l.entry.blob_type))
    }

    // ---- keys ----

    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    pub fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        let mut out = Vec::new();
        for o in self.storage.list(ObjectKind::Key)? {
            let b = self.storage.read(ObjectKind::Key, &o.name)?;
            // A malformed key is listed, not fatal, so that `key remove` can get rid of it.
            let (meta, problem) = match KeyFile::decode(&b) {
                Ok(kf) => (kf.meta, None),
                Err(e) => (KeyMeta::default(), Some(e.to_string())),
            };
            out.push(KeyInfo { current: o.name == self.key_name, name: o.name, meta, problem });
        }
        out.sort_by_key(|k| k.meta.created_ns);
        Ok(out)
    }

    /// Adds a key that opens this repository with another password.
    pub fn add_key(&self, password: &[u8], kdf: KdfParams, meta: KeyMeta) -> Result<String> {
        let master = &self.master;
        let bytes = KeyFile::create(master, &self.config.id, password, kdf, meta)
            .map_err(|e| RepoError::core("creating key", e))?;
        let name = Id::random().to_hex();
        self.storage.create(ObjectKind::Key, &name, &[Bytes::from(bytes)])?;
        Ok(name)
    }

    /// Changes the password of the key this repository was unlocked with: writes a new key file
    /// for `password` first, then deletes the old one, so a crash in between leaves both keys
    /// working and never none. Returns the new key's name and the old one's.
    pub fn change_password(&self, password: &[u8], kdf: KdfParams, meta: KeyMeta) -> Result<(String, String)> {
        let name = self.add_key(password, kdf, meta)?;
        self.storage.delete(ObjectKind::Key, &self.key_name)?;
        Ok((name, self.key_name.clone()))
    }

    /// Removes a key by name (or unique prefix). The key in use cannot be removed.
    pub fn remove_key(&self, reference: &str) -> Result<String> {
        let keys = self.list_keys()?;
        let hits: Vec<_> = keys.iter().filter(|k| k.name.starts_with(reference)).collect();
        let k = match hits.as_slice() {
            [k] => *k,
            [] => return Err(RepoError::NotFound(format!("no key matches {reference:?}"))),
            _ => return Err(RepoError::Invalid(format!("{reference:?} matches several keys"))),
        };
        if k.current {
            return Err(RepoError::Invalid(
                "refusing to remove the key this command was unlocked with; unlock with another key's password".into(),
            ));
        }
        self.storage.delete(ObjectKind::Key, &k.name)?;
        Ok(k.name.clone())
    }
}

/// Below this many files in the parent snapshot a backup asks the index about each unchanged
/// chunk; above it, when the index is not much larger, it reads every live id once instead.
/// Reading them costs about what a lookup does per id, and a backup of this many files asks
/// about most of them: night 2 of the bench (43,000 files) ran 1.14× faster than at 100,000.
pub const LIVE_IDS_MIN_FILES: u64 = 4_096;

/// The live blobs of the index at one moment, in memory: the first 16 bytes of each id, sorted,
/// and where each run of ids with the same leading bits starts (about 20 bytes a blob; 200 MB
/// for ten million). A night 2 of millions of unchanged files asks "is this chunk still live?"
/// of every chunk, and SQLite answered each with a B-tree descent and, once the index outgrew
/// its page cache, a read of a leaf page: half of such a night's time. Ids are uniform, so
/// their leading bits say where to look: a lookup here touches two or three cache lines. Two
/// distinct ids share a 16-byte prefix with probability 2^-128, so a "yes" is as good as the
/// index's.
pub struct LiveIds {
    ids: Vec<[u8; 16]>,
    /// `starts[b]..starts[b + 1]`: the ids whose leading `bits` bits are `b`.
    starts: Vec<u32>,
    bits: u32,
}

impl LiveIds {
    fn new(ids: Vec<[u8; 16]>) -> LiveIds {
        debug_assert!(ids.windows(2).all(|w| w[0] < w[1]));
        // About one id per bucket; at least one bucket.
        let bits = usize::BITS - ids.len().max(1).leading_zeros() - 1;
        let buckets = 1usize << bits;
        let mut starts = Vec::with_capacity(buckets + 1);
        let mut i = 0;
        for b in 0..buckets {
            while i < ids.len() && LiveIds::bucket(&ids[i], bits) < b {
                i += 1;
            }
            starts.push(i as u32);
        }
        starts.push(ids.len() as u32);
        LiveIds { ids, starts, bits }
    }

    fn bucket(p: &[u8; 16], bits: u32) -> usize {
        if bits == 0 {
            0
        } else {
            (u64::from_be_bytes(p[..8].try_into().expect("8 bytes")) >> (64 - bits)) as usize
        }
    }

    pub fn contains(&self, id: &Id) -> bool {
        let p: [u8; 16] = id.0[..16].try_into().expect("ids are 32 bytes");
        let b = LiveIds::bucket(&p, self.bits);
        let (lo, hi) = (self.starts[b] as usize, self.starts[b + 1] as usize);
        self.ids[lo..hi].contains(&p)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

fn all_live(cache: &IndexCache, ids: &[Id]) -> Result<bool> {
    for id in ids {
        if !cache.contains_live(id)? {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_ids_answer_as_a_set_would() {
        for n in [0usize, 1, 2, 3, 7, 100, 4097] {
            let ids: Vec<Id> = (0..n).map(|_| Id::random()).collect();
            let mut prefixes: Vec<[u8; 16]> = ids.iter().map(|i| i.0[..16].try_into().unwrap()).collect();
            prefixes.sort();
            let live = LiveIds::new(prefixes);
            assert_eq!(live.len(), n);
            assert!(ids.iter().all(|i| live.contains(i)), "n = {n}");
            assert!((0..1000).all(|_| !live.contains(&Id::random())), "n = {n}");
        }
        // Ids at the very ends of the range land in the first and the last bucket.
        let (lo, hi) = (Id([0; 32]), Id([0xff; 32]));
        let live = LiveIds::new(vec![[0; 16], [0x80; 16], [0xff; 16]]);
        assert!(live.contains(&lo) && live.contains(&hi) && live.contains(&Id([0x80; 32])));
        assert!(!live.contains(&Id([0x7f; 32])));
    }
}

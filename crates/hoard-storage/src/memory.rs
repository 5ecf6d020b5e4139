//! An in-memory backend for tests: the same contract as the others, no durability.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use crate::{ErrorKind, ObjectInfo, ObjectKind, Result, Storage, StorageError};

/// The clock a [`MemoryStorage`] stamps objects with: this host's clock plus an offset that
/// tests can move forward, as if time had passed at the storage. Clones share one offset.
#[derive(Clone, Debug, Default)]
pub struct Clock(Arc<AtomicI64>);

impl Clock {
    /// The storage's time now, in Unix nanoseconds.
    pub fn now_ns(&self) -> i64 {
        now_ns().saturating_add(self.0.load(Ordering::SeqCst))
    }

    /// Moves the clock forward: objects created from now on look this much younger than those
    /// created before.
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX), Ordering::SeqCst);
    }

    /// Moves the clock forward, if needed, so that it reads at least `t` now.
    pub fn catch_up(&self, t: i64) {
        let behind = t.saturating_sub(self.now_ns());
        if behind > 0 {
            self.0.fetch_add(behind, Ordering::SeqCst);
        }
    }
}

/// Objects in a map. Cloning shares nothing; wrap it in an `Arc` to share.
#[derive(Default)]
pub struct MemoryStorage {
    objects: Mutex<BTreeMap<(ObjectKind, String), (Stored, i64)>>,
    clock: Clock,
}

/// An object's bytes as they were handed to [`Storage::create`]: a pack arrives as one piece
/// per blob, and joining them on every write would be a copy of everything a backup stores
/// that no real backend makes in memory (the pipeline bench runs on this backend). They are
/// joined on the first read instead.
struct Stored {
    pieces: Vec<Bytes>,
    len: u64,
}

impl Stored {
    fn one(b: Bytes) -> Stored {
        Stored { len: b.len() as u64, pieces: vec![b] }
    }

    fn joined(&mut self) -> Bytes {
        if self.pieces.len() != 1 {
            let all = Bytes::from(self.pieces.concat());
            self.pieces = vec![all];
        }
        self.pieces[0].clone()
    }
}

impl MemoryStorage {
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }

    /// An empty storage whose objects are stamped by `clock`.
    pub fn with_clock(clock: Clock) -> MemoryStorage {
        MemoryStorage { objects: Mutex::default(), clock }
    }

    /// The clock this storage stamps objects with (a handle: advancing it moves this storage's
    /// time).
    pub fn clock(&self) -> Clock {
        self.clock.clone()
    }

    /// Creates an object with a given modification time, as a copy of another storage's object
    /// keeps its time (the contract of [`Storage::create`] otherwise). The clock is moved
    /// forward if needed, so it never reads earlier than an object it holds.
    pub fn create_at(&self, kind: ObjectKind, name: &str, data: Bytes, modified_ns: i64) -> Result<()> {
        let mut m = self.objects.lock().unwrap();
        let key = (kind, name.to_string());
        if m.contains_key(&key) {
            return Err(StorageError::new(ErrorKind::AlreadyExists, format!("{} {name}", kind.name())));
        }
        self.clock.catch_up(modified_ns);
        m.insert(key, (Stored::one(data), modified_ns));
        Ok(())
    }

    fn get(&self, kind: ObjectKind, name: &str) -> Result<Bytes> {
        self.objects
            .lock()
            .unwrap()
            .get_mut(&(kind, name.to_string()))
            .map(|(b, _)| b.joined())
            .ok_or_else(|| StorageError::new(ErrorKind::NotFound, format!("{} {name}", kind.name())))
    }

    /// Replaces an object's bytes, bypassing the create-only contract: for tests that damage
    /// a repository on purpose.
    pub fn overwrite(&self, kind: ObjectKind, name: &str, data: Vec<u8>) {
        self.objects
            .lock()
            .unwrap()
            .insert((kind, name.to_string()), (Stored::one(Bytes::from(data)), self.clock.now_ns()));
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

impl Storage for MemoryStorage {
    fn location(&self) -> String {
        "memory".into()
    }

    fn create(&self, kind: ObjectKind, name: &str, pieces: &[Bytes]) -> Result<()> {
        let mut m = self.objects.lock().unwrap();
        let key = (kind, name.to_string());
        if m.contains_key(&key) {
            return Err(StorageError::new(ErrorKind::AlreadyExists, format!("{} {name}", kind.name())));
        }
        let stored = Stored { pieces: pieces.to_vec(), len: pieces.iter().map(|p| p.len() as u64).sum() };
        m.insert(key, (stored, self.clock.now_ns()));
        Ok(())
    }

    fn read(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>> {
        Ok(self.get(kind, name)?.to_vec())
    }

    fn read_range(&self, kind: ObjectKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let b = self.get(kind, name)?;
        let end = offset.checked_add(len).filter(|&e| e <= b.len() as u64).ok_or_else(|| {
            StorageError::new(
                ErrorKind::Other,
                format!("{} {name}: range {offset}+{len} beyond its {} bytes", kind.name(), b.len()),
            )
        })?;
        Ok(b[offset as usize..end as usize].to_vec())
    }

    fn size(&self, kind: ObjectKind, name: &str) -> Result<u64> {
        self.objects
            .lock()
            .unwrap()
            .get(&(kind, name.to_string()))
            .map(|(b, _)| b.len)
            .ok_or_else(|| StorageError::new(ErrorKind::NotFound, format!("{} {name}", kind.name())))
    }

    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>> {
        Ok(self
            .objects
            .lock()
            .unwrap()
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|((_, n), (b, t))| ObjectInfo { name: n.clone(), size: b.len, modified_ns: *t })
            .collect())
    }

    fn delete(&self, kind: ObjectKind, name: &str) -> Result<()> {
        self.objects
            .lock()
            .unwrap()
            .remove(&(kind, name.to_string()))
            .map(|_| ())
            .ok_or_else(|| StorageError::new(ErrorKind::NotFound, format!("{} {name}", kind.name())))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use crate::{MemoryStorage, ObjectKind, Storage};

    #[test]
    fn contract() {
        crate::contract::run(&MemoryStorage::new());
    }

    #[test]
    fn the_clock_stamps_objects_and_moves_forward() {
        let s = MemoryStorage::new();
        s.create(ObjectKind::Pack, "aaaa", &[Bytes::from_static(b"1")]).unwrap();
        s.clock().advance(Duration::from_secs(7200));
        s.create(ObjectKind::Pack, "bbbb", &[Bytes::from_static(b"2")]).unwrap();
        let t = |n: &str| s.list(ObjectKind::Pack).unwrap().into_iter().find(|o| o.name == n).unwrap().modified_ns;
        let gap = t("bbbb") - t("aaaa");
        assert!((7_200_000_000_000..7_260_000_000_000).contains(&gap), "{gap}");
        // A copy keeps the time, and its clock never reads earlier than what it holds.
        let c = MemoryStorage::new();
        c.create_at(ObjectKind::Pack, "bbbb", Bytes::from_static(b"2"), t("bbbb")).unwrap();
        assert!(c.clock().now_ns() >= t("bbbb"));
        assert_eq!(c.list(ObjectKind::Pack).unwrap()[0].modified_ns, t("bbbb"));
    }
}

//! An in-memory backend for tests: the same contract as the others, no durability.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;

use crate::{ErrorKind, ObjectInfo, ObjectKind, Result, Storage, StorageError};

/// Objects in a map. Cloning shares nothing; wrap it in an `Arc` to share.
#[derive(Default)]
pub struct MemoryStorage {
    objects: Mutex<BTreeMap<(ObjectKind, String), (Bytes, i64)>>,
}

impl MemoryStorage {
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }

    fn get(&self, kind: ObjectKind, name: &str) -> Result<Bytes> {
        self.objects
            .lock()
            .unwrap()
            .get(&(kind, name.to_string()))
            .map(|(b, _)| b.clone())
            .ok_or_else(|| StorageError::new(ErrorKind::NotFound, format!("{} {name}", kind.name())))
    }

    /// Replaces an object's bytes, bypassing the create-only contract: for tests that damage
    /// a repository on purpose.
    pub fn overwrite(&self, kind: ObjectKind, name: &str, data: Vec<u8>) {
        self.objects.lock().unwrap().insert((kind, name.to_string()), (Bytes::from(data), now_ns()));
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
        m.insert(key, (Bytes::from(pieces.concat()), now_ns()));
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
        Ok(self.get(kind, name)?.len() as u64)
    }

    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>> {
        Ok(self
            .objects
            .lock()
            .unwrap()
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|((_, n), (b, t))| ObjectInfo { name: n.clone(), size: b.len() as u64, modified_ns: *t })
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
    #[test]
    fn contract() {
        crate::contract::run(&super::MemoryStorage::new());
    }
}

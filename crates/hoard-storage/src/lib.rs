//! Where repository objects live. [`Storage`] is the whole contract between hoard and a place
//! that keeps bytes: a local directory ([`LocalStorage`]), memory ([`MemoryStorage`], for tests),
//! and object storage in its own backend.
//!
//! **API Boundary:** everything above this crate sees only named, immutable objects; nothing
//! here knows what the bytes mean.

mod counts;
mod error;
#[doc(hidden)]
pub mod fault;
mod local;
mod memory;
mod s3;

use bytes::Bytes;
pub use counts::{Counters, RequestCounts};
pub use error::{ErrorKind, StorageError};
pub use hoard_core::format::ObjectKind;
pub use local::LocalStorage;
pub use memory::MemoryStorage;
pub use s3::{S3Options, S3Storage, S3Url};

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// One object as a listing shows it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectInfo {
    pub name: String,
    pub size: u64,
    /// When the object was created, by the storage's own clock (file mtime, S3 LastModified),
    /// in Unix nanoseconds. Lock staleness compares only such times with each other, so the
    /// clocks of the hosts that write never matter.
    pub modified_ns: i64,
}

/// The name under which the one config object is stored.
pub const CONFIG_NAME: &str = "config";

/// The folder of a kind of object, relative to the repository's root (the config has none).
pub fn kind_dir(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Config => "",
        ObjectKind::Key => "keys",
        ObjectKind::Pack => "data",
        ObjectKind::Index => "index",
        ObjectKind::Snapshot => "snapshots",
        ObjectKind::Lock => "locks",
        ObjectKind::Condemned => "condemned",
    }
}

/// Whether `name` can name an object of `kind`: `config` for the config, else 4 to 128
/// lower-case hex digits. Every backend refuses other names, so no name can climb out of the
/// repository or collide with a temporary file.
pub fn valid_name(kind: ObjectKind, name: &str) -> bool {
    match kind {
        ObjectKind::Config => name == CONFIG_NAME,
        _ => {
            name.len() >= 4
                && name.len() <= 128
                && name.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        }
    }
}

/// An object's key relative to the repository's root, the same on every backend:
/// `config`, `keys/ID`, `data/XX/ID` (packs fanned out by their first two hex digits),
/// `index/ID`, `snapshots/ID`, `locks/ID`, `condemned/ID`.
pub fn object_key(kind: ObjectKind, name: &str) -> Result<String> {
    if !valid_name(kind, name) {
        return Err(StorageError::new(ErrorKind::Other, format!("invalid {} name {name:?}", kind.name())));
    }
    Ok(match kind {
        ObjectKind::Config => CONFIG_NAME.to_owned(),
        ObjectKind::Pack => format!("data/{}/{name}", &name[..2]),
        _ => format!("{}/{name}", kind_dir(kind)),
    })
}

/// A place that keeps repository objects.
///
/// The contract every backend keeps, and that the repository relies on:
/// - **Objects are immutable.** [`Storage::create`] never overwrites: if the name exists it
///   fails with [`ErrorKind::AlreadyExists`] and leaves the existing object untouched.
/// - **Create is atomic and durable.** When `create` returns `Ok`, the whole object is readable
///   by every later call, from this process or another, and survives a crash of this machine.
///   A failed or interrupted `create` leaves no object under that name (partial temporary
///   data may remain where [`Storage::list`] does not show it).
/// - **Reads are exact.** `read_range` returns exactly the bytes asked for or an error, never
///   fewer. Storage does not judge content: the repository authenticates every byte it reads.
/// - **Listings may lag** for object stores (eventual consistency) but never show an object
///   that `create` has not finished.
/// - **Delete** of an absent object succeeds or fails with [`ErrorKind::NotFound`] (object
///   stores cannot tell the two apart without another request); callers must not care which.
/// - Errors say whether retrying can help ([`StorageError::is_temporary`]). A backend whose
///   failures can be temporary (network storage) retries them itself, bounded, before giving
///   up; the local and in-memory backends have none to retry.
pub trait Storage: Send + Sync {
    /// Where this is, for messages ("/srv/backup", "s3:https://host/bucket/prefix").
    fn location(&self) -> String;

    /// Writes a new object from `pieces`, concatenated. See the trait's contract.
    fn create(&self, kind: ObjectKind, name: &str, pieces: &[Bytes]) -> Result<()>;

    /// [`Storage::create`], handed the pieces, so that a backend can let go of each as soon as
    /// it has written it: the local one frees a pack's memory before it waits on `fsync`,
    /// which is most of a pack write's time. The backup's uploaders call this.
    fn create_owned(&self, kind: ObjectKind, name: &str, pieces: Vec<Bytes>) -> Result<()> {
        self.create(kind, name, &pieces)
    }

    /// Reads a whole object.
    fn read(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>>;

    /// Reads `len` bytes at `offset`.
    fn read_range(&self, kind: ObjectKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>>;

    /// The size of an object.
    fn size(&self, kind: ObjectKind, name: &str) -> Result<u64>;

    /// All objects of a kind, in no particular order.
    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>>;

    /// Deletes an object.
    fn delete(&self, kind: ObjectKind, name: &str) -> Result<()>;

    /// The requests this handle has made so far, by kind, with bytes moved and retries.
    fn counts(&self) -> RequestCounts {
        RequestCounts::default()
    }

    /// How many uploads a writer should keep in flight at once.
    fn connections(&self) -> usize {
        2
    }

    /// Whether every read costs a network request: the repository then keeps metadata it
    /// reads (tree packs) in its local cache.
    fn is_remote(&self) -> bool {
        false
    }
}

impl<S: Storage + ?Sized> Storage for std::sync::Arc<S> {
    fn location(&self) -> String {
        (**self).location()
    }
    fn create(&self, kind: ObjectKind, name: &str, pieces: &[Bytes]) -> Result<()> {
        (**self).create(kind, name, pieces)
    }
    fn create_owned(&self, kind: ObjectKind, name: &str, pieces: Vec<Bytes>) -> Result<()> {
        (**self).create_owned(kind, name, pieces)
    }
    fn read(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>> {
        (**self).read(kind, name)
    }
    fn read_range(&self, kind: ObjectKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        (**self).read_range(kind, name, offset, len)
    }
    fn size(&self, kind: ObjectKind, name: &str) -> Result<u64> {
        (**self).size(kind, name)
    }
    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>> {
        (**self).list(kind)
    }
    fn delete(&self, kind: ObjectKind, name: &str) -> Result<()> {
        (**self).delete(kind, name)
    }
    fn counts(&self) -> RequestCounts {
        (**self).counts()
    }
    fn connections(&self) -> usize {
        (**self).connections()
    }
    fn is_remote(&self) -> bool {
        (**self).is_remote()
    }
}

/// Reads the last `len` bytes of an object of known size (pack headers live there).
pub fn read_tail(s: &dyn Storage, kind: ObjectKind, name: &str, size: u64, len: u64) -> Result<Vec<u8>> {
    let len = len.min(size);
    s.read_range(kind, name, size - len, len)
}

#[doc(hidden)]
pub mod contract {
    //! The contract tests every backend must pass (used by this crate's tests and by the
    //! end-to-end tests against a real S3 server). The storage must be empty.
    use super::*;

    pub fn run(s: &dyn Storage) {
        let data = [Bytes::from_static(b"hello "), Bytes::from_static(b"world")];
        s.create(ObjectKind::Snapshot, "aa11", &data).unwrap();
        assert_eq!(s.read(ObjectKind::Snapshot, "aa11").unwrap(), b"hello world");
        assert_eq!(s.read_range(ObjectKind::Snapshot, "aa11", 6, 5).unwrap(), b"world");
        assert_eq!(s.size(ObjectKind::Snapshot, "aa11").unwrap(), 11);
        assert!(s.read_range(ObjectKind::Snapshot, "aa11", 6, 50).is_err());
        // Create never overwrites.
        let e = s.create(ObjectKind::Snapshot, "aa11", &[Bytes::from_static(b"other")]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        assert_eq!(s.read(ObjectKind::Snapshot, "aa11").unwrap(), b"hello world");
        // Kinds are separate namespaces.
        assert_eq!(s.read(ObjectKind::Index, "aa11").unwrap_err().kind(), ErrorKind::NotFound);
        s.create(ObjectKind::Pack, "bb22", &[Bytes::from_static(b"pack")]).unwrap();
        s.create(ObjectKind::Pack, "cc33", &[Bytes::from_static(b"pack2")]).unwrap();
        let mut l: Vec<(String, u64)> =
            s.list(ObjectKind::Pack).unwrap().into_iter().map(|o| (o.name, o.size)).collect();
        l.sort();
        assert_eq!(l, vec![("bb22".into(), 4), ("cc33".into(), 5)]);
        // Listings carry the storage's modification time, which prune's grace period for young
        // packs relies on: Unix nanoseconds, near this host's clock (an hour of skew allowed),
        // and not earlier for a later create by more than a second (S3 keeps whole seconds).
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
        let times: Vec<(String, i64)> =
            s.list(ObjectKind::Pack).unwrap().into_iter().map(|o| (o.name, o.modified_ns)).collect();
        let time = |n: &str| times.iter().find(|(m, _)| m == n).unwrap().1;
        const HOUR: i64 = 3_600_000_000_000;
        for (name, t) in &times {
            assert!((now - *t).abs() < HOUR, "{name}: modified_ns {t} is not within an hour of {now}");
        }
        assert!(time("cc33") >= time("bb22") - 1_000_000_000, "{times:?}");
        // A kind with no objects yet (or whose directory an older version never made) lists empty.
        assert!(s.list(ObjectKind::Condemned).unwrap().is_empty());
        s.delete(ObjectKind::Pack, "bb22").unwrap();
        if let Err(e) = s.delete(ObjectKind::Pack, "bb22") {
            assert_eq!(e.kind(), ErrorKind::NotFound);
        }
        assert_eq!(s.read(ObjectKind::Pack, "bb22").unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(s.list(ObjectKind::Pack).unwrap().len(), 1);
        s.create(ObjectKind::Config, CONFIG_NAME, &[Bytes::from_static(b"cfg")]).unwrap();
        assert_eq!(s.read(ObjectKind::Config, CONFIG_NAME).unwrap(), b"cfg");
        assert_eq!(read_tail(s, ObjectKind::Snapshot, "aa11", 11, 3).unwrap(), b"rld");
    }
}

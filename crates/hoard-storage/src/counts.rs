//! What a storage handle did: requests by kind, bytes each way, retries.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Requests made, by kind. For object storage each field counts HTTP requests exactly
/// (a listing counts one per page; a multipart upload counts its create, parts and complete);
/// for a local directory, the operations that stand in for them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// Whole-object uploads (PUT).
    pub put: u64,
    /// Downloads, whole or ranged (GET).
    pub get: u64,
    pub head: u64,
    /// Listing pages.
    pub list: u64,
    pub delete: u64,
    /// Multipart uploads started (each also has its parts and one complete).
    pub multipart_create: u64,
    pub multipart_part: u64,
    pub multipart_complete: u64,
    pub multipart_abort: u64,
    /// Requests that failed with a temporary error and were made again (included above).
    pub retries: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

impl RequestCounts {
    /// Every request, retries included.
    pub fn total(&self) -> u64 {
        self.put
            + self.get
            + self.head
            + self.list
            + self.delete
            + self.multipart_create
            + self.multipart_part
            + self.multipart_complete
            + self.multipart_abort
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        RequestCounts {
            put: self.put - earlier.put,
            get: self.get - earlier.get,
            head: self.head - earlier.head,
            list: self.list - earlier.list,
            delete: self.delete - earlier.delete,
            multipart_create: self.multipart_create - earlier.multipart_create,
            multipart_part: self.multipart_part - earlier.multipart_part,
            multipart_complete: self.multipart_complete - earlier.multipart_complete,
            multipart_abort: self.multipart_abort - earlier.multipart_abort,
            retries: self.retries - earlier.retries,
            bytes_up: self.bytes_up - earlier.bytes_up,
            bytes_down: self.bytes_down - earlier.bytes_down,
        }
    }
}

/// Thread-safe counters behind [`RequestCounts`].
#[derive(Debug, Default)]
pub struct Counters {
    pub put: AtomicU64,
    pub get: AtomicU64,
    pub head: AtomicU64,
    pub list: AtomicU64,
    pub delete: AtomicU64,
    pub multipart_create: AtomicU64,
    pub multipart_part: AtomicU64,
    pub multipart_complete: AtomicU64,
    pub multipart_abort: AtomicU64,
    pub retries: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    pub fn snapshot(&self) -> RequestCounts {
        RequestCounts {
            put: self.put.load(Relaxed),
            get: self.get.load(Relaxed),
            head: self.head.load(Relaxed),
            list: self.list.load(Relaxed),
            delete: self.delete.load(Relaxed),
            multipart_create: self.multipart_create.load(Relaxed),
            multipart_part: self.multipart_part.load(Relaxed),
            multipart_complete: self.multipart_complete.load(Relaxed),
            multipart_abort: self.multipart_abort.load(Relaxed),
            retries: self.retries.load(Relaxed),
            bytes_up: self.bytes_up.load(Relaxed),
            bytes_down: self.bytes_down.load(Relaxed),
        }
    }
}

//! Turning a byte stream into content: read, cut (keyed FastCDC), hash and deduplicate on the
//! reading thread, then compress and encrypt new chunks on the rayon pool while reading goes
//! on. Memory stays bounded: at most [`Flight`]'s budget of chunk bytes is in the air, and
//! chunk-id lists of huge inputs go to list blobs as they fill.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

use bytes::Bytes;

use hoard_core::format::tree::{encode_list, Content, INLINE_CHUNKS, LIST_CHUNKS};
use hoard_core::format::BlobType;
use hoard_core::{Chunker, Id};

use crate::error::{RepoError, Result};
use crate::packer::Packer;

/// Chunk bytes a backup may have handed to sealing workers and not yet sealed.
pub const FLIGHT_BYTES: usize = 16 << 20;

/// A budget of bytes handed to sealing workers and not yet sealed, shared by all readers.
pub struct Flight {
    used: Mutex<usize>,
    freed: Condvar,
    limit: usize,
}

impl Flight {
    pub fn new(limit: usize) -> Flight {
        Flight { used: Mutex::new(0), freed: Condvar::new(), limit }
    }

    fn acquire(&self, n: usize) {
        let mut used = self.used.lock().unwrap();
        // A single chunk larger than the whole budget still goes when nothing else is in flight.
        while *used > 0 && *used + n > self.limit {
            used = self.freed.wait(used).unwrap();
        }
        *used += n;
    }

    fn release(&self, n: usize) {
        *self.used.lock().unwrap() -= n;
        self.freed.notify_all();
    }
}

/// Collects chunk ids and moves them to list blobs when a file has very many.
pub struct ContentBuilder {
    current: Vec<Id>,
    lists: Vec<Id>,
}

impl Default for ContentBuilder {
    fn default() -> Self {
        ContentBuilder::new()
    }
}

impl ContentBuilder {
    pub fn new() -> ContentBuilder {
        ContentBuilder { current: Vec::new(), lists: Vec::new() }
    }

    pub fn push(&mut self, id: Id, packer: &Packer) -> Result<()> {
        self.current.push(id);
        if self.current.len() == LIST_CHUNKS {
            let (list, _) = packer.add(BlobType::Tree, &encode_list(&self.current))?;
            self.lists.push(list);
            self.current.clear();
        }
        Ok(())
    }

    pub fn finish(mut self, packer: &Packer) -> Result<Content> {
        if self.lists.is_empty() && self.current.len() <= INLINE_CHUNKS {
            return Ok(if self.current.is_empty() { Content::None } else { Content::Chunks(self.current) });
        }
        if !self.current.is_empty() {
            let (list, _) = packer.add(BlobType::Tree, &encode_list(&self.current))?;
            self.lists.push(list);
        }
        Ok(Content::Lists(self.lists))
    }

    /// Chunks so far.
    pub fn len(&self) -> usize {
        self.current.len() + self.lists.len() * LIST_CHUNKS
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

thread_local! {
    /// The first block of every input read on this thread, kept between inputs: allocating (and
    /// faulting in) megabytes for every small file cost more than reading it.
    static FIRST: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A first block that held more than this is given back to the system after its input rather
/// than kept: every reader thread would otherwise keep the pages of the largest file it ever
/// read (up to a maximum chunk, 4 MiB) resident for the rest of the backup.
const FIRST_KEPT: usize = 1 << 20;

/// Files at least this large are looked at for a database dump's header ([`looks_like_dump`]).
pub const DUMP_SNIFF_MIN: u64 = 1 << 20;

/// How many leading bytes [`looks_like_dump`] needs.
pub const DUMP_HEAD: usize = 256;

/// Whether `head`, the first bytes of a file, starts a database dump of a kind that a nightly
/// job writes again with small changes scattered through it: plain-text `pg_dump` and
/// `pg_dumpall`, `mysqldump` and `mariadb-dump`, or a Redis RDB file. A file backup cuts such a
/// file with the repository's dump chunker (16 KiB average) rather than the file chunker
/// (1 MiB), as `hoard backup postgres` would: with 1 MiB chunks a few hundred updated rows touch
/// nearly every chunk and the whole dump is stored again every night.
pub fn looks_like_dump(head: &[u8]) -> bool {
    if head.starts_with(b"REDIS0") {
        return true;
    }
    // mariadb-dump may start with a "/*M!999999\- enable the sandbox mode */" line.
    let first_lines = &head[..head.len().min(DUMP_HEAD)];
    let has = |needle: &[u8]| first_lines.windows(needle.len()).any(|w| w == needle);
    (head.starts_with(b"--\n-- PostgreSQL database ") && (has(b"database dump\n") || has(b"database cluster dump\n")))
        || has(b"\n-- MySQL dump ")
        || head.starts_with(b"-- MySQL dump ")
        || has(b"\n-- MariaDB dump ")
        || head.starts_with(b"-- MariaDB dump ")
}

/// Reads into `v` until it holds `want` more bytes or the input ends; returns how many it read.
fn fill(r: &mut dyn Read, v: &mut Vec<u8>, want: usize) -> Result<usize> {
    // `Take::read_to_end` reads into the spare capacity without zeroing it first for a file or
    // a pipe, and stops at `want` bytes even on a pipe that has more.
    let before = v.len();
    loop {
        match r.take((want - (v.len() - before)) as u64).read_to_end(v) {
            Ok(_) => return Ok(v.len() - before),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(RepoError::io("reading", e)),
        }
    }
}

/// The outcome of chunking one stream.
pub struct Chunked {
    pub content: Content,
    pub size: u64,
}

/// Reads `r` to its end and stores its new chunks. An error reading `r` is returned as
/// `Err(Io)`; the chunks already stored stay in the repository unreferenced until prune.
pub fn chunk_stream(
    r: &mut dyn Read,
    chunker: &Chunker,
    packer: &Packer,
    flight: &Flight,
    cancel: &AtomicBool,
    on_read: &(dyn Fn(u64) + Sync),
) -> Result<Chunked> {
    let max = chunker.params().max as usize;
    // The input is read a block at a time. A block starts with the previous block's uncut tail
    // (under `max` bytes, the one copy of input bytes the reader makes) and ends at least `max`
    // bytes later, so the chunker always has a whole chunk's worth to look at. The sealing
    // workers get their chunks as slices of the block, not copies: a block lives until its
    // last chunk is sealed, and `flight` bounds how many are.
    let block_len = 2 * max + (1 << 20);
    let mut ids = ContentBuilder::new();
    let mut size = 0u64;
    let failed: Mutex<Option<RepoError>> = Mutex::new(None);
    let keys = packer.repo().keys();
    if cancel.load(Ordering::Relaxed) {
        return Err(RepoError::Interrupted);
    }
    let mut first = FIRST.with(|b| std::mem::take(&mut *b.borrow_mut()));
    first.clear();
    if first.capacity() < block_len {
        first = Vec::with_capacity(block_len);
    }
    let n = fill(r, &mut first, block_len)?;
    size += n as u64;
    on_read(n as u64);
    if n < block_len && n <= max {
        // The whole input fits in one chunk's worth: cut and seal it here, on the reading
        // thread. Waking the pool for every small file costs more than the work, and the
        // reader threads already run side by side.
        let mut rest = &first[..];
        let r = (|| -> Result<()> {
            while let Some(n) = chunker.cut(rest, true) {
                let data = &rest[..n];
                let id = keys.blob_id(data);
                if packer.claim(&id)? {
                    packer.store(BlobType::Data, id, data)?;
                }
                ids.push(id, packer)?;
                rest = &rest[n..];
            }
            Ok(())
        })();
        if n <= FIRST_KEPT {
            FIRST.with(|b| *b.borrow_mut() = first);
        }
        r?;
        return Ok(Chunked { content: ids.finish(packer)?, size });
    }
    let mut eof = n < block_len;
    let mut block = Bytes::from(first);
    let result = rayon::in_place_scope(|s| -> Result<()> {
        loop {
            let mut start = 0;
            while let Some(n) = chunker.cut(&block[start..], eof) {
                let id = keys.blob_id(&block[start..start + n]);
                if packer.claim(&id)? {
                    let data = block.slice(start..start + n);
                    flight.acquire(n);
                    let failed = &failed;
                    s.spawn(move |_| {
                        if let Err(e) = packer.store(BlobType::Data, id, &data) {
                            failed.lock().unwrap().get_or_insert(e);
                        }
                        flight.release(n);
                    });
                }
                ids.push(id, packer)?;
                start += n;
                if !eof && block.len() - start < max {
                    break;
                }
            }
            if eof {
                return Ok(());
            }
            if cancel.load(Ordering::Relaxed) {
                return Err(RepoError::Interrupted);
            }
            if packer.failed() {
                return Err(RepoError::Invalid("storage failed; see the error below".into()));
            }
            let mut next = Vec::with_capacity(block_len);
            next.extend_from_slice(&block[start..]);
            let want = block_len - next.len();
            let n = fill(r, &mut next, want)?;
            size += n as u64;
            on_read(n as u64);
            eof = n < want;
            block = Bytes::from(next);
        }
    });
    if let Some(e) = failed.into_inner().unwrap() {
        return Err(e);
    }
    result?;
    Ok(Chunked { content: ids.finish(packer)?, size })
}

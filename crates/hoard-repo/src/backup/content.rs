//! Turning a byte stream into content: read, cut (keyed FastCDC), hash and deduplicate on the
//! reading thread, then compress and encrypt new chunks on the rayon pool while reading goes
//! on. Memory stays bounded: at most [`Flight`]'s budget of chunk bytes is in the air, and
//! chunk-id lists of huge inputs go to list blobs as they fill.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

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
    static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
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
    // Reads of 1 MiB behind a chunk's worth of lookahead: a larger buffer per reader thread
    // only adds to memory (4 readers × 8 MiB was the largest single use in a heap profile).
    let read_size = 1 << 20;
    // One buffer per thread, kept between files: allocating (and faulting in) megabytes for
    // every small file cost more than reading it.
    let mut buf = BUF.with(|b| std::mem::take(&mut *b.borrow_mut()));
    if buf.len() < max + read_size {
        buf = vec![0u8; max + read_size];
    }
    let (mut start, mut end, mut eof) = (0usize, 0usize, false);
    let mut ids = ContentBuilder::new();
    let mut size = 0u64;
    let failed: Mutex<Option<RepoError>> = Mutex::new(None);
    let keys = packer.repo().keys();
    let result = rayon::in_place_scope(|s| -> Result<()> {
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(RepoError::Interrupted);
            }
            if !eof && end - start < max {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
                while end < buf.len() {
                    let n = match r.read(&mut buf[end..]) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(RepoError::io("reading", e)),
                    };
                    if n == 0 {
                        eof = true;
                        break;
                    }
                    end += n;
                    size += n as u64;
                    on_read(n as u64);
                    if end - start >= max {
                        break;
                    }
                }
            }
            while let Some(n) = chunker.cut(&buf[start..end], eof) {
                let data = &buf[start..start + n];
                let id = keys.blob_id(data);
                if packer.claim(&id)? {
                    if eof && size as usize <= max {
                        // The whole input fit in one read: seal it here. Waking the pool for
                        // every small file costs more than the work, and the reader threads
                        // already run side by side.
                        packer.store(BlobType::Data, id, data)?;
                    } else {
                        let owned = data.to_vec();
                        flight.acquire(n);
                        let failed = &failed;
                        s.spawn(move |_| {
                            if let Err(e) = packer.store(BlobType::Data, id, &owned) {
                                failed.lock().unwrap().get_or_insert(e);
                            }
                            flight.release(n);
                        });
                    }
                }
                ids.push(id, packer)?;
                start += n;
                if !eof && end - start < max {
                    break;
                }
            }
            if eof && start == end {
                return Ok(());
            }
            if packer.failed() {
                return Err(RepoError::Invalid("storage failed; see the error below".into()));
            }
        }
    });
    BUF.with(|b| *b.borrow_mut() = buf);
    if let Some(e) = failed.into_inner().unwrap() {
        return Err(e);
    }
    result?;
    Ok(Chunked { content: ids.finish(packer)?, size })
}

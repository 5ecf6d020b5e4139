//! Turning a byte stream into content: read, cut (keyed FastCDC), hash and deduplicate on the
//! reading thread, then compress and encrypt new chunks on the rayon pool while reading goes
//! on. A free pool thread also takes the larger part of a dump block's cutting and hashing
//! while the reader reads the next block (`cut_block`); the cuts are the single thread's.
//! Memory stays bounded: at most [`Flight`]'s budget of chunk bytes is in the air, and
//! chunk-id lists of huge inputs go to list blobs as they fill.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

use bytes::Bytes;

use hoard_core::format::tree::{encode_list, Content, INLINE_CHUNKS, LIST_CHUNKS};
use hoard_core::format::BlobType;
use hoard_core::{Chunker, Id, Keys};

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

/// A [`Batch`] goes to the pool once it holds this many bytes or [`BATCH_CHUNKS`] chunks: enough
/// that waking a pool thread costs little against sealing them, few enough that the pool gets
/// work soon after a stream starts.
const BATCH_BYTES: usize = 1 << 20;
const BATCH_CHUNKS: usize = 256;

/// New chunks of small inputs, gathered for one pool task to seal while their reader goes on.
/// For a stream with one reader of many small files, a tar stream: sealed on the reader, as a
/// file walk's readers seal small files (several readers run side by side there), it would
/// leave the pool idle and compress one file at a time.
pub struct Batch<'a, 'scope> {
    scope: &'a rayon::Scope<'scope>,
    packer: &'scope Packer<'scope>,
    flight: &'scope Flight,
    failed: &'scope Mutex<Option<RepoError>>,
    bytes: Vec<u8>,
    /// Each chunk's id and where its bytes end in `bytes`.
    chunks: Vec<(Id, usize)>,
}

impl<'a, 'scope> Batch<'a, 'scope> {
    /// Seals on `scope`'s pool; the first error lands in `failed`, and the caller must check
    /// it once the scope has ended.
    pub fn new(
        scope: &'a rayon::Scope<'scope>,
        packer: &'scope Packer<'scope>,
        flight: &'scope Flight,
        failed: &'scope Mutex<Option<RepoError>>,
    ) -> Batch<'a, 'scope> {
        Batch { scope, packer, flight, failed, bytes: Vec::new(), chunks: Vec::new() }
    }

    /// Whether a batch has failed to seal; the backup cannot succeed then.
    pub fn failed(&self) -> bool {
        self.failed.lock().unwrap().is_some()
    }

    fn add(&mut self, id: Id, data: &[u8]) {
        if self.bytes.capacity() == 0 {
            self.bytes.reserve(BATCH_BYTES.max(data.len()));
        }
        self.bytes.extend_from_slice(data);
        self.chunks.push((id, self.bytes.len()));
        if self.bytes.len() >= BATCH_BYTES || self.chunks.len() >= BATCH_CHUNKS {
            self.flush();
        }
    }

    /// Hands what is gathered to the pool.
    pub fn flush(&mut self) {
        if self.chunks.is_empty() {
            return;
        }
        let (bytes, chunks) = (std::mem::take(&mut self.bytes), std::mem::take(&mut self.chunks));
        let (packer, flight, failed, len) = (self.packer, self.flight, self.failed, bytes.len());
        flight.acquire(len);
        self.scope.spawn(move |_| {
            let mut start = 0;
            for (id, end) in chunks {
                if let Err(e) = packer.store(BlobType::Data, id, &bytes[start..end]) {
                    failed.lock().unwrap().get_or_insert(e);
                    break;
                }
                start = end;
            }
            flight.release(len);
        });
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

/// A chunk of a block: where it starts, its length, its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cut {
    start: usize,
    len: usize,
    id: Id,
}

/// Cuts and hashes `block` from `start` for as long as the chunker can decide (to the end with
/// `eof`, else while at least a maximum chunk is left); returns where it stopped. With `until`,
/// stops at the first chunk boundary at or past it instead.
fn cut_from(
    block: &[u8],
    mut start: usize,
    eof: bool,
    until: Option<usize>,
    chunker: &Chunker,
    keys: &Keys,
    out: &mut Vec<Cut>,
) -> usize {
    while until.is_none_or(|u| start < u) {
        let Some(len) = chunker.cut(&block[start..], eof) else { break };
        out.push(Cut { start, len, id: keys.blob_id(&block[start..start + len]) });
        start += len;
    }
    start
}

/// The second half of a block, cut by a pool thread while the reader cuts the first: taken by
/// whichever of the two gets to it first, so a busy pool never makes the reader wait.
struct Ahead {
    taken: AtomicBool,
    cuts: Mutex<Option<Vec<Cut>>>,
    done: Condvar,
}

impl Ahead {
    /// The pool's side: cut from `mid` unless the reader took the work back first.
    fn run(&self, work: impl FnOnce() -> Vec<Cut>) {
        if self.taken.swap(true, Ordering::AcqRel) {
            return;
        }
        // Whatever happens in `work`, the reader must not wait forever: a panic leaves an empty
        // list (the reader then cuts on alone) and goes on to the scope, which rethrows it.
        struct Publish<'a>(&'a Ahead, Vec<Cut>);
        impl Drop for Publish<'_> {
            fn drop(&mut self) {
                *self.0.cuts.lock().unwrap() = Some(std::mem::take(&mut self.1));
                self.0.done.notify_all();
            }
        }
        let mut publish = Publish(self, Vec::new());
        publish.1 = work();
    }

    /// The reader's side: true if it took the work back before the pool started on it.
    fn reclaim(&self) -> bool {
        !self.taken.swap(true, Ordering::AcqRel)
    }

    /// The reader's side once the pool has the work: its cuts, when done.
    fn wait(&self) -> Vec<Cut> {
        let mut cuts = self.cuts.lock().unwrap();
        loop {
            if let Some(c) = cuts.take() {
                return c;
            }
            cuts = self.done.wait(cuts).unwrap();
        }
    }
}

/// Cuts one block into `out` and returns where the uncut tail starts. Large enough blocks are
/// cut from both ends of a split point at once: a pool thread cuts from the middle as if a
/// chunk started there, the reader from the start up to the middle and then until one of its
/// boundaries is one of the pool's. A cut depends only on the bytes from its chunk's start, so
/// from that shared boundary on the pool's chunks are exactly the reader's; until then the
/// reader's own are used. The cuts are the ones a single thread makes, whoever wins.
///
/// While the pool cuts its part, the reader calls `meanwhile` (it reads the next block), so the
/// pool is given the larger part. When the pool is busy (a night of new data, with chunks to
/// seal), the reader takes its part back and cuts the block alone, as if it had not split.
fn cut_block<'s>(
    scope: &rayon::Scope<'s>,
    block: &Bytes,
    eof: bool,
    chunker: &'s Chunker,
    keys: &'s Keys,
    out: &mut Vec<Cut>,
    meanwhile: &mut dyn FnMut(),
) -> usize {
    let p = chunker.params();
    let (avg, max) = (p.avg as usize, p.max as usize);
    let end = if eof { block.len() } else { block.len().saturating_sub(max) };
    let mid = end / 3;
    // The pool's half should hold enough chunks for the two to meet early in it.
    if end - mid < SPLIT_CHUNKS * avg {
        return cut_from(block, 0, eof, None, chunker, keys, out);
    }
    let ahead =
        std::sync::Arc::new(Ahead { taken: AtomicBool::new(false), cuts: Mutex::new(None), done: Condvar::new() });
    {
        let (ahead, block) = (ahead.clone(), block.clone());
        scope.spawn(move |_| {
            ahead.run(|| {
                let mut v = Vec::with_capacity((block.len() - mid) / avg * 2);
                cut_from(&block, mid, eof, None, chunker, keys, &mut v);
                v
            })
        });
    }
    let start = cut_from(block, 0, eof, Some(mid), chunker, keys, out);
    if ahead.reclaim() {
        return cut_from(block, start, eof, None, chunker, keys, out);
    }
    meanwhile();
    meet(block, start, &ahead.wait(), eof, chunker, keys, out)
}

/// The reader, at `start` (a boundary at or past the split point), cuts on until one of its
/// boundaries is one of `theirs`, takes the rest of `theirs`, and returns where they end. If
/// the two never meet, the reader cuts to the end alone.
fn meet(
    block: &[u8],
    mut start: usize,
    theirs: &[Cut],
    eof: bool,
    chunker: &Chunker,
    keys: &Keys,
    out: &mut Vec<Cut>,
) -> usize {
    let mut k = 0;
    loop {
        while k < theirs.len() && theirs[k].start < start {
            k += 1;
        }
        if k == theirs.len() {
            return cut_from(block, start, eof, None, chunker, keys, out);
        }
        if theirs[k].start == start {
            out.extend_from_slice(&theirs[k..]);
            let last = theirs[theirs.len() - 1];
            return last.start + last.len;
        }
        let Some(len) = chunker.cut(&block[start..], eof) else { return start };
        out.push(Cut { start, len, id: keys.blob_id(&block[start..start + len]) });
        start += len;
    }
}

/// A block is split between the reader and a pool thread only when the pool's half holds at
/// least this many average chunks (dump blocks do; a file chunker's block of 2 maximum chunks
/// and 1 MiB does not).
const SPLIT_CHUNKS: usize = 8;

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
///
/// An input that fits in one block is cut and hashed here, and its new chunks are sealed here
/// too, or go into `batch` for the pool when there is one; a chunk in `batch` may still be
/// unsealed when this returns.
pub fn chunk_stream(
    r: &mut dyn Read,
    chunker: &Chunker,
    packer: &Packer,
    flight: &Flight,
    cancel: &AtomicBool,
    on_read: &(dyn Fn(u64) + Sync),
    mut batch: Option<&mut Batch<'_, '_>>,
) -> Result<Chunked> {
    let max = chunker.params().max as usize;
    // The input is read a block at a time. A block starts with the previous block's uncut tail
    // (under `max` bytes, the one copy of input bytes the reader makes) and ends at least `max`
    // bytes later, so the chunker always has a whole chunk's worth to look at. The sealing
    // workers get their chunks as slices of the block, not copies: a block lives until its
    // last chunk is sealed, and `flight` bounds how many are.
    let block_len = (2 * max + (1 << 20)).max(3 << 20);
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
        // reader threads already run side by side; a single reader batches them instead.
        let mut rest = &first[..];
        let r = (|| -> Result<()> {
            while let Some(n) = chunker.cut(rest, true) {
                let data = &rest[..n];
                let id = keys.blob_id(data);
                if packer.claim(&id)? {
                    match batch.as_mut() {
                        Some(b) => b.add(id, data),
                        None => packer.store(BlobType::Data, id, data)?,
                    }
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
    let mut cuts = Vec::new();
    // The next block's new bytes, read while a pool thread cuts part of this one: they go after
    // `max` bytes of room for this block's uncut tail, which is not known until the cutting ends.
    let mut ahead: Option<(Vec<u8>, Result<usize>)> = None;
    let raw_len = block_len - max;
    let result = rayon::in_place_scope(|s| -> Result<()> {
        loop {
            cuts.clear();
            let start = cut_block(s, &block, eof, chunker, keys, &mut cuts, &mut || {
                if !eof && !cancel.load(Ordering::Relaxed) {
                    let mut next = Vec::with_capacity(block_len);
                    next.resize(max, 0);
                    let n = fill(r, &mut next, raw_len);
                    ahead = Some((next, n));
                }
            });
            for &Cut { start, len, id } in &cuts {
                if packer.claim(&id)? {
                    let data = block.slice(start..start + len);
                    flight.acquire(len);
                    let failed = &failed;
                    s.spawn(move |_| {
                        if let Err(e) = packer.store(BlobType::Data, id, &data) {
                            failed.lock().unwrap().get_or_insert(e);
                        }
                        flight.release(len);
                    });
                }
                ids.push(id, packer)?;
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
            let tail = &block[start..];
            let (next, n, want) = match ahead.take() {
                Some((mut next, n)) => {
                    let n = n?;
                    let from = max - tail.len();
                    next[from..max].copy_from_slice(tail);
                    (Bytes::from(next).slice(from..), n, raw_len)
                }
                None => {
                    let mut next = Vec::with_capacity(block_len);
                    next.extend_from_slice(tail);
                    let want = block_len - next.len();
                    let n = fill(r, &mut next, want)?;
                    (Bytes::from(next), n, want)
                }
            };
            size += n as u64;
            on_read(n as u64);
            eof = n < want;
            block = next;
        }
    });
    if let Some(e) = failed.into_inner().unwrap() {
        return Err(e);
    }
    result?;
    Ok(Chunked { content: ids.finish(packer)?, size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hoard_core::ChunkerParams;

    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        blake3::Hasher::new().update(&seed.to_le_bytes()).finalize_xof().fill(&mut v);
        v
    }

    /// Whatever the split point, a reader that meets the pool's cuts ends with exactly the cuts
    /// and ids one thread makes alone, and stops where it does.
    #[test]
    fn cutting_from_both_ends_gives_the_single_thread_cuts() {
        let keys = hoard_core::MasterKey::generate().keys();
        let chunker = Chunker::new(ChunkerParams::DUMPS, &keys);
        let max = ChunkerParams::DUMPS.max as usize;
        let mut met = 0;
        for seed in 0..24u64 {
            // Low-entropy data (repeated short records) as well as noise: the chunker's min
            // and max rules both come into play.
            let mut block = noise(seed, 900 << 10);
            if seed % 2 == 1 {
                for (i, b) in block.iter_mut().enumerate() {
                    *b = if i % 97 < 90 { b' ' } else { *b % 16 + b'0' };
                }
            }
            for eof in [false, true] {
                let mut alone = Vec::new();
                let end_alone = cut_from(&block, 0, eof, None, &chunker, &keys, &mut alone);
                for mid in [1usize, 4096, 100_000, 333_333, 450_000, block.len() - max - 1] {
                    let mut theirs = Vec::new();
                    cut_from(&block, mid, eof, None, &chunker, &keys, &mut theirs);
                    let mut ours = Vec::new();
                    let start = cut_from(&block, 0, eof, Some(mid), &chunker, &keys, &mut ours);
                    let before = ours.len();
                    let end = meet(&block, start, &theirs, eof, &chunker, &keys, &mut ours);
                    assert_eq!(ours, alone, "seed {seed} mid {mid} eof {eof}");
                    assert_eq!(end, end_alone);
                    // Met within the pool's first three chunks.
                    let tail = &theirs[theirs.len().min(3)..];
                    met += usize::from(ours.len() > before && !tail.is_empty() && ours.ends_with(tail));
                }
            }
        }
        // The two must usually meet early: otherwise the split saves nothing.
        eprintln!("met in {met} of 288 splits");
        assert!(met > 200, "met in {met} of 288 splits");
    }
}

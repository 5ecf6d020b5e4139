//! Packs: many encrypted blobs in one object, followed by the pack's own encrypted list of
//! them, so the index can always be rebuilt from the packs alone.
//!
//! ```text
//! blob … blob | padding | header ciphertext | tag[16] | header_len u32 LE
//! blob     = AES-256-GCM(pack key, nonce = entry.nonce, aad = "hoard blob" type id) + tag
//! header   = AES-256-GCM(pack key, nonce = 0xFFFFFFFF, aad = "hoard pack header" pack_id)
//!            of: version u8 = 1 | varint count | entry… | zero bytes up to a 4 KiB multiple
//! entry    = type u8 | id[32] | varint offset | varint length | varint raw_len | flags u8
//!            (bit 0 = zstd) | varint nonce
//! ```
//! The pack key is derived from the pack's random 256-bit name, so nonces (a counter within the
//! pack) never repeat under one key. Blobs are written in a shuffled order, and the whole pack is
//! padded (Padmé) so its size says little about the sizes of what is inside.

use bytes::Bytes;

use super::{BlobType, MAX_BLOB};
use crate::codec::{Reader, Writer};
use crate::compress;
use crate::crypto::{Cipher, TAG_LEN};
use crate::error::{malformed, Error, Result};
use crate::id::{random_u64, Id};
use crate::keys::Keys;
use crate::padding::padme;

const VERSION: u8 = 1;
const HEADER_NONCE: u32 = u32::MAX;
const HEADER_ALIGN: usize = 4096;
/// Bytes of the trailer that gives the header's length.
pub const TRAILER_LEN: usize = 4;
/// Largest header any pack may have.
pub const MAX_HEADER: usize = 8 << 20;

/// Most blobs a writer puts in one pack. An entry encodes to at most 59 bytes (1 + 32 + three
/// 5-byte and one 10-byte varint + 1), so 100,000 entries stay under [`MAX_HEADER`] however
/// small the blobs are; a pack of many tiny blobs is finished at this count before it reaches
/// its target size.
pub const MAX_ENTRIES: usize = 100_000;
/// Smallest encoded entry: type, id, four one-byte varints (offset, length, raw_len, nonce)
/// and flags.
const MIN_ENTRY: usize = 1 + 32 + 4 + 1;
/// A pack past its target size stays open while Padmé would pad it by at least this much:
/// the blobs that come next fill bytes that would otherwise be random padding.
const FILL_SLACK: u64 = 16 << 10;
/// … but only up to 1/16 past the target, so memory and the pack size stay bounded.
const FILL_MAX_DIV: usize = 16;

/// Where one blob sits in a pack and how to open it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub blob_type: BlobType,
    pub id: Id,
    pub offset: u64,
    /// Stored length: ciphertext plus tag.
    pub length: u32,
    /// Plaintext length.
    pub raw_len: u32,
    pub compressed: bool,
    pub nonce: u32,
}

pub(crate) fn encode_entry(w: &mut Writer, e: &PackEntry) {
    w.u8(e.blob_type as u8)
        .id(&e.id)
        .varint(e.offset)
        .varint(e.length.into())
        .varint(e.raw_len.into())
        .u8(e.compressed as u8)
        .varint(e.nonce.into());
}

pub(crate) fn decode_entry(r: &mut Reader) -> Result<PackEntry> {
    let blob_type = BlobType::from_u8(r.u8()?)?;
    let id = r.id()?;
    let offset = r.varint()?;
    let length = r.u32_varint()?;
    let raw_len = r.u32_varint()?;
    let flags = r.u8()?;
    if flags > 1 {
        return Err(malformed("pack entry", format!("unknown flags {flags:#x}")));
    }
    let nonce = r.u32_varint()?;
    if length as usize > MAX_BLOB + TAG_LEN || raw_len as usize > MAX_BLOB || (length as usize) < TAG_LEN {
        return Err(malformed("pack entry", format!("blob length {length}/{raw_len} out of range")));
    }
    Ok(PackEntry { blob_type, id, offset, length, raw_len, compressed: flags & 1 == 1, nonce })
}

pub(crate) fn min_entry_len() -> usize {
    MIN_ENTRY
}

/// Bytes of `v` as a varint.
fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn blob_aad(t: BlobType, id: &Id) -> Vec<u8> {
    let mut w = Writer::new();
    w.raw(b"hoard blob").u8(t as u8).id(id);
    w.finish()
}

fn header_aad(pack: &Id) -> Vec<u8> {
    let mut w = Writer::new();
    w.raw(b"hoard pack header").id(pack);
    w.finish()
}

/// Assembles one pack in memory. Not thread-safe by design: the pipeline gives each worker
/// its own builder, so blobs are sealed without a lock.
///
/// Sealed blobs are kept back to back in one buffer, each compressed and encrypted where it
/// lies: no blob has an allocation of its own, and [`PackBuilder::finish`] hands the buffer on
/// as shuffled slices without copying it.
pub struct PackBuilder {
    id: Id,
    cipher: Cipher,
    next_nonce: u32,
    buf: Vec<u8>,
    /// One per blob, in the order added; `offset` is the blob's place in `buf`.
    entries: Vec<PackEntry>,
    /// Encoded length of the entries so far, leaving out their offsets (which the shuffle in
    /// [`PackBuilder::finish`] changes).
    entry_bytes: usize,
}

/// A finished pack: its pieces in file order (write them back to back) and its entries.
pub struct FinishedPack {
    pub id: Id,
    pub pieces: Vec<Bytes>,
    pub entries: Vec<PackEntry>,
    pub len: u64,
}

impl PackBuilder {
    pub fn new(keys: &Keys) -> PackBuilder {
        PackBuilder::with_capacity(keys, 0)
    }

    /// A builder whose buffer holds `capacity` bytes of sealed blobs before it grows (growing
    /// copies what it holds): a pack's target size plus its largest blob. Only the bytes
    /// written take memory.
    pub fn with_capacity(keys: &Keys, capacity: usize) -> PackBuilder {
        let id = Id::random();
        PackBuilder {
            id,
            cipher: keys.pack_cipher(&id),
            next_nonce: 0,
            buf: Vec::with_capacity(capacity),
            entries: Vec::new(),
            entry_bytes: 0,
        }
    }

    pub fn id(&self) -> Id {
        self.id
    }

    /// Bytes of sealed blobs so far.
    pub fn size(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True once the pack should be finished: at [`MAX_ENTRIES`] blobs, or once it has reached
    /// `target` bytes and either Padmé would pad it by less than `FILL_SLACK` (16 KiB) or it is
    /// 1/`FILL_MAX_DIV` (1/16) past the target.
    ///
    /// Finishing a pack as soon as it reaches its target would pad it by half a Padmé step on
    /// average (256 KiB at 16 MiB), about 1.5% of what a backup stores. The blobs that come
    /// next go into that room instead. Which padded lengths a pack can have does not change.
    pub fn is_full(&self, target: usize) -> bool {
        if self.entries.len() >= MAX_ENTRIES {
            return true;
        }
        if self.buf.len() < target {
            return false;
        }
        let bound = self.unpadded_bound();
        padme(bound) - bound < FILL_SLACK || self.buf.len() >= target + target / FILL_MAX_DIV
    }

    /// Length before padding were the pack finished now, or a little more: every entry's
    /// offset is counted at the length of the largest.
    pub fn unpadded_bound(&self) -> u64 {
        let n = self.entries.len();
        let header = 1 + varint_len(n as u64) + self.entry_bytes + n * varint_len(self.buf.len() as u64);
        (self.buf.len() + header.div_ceil(HEADER_ALIGN) * HEADER_ALIGN + TAG_LEN + TRAILER_LEN) as u64
    }

    /// Compresses (at `level`, unless that does not shrink it) and encrypts one blob. Returns
    /// its sealed length.
    pub fn add(&mut self, blob_type: BlobType, id: Id, plaintext: &[u8], level: i32) -> usize {
        assert!(plaintext.len() <= MAX_BLOB, "blob of {} bytes exceeds the format's limit", plaintext.len());
        let start = self.buf.len();
        let compressed = compress::compress_into(plaintext, level, &mut self.buf);
        if !compressed {
            self.buf.reserve(plaintext.len() + TAG_LEN);
            self.buf.extend_from_slice(plaintext);
        }
        self.seal_last(blob_type, id, start, plaintext.len() as u32, compressed, &blob_aad(blob_type, &id))
    }

    /// Seals `buf[start..]`, the stored form of one blob, and records its entry. Returns its
    /// sealed length.
    fn seal_last(
        &mut self,
        blob_type: BlobType,
        id: Id,
        start: usize,
        raw_len: u32,
        compressed: bool,
        aad: &[u8],
    ) -> usize {
        let nonce = self.next_nonce;
        self.next_nonce += 1;
        self.cipher.seal_from(nonce, aad, &mut self.buf, start);
        let length = self.buf.len() - start;
        self.entry_bytes +=
            1 + 32 + varint_len(length as u64) + varint_len(raw_len.into()) + 1 + varint_len(nonce.into());
        self.entries.push(PackEntry {
            blob_type,
            id,
            offset: start as u64,
            length: length as u32,
            raw_len,
            compressed,
            nonce,
        });
        length
    }

    /// Moves every blob of `other` into this pack as it is stored (compressed or not, so
    /// nothing is compressed twice): each is opened with `other`'s key and sealed again with
    /// this pack's, under this pack's next nonce.
    ///
    /// A backup ends with one partly filled pack per worker; merged this way, a night that
    /// stores a few MiB writes one data pack instead of one per worker, with one padding.
    pub fn absorb(&mut self, other: PackBuilder) -> Result<()> {
        for e in &other.entries {
            let start = self.buf.len();
            self.buf.extend_from_slice(&other.buf[e.offset as usize..][..e.length as usize]);
            let aad = blob_aad(e.blob_type, &e.id);
            if let Err(err) = other.cipher.open_from(e.nonce, &aad, &mut self.buf, start, "blob") {
                // This pack stays as it was: only whole blobs are in it.
                self.buf.truncate(start);
                return Err(err);
            }
            self.seal_last(e.blob_type, e.id, start, e.raw_len, e.compressed, &aad);
        }
        Ok(())
    }

    /// Shuffles the blobs, appends padding, the sealed header and the trailer.
    pub fn finish(mut self) -> FinishedPack {
        // Fisher-Yates with the OS CSPRNG: the order must not reveal the order of the input.
        for i in (1..self.entries.len()).rev() {
            let j = (random_u64() % (i as u64 + 1)) as usize;
            self.entries.swap(i, j);
        }
        let all = Bytes::from(self.buf);
        let mut pieces = Vec::with_capacity(self.entries.len() + 2);
        let mut offset = 0u64;
        for e in &mut self.entries {
            let at = e.offset as usize;
            pieces.push(all.slice(at..at + e.length as usize));
            e.offset = offset;
            offset += u64::from(e.length);
        }
        let entries = self.entries;
        let mut h = Writer::new();
        h.u8(VERSION).varint(entries.len() as u64);
        for e in &entries {
            encode_entry(&mut h, e);
        }
        let mut header = h.finish();
        header.resize(header.len().div_ceil(HEADER_ALIGN) * HEADER_ALIGN, 0);
        self.cipher.seal(HEADER_NONCE, &header_aad(&self.id), &mut header);
        let header_len = header.len() as u32;
        let unpadded = offset + header.len() as u64 + TRAILER_LEN as u64;
        let pad = (padme(unpadded) - unpadded) as usize;
        if pad > 0 {
            let mut p = vec![0u8; pad];
            // Unpredictable, so nobody can tell where the padding starts and recover the
            // unpadded length.
            let mut seed = [0u8; 32];
            crate::id::fill_random(&mut seed);
            blake3::Hasher::new_keyed(&seed).finalize_xof().fill(&mut p);
            pieces.push(Bytes::from(p));
        }
        header.extend_from_slice(&header_len.to_le_bytes());
        pieces.push(Bytes::from(header));
        FinishedPack { id: self.id, pieces, entries, len: padme(unpadded) }
    }
}

/// How many bytes from the end of a pack to read to be likely to get the whole header at once.
pub const TAIL_GUESS: usize = 64 << 10;

/// Given the last bytes of a pack (at least the trailer), the total length of the tail needed
/// to decode its header: header ciphertext plus trailer.
pub fn header_span(tail: &[u8], pack_len: u64) -> Result<usize> {
    if tail.len() < TRAILER_LEN {
        return Err(malformed("pack", "shorter than its trailer"));
    }
    let n = u32::from_le_bytes(tail[tail.len() - 4..].try_into().unwrap()) as usize;
    if n > MAX_HEADER || (n + TRAILER_LEN) as u64 > pack_len || n < TAG_LEN {
        return Err(malformed("pack", format!("header length {n} out of range for a pack of {pack_len} bytes")));
    }
    Ok(n + TRAILER_LEN)
}

/// Authenticates and decodes a pack's header from its tail (which must hold at least
/// [`header_span`] bytes). Checks every entry lies before the header.
pub fn decode_header(keys: &Keys, pack: &Id, tail: &[u8], pack_len: u64) -> Result<Vec<PackEntry>> {
    let span = header_span(tail, pack_len)?;
    if tail.len() < span {
        return Err(malformed("pack", "tail shorter than header"));
    }
    let mut buf = tail[tail.len() - span..tail.len() - TRAILER_LEN].to_vec();
    keys.pack_cipher(pack).open(HEADER_NONCE, &header_aad(pack), &mut buf, "pack header")?;
    let mut r = Reader::new(&buf, "pack header");
    let version = r.u8()?;
    if version != VERSION {
        return Err(Error::UnsupportedVersion {
            what: "pack header",
            found: version.into(),
            supported: VERSION.into(),
        });
    }
    let count = r.count(MIN_ENTRY)?;
    let blobs_end = pack_len - span as u64;
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let e = decode_entry(&mut r)?;
        if e.offset.checked_add(e.length as u64).is_none_or(|end| end > blobs_end) {
            return Err(malformed("pack header", format!("blob {} lies outside the pack", e.id.short())));
        }
        entries.push(e);
    }
    if r.rest().iter().any(|&b| b != 0) {
        return Err(malformed("pack header", "non-zero bytes after the entries"));
    }
    Ok(entries)
}

/// Authenticates, decrypts and decompresses one blob, then checks it hashes to its id: a blob
/// that comes back from here is exactly what was stored.
pub fn open_blob(keys: &Keys, pack: &Id, e: &PackEntry, stored: &[u8]) -> Result<Vec<u8>> {
    open_blob_owned(keys, pack, e, stored.to_vec())
}

/// As [`open_blob`], decrypting `stored` in place: for a blob read into a buffer of its own,
/// which this saves copying.
pub fn open_blob_owned(keys: &Keys, pack: &Id, e: &PackEntry, stored: Vec<u8>) -> Result<Vec<u8>> {
    open_blob_with(&keys.pack_cipher(pack), keys, e, stored)
}

/// As [`open_blob_owned`] with the pack's cipher already derived.
pub fn open_blob_with(cipher: &Cipher, keys: &Keys, e: &PackEntry, mut buf: Vec<u8>) -> Result<Vec<u8>> {
    if buf.len() != e.length as usize {
        return Err(malformed("blob", format!("{} bytes, expected {}", buf.len(), e.length)));
    }
    cipher.open(e.nonce, &blob_aad(e.blob_type, &e.id), &mut buf, "blob")?;
    open_decrypted(keys, e, buf)
}

fn open_decrypted(keys: &Keys, e: &PackEntry, buf: Vec<u8>) -> Result<Vec<u8>> {
    let plain = if e.compressed {
        compress::decompress(&buf, e.raw_len as usize)?
    } else {
        if buf.len() != e.raw_len as usize {
            return Err(malformed("blob", "stored length differs from plaintext length"));
        }
        buf
    };
    if keys.blob_id(&plain) != e.id {
        return Err(Error::IdMismatch { what: "blob", expected: e.id.to_hex() });
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;

    #[test]
    fn build_and_read_back() {
        let k = MasterKey::generate().keys();
        let mut b = PackBuilder::new(&k);
        let blobs: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 1000 + i as usize * 37]).collect();
        for x in &blobs {
            b.add(BlobType::Data, k.blob_id(x), x, 3);
        }
        let id = b.id();
        let p = b.finish();
        let bytes: Vec<u8> = p.pieces.concat();
        assert_eq!(bytes.len() as u64, p.len);
        let entries = decode_header(&k, &id, &bytes, p.len).unwrap();
        assert_eq!(entries, p.entries);
        for e in &entries {
            let got = open_blob(&k, &id, e, &bytes[e.offset as usize..][..e.length as usize]).unwrap();
            assert_eq!(k.blob_id(&got), e.id);
        }
        // The header does not open under another pack's name.
        assert!(decode_header(&k, &Id::random(), &bytes, p.len).is_err());
        // A flipped byte in a blob is caught.
        let e = entries[0];
        let mut bad = bytes[e.offset as usize..][..e.length as usize].to_vec();
        bad[3] ^= 0x40;
        assert!(open_blob(&k, &id, &e, &bad).is_err());
    }

    /// Fills a builder with incompressible blobs of `size` bytes until it is full at `target`;
    /// returns the finished pack and its length before padding, read off its own trailer.
    fn fill(target: usize, size: usize) -> (FinishedPack, u64) {
        let k = MasterKey::generate().keys();
        let mut b = PackBuilder::new(&k);
        while !b.is_full(target) {
            let mut x = vec![0u8; size];
            crate::id::fill_random(&mut x);
            b.add(BlobType::Data, k.blob_id(&x), &x, 3);
            let bound = b.unpadded_bound();
            // The bound is never below what finishing now would give, and at most one header
            // alignment step above it.
            let unpadded = {
                let n = b.entries.len();
                let header: usize = b
                    .entries
                    .iter()
                    .map(|e| {
                        let mut w = Writer::new();
                        encode_entry(&mut w, e);
                        w.finish().len()
                    })
                    .sum::<usize>()
                    + 1
                    + varint_len(n as u64);
                (b.buf.len() + header.div_ceil(HEADER_ALIGN) * HEADER_ALIGN + TAG_LEN + TRAILER_LEN) as u64
            };
            assert!(bound >= unpadded && bound - unpadded <= HEADER_ALIGN as u64, "{bound} against {unpadded}");
        }
        let p = b.finish();
        let bytes: Vec<u8> = p.pieces.concat();
        let header_len = u32::from_le_bytes(bytes[bytes.len() - TRAILER_LEN..].try_into().unwrap()) as u64;
        let blobs: u64 = p.entries.iter().map(|e| u64::from(e.length)).sum();
        let unpadded = blobs + header_len + TRAILER_LEN as u64;
        assert_eq!(p.len, padme(unpadded));
        (p, unpadded)
    }

    #[test]
    fn a_full_pack_takes_blobs_into_its_padding() {
        // Small blobs: the pack stays open past its target until Padmé would add less than
        // FILL_SLACK, where finishing at the target would have padded it by up to a whole step
        // (32 KiB at 1 MiB, 512 KiB at 16 MiB).
        for target in [1 << 20, 3 << 20] {
            let (p, unpadded) = fill(target, 1000);
            let blobs: u64 = p.entries.iter().map(|e| u64::from(e.length)).sum();
            assert!(blobs >= target as u64);
            assert!(p.len - unpadded < FILL_SLACK, "{target}: padded {} to {}", unpadded, p.len);
        }
        // Blobs larger than a Padmé step rarely leave less than FILL_SLACK: the pack is
        // finished 1/16 past its target at the latest.
        let (p, _) = fill(1 << 20, 100 << 10);
        let blobs: u64 = p.entries.iter().map(|e| u64::from(e.length)).sum();
        assert!(blobs < (1 << 20) + (1 << 20) / FILL_MAX_DIV as u64 + (100 << 10) + TAG_LEN as u64);
    }

    #[test]
    fn absorbed_blobs_open_under_the_new_packs_key() {
        let k = MasterKey::generate().keys();
        let mut a = PackBuilder::new(&k);
        let mut b = PackBuilder::new(&k);
        let mut noise = vec![0u8; 5000];
        crate::id::fill_random(&mut noise);
        let blobs: Vec<Vec<u8>> = vec![vec![1; 3000], noise, b"tree".repeat(100), vec![]];
        a.add(BlobType::Data, k.blob_id(&blobs[0]), &blobs[0], 3);
        for (i, x) in blobs.iter().enumerate().skip(1) {
            let t = if i == 2 { BlobType::Tree } else { BlobType::Data };
            b.add(t, k.blob_id(x), x, 3);
        }
        let sizes = a.size() + b.size();
        a.absorb(b).unwrap();
        assert_eq!(a.size(), sizes, "stored as they were, not compressed again");
        let id = a.id();
        let p = a.finish();
        let bytes: Vec<u8> = p.pieces.concat();
        let entries = decode_header(&k, &id, &bytes, p.len).unwrap();
        assert_eq!(entries.len(), 4);
        let nonces: std::collections::BTreeSet<u32> = entries.iter().map(|e| e.nonce).collect();
        assert_eq!(nonces.len(), 4, "every blob has a nonce of its own under the new key");
        for e in &entries {
            let got = open_blob(&k, &id, e, &bytes[e.offset as usize..][..e.length as usize]).unwrap();
            assert!(blobs.contains(&got));
            assert_eq!(e.compressed, got.len() != 5000 && !got.is_empty());
            assert_eq!(e.blob_type == BlobType::Tree, got == blobs[2]);
        }
    }

    #[test]
    fn a_pack_of_max_entries_tiny_blobs_fits_its_header_limit() {
        // Regression: only the byte target ended a pack, so a backup of very many tiny files
        // wrote a header larger than MAX_HEADER that no reader would accept.
        let k = MasterKey::generate().keys();
        let mut b = PackBuilder::new(&k);
        for i in 0..MAX_ENTRIES as u32 {
            assert!(!b.is_full(16 << 20));
            let x = i.to_le_bytes();
            b.add(BlobType::Data, k.blob_id(&x), &x, 3);
        }
        assert!(b.is_full(16 << 20));
        let id = b.id();
        let p = b.finish();
        let bytes: Vec<u8> = p.pieces.concat();
        let entries = decode_header(&k, &id, &bytes, p.len).unwrap();
        assert_eq!(entries.len(), MAX_ENTRIES);
    }

    #[test]
    fn smallest_entries_decode_in_an_index_segment() {
        // Regression: MIN_ENTRY counted one varint too many (39 bytes, not 38), so an index
        // segment whose last pack held only tiny blobs at small offsets was rejected as
        // malformed ("length 2 exceeds 1") although hoard itself had written it.
        use crate::format::index::{IndexPack, IndexSegment};
        let e = |offset: u64, length: u32| PackEntry {
            blob_type: BlobType::Data,
            id: Id([7; 32]),
            offset,
            length,
            raw_len: length - TAG_LEN as u32,
            compressed: false,
            nonce: offset as u32,
        };
        let seg = IndexSegment {
            packs: vec![IndexPack { id: Id([1; 32]), len: 4200, entries: vec![e(0, 40), e(40, 40)] }],
            superseded: vec![],
        };
        assert_eq!(IndexSegment::decode(&seg.encode()).unwrap(), seg);
        let mut w = Writer::new();
        encode_entry(&mut w, &e(0, 40));
        assert_eq!(w.finish().len(), MIN_ENTRY, "MIN_ENTRY is the smallest encoded entry");
    }
}

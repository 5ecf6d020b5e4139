//! Fuzzes `IndexSegment::decode`: never panics, and whatever decodes re-encodes to bytes that
//! decode to an equal segment. The input also drives a generator of well-formed segments, each
//! of which must survive encode then decode (so the decoder accepts all the encoder writes).
#![no_main]

use hoard_core::crypto::TAG_LEN;
use hoard_core::format::index::{IndexPack, IndexSegment};
use hoard_core::format::pack::PackEntry;
use hoard_core::format::{BlobType, MAX_BLOB};
use hoard_core::Id;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fn entry(u: &mut Unstructured) -> Result<PackEntry> {
    Ok(PackEntry {
        blob_type: if u.arbitrary()? { BlobType::Tree } else { BlobType::Data },
        id: Id(u.arbitrary()?),
        offset: u.arbitrary()?,
        length: u.int_in_range(TAG_LEN as u32..=(MAX_BLOB + TAG_LEN) as u32)?,
        raw_len: u.int_in_range(0..=MAX_BLOB as u32)?,
        compressed: u.arbitrary()?,
        nonce: u.arbitrary()?,
    })
}

fn segment(u: &mut Unstructured) -> Result<IndexSegment> {
    let mut packs = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        let id = Id(u.arbitrary()?);
        let len = u.arbitrary()?;
        let mut entries = Vec::new();
        for _ in 0..u.int_in_range(0..=6)? {
            entries.push(entry(u)?);
        }
        packs.push(IndexPack { id, len, entries });
    }
    let mut superseded = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        superseded.push(Id(u.arbitrary()?));
    }
    Ok(IndexSegment { packs, superseded })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(seg) = IndexSegment::decode(data) {
        let again = IndexSegment::decode(&seg.encode()).expect("a re-encoded index segment must decode");
        assert_eq!(again, seg);
    }
    if let Ok(seg) = segment(&mut Unstructured::new(data)) {
        let decoded = IndexSegment::decode(&seg.encode());
        assert_eq!(decoded.as_ref(), Ok(&seg), "an encoded index segment must decode to itself");
    }
});

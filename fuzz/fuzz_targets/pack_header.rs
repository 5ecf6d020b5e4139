//! Fuzzes `pack::decode_header` (and `header_span`) under a fixed key and pack name: on arbitrary
//! tail bytes, and on fuzzer-chosen header plaintext sealed the way a writer seals it, so the
//! entry parsing behind authentication is reached. Never panics; every decoded entry lies before
//! the header; the entries survive an index-segment round trip.
#![no_main]

mod common;

use std::sync::Once;

use hoard_core::format::index::{IndexPack, IndexSegment};
use hoard_core::format::pack::{decode_header, header_span, PackBuilder, PackEntry, TRAILER_LEN};
use hoard_core::format::BlobType;
use libfuzzer_sys::fuzz_target;

use common::{header_aad, keys, take_u64, take_u8, HEADER_NONCE, PACK};

/// Checks once that the header associated data rebuilt in `common` is what hoard-core uses, so
/// the sealed mode really reaches the parser.
fn sanity() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let k = keys();
        let mut b = PackBuilder::new(k);
        b.add(BlobType::Data, k.blob_id(b"x"), b"x", 0);
        let id = b.id();
        let p = b.finish();
        let bytes = p.pieces.concat();
        let span = header_span(&bytes, p.len).unwrap();
        let mut h = bytes[bytes.len() - span..bytes.len() - TRAILER_LEN].to_vec();
        k.pack_cipher(&id).open(HEADER_NONCE, &header_aad(&id), &mut h, "t").expect("header aad");
    });
}

fn check(tail: &[u8], pack_len: u64, entries: Vec<PackEntry>) {
    let span = header_span(tail, pack_len).expect("a decoded header has a valid span") as u64;
    let blobs_end = pack_len - span;
    for e in &entries {
        assert!(e.offset + u64::from(e.length) <= blobs_end, "{e:?} past {blobs_end}");
    }
    let seg = IndexSegment { packs: vec![IndexPack { id: PACK, len: pack_len, entries }], superseded: vec![] };
    let again = IndexSegment::decode(&seg.encode()).expect("decoded entries must re-encode");
    assert_eq!(again, seg);
}

fuzz_target!(|data: &[u8]| {
    sanity();
    let mut data = data;
    let (Some(mode), Some(extra)) = (take_u8(&mut data), take_u64(&mut data)) else { return };
    let k = keys();
    if mode & 1 == 0 {
        // Arbitrary tail bytes and an arbitrary pack length.
        let _ = header_span(data, extra);
        if let Ok(entries) = decode_header(k, &PACK, data, extra) {
            check(data, extra, entries);
        }
    } else {
        // Fuzzer-chosen header plaintext, sealed as a writer would, after `extra` bytes of blobs.
        let mut tail = data.to_vec();
        k.pack_cipher(&PACK).seal(HEADER_NONCE, &header_aad(&PACK), &mut tail);
        let n = tail.len() as u32;
        tail.extend_from_slice(&n.to_le_bytes());
        let pack_len = (extra & 0xffff_ffff) + tail.len() as u64;
        match decode_header(k, &PACK, &tail, pack_len) {
            Ok(entries) => check(&tail, pack_len, entries),
            Err(e) => {
                assert!(!matches!(e, hoard_core::Error::Auth { .. }), "a correctly sealed header failed authentication")
            }
        }
    }
});

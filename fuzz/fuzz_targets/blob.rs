//! Fuzzes `pack::open_blob` under a fixed key and pack name. The first byte picks a mode:
//! arbitrary stored bytes under an arbitrary (well-formed) entry; fuzzer-chosen plaintext sealed
//! as a pack writer would, so decompression and the id check behind authentication are reached;
//! or a whole pack built from the input, read back through its header.
#![no_main]

mod common;

use hoard_core::format::pack::{decode_header, open_blob, PackBuilder, PackEntry};
use hoard_core::format::{BlobType, MAX_BLOB};
use hoard_core::{Error, Id};
use libfuzzer_sys::fuzz_target;

use common::{blob_aad, keys, take, take_u32, take_u8, PACK};

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let (Some(mode), Some(flags), Some(nonce), Some(raw_len)) =
        (take_u8(&mut data), take_u8(&mut data), take_u32(&mut data), take_u32(&mut data))
    else {
        return;
    };
    let k = keys();
    let blob_type = if flags & 1 == 0 { BlobType::Data } else { BlobType::Tree };
    let compressed = flags & 2 != 0;
    // Entries only ever come from `decode_entry`, which bounds the plaintext length.
    let raw_len = raw_len % (MAX_BLOB as u32 + 1);
    match mode % 3 {
        0 => {
            let Some(id) = take(&mut data, 32) else { return };
            let e = PackEntry {
                blob_type,
                id: Id::from_slice(id).unwrap(),
                offset: 0,
                length: data.len() as u32,
                raw_len,
                compressed,
                nonce,
            };
            let _ = open_blob(k, &PACK, &e, data);
        }
        1 => {
            let id = if compressed { Id([0x44; 32]) } else { k.blob_id(data) };
            let mut stored = data.to_vec();
            k.pack_cipher(&PACK).seal(nonce, &blob_aad(blob_type, &id), &mut stored);
            let e = PackEntry { blob_type, id, offset: 0, length: stored.len() as u32, raw_len, compressed, nonce };
            let r = open_blob(k, &PACK, &e, &stored);
            assert!(!matches!(r, Err(Error::Auth { .. })), "a correctly sealed blob failed authentication");
            if !compressed && raw_len as usize == data.len() {
                assert_eq!(r.unwrap(), data);
            }
        }
        _ => {
            // Up to four blobs, cut where the input says.
            let level = [0, 1, 3][flags as usize % 3];
            let mut b = PackBuilder::new(k);
            let mut blobs = Vec::new();
            let mut rest = data;
            for cut in nonce.to_le_bytes() {
                let n = (cut as usize * 4).min(rest.len());
                let (x, y) = rest.split_at(n);
                blobs.push(x);
                rest = y;
            }
            blobs.push(rest);
            for x in &blobs {
                b.add(blob_type, k.blob_id(x), x, level);
            }
            let id = b.id();
            let p = b.finish();
            let bytes = p.pieces.concat();
            assert_eq!(bytes.len() as u64, p.len);
            let entries = decode_header(k, &id, &bytes, p.len).expect("a built pack's header decodes");
            assert_eq!(entries, p.entries);
            for e in &entries {
                let stored = &bytes[e.offset as usize..][..e.length as usize];
                let plain = open_blob(k, &id, e, stored).expect("a built pack's blob opens");
                assert_eq!(k.blob_id(&plain), e.id);
                assert!(blobs.contains(&plain.as_slice()));
            }
        }
    }
});

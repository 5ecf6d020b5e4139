//! Fuzzes `object::open` under a fixed key and name. The first byte picks a mode: arbitrary
//! object bytes; fuzzer-chosen plaintext sealed as a writer would (reaching the compression flag
//! and zstd behind authentication); a seal/open round trip; or a real zstd frame with one byte
//! altered, sealed, so the decompressor sees near-valid input.
#![no_main]

mod common;

use hoard_core::format::{object, ObjectKind};
use hoard_core::Error;
use libfuzzer_sys::fuzz_target;

use common::{keys, object_aad, take_u8, NAME};

fn seal_plain(kind: ObjectKind, plain: &[u8]) -> Vec<u8> {
    let mut buf = plain.to_vec();
    keys().object_cipher(kind as u8, &NAME).seal(0, &object_aad(kind, &NAME), &mut buf);
    let mut out = b"HRDO".to_vec();
    out.push(1);
    out.push(kind as u8);
    out.extend_from_slice(&buf);
    out
}

fn not_auth(r: &Result<Vec<u8>, Error>) {
    assert!(!matches!(r, Err(Error::Auth { .. })), "a correctly sealed object failed authentication");
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let (Some(mode), Some(k)) = (take_u8(&mut data), take_u8(&mut data)) else { return };
    let kind = ObjectKind::ALL[k as usize % ObjectKind::ALL.len()];
    let keys = keys();
    match mode % 4 {
        0 => {
            let _ = object::open(keys, kind, &NAME, data);
        }
        1 => {
            let r = object::open(keys, kind, &NAME, &seal_plain(kind, data));
            not_auth(&r);
            if data.first() == Some(&0) {
                assert_eq!(r.unwrap(), &data[1..]);
            }
        }
        2 => {
            let level = [0, 1, 3][k as usize % 3];
            let sealed = object::seal(keys, kind, &NAME, data, level);
            assert_eq!(object::open(keys, kind, &NAME, &sealed).unwrap(), data);
            let other = ObjectKind::ALL[(kind as usize + 1) % ObjectKind::ALL.len()];
            assert!(object::open(keys, other, &NAME, &sealed).is_err());
        }
        _ => {
            let Some(pos) = take_u8(&mut data) else { return };
            let Some(flip) = take_u8(&mut data) else { return };
            let Ok(mut frame) = zstd::bulk::compress(data, 1) else { return };
            let i = pos as usize % frame.len();
            frame[i] ^= flip;
            let mut plain = vec![1u8];
            let mut n = data.len() as u64;
            while n >= 0x80 {
                plain.push(n as u8 | 0x80);
                n >>= 7;
            }
            plain.push(n as u8);
            plain.extend_from_slice(&frame);
            let r = object::open(keys, kind, &NAME, &seal_plain(kind, &plain));
            not_auth(&r);
            if flip == 0 {
                assert_eq!(r.unwrap(), data);
            }
        }
    }
});

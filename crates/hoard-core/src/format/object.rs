//! Sealed objects: snapshots, index segments and locks. Each is encrypted under a key of its own,
//! derived from its kind and random 256-bit name, with the header and name as associated data:
//! storage cannot rename, retype or alter one undetected.
//!
//! ```text
//! "HRDO" | version u8 = 1 | kind u8 | AES-256-GCM(nonce 0, plaintext) | tag[16]
//! plaintext = 0x00 body | 0x01 varint(raw_len) zstd(body)
//! ```

use super::ObjectKind;
use crate::codec::{Reader, Writer};
use crate::compress;
use crate::error::{malformed, Error, Result};
use crate::id::Id;
use crate::keys::Keys;

pub const MAGIC: &[u8; 4] = b"HRDO";
const VERSION: u8 = 1;
/// Largest body a sealed object may hold once decompressed.
pub const MAX_OBJECT: usize = 1 << 30;

fn aad(kind: ObjectKind, name: &Id) -> Vec<u8> {
    let mut w = Writer::new();
    w.raw(MAGIC).u8(VERSION).u8(kind as u8).id(name);
    w.finish()
}

/// Encrypts `body` as an object of `kind` named `name`.
pub fn seal(keys: &Keys, kind: ObjectKind, name: &Id, body: &[u8], level: i32) -> Vec<u8> {
    let mut plain = Writer::new();
    match compress::compress(body, level) {
        Some(c) => {
            plain.u8(1).varint(body.len() as u64).raw(&c);
        }
        None => {
            plain.u8(0).raw(body);
        }
    }
    let mut buf = plain.finish();
    keys.object_cipher(kind as u8, name).seal(0, &aad(kind, name), &mut buf);
    let mut out = Vec::with_capacity(6 + buf.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&buf);
    out
}

/// Authenticates and decrypts an object; fails if it is not exactly the `kind` object `name`.
pub fn open(keys: &Keys, kind: ObjectKind, name: &Id, bytes: &[u8]) -> Result<Vec<u8>> {
    let what = kind.name();
    let mut r = Reader::new(bytes, what);
    if r.take(4)? != MAGIC {
        return Err(malformed(what, "bad magic"));
    }
    let version = r.u8()?;
    if version != VERSION {
        return Err(Error::UnsupportedVersion { what, found: version.into(), supported: VERSION.into() });
    }
    if r.u8()? != kind as u8 {
        return Err(Error::Auth { what });
    }
    let mut buf = r.rest().to_vec();
    keys.object_cipher(kind as u8, name).open(0, &aad(kind, name), &mut buf, what)?;
    let mut r = Reader::new(&buf, what);
    match r.u8()? {
        0 => Ok(r.rest().to_vec()),
        1 => {
            let raw = r.len(MAX_OBJECT)?;
            compress::decompress(r.rest(), raw)
        }
        f => Err(malformed(what, format!("unknown compression flag {f}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;

    #[test]
    fn bound_to_kind_and_name() {
        let k = MasterKey::generate().keys();
        let n = Id::random();
        let body = b"snapshot body ".repeat(50);
        let s = seal(&k, ObjectKind::Snapshot, &n, &body, 3);
        assert_eq!(open(&k, ObjectKind::Snapshot, &n, &s).unwrap(), body);
        assert!(open(&k, ObjectKind::Index, &n, &s).is_err());
        assert!(open(&k, ObjectKind::Snapshot, &Id::random(), &s).is_err());
        let mut t = s.clone();
        *t.last_mut().unwrap() ^= 1;
        assert!(open(&k, ObjectKind::Snapshot, &n, &t).is_err());
        assert!(open(&k, ObjectKind::Snapshot, &n, &s[..10]).is_err());
    }
}

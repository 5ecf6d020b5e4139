//! Key files: the master key wrapped by one password. A repository may hold several (one per
//! person or machine); each is an object under `keys/` named by a random id.
//!
//! ```text
//! "HRDKEY\0\0" | version u32 = 1 | memory_kib u32 | iterations u32 | parallelism u32 | salt[32]
//! | created_unix_ns i64 | varint-len host | varint-len user
//! | AES-256-GCM(key = argon2id(password, salt), nonce 0, aad = every byte before this)
//!     of master[64] | repo_id[32]
//! | tag[16]
//! ```
//! The wrapping key is fresh for every key file (fresh salt), so nonce 0 is used once per key.

use crate::codec::{Reader, Writer};
use crate::crypto::{Cipher, TAG_LEN};
use crate::error::{malformed, Error, Result};
use crate::id::{fill_random, Id};
use crate::keys::{KdfParams, MasterKey, MASTER_LEN};

pub const MAGIC: &[u8; 8] = b"HRDKEY\0\0";
const VERSION: u32 = 1;

/// Who made a key and when; shown by `hoard key list`, authenticated but not secret.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyMeta {
    pub created_ns: i64,
    pub host: String,
    pub user: String,
}

/// A decoded (still locked) key file.
#[derive(Clone, Debug)]
pub struct KeyFile {
    pub kdf: KdfParams,
    pub salt: [u8; 32],
    pub meta: KeyMeta,
    header: Vec<u8>,
    sealed: Vec<u8>,
}

impl KeyFile {
    /// Wraps `master` with `password`.
    pub fn create(master: &MasterKey, repo_id: &Id, password: &[u8], kdf: KdfParams, meta: KeyMeta) -> Result<Vec<u8>> {
        let mut salt = [0u8; 32];
        fill_random(&mut salt);
        let wrap = kdf.derive(password, &salt)?;
        let mut w = Writer::new();
        w.raw(MAGIC).u32(VERSION).u32(kdf.memory_kib).u32(kdf.iterations).u32(kdf.parallelism).raw(&salt);
        w.u64(meta.created_ns as u64).str(&meta.host).str(&meta.user);
        let header = w.finish();
        let mut secret = Vec::with_capacity(MASTER_LEN + 32 + TAG_LEN);
        secret.extend_from_slice(master.as_bytes());
        secret.extend_from_slice(repo_id.as_bytes());
        Cipher::new(&wrap).seal(0, &header, &mut secret);
        let mut out = header;
        out.extend_from_slice(&secret);
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<KeyFile> {
        let mut r = Reader::new(bytes, "key file");
        if r.take(8)? != MAGIC {
            return Err(malformed("key file", "bad magic"));
        }
        let version = r.u32()?;
        if version != VERSION {
            return Err(Error::UnsupportedVersion { what: "key file", found: version, supported: VERSION });
        }
        let kdf = KdfParams { memory_kib: r.u32()?, iterations: r.u32()?, parallelism: r.u32()? };
        let salt: [u8; 32] = r.take(32)?.try_into().unwrap();
        let created_ns = r.u64()? as i64;
        let host = r.string()?;
        let user = r.string()?;
        let header_len = bytes.len() - r.remaining();
        let sealed = r.take(MASTER_LEN + 32 + TAG_LEN)?.to_vec();
        r.end()?;
        Ok(KeyFile {
            kdf,
            salt,
            meta: KeyMeta { created_ns, host, user },
            header: bytes[..header_len].to_vec(),
            sealed,
        })
    }

    /// Unwraps the master key; [`Error::WrongPassword`] when the password (or the file) is wrong.
    pub fn open(&self, password: &[u8]) -> Result<(MasterKey, Id)> {
        let wrap = self.kdf.derive(password, &self.salt)?;
        let mut buf = self.sealed.clone();
        Cipher::new(&wrap).open(0, &self.header, &mut buf, "key file").map_err(|_| Error::WrongPassword)?;
        let master: [u8; MASTER_LEN] = buf[..MASTER_LEN].try_into().unwrap();
        let repo = Id::from_slice(&buf[MASTER_LEN..])?;
        zeroize::Zeroize::zeroize(&mut buf);
        Ok((MasterKey::from_bytes(master), repo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unwrap() {
        let kdf = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };
        let m = MasterKey::generate();
        let repo = Id::random();
        let meta = KeyMeta { created_ns: 5, host: "h".into(), user: "u".into() };
        let b = KeyFile::create(&m, &repo, b"pw", kdf, meta.clone()).unwrap();
        let k = KeyFile::decode(&b).unwrap();
        assert_eq!(k.meta, meta);
        let (m2, r2) = k.open(b"pw").unwrap();
        assert_eq!(m2.as_bytes(), m.as_bytes());
        assert_eq!(r2, repo);
        assert!(matches!(k.open(b"wrong"), Err(Error::WrongPassword)));
        // Tampering with the authenticated metadata is caught as well.
        let mut t = b.clone();
        let pos = t.len() - 60 - 50;
        t[pos] ^= 1;
        if let Ok(k) = KeyFile::decode(&t) {
            assert!(k.open(b"pw").is_err());
        }
    }
}

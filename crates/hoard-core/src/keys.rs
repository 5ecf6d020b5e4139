//! The master key and everything derived from it.
//!
//! A repository has one random 64-byte master secret. Passwords only wrap it (argon2id, see
//! [`crate::format::keyfile`]), so changing or adding a password never re-encrypts data. Every
//! other key is derived from the master secret with BLAKE3's `derive_key` under a fixed context
//! string, so no two purposes ever share a key.

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::crypto::Cipher;
use crate::error::{Error, Result};
use crate::id::{fill_random, Id};

/// Length of the master secret.
pub const MASTER_LEN: usize = 64;

const CTX_BLOB_ID: &str = "hoard 2026-11-23 blob id key v1";
const CTX_GEAR: &str = "hoard 2026-11-23 chunker gear table v1";
const CTX_PACK: &str = "hoard 2026-11-23 pack key derivation v1";
const CTX_OBJECT: &str = "hoard 2026-11-23 object key derivation v1";
const CTX_CONFIG_MAC: &str = "hoard 2026-11-23 config mac v1";

/// The repository's master secret. Zeroed on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; MASTER_LEN]);

impl MasterKey {
    pub fn generate() -> MasterKey {
        let mut b = [0u8; MASTER_LEN];
        fill_random(&mut b);
        MasterKey(b)
    }

    pub fn from_bytes(b: [u8; MASTER_LEN]) -> MasterKey {
        MasterKey(b)
    }

    pub fn as_bytes(&self) -> &[u8; MASTER_LEN] {
        &self.0
    }

    /// Derives the working keys.
    pub fn keys(&self) -> Keys {
        Keys {
            blob_id: blake3::derive_key(CTX_BLOB_ID, &self.0),
            gear: blake3::derive_key(CTX_GEAR, &self.0),
            pack: blake3::derive_key(CTX_PACK, &self.0),
            object: blake3::derive_key(CTX_OBJECT, &self.0),
            config_mac: blake3::derive_key(CTX_CONFIG_MAC, &self.0),
        }
    }
}

/// The working keys of an unlocked repository.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Keys {
    blob_id: [u8; 32],
    gear: [u8; 32],
    pack: [u8; 32],
    object: [u8; 32],
    config_mac: [u8; 32],
}

impl Keys {
    /// The id of a blob: BLAKE3 keyed with a repository secret, so storage cannot test whether
    /// the repository holds a known piece of content.
    pub fn blob_id(&self, plaintext: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.blob_id, plaintext).as_bytes())
    }

    /// A hasher for the blob id of data fed in pieces.
    pub fn blob_hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.blob_id)
    }

    /// The 256-entry gear table of the keyed chunker, expanded from a repository secret.
    pub fn gear_table(&self) -> Box<[u64; 256]> {
        let mut xof = blake3::Hasher::new_keyed(&self.gear).finalize_xof();
        let mut bytes = [0u8; 256 * 8];
        xof.fill(&mut bytes);
        let mut t = Box::new([0u64; 256]);
        for (i, c) in bytes.chunks_exact(8).enumerate() {
            t[i] = u64::from_le_bytes(c.try_into().unwrap());
        }
        t
    }

    /// The cipher of one pack: a key of its own, derived from the pack's random name.
    pub fn pack_cipher(&self, pack: &Id) -> Cipher {
        Cipher::new(blake3::keyed_hash(&self.pack, pack.as_bytes()).as_bytes())
    }

    /// The cipher of one sealed object (snapshot, index segment, lock), derived from its kind
    /// and random name.
    pub fn object_cipher(&self, kind: u8, name: &Id) -> Cipher {
        let mut h = blake3::Hasher::new_keyed(&self.object);
        h.update(&[kind]);
        h.update(name.as_bytes());
        Cipher::new(h.finalize().as_bytes())
    }

    /// The MAC that authenticates the plaintext repository config.
    pub fn config_mac(&self, bytes: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.config_mac, bytes).as_bytes()
    }
}

/// argon2id parameters, stored in every key file so they can be raised later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 4 lanes: RFC 9106's second recommended option ("if much less memory
    /// is available"), and well above OWASP's floor of 19 MiB with 2 passes. The lanes are
    /// computed side by side on the rayon pool, so every command that opens a repository waits
    /// less: `hoard snapshots` on the 2-core benchmark machine took 87 ms instead of 130 ms with
    /// one lane (hyperfine, 20 runs each). Existing key files keep their own parameters;
    /// `hoard key passwd` rewraps with these.
    fn default() -> Self {
        KdfParams { memory_kib: 64 * 1024, iterations: 3, parallelism: 4 }
    }
}

impl KdfParams {
    /// Derives the 32-byte key-wrapping key from a password.
    pub fn derive(&self, password: &[u8], salt: &[u8; 32]) -> Result<[u8; 32]> {
        if self.memory_kib > 4 * 1024 * 1024 || self.iterations > 100 || self.parallelism > 64 {
            return Err(Error::Invalid(format!("argon2 parameters too large: {self:?}")));
        }
        let params = argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
            .map_err(|e| Error::Invalid(format!("argon2 parameters {self:?}: {e}")))?;
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = [0u8; 32];
        a.hash_password_into(password, salt, &mut out).map_err(|e| Error::Invalid(format!("argon2: {e}")))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_differ_by_purpose() {
        let m = MasterKey::from_bytes([1u8; MASTER_LEN]);
        let k = m.keys();
        let a = Id([9u8; 32]);
        assert_ne!(k.blob_id(b"x"), k.blob_id(b"y"));
        assert_eq!(k.blob_id(b"x"), k.blob_id(b"x"));
        let other = MasterKey::from_bytes([2u8; MASTER_LEN]).keys();
        assert_ne!(k.blob_id(b"x"), other.blob_id(b"x"));
        assert_ne!(k.gear_table()[..], other.gear_table()[..]);
        // Same name, different kind: different keys.
        let mut buf = b"p".to_vec();
        k.object_cipher(1, &a).seal(0, b"", &mut buf);
        assert!(k.object_cipher(2, &a).open(0, b"", &mut buf.clone(), "t").is_err());
        assert!(k.object_cipher(1, &a).open(0, b"", &mut buf, "t").is_ok());
    }

    /// The derivation is argon2id as the reference implementation computes it, with one lane
    /// and with four (computed side by side): the expected keys come from another
    /// implementation, argon2-cffi 25 (the C reference code), `hash_secret_raw(password, salt,
    /// time_cost=3, memory_cost=256, parallelism=P, hash_len=32, type=Type.ID)`.
    #[test]
    fn kdf_matches_the_reference_argon2id_with_one_lane_and_with_four() {
        let salt: [u8; 32] = std::array::from_fn(|i| i as u8);
        let password = b"correct horse battery staple";
        for (lanes, want) in [
            (1, "1da6a4b5f3c2709fc978e72b3f9502d514608526d5f6d1daf5fa8441256bf9fa"),
            (4, "9173ae691119a80f5e206def6209c26b97c5f046afa80bd16b073e35c6d1bb9e"),
        ] {
            let kdf = KdfParams { memory_kib: 256, iterations: 3, parallelism: lanes };
            let got = kdf.derive(password, &salt).unwrap();
            let hex: String = got.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, want, "{lanes} lanes");
        }
    }
}

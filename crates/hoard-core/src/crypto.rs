//! AES-256-GCM sealing. Every key used here is derived for exactly one pack or one object from a
//! random 256-bit name, so a (key, nonce) pair never repeats however many hosts write: within a
//! pack, nonces are a counter; an object is sealed once under its own key.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce, Tag};

use crate::error::{Error, Result};

/// Length of the GCM tag appended to every ciphertext.
pub const TAG_LEN: usize = 16;

/// An AES-256-GCM key for one pack or one object.
#[derive(Clone)]
pub struct Cipher(Aes256Gcm);

fn nonce(counter: u32) -> Nonce<aes_gcm::aead::consts::U12> {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&counter.to_le_bytes());
    *Nonce::from_slice(&n)
}

impl Cipher {
    pub fn new(key: &[u8; 32]) -> Cipher {
        Cipher(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key)))
    }

    /// Encrypts `buf` in place and appends the tag.
    pub fn seal(&self, counter: u32, aad: &[u8], buf: &mut Vec<u8>) {
        self.seal_from(counter, aad, buf, 0);
    }

    /// Encrypts `buf[from..]` in place and appends the tag: sealing the last of several
    /// ciphertexts kept back to back in one buffer.
    pub fn seal_from(&self, counter: u32, aad: &[u8], buf: &mut Vec<u8>, from: usize) {
        let tag = self
            .0
            .encrypt_in_place_detached(&nonce(counter), aad, &mut buf[from..])
            .expect("AES-GCM cannot fail for buffers below 64 GiB");
        buf.extend_from_slice(&tag);
    }

    /// Authenticates and decrypts `buf` (ciphertext followed by tag) in place; on success `buf`
    /// holds the plaintext.
    pub fn open(&self, counter: u32, aad: &[u8], buf: &mut Vec<u8>, what: &'static str) -> Result<()> {
        self.open_from(counter, aad, buf, 0, what)
    }

    /// As [`Cipher::open`] for `buf[from..]`: on success `buf[from..]` holds the plaintext.
    pub fn open_from(
        &self,
        counter: u32,
        aad: &[u8],
        buf: &mut Vec<u8>,
        from: usize,
        what: &'static str,
    ) -> Result<()> {
        if buf.len() < from + TAG_LEN {
            return Err(Error::Auth { what });
        }
        let split = buf.len() - TAG_LEN;
        let tag = Tag::clone_from_slice(&buf[split..]);
        buf.truncate(split);
        self.0.decrypt_in_place_detached(&nonce(counter), aad, &mut buf[from..], &tag).map_err(|_| Error::Auth { what })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let c = Cipher::new(&[7u8; 32]);
        let mut buf = b"hello world".to_vec();
        c.seal(3, b"aad", &mut buf);
        assert_eq!(buf.len(), 11 + TAG_LEN);
        let mut ok = buf.clone();
        c.open(3, b"aad", &mut ok, "t").unwrap();
        assert_eq!(ok, b"hello world");
        let mut wrong_nonce = buf.clone();
        assert!(c.open(4, b"aad", &mut wrong_nonce, "t").is_err());
        let mut wrong_aad = buf.clone();
        assert!(c.open(3, b"aae", &mut wrong_aad, "t").is_err());
        let mut flipped = buf.clone();
        flipped[0] ^= 1;
        assert!(c.open(3, b"aad", &mut flipped, "t").is_err());
        let mut short = vec![1u8; 5];
        assert!(c.open(3, b"aad", &mut short, "t").is_err());
    }
}

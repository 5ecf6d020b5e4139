//! 256-bit identifiers: blob ids (keyed BLAKE3 of the plaintext) and the random names of packs,
//! index segments, snapshots, keys and locks.

use std::fmt;

use crate::error::{malformed, Result};

/// Length of every id in bytes.
pub const ID_LEN: usize = 32;

/// A 256-bit identifier, shown as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Id(pub [u8; ID_LEN]);

impl Id {
    /// A fresh random id from the operating system's CSPRNG.
    pub fn random() -> Id {
        let mut b = [0u8; ID_LEN];
        fill_random(&mut b);
        Id(b)
    }

    pub fn from_slice(b: &[u8]) -> Result<Id> {
        let arr: [u8; ID_LEN] = b.try_into().map_err(|_| malformed("id", format!("{} bytes, expected 32", b.len())))?;
        Ok(Id(arr))
    }

    pub fn as_bytes(&self) -> &[u8; ID_LEN] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Result<Id> {
        let mut b = [0u8; ID_LEN];
        hex::decode_to_slice(s, &mut b).map_err(|e| malformed("id", format!("{s:?}: {e}")))?;
        Ok(Id(b))
    }

    /// The first 8 hex digits, as listings show them.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

/// Fills `buf` from the operating system's CSPRNG. A machine without one cannot run hoard
/// safely at all, so failure panics (ending the operation) rather than returning predictable
/// bytes.
pub fn fill_random(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the operating system's random number generator failed");
}

/// A uniformly random u64 from the CSPRNG.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    fill_random(&mut b);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = Id::random();
        assert_eq!(Id::from_hex(&id.to_hex()).unwrap(), id);
        assert!(Id::from_hex("abc").is_err());
        assert_eq!(id.short().len(), 8);
    }
}

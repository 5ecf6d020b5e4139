//! Shared by the fuzz targets: the fixed repository key and object names they decode under, and
//! the associated data hoard-core binds into packs and objects, rebuilt here so a target can
//! seal fuzzer-chosen plaintext and so reach the parsing behind authentication.
#![allow(dead_code)]

use std::sync::OnceLock;

use hoard_core::format::{BlobType, ObjectKind};
use hoard_core::{Id, Keys, MasterKey};

/// The fixed pack name the targets decode pack bytes under.
pub const PACK: Id = Id([0x11; 32]);
/// The fixed object name the targets open sealed objects under.
pub const NAME: Id = Id([0x22; 32]);
/// The nonce hoard-core seals a pack header with.
pub const HEADER_NONCE: u32 = u32::MAX;

/// The working keys of a fixed master key, derived once per process.
pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| MasterKey::from_bytes([0x5a; 64]).keys())
}

/// Associated data of a pack header (`"hoard pack header" | pack id`).
pub fn header_aad(pack: &Id) -> Vec<u8> {
    let mut v = b"hoard pack header".to_vec();
    v.extend_from_slice(pack.as_bytes());
    v
}

/// Associated data of one blob in a pack (`"hoard blob" | type | id`).
pub fn blob_aad(t: BlobType, id: &Id) -> Vec<u8> {
    let mut v = b"hoard blob".to_vec();
    v.push(t as u8);
    v.extend_from_slice(id.as_bytes());
    v
}

/// Associated data of a sealed object (`"HRDO" | version 1 | kind | name`).
pub fn object_aad(kind: ObjectKind, name: &Id) -> Vec<u8> {
    let mut v = b"HRDO".to_vec();
    v.push(1);
    v.push(kind as u8);
    v.extend_from_slice(name.as_bytes());
    v
}

/// Splits `n` bytes off the front of `data`, or `None` if it is shorter.
pub fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if data.len() < n {
        return None;
    }
    let (a, b) = data.split_at(n);
    *data = b;
    Some(a)
}

pub fn take_u8(data: &mut &[u8]) -> Option<u8> {
    take(data, 1).map(|b| b[0])
}

pub fn take_u32(data: &mut &[u8]) -> Option<u32> {
    take(data, 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()))
}

pub fn take_u64(data: &mut &[u8]) -> Option<u64> {
    take(data, 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()))
}

pub fn take_u16(data: &mut &[u8]) -> Option<u16> {
    take(data, 2).map(|b| u16::from_le_bytes(b.try_into().unwrap()))
}

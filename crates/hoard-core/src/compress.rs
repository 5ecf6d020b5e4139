//! zstd compression of blobs. A blob is stored raw when compression does not shrink it, so
//! incompressible data costs one flag and no CPU on restore.

use std::cell::RefCell;

use crate::crypto::TAG_LEN;
use crate::error::{malformed, Result};

thread_local! {
    /// One compression context per thread and level. A fresh context per blob (what
    /// `zstd::bulk::compress` does) allocates and clears about a megabyte of tables each time,
    /// which cost more than compressing a small file.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Compresses `data` at `level`; `None` when the result would not be smaller.
///
/// The result is allocated at its exact size plus room for an AEAD tag, so that sealing it in
/// place never reallocates.
pub fn compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    if !compress_into(data, level, &mut out) {
        return None;
    }
    // Shrinking in place (glibc splits the block, or mremaps a large one) copies nothing.
    out.shrink_to(out.len() + TAG_LEN);
    Some(out)
}

/// Appends `data` compressed at `level` to `out` and returns true; returns false, with `out`
/// as it was, when the result would not be smaller. Room for an AEAD tag after the result is
/// reserved too. A pack builder compresses straight into its pack this way, so no blob has an
/// allocation of its own.
pub fn compress_into(data: &[u8], level: i32, out: &mut Vec<u8>) -> bool {
    if level == 0 || data.len() < 64 {
        return false;
    }
    COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().is_none_or(|(l, _)| *l != level) {
            let Ok(c) = zstd::bulk::Compressor::new(level) else { return false };
            *cell = Some((level, c));
        }
        let Some((_, c)) = cell.as_mut() else { return false };
        let start = out.len();
        out.reserve(zstd::zstd_safe::compress_bound(data.len()) + TAG_LEN);
        let mut at = std::io::Cursor::new(&mut *out);
        at.set_position(start as u64);
        match c.compress_to_buffer(data, &mut at) {
            Ok(n) if n < data.len() => true,
            _ => {
                out.truncate(start);
                false
            }
        }
    })
}

/// The most a zstd frame can expand: a block holds at most 128 KiB and costs at least 4 bytes (a
/// 3-byte header and one byte repeated, an RLE block).
const MAX_RATIO: usize = (128 << 10) / 4;

/// Decompresses into exactly `raw_len` bytes; anything else is an error, so a lying length in
/// storage cannot make us return short data, nor allocate more than the frame could hold: the
/// length must match the size the frame's header declares, and be within zstd's largest possible
/// expansion of `data`, before anything is allocated.
pub fn decompress(data: &[u8], raw_len: usize) -> Result<Vec<u8>> {
    match zstd::zstd_safe::get_frame_content_size(data) {
        Ok(Some(n)) if n != raw_len as u64 => {
            return Err(malformed("compressed blob", format!("frame holds {n} bytes, expected {raw_len}")));
        }
        Ok(_) => {}
        Err(_) => return Err(malformed("compressed blob", "not a zstd frame")),
    }
    if raw_len / MAX_RATIO > data.len() {
        return Err(malformed("compressed blob", format!("{} bytes cannot expand to {raw_len}", data.len())));
    }
    let mut out = Vec::with_capacity(raw_len);
    let n = DECOMPRESSOR
        .with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.is_none() {
                *cell = Some(zstd::bulk::Decompressor::new()?);
            }
            cell.as_mut().expect("set above").decompress_to_buffer(data, &mut out)
        })
        .map_err(|e| malformed("compressed blob", e.to_string()))?;
    if n != raw_len {
        return Err(malformed("compressed blob", format!("{n} bytes, expected {raw_len}")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_incompressible() {
        let text = b"abcabcabc".repeat(1000);
        let c = compress(&text, 3).unwrap();
        assert!(c.len() < text.len());
        assert_eq!(decompress(&c, text.len()).unwrap(), text);
        assert!(decompress(&c, text.len() - 1).is_err());
        let mut noise = vec![0u8; 4096];
        crate::id::fill_random(&mut noise);
        assert!(compress(&noise, 3).is_none());
    }

    /// Found by the `object` fuzz target under a 256 MiB allocation cap: a sealed object whose
    /// raw length said 533,362,300 bytes in front of a few bytes that are not a zstd frame, and
    /// which was allocated before the frame was looked at.
    #[test]
    fn a_lying_length_is_refused_before_it_is_allocated() {
        let not_a_frame = b"\x00\xfa0\x0bdb1.example\x04root";
        assert!(decompress(not_a_frame, 533_362_300).is_err());
        let text = b"abcabcabc".repeat(1000);
        let c = compress(&text, 3).unwrap();
        let e = decompress(&c, 1 << 30).unwrap_err().to_string();
        assert!(e.contains("frame holds 9000 bytes"), "{e}");
        // A frame that does not declare its size is held to zstd's largest expansion.
        let mut z = zstd::bulk::Compressor::new(3).unwrap();
        z.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(false)).unwrap();
        let undeclared = z.compress(&text).unwrap();
        assert_eq!(decompress(&undeclared, text.len()).unwrap(), text);
        let e = decompress(&undeclared, undeclared.len() * MAX_RATIO + MAX_RATIO).unwrap_err().to_string();
        assert!(e.contains("cannot expand"), "{e}");
    }
}

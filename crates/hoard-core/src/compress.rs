//! zstd compression of blobs. A blob is stored raw when compression does not shrink it, so
//! incompressible data costs one flag and no CPU on restore.

use crate::error::{malformed, Result};

/// Compresses `data` at `level`; `None` when the result would not be smaller.
pub fn compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    if level == 0 || data.len() < 64 {
        return None;
    }
    let mut out = zstd::bulk::compress(data, level).ok()?;
    // zstd allocates its worst-case bound, about the input's size. A pack builder holds every
    // blob until the pack is full, and 16 MiB of well-compressed blobs would otherwise keep
    // their inputs' size allocated: a 20:1 dump held 20 packs' worth of memory per pack.
    out.shrink_to_fit();
    (out.len() < data.len()).then_some(out)
}

/// Decompresses into exactly `raw_len` bytes; anything else is an error, so a lying length in
/// storage cannot make us allocate more than it claims or return short data.
pub fn decompress(data: &[u8], raw_len: usize) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(raw_len);
    let n = zstd::bulk::Decompressor::new()
        .and_then(|mut d| d.decompress_to_buffer(data, &mut out))
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
}

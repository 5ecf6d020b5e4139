//! Padmé padding (Nikitin et al., "Reducing Metadata Leakage from Encrypted Files and
//! Communication with PURBs", 2019): rounds a length up so that only O(log log n) bits of it
//! remain visible, at most 12.5% overhead for small objects and at most 1/32 (3.1%) for objects of 1 MiB to
//! 2^40 bytes, such as packs.

/// The padded length for an object of `len` bytes.
pub fn padme(len: u64) -> u64 {
    if len < 2 {
        return len;
    }
    let e = 63 - len.leading_zeros() as u64; // floor(log2 len)
    let s = 64 - e.leading_zeros() as u64; // floor(log2 e) + 1
    let last_bits = e - s;
    let mask = (1u64 << last_bits) - 1;
    (len + mask) & !mask
}

#[cfg(test)]
mod tests {
    use super::padme;

    #[test]
    fn padme_bounds() {
        // The bounds the module documentation states, over every length up to 64 KiB and a
        // sweep of larger ones.
        let larger = (16..62).flat_map(|e| [(1u64 << e) + 1, (3u64 << (e - 1)) + 7, (2u64 << e) - 1]);
        for len in (0..65_536u64).chain(larger) {
            let p = padme(len);
            assert!(p >= len);
            assert!((p - len) * 8 <= len, "{len} -> {p}: more than 12.5%");
            if ((1 << 20)..(1 << 40)).contains(&len) {
                assert!((p - len) * 32 <= len, "{len} -> {p}: more than 1/32");
            }
        }
        // 16 MiB + 1 rounds to the next 512 KiB step.
        assert_eq!(padme((16 << 20) + 1), (16 << 20) + (512 << 10));
    }
}

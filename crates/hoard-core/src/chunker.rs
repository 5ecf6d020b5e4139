//! Keyed content-defined chunking: FastCDC 2020 (the `fastcdc` crate's cut routine) driven by a
//! gear table expanded from a repository secret. The canonical FastCDC table is public, so with
//! it anybody could predict where a known file is cut and recognise it by its chunk sizes; with
//! a keyed table, cut points depend on the repository key.
//!
//! The chunker is a pure function over a buffer: callers own reading. [`Chunker::cut`] answers
//! "where does the next chunk end", or "I need more bytes" while fewer than `max` bytes are
//! buffered and the input has not ended.

use fastcdc::v2020::{cut_gear, select_masks, Normalization};

use crate::error::{Error, Result};
use crate::keys::Keys;

/// Minimum, average and maximum chunk sizes in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkerParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl ChunkerParams {
    /// Default for file trees: 1 MiB average (see docs/FORMAT.md for why).
    pub const FILES: ChunkerParams = ChunkerParams { min: 256 << 10, avg: 1 << 20, max: 4 << 20 };
    /// Default for database dumps: scattered row updates touch every 1 MiB chunk of a dump,
    /// so dumps are cut much finer (16 KiB average; docs/FORMAT.md says why, and
    /// `dumps::postgres_pgbench_night_two_stores_less_than_restic_and_restores_identically`
    /// measures it). Repositories record their parameters, so older ones keep theirs.
    pub const DUMPS: ChunkerParams = ChunkerParams { min: 4 << 10, avg: 16 << 10, max: 64 << 10 };
    /// The dumps default of repositories made before 16 KiB became the default (and of the
    /// golden vectors recorded then).
    pub const DUMPS_64K: ChunkerParams = ChunkerParams { min: 16 << 10, avg: 64 << 10, max: 256 << 10 };

    /// Parameters for an average size; min = avg/4, max = avg*4, as FastCDC recommends.
    pub fn with_avg(avg: u32) -> Result<ChunkerParams> {
        let p = ChunkerParams { min: avg / 4, avg, max: avg.saturating_mul(4) };
        p.validate()?;
        Ok(p)
    }

    pub fn validate(&self) -> Result<()> {
        let ok = self.avg.is_power_of_two()
            && (1024..=(4 << 20)).contains(&self.avg)
            && self.min >= 256
            && self.min < self.avg
            && self.avg < self.max
            && self.max <= 16 << 20
            && self.min.is_multiple_of(2)
            && self.max.is_multiple_of(2);
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "chunk sizes {self:?}: the average must be a power of two from 1 KiB to 4 MiB, \
                 min < avg < max <= 16 MiB, min >= 256, all even"
            )))
        }
    }
}

/// A keyed FastCDC chunker.
pub struct Chunker {
    params: ChunkerParams,
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
    mask_s: u64,
    mask_l: u64,
}

impl Chunker {
    pub fn new(params: ChunkerParams, keys: &Keys) -> Chunker {
        Chunker::with_gear(params, keys.gear_table())
    }

    /// A chunker over an explicit gear table (tests and golden vectors).
    pub fn with_gear(params: ChunkerParams, gear: Box<[u64; 256]>) -> Chunker {
        let mut gear_ls = Box::new([0u64; 256]);
        for (ls, g) in gear_ls.iter_mut().zip(gear.iter()) {
            *ls = g << 1;
        }
        let (mask_s, mask_l) = select_masks(params.avg as usize, Normalization::Level1);
        Chunker { params, gear, gear_ls, mask_s, mask_l }
    }

    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// The length of the chunk that starts at `buf[0]`, or `None` when more input is needed
    /// to decide (fewer than `max` bytes buffered and `eof` is false). With `eof`, an empty
    /// buffer yields `None`.
    pub fn cut(&self, buf: &[u8], eof: bool) -> Option<usize> {
        if buf.is_empty() || (!eof && buf.len() < self.params.max as usize) {
            return None;
        }
        let (_, n) = cut_gear(
            buf,
            self.params.min as usize,
            self.params.avg as usize,
            self.params.max as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear[..],
            &self.gear_ls[..],
        );
        Some(n)
    }

    /// All chunk lengths of a complete buffer (tests, golden vectors, benches).
    pub fn lengths(&self, mut data: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        while let Some(n) = self.cut(data, true) {
            out.push(n);
            data = &data[n..];
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;

    fn data(n: usize, seed: u8) -> Vec<u8> {
        let mut v = vec![0u8; n];
        blake3::Hasher::new().update(&[seed]).finalize_xof().fill(&mut v);
        v
    }

    #[test]
    fn streaming_matches_whole_buffer_and_respects_bounds() {
        let k = MasterKey::from_bytes([3; 64]).keys();
        let c = Chunker::new(ChunkerParams::with_avg(16 << 10).unwrap(), &k);
        let d = data(1 << 20, 1);
        let lens = c.lengths(&d);
        assert_eq!(lens.iter().sum::<usize>(), d.len());
        for &l in &lens[..lens.len() - 1] {
            assert!((4 << 10..=64 << 10).contains(&l), "{l}");
        }
        // Feeding in small reads gives the same cuts.
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for piece in d.chunks(7_777) {
            buf.extend_from_slice(piece);
            while let Some(n) = c.cut(&buf, false) {
                got.push(n);
                buf.drain(..n);
            }
        }
        while let Some(n) = c.cut(&buf, true) {
            got.push(n);
            buf.drain(..n);
        }
        assert_eq!(got, lens);
    }

    #[test]
    fn cut_points_depend_on_the_key() {
        let p = ChunkerParams::with_avg(8 << 10).unwrap();
        let d = data(256 << 10, 2);
        let a = Chunker::new(p, &MasterKey::from_bytes([1; 64]).keys()).lengths(&d);
        let b = Chunker::new(p, &MasterKey::from_bytes([2; 64]).keys()).lengths(&d);
        assert_ne!(a, b);
    }

    #[test]
    fn insert_shifts_only_nearby_cuts() {
        let k = MasterKey::from_bytes([4; 64]).keys();
        let c = Chunker::new(ChunkerParams::with_avg(8 << 10).unwrap(), &k);
        let d = data(512 << 10, 3);
        let mut e = d.clone();
        e.splice(100_000..100_000, b"inserted bytes".iter().copied());
        let ends = |l: Vec<usize>| -> std::collections::HashSet<usize> {
            l.iter()
                .scan(0, |s, &x| {
                    *s += x;
                    Some(*s)
                })
                .collect()
        };
        let a = ends(c.lengths(&d));
        let b: std::collections::HashSet<usize> =
            ends(c.lengths(&e)).into_iter().map(|x| if x > 100_000 { x - 14 } else { x }).collect();
        let same = a.intersection(&b).count();
        assert!(same as f64 > a.len() as f64 * 0.9, "{same} of {}", a.len());
    }

    #[test]
    fn validation() {
        assert!(ChunkerParams::FILES.validate().is_ok());
        assert!(ChunkerParams::DUMPS.validate().is_ok());
        assert!(ChunkerParams::with_avg(1000).is_err());
        assert!(ChunkerParams::with_avg(8 << 20).is_err());
    }
}

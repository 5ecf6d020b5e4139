//! Fuzzes the keyed chunker: valid parameters and data chosen by the input, fed to `Chunker::cut`
//! in reads of fuzzer-chosen sizes. The cuts must equal the whole-buffer cuts, sum to the input's
//! length, and every chunk but the last must lie within min..=max.
#![no_main]

mod common;

use std::sync::OnceLock;

use hoard_core::{Chunker, ChunkerParams};
use libfuzzer_sys::fuzz_target;

use common::{keys, take, take_u16, take_u8};

fn gear() -> Box<[u64; 256]> {
    static GEAR: OnceLock<Box<[u64; 256]>> = OnceLock::new();
    GEAR.get_or_init(|| keys().gear_table()).clone()
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let (Some(shape), Some(a), Some(b), Some(reads), Some(repeat)) =
        (take_u8(&mut data), take_u16(&mut data), take_u16(&mut data), take(&mut data, 8), take_u8(&mut data))
    else {
        return;
    };
    // Average 1 KiB to 64 KiB; min and max anywhere the validation allows, both even.
    let avg = 1u32 << (10 + shape % 7);
    let min = (256 + (u32::from(a) * 2) % (avg - 256)) & !1;
    let max = (avg + 2 + (u32::from(b) * 2) % (avg * 7)) & !1;
    let params = match shape >> 3 {
        0 => ChunkerParams::DUMPS,
        1 => ChunkerParams::with_avg(avg).unwrap(),
        _ => ChunkerParams { min, avg, max },
    };
    if params.validate().is_err() {
        return;
    }
    // Optionally repeat the input, so long runs without a cut point reach `max`.
    let input: Vec<u8> = if repeat == 0 {
        data.to_vec()
    } else {
        data.iter().copied().cycle().take(data.len() * (repeat as usize % 64 + 1)).collect()
    };
    let c = Chunker::with_gear(params, gear());
    let whole = c.lengths(&input);
    assert_eq!(whole.iter().sum::<usize>(), input.len());
    if let Some((_, init)) = whole.split_last() {
        for &n in init {
            assert!((params.min as usize..=params.max as usize).contains(&n), "{n} outside {params:?}");
        }
    }
    assert!(whole.iter().all(|&n| n > 0 && n <= params.max as usize));

    // The same input in reads of fuzzer-chosen sizes.
    let mut buf = Vec::new();
    let mut got = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < input.len() {
        let n = (reads[i % reads.len()] as usize * 37 + 1).min(input.len() - pos);
        i += 1;
        buf.extend_from_slice(&input[pos..pos + n]);
        pos += n;
        while let Some(n) = c.cut(&buf, false) {
            assert!(n >= params.min as usize && n <= params.max as usize);
            got.push(n);
            buf.drain(..n);
        }
        assert!(buf.len() < params.max as usize);
    }
    while let Some(n) = c.cut(&buf, true) {
        got.push(n);
        buf.drain(..n);
    }
    assert!(buf.is_empty());
    assert_eq!(got, whole, "streaming cuts differ from whole-buffer cuts");
});

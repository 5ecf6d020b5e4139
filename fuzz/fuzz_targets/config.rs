//! Fuzzes `Config::peek_version` and `Config::decode` under a fixed key: on arbitrary bytes, and
//! (inputs starting with 0) on a fuzzer-chosen version and body carrying a valid MAC, so the body
//! parsing behind authentication is reached. A decoded config re-encodes to exactly its bytes,
//! and every valid config the input describes survives encode then decode.
#![no_main]

mod common;

use hoard_core::format::config::{Config, MAGIC};
use hoard_core::{ChunkerParams, Id};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

use common::keys;

fn check(bytes: &[u8]) {
    let k = keys();
    let peeked = Config::peek_version(bytes);
    if let Ok(c) = Config::decode(bytes, k) {
        assert_eq!(peeked, Ok(c.version));
        c.validate().expect("a decoded config is valid");
        let enc = c.encode(k);
        assert_eq!(enc, bytes, "a config has exactly one encoding");
        assert_eq!(Config::decode(&enc, k).unwrap(), c);
    }
}

fn params(u: &mut Unstructured) -> Result<ChunkerParams> {
    let avg = 1u32 << u.int_in_range(10..=22)?;
    let min = u.int_in_range(128..=avg / 2 - 1)? * 2;
    let max = u.int_in_range(avg / 2 + 1..=8 << 20)? * 2;
    Ok(ChunkerParams { min, avg, max })
}

fn config(u: &mut Unstructured) -> Result<Config> {
    Ok(Config {
        version: hoard_core::FORMAT_VERSION,
        id: Id(u.arbitrary()?),
        files_chunker: params(u)?,
        dumps_chunker: params(u)?,
        pack_size: u.int_in_range(1 << 20..=1 << 30)?,
        compression: u.int_in_range(0..=22)?,
    })
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Ok(c) = config(&mut Unstructured::new(data)) {
        c.validate().expect("the generator makes valid configs");
        assert_eq!(Config::decode(&c.encode(keys()), keys()).as_ref(), Ok(&c));
    }
    if let Some((0, rest)) = data.split_first() {
        if rest.len() < 4 {
            return;
        }
        let (version, body) = rest.split_at(4);
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(version);
        b.extend_from_slice(&(body.len() as u32).to_le_bytes());
        b.extend_from_slice(body);
        let mac = keys().config_mac(&b);
        b.extend_from_slice(&mac);
        check(&b);
    }
});

//! Fuzzes `KeyFile::decode`, and `KeyFile::open` with a fixed password whenever the decoded
//! argon2 parameters are cheap. Inputs starting with 0 instead drive a create/decode/open round
//! trip with fuzzer-chosen metadata and password.
#![no_main]

mod common;

use hoard_core::format::keyfile::{KeyFile, KeyMeta};
use hoard_core::{Error, Id, KdfParams, MasterKey};
use libfuzzer_sys::fuzz_target;

use common::{take, take_u64, take_u8};

const PASSWORD: &[u8] = b"fuzz password";
const CHEAP: KdfParams = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };

fn cheap(k: &KdfParams) -> bool {
    k.memory_kib <= 256 && k.iterations <= 2 && k.parallelism <= 4
}

fuzz_target!(|data: &[u8]| {
    if let Ok(k) = KeyFile::decode(data) {
        if cheap(&k.kdf) {
            // Arbitrary bytes only open if the fuzzer forged AES-GCM; anything else is an error.
            let _ = k.open(PASSWORD);
        }
    }
    let mut rest = data;
    if take_u8(&mut rest) != Some(0) {
        return;
    }
    let (Some(created), Some(split), Some(pw_len)) = (take_u64(&mut rest), take_u8(&mut rest), take_u8(&mut rest))
    else {
        return;
    };
    let Some(password) = take(&mut rest, pw_len as usize % 32) else { return };
    let split = (split as usize).min(rest.len());
    let host = String::from_utf8_lossy(&rest[..split]).into_owned();
    let user = String::from_utf8_lossy(&rest[split..]).into_owned();
    let meta = KeyMeta { created_ns: created as i64, host, user };
    let master = MasterKey::from_bytes([0x77; 64]);
    let repo = Id([0x33; 32]);
    let bytes = KeyFile::create(&master, &repo, password, CHEAP, meta.clone()).expect("create");
    let k = KeyFile::decode(&bytes).expect("a created key file decodes");
    assert_eq!(k.meta, meta);
    assert_eq!(k.kdf, CHEAP);
    let (m, r) = k.open(password).expect("the right password opens");
    assert_eq!(m.as_bytes(), master.as_bytes());
    assert_eq!(r, repo);
    let mut wrong = password.to_vec();
    wrong.push(b'!');
    assert!(matches!(k.open(&wrong), Err(Error::WrongPassword)));
});

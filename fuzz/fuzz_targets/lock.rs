//! Fuzzes `Lock::decode` and `Condemned::decode` (the first byte picks which): never panics,
//! whatever decodes re-encodes to bytes that decode to an equal value, and generated values
//! survive encode then decode.
#![no_main]

use hoard_core::format::lock::{Condemned, Lock, LockKind};
use hoard_core::Id;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fn lock(u: &mut Unstructured) -> Result<Lock> {
    let seen: Option<Vec<[u8; 32]>> = u.arbitrary()?;
    Ok(Lock {
        kind: if u.arbitrary()? { LockKind::Prune } else { LockKind::Backup },
        session: Id(u.arbitrary()?),
        seq: u.arbitrary()?,
        host: u.arbitrary()?,
        pid: u.arbitrary()?,
        start_ns: u.arbitrary()?,
        seen: seen.map(|s| s.into_iter().map(Id).collect()),
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 {
        if let Ok(l) = Lock::decode(rest) {
            assert_eq!(Lock::decode(&l.encode()).expect("a re-encoded lock must decode"), l);
        }
        if let Ok(l) = lock(&mut Unstructured::new(rest)) {
            assert_eq!(Lock::decode(&l.encode()).as_ref(), Ok(&l), "an encoded lock must decode to itself");
        }
    } else {
        if let Ok(c) = Condemned::decode(rest) {
            assert_eq!(Condemned::decode(&c.encode()).expect("a re-encoded marker must decode"), c);
        }
        let packs: Result<Vec<[u8; 32]>> = Unstructured::new(rest).arbitrary();
        if let Ok(p) = packs {
            let c = Condemned { packs: p.into_iter().map(Id).collect() };
            assert_eq!(Condemned::decode(&c.encode()).as_ref(), Ok(&c), "an encoded marker must decode to itself");
        }
    }
});

//! Fuzzes `Snapshot::decode`: never panics, and whatever decodes re-encodes to bytes that decode
//! to an equal snapshot. The input also drives a generator of snapshots, each of which must
//! survive encode then decode.
#![no_main]

use hoard_core::format::snapshot::{Snapshot, Summary};
use hoard_core::Id;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fn snapshot(u: &mut Unstructured) -> Result<Snapshot> {
    let parent: Option<[u8; 32]> = u.arbitrary()?;
    Ok(Snapshot {
        time_ns: u.arbitrary()?,
        host: u.arbitrary()?,
        user: u.arbitrary()?,
        source_kind: u.arbitrary()?,
        source_name: u.arbitrary()?,
        paths: u.arbitrary()?,
        tags: u.arbitrary()?,
        labels: u.arbitrary()?,
        parent: parent.map(Id),
        tree: Id(u.arbitrary()?),
        partial: u.arbitrary()?,
        program: u.arbitrary()?,
        summary: Summary {
            files_new: u.arbitrary()?,
            files_changed: u.arbitrary()?,
            files_unmodified: u.arbitrary()?,
            dirs: u.arbitrary()?,
            other_entries: u.arbitrary()?,
            bytes_total: u.arbitrary()?,
            bytes_read: u.arbitrary()?,
            bytes_new: u.arbitrary()?,
            bytes_stored: u.arbitrary()?,
            blobs_new: u.arbitrary()?,
            packs_written: u.arbitrary()?,
            duration_ms: u.arbitrary()?,
            errors: u.arbitrary()?,
            changed_during_read: u.arbitrary()?,
        },
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Snapshot::decode(data) {
        let again = Snapshot::decode(&s.encode()).expect("a re-encoded snapshot must decode");
        assert_eq!(again, s);
    }
    if let Ok(s) = snapshot(&mut Unstructured::new(data)) {
        let decoded = Snapshot::decode(&s.encode());
        assert_eq!(decoded.as_ref(), Ok(&s), "an encoded snapshot must decode to itself");
    }
});

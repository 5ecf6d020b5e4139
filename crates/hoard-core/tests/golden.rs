//! Golden vectors: pins every deterministic output of hoard-core (chunk cut points, derived keys,
//! every encoding) to committed files in `tests/vectors/`, and checks that sample objects made by
//! earlier builds (packs, key files, sealed objects, configs) still decode and open.
//!
//! A failure means the bytes hoard writes or reads changed. If that is intended, bump
//! `hoard_core::FORMAT_VERSION` and regenerate with
//! `HOARD_BLESS=1 cargo test -p hoard-core --test golden`. Blessing refuses to change the
//! vectors of a version that is already recorded, so a format change cannot land without a bump.
//!
//! Blessing rewrites the deterministic vector files and writes the random samples of the current
//! format version (`tests/vectors/samples/v{FORMAT_VERSION}/`) only when that directory does not
//! exist yet: samples of older versions are never rewritten, because they are the proof that old
//! repositories keep opening. Delete a version's directory to make new samples for it.

use std::fs;
use std::path::{Path, PathBuf};

use hoard_core::codec::{Reader, Writer};
use hoard_core::format::config::Config;
use hoard_core::format::index::{IndexPack, IndexSegment};
use hoard_core::format::keyfile::{KeyFile, KeyMeta};
use hoard_core::format::lock::{Condemned, Lock, LockKind};
use hoard_core::format::pack::{decode_header, open_blob, PackBuilder, PackEntry};
use hoard_core::format::snapshot::{Snapshot, Summary};
use hoard_core::format::tree::{decode_list, encode_list, Content, Node, NodeKind, Tree};
use hoard_core::format::{object, BlobType, ObjectKind};
use hoard_core::padding::padme;
use hoard_core::{Chunker, ChunkerParams, Error, Id, KdfParams, Keys, MasterKey, FORMAT_VERSION};
use serde_json::{json, Value};

const HINT: &str = "format changed: if intended, bump hoard_core::FORMAT_VERSION and regenerate with \
                    HOARD_BLESS=1 cargo test -p hoard-core --test golden";

/// Chunk ids listed in full per chunker case; the rest are pinned by a digest of them all.
const IDS_LISTED: usize = 16;

// ---------------------------------------------------------------------------------------------
// Fixed inputs.

fn master_bytes() -> [u8; 64] {
    std::array::from_fn(|i| i as u8)
}

fn master() -> MasterKey {
    MasterKey::from_bytes(master_bytes())
}

/// `len` bytes of the BLAKE3 XOF of `seed`.
fn data(seed: &str, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    blake3::Hasher::new().update(seed.as_bytes()).finalize_xof().fill(&mut v);
    v
}

fn id(seed: &str) -> Id {
    Id(*blake3::hash(seed.as_bytes()).as_bytes())
}

fn digest(b: &[u8]) -> String {
    blake3::hash(b).to_hex().to_string()
}

// ---------------------------------------------------------------------------------------------
// Comparing and blessing.

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn blessing() -> bool {
    std::env::var("HOARD_BLESS").is_ok_and(|v| v == "1")
}

/// Pretty JSON, except that arrays of numbers and strings stay on one line, to keep the
/// committed files short and their diffs readable.
fn render(v: &Value, indent: usize, out: &mut String) {
    let pad = |n: usize| "  ".repeat(n);
    match v {
        Value::Array(a) if a.iter().all(|x| !x.is_array() && !x.is_object()) => {
            out.push_str(&serde_json::to_string(v).unwrap().replace(",", ", "));
        }
        Value::Array(a) => {
            out.push_str("[\n");
            for (i, x) in a.iter().enumerate() {
                out.push_str(&pad(indent + 1));
                render(x, indent + 1, out);
                out.push_str(if i + 1 < a.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(indent));
            out.push(']');
        }
        Value::Object(m) if !m.is_empty() => {
            out.push_str("{\n");
            for (i, (k, x)) in m.iter().enumerate() {
                out.push_str(&pad(indent + 1));
                out.push_str(&serde_json::to_string(k).unwrap());
                out.push_str(": ");
                render(x, indent + 1, out);
                out.push_str(if i + 1 < m.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(indent));
            out.push('}');
        }
        _ => out.push_str(&serde_json::to_string(v).unwrap()),
    }
}

fn write_json(path: &Path, v: &Value) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut text = String::new();
    render(v, 0, &mut text);
    assert_eq!(&serde_json::from_str::<Value>(&text).unwrap(), v, "rendering must not change the JSON");
    text.push('\n');
    fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}\n{HINT}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

fn recorded_version(file: &str, v: &Value) -> u64 {
    v["format_version"].as_u64().unwrap_or_else(|| panic!("{file} records no format_version"))
}

/// Where `fresh` first differs from `committed`, as a JSON path with both values.
fn first_difference(at: &str, committed: &Value, fresh: &Value) -> Option<String> {
    fn short(v: Option<&Value>) -> String {
        let s = v.map_or("(missing)".to_string(), Value::to_string);
        if s.len() > 140 {
            format!("{}… ({} chars)", &s[..140], s.len())
        } else {
            s
        }
    }
    match (committed, fresh) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| match (a.get(k), b.get(k)) {
                (Some(x), Some(y)) => first_difference(&format!("{at}.{k}"), x, y),
                (x, y) => Some(format!("{at}.{k}: committed {}, now {}", short(x), short(y))),
            })
        }
        (Value::Array(a), Value::Array(b)) => {
            let diff =
                a.iter().zip(b).enumerate().find_map(|(i, (x, y))| first_difference(&format!("{at}[{i}]"), x, y));
            diff.or_else(|| (a.len() != b.len()).then(|| format!("{at}: committed {} items, now {}", a.len(), b.len())))
        }
        (a, b) if a == b => None,
        (a, b) => Some(format!("{at}: committed {}, now {}", short(Some(a)), short(Some(b)))),
    }
}

/// Compares freshly computed vectors with the committed file, or rewrites it when blessing.
fn check(file: &str, fresh: Value) {
    assert_eq!(fresh["format_version"], json!(FORMAT_VERSION));
    let path = vectors_dir().join(file);
    if blessing() {
        // Blessing must not launder a format change: vectors recorded for the current version
        // may only be rewritten with identical content. A change needs FORMAT_VERSION bumped.
        if path.exists() {
            let committed = read_json(&path);
            if recorded_version(file, &committed) == u64::from(FORMAT_VERSION) {
                if let Some(d) = first_difference("", &committed, &fresh) {
                    panic!(
                        "refusing to bless {file}: its vectors changed but FORMAT_VERSION is still \
                         {FORMAT_VERSION}; bump it first (first difference at {d})"
                    );
                }
            }
        }
        write_json(&path, &fresh);
        eprintln!("blessed {}", path.display());
        return;
    }
    let committed = read_json(&path);
    let recorded = recorded_version(file, &committed);
    assert_eq!(
        recorded,
        u64::from(FORMAT_VERSION),
        "{file} holds vectors of format version {recorded}, but FORMAT_VERSION is {FORMAT_VERSION}: \
         regenerate with HOARD_BLESS=1 cargo test -p hoard-core --test golden"
    );
    if let Some(d) = first_difference("", &committed, &fresh) {
        panic!("{HINT}\n{file}: first difference at {d}");
    }
}

fn hex_field(v: &Value, field: &str) -> Vec<u8> {
    let s = v[field].as_str().unwrap_or_else(|| panic!("missing hex field {field:?}"));
    hex::decode(s).unwrap_or_else(|e| panic!("field {field:?} is not hex: {e}"))
}

fn id_field(v: &Value, field: &str) -> Id {
    Id::from_slice(&hex_field(v, field)).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Chunker cut points.

fn chunker_vectors(label: &str, params: ChunkerParams, several: usize) -> Value {
    let keys = master().keys();
    let c = Chunker::new(params, &keys);
    let (min, max) = (params.min as usize, params.max as usize);
    let mut cases = Vec::new();
    let sizes = [
        ("empty", 0),
        ("one byte", 1),
        ("min - 1", min - 1),
        ("min", min),
        ("min + 1", min + 1),
        ("max - 1", max - 1),
        ("max", max),
        ("max + 1", max + 1),
        ("several MiB", several),
    ];
    let mut inputs: Vec<(String, String, Vec<u8>)> = sizes
        .iter()
        .map(|&(name, len)| {
            let seed = format!("hoard golden chunker {label} {name}");
            (name.to_string(), format!("blake3 xof of {seed:?}"), data(&seed, len))
        })
        .collect();
    // No cut point ever fires on zeros: every chunk but the last is cut at max.
    inputs.push(("zeros".into(), "zero bytes".into(), vec![0u8; 2 * max + 3]));
    for (name, input, d) in inputs {
        let lengths = c.lengths(&d);
        assert_eq!(lengths.iter().sum::<usize>(), d.len());
        // Streaming in odd-sized reads must give the same cuts as the whole buffer.
        let mut buf = Vec::new();
        let mut streamed = Vec::new();
        for piece in d.chunks(max / 3 + 7) {
            buf.extend_from_slice(piece);
            while let Some(n) = c.cut(&buf, false) {
                streamed.push(n);
                buf.drain(..n);
            }
        }
        while let Some(n) = c.cut(&buf, true) {
            streamed.push(n);
            buf.drain(..n);
        }
        assert_eq!(streamed, lengths, "{label} {name}: streaming cuts differ");
        let mut ids = Vec::new();
        let mut all = blake3::Hasher::new();
        let mut at = 0;
        for &n in &lengths {
            let id = keys.blob_id(&d[at..at + n]);
            all.update(id.as_bytes());
            if ids.len() < IDS_LISTED {
                ids.push(json!(id.to_hex()));
            }
            at += n;
        }
        cases.push(json!({
            "name": name,
            "input": input,
            "len": d.len(),
            "input_blake3": digest(&d),
            "lengths": lengths,
            "ids_first": ids,
            "ids_blake3": all.finalize().to_hex().to_string(),
        }));
    }
    json!({
        "format_version": FORMAT_VERSION,
        "master_key": hex::encode(master_bytes()),
        "params": { "min": params.min, "avg": params.avg, "max": params.max },
        "cases": cases,
    })
}

#[test]
fn chunker_files() {
    check("chunker_files.json", chunker_vectors("files", ChunkerParams::FILES, (9 << 20) + 12_345));
}

#[test]
fn chunker_dumps() {
    // Recorded with the dumps default of the time; the default may change, these bytes may not.
    check("chunker_dumps.json", chunker_vectors("dumps", ChunkerParams::DUMPS_64K, (3 << 20) + 777));
}

#[test]
fn chunker_small() {
    check("chunker_small.json", chunker_vectors("small", ChunkerParams::with_avg(4096).unwrap(), (2 << 20) + 1));
}

// ---------------------------------------------------------------------------------------------
// Derived keys.

#[test]
fn derived_keys() {
    let keys = master().keys();
    let blob_inputs: [(&str, Vec<u8>); 3] = [
        ("empty", Vec::new()),
        ("abc", b"abc".to_vec()),
        ("blake3 xof of \"hoard golden blob\", 5000 bytes", data("hoard golden blob", 5000)),
    ];
    let blob_ids: Vec<Value> =
        blob_inputs.iter().map(|(name, d)| json!({ "input": name, "id": keys.blob_id(d).to_hex() })).collect();
    // The streaming hasher agrees with the one-shot id.
    let mut h = keys.blob_hasher();
    for piece in blob_inputs[2].1.chunks(333) {
        h.update(piece);
    }
    assert_eq!(Id(*h.finalize().as_bytes()), keys.blob_id(&blob_inputs[2].1));

    let gear = keys.gear_table();
    let gear_bytes: Vec<u8> = gear.iter().flat_map(|g| g.to_le_bytes()).collect();

    let plaintext = b"hoard golden plaintext";
    let mut object_ct = plaintext.to_vec();
    keys.object_cipher(ObjectKind::Snapshot as u8, &id("golden object")).seal(0, b"golden aad", &mut object_ct);
    let mut opened = object_ct.clone();
    keys.object_cipher(ObjectKind::Snapshot as u8, &id("golden object"))
        .open(0, b"golden aad", &mut opened, "t")
        .unwrap();
    assert_eq!(opened, plaintext);
    let mut pack_ct = plaintext.to_vec();
    keys.pack_cipher(&id("golden pack")).seal(7, b"", &mut pack_ct);

    let kdf = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };
    let wrap = kdf.derive(b"golden password", &[0x5a; 32]).unwrap();

    let padme_lens = [0u64, 1, 2, 3, 100, 1000, 4097, 1 << 20, (1 << 20) + 1, 16 << 20, (16 << 20) + 1, 1 << 40];
    let padded: Vec<Value> = padme_lens.iter().map(|&l| json!([l, padme(l)])).collect();

    check(
        "keys.json",
        json!({
            "format_version": FORMAT_VERSION,
            "master_key": hex::encode(master_bytes()),
            "blob_id": blob_ids,
            "gear_table_first": gear[..8].iter().map(|g| format!("{g:016x}")).collect::<Vec<_>>(),
            "gear_table_blake3": digest(&gear_bytes),
            "object_cipher": {
                "kind": ObjectKind::Snapshot as u8,
                "name": id("golden object").to_hex(),
                "nonce": 0,
                "aad": "golden aad",
                "plaintext": String::from_utf8_lossy(plaintext),
                "sealed": hex::encode(&object_ct),
            },
            "pack_cipher": {
                "pack": id("golden pack").to_hex(),
                "nonce": 7,
                "aad": "",
                "plaintext": String::from_utf8_lossy(plaintext),
                "sealed": hex::encode(&pack_ct),
            },
            "config_mac": {
                "input": "hoard golden config mac input",
                "mac": hex::encode(keys.config_mac(b"hoard golden config mac input")),
            },
            "argon2id": {
                "memory_kib": 64, "iterations": 1, "parallelism": 1,
                "password": "golden password",
                "salt": hex::encode([0x5a; 32]),
                "key": hex::encode(wrap),
            },
            "padme": padded,
        }),
    );
}

// ---------------------------------------------------------------------------------------------
// Deterministic encodings.

fn golden_tree() -> Tree {
    let base = Node {
        mode: 0o644,
        uid: 1000,
        gid: 1000,
        user: "alice".into(),
        group: "staff".into(),
        links: 1,
        ..Default::default()
    };
    Tree {
        nodes: vec![
            Node {
                name: b"README.md".to_vec(),
                kind: Some(NodeKind::File),
                mtime_ns: 1_764_000_000_123_456_789,
                ctime_ns: 1_764_000_001_000_000_000,
                inode: 1_234_567,
                device: 0x803,
                size: 3_000_000,
                content: Content::Chunks(vec![id("chunk 1"), id("chunk 2")]),
                xattrs: vec![(b"user.comment".to_vec(), b"golden".to_vec())],
                ..base.clone()
            },
            Node {
                name: b"big.img".to_vec(),
                kind: Some(NodeKind::File),
                mode: 0o600,
                size: 40 << 30,
                sparse: true,
                content: Content::Lists(vec![id("list 1")]),
                ..base.clone()
            },
            Node {
                name: b"dev-null".to_vec(),
                kind: Some(NodeKind::CharDevice),
                mode: 0o666,
                rdev: 0x103,
                uid: 0,
                gid: 0,
                user: "root".into(),
                group: "root".into(),
                ..base.clone()
            },
            Node { name: b"empty".to_vec(), kind: Some(NodeKind::File), ..base.clone() },
            Node { name: b"fifo".to_vec(), kind: Some(NodeKind::Fifo), ..base.clone() },
            Node {
                name: b"link".to_vec(),
                kind: Some(NodeKind::Symlink),
                mode: 0o777,
                link_target: b"../target".to_vec(),
                ..base.clone()
            },
            Node { name: b"sda".to_vec(), kind: Some(NodeKind::BlockDevice), mode: 0o660, rdev: 0x800, ..base.clone() },
            Node {
                name: b"sock".to_vec(),
                kind: Some(NodeKind::Socket),
                mode: 0o755,
                mtime_ns: -1_000_000_001,
                ..base.clone()
            },
            Node {
                name: b"src".to_vec(),
                kind: Some(NodeKind::Dir),
                mode: 0o2755,
                links: 3,
                subtree: Some(id("subtree")),
                ..base.clone()
            },
            Node { name: b"\xff\xfenot utf-8".to_vec(), kind: Some(NodeKind::File), uid: u32::MAX, ..base },
        ],
    }
}

fn golden_snapshot() -> Snapshot {
    Snapshot {
        time_ns: 1_764_000_000_000_000_000,
        host: "db1.example".into(),
        user: "root".into(),
        source_kind: "postgres".into(),
        source_name: "app/main".into(),
        paths: vec!["/srv/app".into(), "/etc/app".into()],
        tags: vec!["nightly".into(), "ünïcode".into()],
        labels: vec![("compose.project".into(), "app".into()), ("empty".into(), String::new())],
        parent: Some(id("parent snapshot")),
        tree: id("root tree"),
        partial: true,
        program: "hoard 0.1.0".into(),
        summary: Summary {
            files_new: 1,
            files_changed: 2,
            files_unmodified: 3,
            dirs: 4,
            other_entries: 5,
            bytes_total: 6 << 30,
            bytes_read: 7 << 20,
            bytes_new: 8 << 20,
            bytes_stored: 9 << 10,
            blobs_new: 10,
            packs_written: 11,
            duration_ms: 12_345,
            errors: 13,
            changed_during_read: u64::MAX,
        },
    }
}

fn golden_index() -> IndexSegment {
    let entry = |t, seed: &str, offset, length, raw_len, compressed, nonce| PackEntry {
        blob_type: t,
        id: id(seed),
        offset,
        length,
        raw_len,
        compressed,
        nonce,
    };
    IndexSegment {
        packs: vec![
            IndexPack {
                id: id("pack a"),
                len: 16_777_216,
                entries: vec![
                    entry(BlobType::Data, "blob 1", 0, 1_048_592, 1_048_576, false, 0),
                    entry(BlobType::Tree, "blob 2", 1_048_592, 316, 900, true, 1),
                    entry(BlobType::Data, "blob 3", 1_048_908, 16, 0, false, 2),
                ],
            },
            IndexPack { id: id("pack b"), len: 8192, entries: vec![] },
            // The smallest entries there are (one-byte varints), last in the segment.
            IndexPack {
                id: id("pack c"),
                len: 4200,
                entries: vec![
                    entry(BlobType::Data, "blob 4", 0, 40, 24, false, 0),
                    entry(BlobType::Data, "blob 5", 40, 40, 24, false, 1),
                ],
            },
        ],
        superseded: vec![id("old segment 1"), id("old segment 2")],
    }
}

fn golden_lock() -> Lock {
    Lock {
        kind: LockKind::Backup,
        session: id("golden session"),
        seq: 2,
        host: "db1.example".into(),
        pid: 31337,
        start_ns: 1_795_000_000_123_456_789,
        seen: Some(vec![id("marker one")]),
    }
}

fn golden_config() -> Config {
    // The defaults when the vectors were recorded: a later default must not change them.
    Config { dumps_chunker: ChunkerParams::DUMPS_64K, ..Config::new(id("golden repository")) }
}

fn custom_config() -> Config {
    Config {
        files_chunker: ChunkerParams::with_avg(2 << 20).unwrap(),
        dumps_chunker: ChunkerParams { min: 256, avg: 1024, max: 16 << 20 },
        pack_size: 1 << 30,
        compression: 0,
        ..Config::new(id("custom repository"))
    }
}

fn codec_vectors() -> Value {
    let one = |f: &dyn Fn(&mut Writer)| {
        let mut w = Writer::new();
        f(&mut w);
        hex::encode(w.finish())
    };
    let varints = [0u64, 1, 127, 128, 255, 300, 16_383, 16_384, u32::MAX as u64, u64::MAX];
    let ivarints = [0i64, -1, 1, -64, 64, -65, 1 << 40, i64::MIN, i64::MAX];
    for v in varints {
        let mut w = Writer::new();
        w.varint(v);
        let b = w.finish();
        let mut r = Reader::new(&b, "t");
        assert_eq!(r.varint().unwrap(), v);
        r.end().unwrap();
    }
    for v in ivarints {
        let mut w = Writer::new();
        w.ivarint(v);
        assert_eq!(Reader::new(&w.finish(), "t").ivarint().unwrap(), v);
    }
    json!({
        "varint": varints.iter().map(|&v| json!([v, one(&|w| { w.varint(v); })])).collect::<Vec<_>>(),
        "ivarint": ivarints.iter().map(|&v| json!([v, one(&|w| { w.ivarint(v); })])).collect::<Vec<_>>(),
        "u8 0xab": one(&|w| { w.u8(0xab); }),
        "u32 0xdeadbeef": one(&|w| { w.u32(0xdead_beef); }),
        "u64 0x0123456789abcdef": one(&|w| { w.u64(0x0123_4567_89ab_cdef); }),
        "bytes hoard": one(&|w| { w.bytes(b"hoard"); }),
        "bytes 200 x 0x61": one(&|w| { w.bytes(&[0x61; 200]); }),
        "str é": one(&|w| { w.str("é"); }),
        "id blake3(\"id\")": one(&|w| { w.id(&id("id")); }),
    })
}

#[test]
fn encodings() {
    let keys = master().keys();

    let tree = golden_tree();
    let tree_bytes = tree.encode();
    assert_eq!(Tree::decode(&tree_bytes).unwrap(), tree);
    let list = vec![id("chunk 1"), id("chunk 2"), id("chunk 3")];
    let list_bytes = encode_list(&list);
    assert_eq!(decode_list(&list_bytes).unwrap(), list);
    let snap = golden_snapshot();
    let snap_bytes = snap.encode();
    assert_eq!(Snapshot::decode(&snap_bytes).unwrap(), snap);
    let index = golden_index();
    let index_bytes = index.encode();
    assert_eq!(IndexSegment::decode(&index_bytes).unwrap(), index);
    let lock = golden_lock();
    let lock_bytes = lock.encode();
    assert_eq!(Lock::decode(&lock_bytes).unwrap(), lock);
    let condemned = Condemned { packs: vec![id("condemned pack a"), id("condemned pack b")] };
    let condemned_bytes = condemned.encode();
    assert_eq!(Condemned::decode(&condemned_bytes).unwrap(), condemned);
    let mut configs = Vec::new();
    for c in [golden_config(), custom_config()] {
        let b = c.encode(&keys);
        assert_eq!(Config::peek_version(&b).unwrap(), FORMAT_VERSION);
        assert_eq!(Config::decode(&b, &keys).unwrap(), c);
        configs.push(json!({ "id": c.id.to_hex(), "encoded": hex::encode(b) }));
    }
    // Objects sealed without compression are deterministic (zstd's output is not pinned here:
    // a new zstd may compress differently, which is not a format change; the samples below
    // check compressed objects still open).
    let name = id("golden object name");
    let mut objects = Vec::new();
    for (kind, body) in [
        (ObjectKind::Snapshot, snap_bytes.clone()),
        (ObjectKind::Index, index_bytes.clone()),
        (ObjectKind::Lock, lock_bytes.clone()),
        (ObjectKind::Condemned, condemned_bytes.clone()),
    ] {
        let sealed = object::seal(&keys, kind, &name, &body, 0);
        assert_eq!(object::open(&keys, kind, &name, &sealed).unwrap(), body);
        objects.push(json!({ "kind": kind as u8, "name": name.to_hex(), "level": 0, "sealed": hex::encode(sealed) }));
    }

    let fresh = json!({
        "format_version": FORMAT_VERSION,
        "master_key": hex::encode(master_bytes()),
        "codec": codec_vectors(),
        "tree": hex::encode(&tree_bytes),
        "chunk_list": hex::encode(&list_bytes),
        "snapshot": hex::encode(&snap_bytes),
        "index_segment": hex::encode(&index_bytes),
        "lock": hex::encode(&lock_bytes),
        "condemned": hex::encode(&condemned_bytes),
        "config": configs,
        "object": objects,
    });
    check("encodings.json", fresh);

    // The committed bytes (equal to the fresh ones once `check` passed) decode to the values.
    if !blessing() {
        let c = read_json(&vectors_dir().join("encodings.json"));
        assert_eq!(Tree::decode(&hex_field(&c, "tree")).unwrap(), tree);
        assert_eq!(decode_list(&hex_field(&c, "chunk_list")).unwrap(), list);
        assert_eq!(Snapshot::decode(&hex_field(&c, "snapshot")).unwrap(), snap);
        assert_eq!(IndexSegment::decode(&hex_field(&c, "index_segment")).unwrap(), index);
        assert_eq!(Lock::decode(&hex_field(&c, "lock")).unwrap(), lock);
        assert_eq!(Condemned::decode(&hex_field(&c, "condemned")).unwrap(), condemned);
        let cfg = &c["config"][0];
        assert_eq!(Config::decode(&hex_field(cfg, "encoded"), &keys).unwrap(), golden_config());
        let obj = &c["object"][0];
        let body = object::open(&keys, ObjectKind::Snapshot, &name, &hex_field(obj, "sealed")).unwrap();
        assert_eq!(Snapshot::decode(&body).unwrap(), snap);
    }
}

// ---------------------------------------------------------------------------------------------
// Samples: objects whose bytes include randomness, made once per format version and committed.
// Each file records the master key and what it must open to.

const SAMPLE_PASSWORD: &str = "golden password";

fn samples_dir(version: u32) -> PathBuf {
    vectors_dir().join("samples").join(format!("v{version}"))
}

fn sample_header(kind: &str) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("format_version".into(), json!(FORMAT_VERSION));
    m.insert("kind".into(), json!(kind));
    m.insert("master_key".into(), json!(hex::encode(master_bytes())));
    m
}

fn make_samples(dir: &Path) {
    let m = master();
    let keys = m.keys();

    // A key file with cheap argon2 parameters.
    let repo = id("golden repository");
    let meta = KeyMeta { created_ns: 1_764_000_000_000_000_000, host: "golden-host".into(), user: "golden".into() };
    let kdf = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };
    let key = KeyFile::create(&m, &repo, SAMPLE_PASSWORD.as_bytes(), kdf, meta.clone()).unwrap();
    let mut s = sample_header("keyfile");
    s.insert("password".into(), json!(SAMPLE_PASSWORD));
    s.insert("repo_id".into(), json!(repo.to_hex()));
    s.insert("kdf".into(), json!({ "memory_kib": 64, "iterations": 1, "parallelism": 1 }));
    s.insert("meta".into(), json!({ "created_ns": meta.created_ns, "host": meta.host, "user": meta.user }));
    s.insert("bytes".into(), json!(hex::encode(key)));
    write_json(&dir.join("keyfile.json"), &Value::Object(s));

    // A pack: random name, shuffled blobs, compressed and stored ones, a tree blob.
    let blobs: Vec<(BlobType, Vec<u8>)> = vec![
        (BlobType::Data, b"hoard golden compressible blob ".repeat(40)),
        (BlobType::Data, data("hoard golden incompressible blob", 300)),
        (BlobType::Data, Vec::new()),
        (BlobType::Tree, golden_tree().encode()),
    ];
    let mut b = PackBuilder::new(&keys);
    for (t, x) in &blobs {
        b.add(*t, keys.blob_id(x), x, 3);
    }
    let pack_id = b.id();
    let p = b.finish();
    let bytes = p.pieces.concat();
    let entries: Vec<Value> = p
        .entries
        .iter()
        .map(|e| {
            let plain = &blobs.iter().find(|(_, x)| keys.blob_id(x) == e.id).unwrap().1;
            json!({
                "type": e.blob_type as u8,
                "id": e.id.to_hex(),
                "offset": e.offset,
                "length": e.length,
                "raw_len": e.raw_len,
                "compressed": e.compressed,
                "nonce": e.nonce,
                "plaintext_blake3": digest(plain),
            })
        })
        .collect();
    let mut s = sample_header("pack");
    s.insert("pack_id".into(), json!(pack_id.to_hex()));
    s.insert("len".into(), json!(p.len));
    s.insert("entries".into(), json!(entries));
    s.insert("bytes".into(), json!(hex::encode(bytes)));
    write_json(&dir.join("pack.json"), &Value::Object(s));

    // Compressed sealed objects and a config.
    let mut snap = golden_snapshot();
    snap.paths = (0..40).map(|i| format!("/srv/stacks/app-{i}/data")).collect();
    let name = id("golden sample object");
    let mut objects = Vec::new();
    for (kind, body) in [(ObjectKind::Snapshot, snap.encode()), (ObjectKind::Index, golden_index().encode())] {
        let sealed = object::seal(&keys, kind, &name, &body, 3);
        objects.push(json!({
            "kind": kind as u8,
            "name": name.to_hex(),
            "body_len": body.len(),
            "body_blake3": digest(&body),
            "sealed": hex::encode(sealed),
        }));
    }
    let mut s = sample_header("objects");
    s.insert("objects".into(), json!(objects));
    let config = golden_config();
    s.insert("config".into(), json!({ "id": config.id.to_hex(), "encoded": hex::encode(config.encode(&keys)) }));
    write_json(&dir.join("objects.json"), &Value::Object(s));
}

fn sample_keys(s: &Value) -> (MasterKey, Keys) {
    let m = MasterKey::from_bytes(hex_field(s, "master_key").try_into().unwrap());
    let k = m.keys();
    (m, k)
}

fn open_keyfile_sample(s: &Value) {
    let (m, _) = sample_keys(s);
    let k = KeyFile::decode(&hex_field(s, "bytes")).expect("key file sample decodes");
    let kdf = &s["kdf"];
    assert_eq!(
        k.kdf,
        KdfParams {
            memory_kib: kdf["memory_kib"].as_u64().unwrap() as u32,
            iterations: kdf["iterations"].as_u64().unwrap() as u32,
            parallelism: kdf["parallelism"].as_u64().unwrap() as u32,
        }
    );
    let meta = &s["meta"];
    assert_eq!(
        k.meta,
        KeyMeta {
            created_ns: meta["created_ns"].as_i64().unwrap(),
            host: meta["host"].as_str().unwrap().into(),
            user: meta["user"].as_str().unwrap().into(),
        }
    );
    let (got, repo) = k.open(s["password"].as_str().unwrap().as_bytes()).expect("key file sample opens");
    assert_eq!(got.as_bytes(), m.as_bytes());
    assert_eq!(repo, id_field(s, "repo_id"));
    assert!(matches!(k.open(b"not the password"), Err(Error::WrongPassword)));
}

fn open_pack_sample(s: &Value, current: bool) {
    let (_, keys) = sample_keys(s);
    let pack = id_field(s, "pack_id");
    let bytes = hex_field(s, "bytes");
    let len = s["len"].as_u64().unwrap();
    assert_eq!(bytes.len() as u64, len);
    let entries = decode_header(&keys, &pack, &bytes, len).expect("pack sample header decodes");
    let expected = s["entries"].as_array().unwrap();
    assert_eq!(entries.len(), expected.len());
    for (e, x) in entries.iter().zip(expected) {
        let want = PackEntry {
            blob_type: BlobType::from_u8(x["type"].as_u64().unwrap() as u8).unwrap(),
            id: id_field(x, "id"),
            offset: x["offset"].as_u64().unwrap(),
            length: x["length"].as_u64().unwrap() as u32,
            raw_len: x["raw_len"].as_u64().unwrap() as u32,
            compressed: x["compressed"].as_bool().unwrap(),
            nonce: x["nonce"].as_u64().unwrap() as u32,
        };
        assert_eq!(*e, want);
        let stored = &bytes[e.offset as usize..][..e.length as usize];
        let plain = open_blob(&keys, &pack, e, stored).expect("pack sample blob opens");
        assert_eq!(digest(&plain), x["plaintext_blake3"].as_str().unwrap());
        if e.blob_type == BlobType::Tree {
            let t = Tree::decode(&plain).expect("tree blob of the pack sample decodes");
            if current {
                assert_eq!(t.encode(), plain);
            }
        }
    }
}

fn open_objects_sample(s: &Value, current: bool) {
    let (_, keys) = sample_keys(s);
    for o in s["objects"].as_array().unwrap() {
        let kind = ObjectKind::ALL[o["kind"].as_u64().unwrap() as usize];
        let body =
            object::open(&keys, kind, &id_field(o, "name"), &hex_field(o, "sealed")).expect("object sample opens");
        assert_eq!(body.len() as u64, o["body_len"].as_u64().unwrap());
        assert_eq!(digest(&body), o["body_blake3"].as_str().unwrap());
        let reencoded = match kind {
            ObjectKind::Snapshot => Snapshot::decode(&body).expect("snapshot sample decodes").encode(),
            ObjectKind::Index => IndexSegment::decode(&body).expect("index sample decodes").encode(),
            _ => body.clone(),
        };
        if current {
            assert_eq!(reencoded, body);
        }
    }
    let c = &s["config"];
    let bytes = hex_field(c, "encoded");
    assert_eq!(u64::from(Config::peek_version(&bytes).unwrap()), recorded_version("objects.json", s));
    let config = Config::decode(&bytes, &keys).expect("config sample decodes");
    assert_eq!(config.id, id_field(c, "id"));
    if current {
        assert_eq!(config.encode(&keys), bytes);
    }
}

/// Every committed sample, of every format version, still decodes and opens.
#[test]
fn samples_still_open() {
    let current = samples_dir(FORMAT_VERSION);
    if blessing() && !current.exists() {
        make_samples(&current);
        eprintln!("wrote samples to {}", current.display());
    }
    assert!(
        current.exists(),
        "no samples for format version {FORMAT_VERSION} in {}: make them with \
         HOARD_BLESS=1 cargo test -p hoard-core --test golden",
        current.display()
    );
    let mut opened = 0;
    let mut dirs: Vec<PathBuf> =
        fs::read_dir(vectors_dir().join("samples")).unwrap().map(|e| e.unwrap().path()).collect();
    dirs.sort();
    for dir in dirs {
        let mut files: Vec<PathBuf> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for file in files {
            let s = read_json(&file);
            let name = file.display().to_string();
            let version = recorded_version(&name, &s);
            assert!(
                version <= u64::from(FORMAT_VERSION),
                "{name} is of format version {version}, newer than FORMAT_VERSION {FORMAT_VERSION}"
            );
            let is_current = version == u64::from(FORMAT_VERSION);
            let run = || match s["kind"].as_str() {
                Some("keyfile") => open_keyfile_sample(&s),
                Some("pack") => open_pack_sample(&s, is_current),
                Some("objects") => open_objects_sample(&s, is_current),
                k => panic!("{name}: unknown sample kind {k:?}"),
            };
            if let Err(e) = std::panic::catch_unwind(run) {
                let why =
                    e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
                panic!(
                    "{name} (bytes written by format version {version}) no longer opens: {}\n\
                     Old repositories must keep opening; {HINT}",
                    why.unwrap_or_default()
                );
            }
            opened += 1;
        }
    }
    assert!(opened >= 3, "expected at least the keyfile, pack and objects samples, found {opened}");
}

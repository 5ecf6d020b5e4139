//! Committed repositories: broken on purpose (`tests/fixtures/broken/<case>/`) and the
//! compatibility fixture (`tests/fixtures/compat/v2/`), made by `cargo xtask fixtures`. Each test
//! works on a copy in a temporary directory; the committed files are never modified.
//! docs/TESTING.md, "Fixture repositories broken on purpose", has the table of expectations.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::util::*;

/// A copy of one fixture and the repository in it.
struct Fixture {
    env: Env,
    manifest: Value,
}

fn fixture_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(case)
}

impl Fixture {
    fn open(case: &str) -> Fixture {
        let dir = fixture_dir(case);
        let password = fs::read_to_string(dir.join("password.txt")).unwrap();
        let env = Env::bare().with("HOARD_PASSWORD", password.trim_end_matches('\n'));
        copy_tree(&[dir.join("repo").to_str().unwrap()], env.dir.path());
        let manifest = serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        Fixture { env, manifest }
    }

    fn run(&self, args: &[&str]) -> Output {
        let o = self.env.run(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "hoard {args:?} panicked:\n{err}");
        o
    }

    fn code(&self, args: &[&str]) -> (Option<i32>, String) {
        let o = self.run(args);
        (o.status.code(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
    }

    /// Snapshots as `snapshots --json` lists them.
    fn snapshots(&self) -> Vec<Value> {
        self.env.json(&["snapshots"]).as_array().unwrap().clone()
    }

    /// The ids of the snapshots tagged `tag`: (originals, repaired ones).
    fn tagged(&self, tag: &str) -> (Vec<String>, Vec<String>) {
        let mut out = (Vec::new(), Vec::new());
        for s in self.snapshots() {
            if s["tags"].as_array().unwrap().iter().any(|t| t == tag) {
                let id = s["id"].as_str().unwrap().to_string();
                if s["labels"].get("hoard.repaired-from").is_some() {
                    out.1.push(id);
                } else {
                    out.0.push(id);
                }
            }
        }
        out
    }

    fn one(&self, tag: &str) -> String {
        let (o, r) = self.tagged(tag);
        assert_eq!((o.len(), r.len()), (1, 0), "snapshots tagged {tag}: {o:?} and repaired {r:?}");
        o[0].clone()
    }

    fn repaired(&self, tag: &str) -> String {
        let (_, r) = self.tagged(tag);
        assert_eq!(r.len(), 1, "repaired snapshots tagged {tag}: {r:?}");
        r[0].clone()
    }

    /// What the manifest says snapshot `tag` holds.
    fn entries(&self, tag: &str) -> BTreeMap<String, Value> {
        let s = self.manifest["snapshots"].as_array().unwrap().iter().find(|s| s["tag"] == tag).unwrap();
        s["entries"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Restores snapshot `id` (tagged `tag`) and compares it with the manifest: every entry not
    /// in `lost` is there and identical; every entry in `lost` is absent, never restored with
    /// other bytes. Returns the restore's exit code and output.
    fn restore_compare(&self, id: &str, tag: &str, lost: &BTreeSet<String>, name: &str) -> (Option<i32>, String) {
        let target = self.env.path(name);
        let (code, out) = self.code(&["restore", id, "--target", target.to_str().unwrap()]);
        let snap = self.snapshots().into_iter().find(|s| s["id"] == id).unwrap();
        let root = target.join(snap["paths"][0].as_str().unwrap().trim_start_matches('/'));
        compare(&root, &self.entries(tag), lost);
        (code, out)
    }

    /// Every file and directory of the repository, with a hash of each file's content.
    fn listing(&self) -> BTreeMap<PathBuf, Option<String>> {
        walk(&self.env.repo)
            .into_iter()
            .map(|p| {
                let h = p.is_file().then(|| blake3::hash(&fs::read(&p).unwrap()).to_hex().to_string());
                (p, h)
            })
            .collect()
    }

    fn lost_paths(&self, json: &Value) -> BTreeSet<String> {
        json["dropped"].as_array().unwrap().iter().map(|d| d["path"].as_str().unwrap().to_string()).collect()
    }
}

/// Compares a restored tree with manifest entries (see [`Fixture::restore_compare`]).
fn compare(root: &Path, entries: &BTreeMap<String, Value>, lost: &BTreeSet<String>) {
    for (path, e) in entries {
        let p = root.join(path);
        if lost.contains(path) {
            assert!(fs::symlink_metadata(&p).is_err(), "{path} is lost but was restored");
            continue;
        }
        let m = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{path} was not restored: {e}"));
        match e["type"].as_str().unwrap() {
            "dir" => assert!(m.is_dir(), "{path} is not a directory"),
            "symlink" => {
                assert_eq!(fs::read_link(&p).unwrap().to_str().unwrap(), e["target"].as_str().unwrap(), "{path}")
            }
            _ => {
                let b = fs::read(&p).unwrap();
                assert_eq!(b.len() as u64, e["size"].as_u64().unwrap(), "size of {path}");
                assert_eq!(blake3::hash(&b).to_hex().as_str(), e["blake3"].as_str().unwrap(), "content of {path}");
            }
        }
    }
}

/// Paths of the files the snapshot tagged `tag` holds, as the snapshot names them ("/…/x").
fn set(paths: &[&str]) -> BTreeSet<String> {
    paths.iter().map(|p| p.to_string()).collect()
}

/// Maps repair's dropped paths (from the snapshot's root) to manifest paths (below the source).
fn relative(dropped: &BTreeSet<String>, source: &str) -> BTreeSet<String> {
    dropped.iter().filter_map(|d| d.strip_prefix(source).map(|r| r.trim_start_matches('/').to_string())).collect()
}

const B_FILES: &[&str] = &["data/b.bin", "notes/c.txt"];

fn source_path(fx: &Fixture) -> String {
    fx.snapshots()[0]["paths"][0].as_str().unwrap().to_string()
}

#[test]
fn fixture_pack_missing() {
    let fx = Fixture::open("broken/pack-missing");
    let lost = set(B_FILES);
    let none = BTreeSet::new();
    assert_eq!(fx.code(&["check"]).0, Some(4));
    assert_eq!(fx.code(&["check", "--read-data"]).0, Some(4));
    let (s1, s2, s3) = (fx.one("s1"), fx.one("s2"), fx.one("s3"));
    assert_eq!(fx.restore_compare(&s1, "s1", &none, "r1").0, Some(0));
    for (id, tag) in [(&s2, "s2"), (&s3, "s3")] {
        let (code, out) = fx.restore_compare(id, tag, &lost, &format!("r-{tag}"));
        assert_eq!(code, Some(3), "{out}");
        for f in B_FILES {
            assert!(out.contains(f), "the restore of {tag} does not name {f}:\n{out}");
        }
    }

    // Prune, on a copy of its own: it works, and what was whole still restores.
    let p = Fixture::open("broken/pack-missing");
    let (code, out) = p.code(&["prune", "--keep-recent-packs", "0"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(p.restore_compare(&s1, "s1", &none, "p1").0, Some(0));
    assert_eq!(p.restore_compare(&s3, "s3", &lost, "p3").0, Some(3));

    // One snapshot, named by a prefix; and running it again adds nothing.
    let one = Fixture::open("broken/pack-missing");
    let r = one.env.json(&["repair", "snapshots", &s2[..8]]);
    assert_eq!(r["repaired"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!((one.tagged("s2").1.len(), one.tagged("s3").1.len()), (1, 0));
    assert_eq!(one.tagged("s2").0, std::slice::from_ref(&s2), "the original is kept without --forget");
    let before = one.listing();
    let again = one.env.json(&["repair", "snapshots", &s2[..8]]);
    assert_eq!(again["already_repaired"][0]["original"], s2.as_str(), "{again}");
    assert_eq!(again["repaired"].as_array().unwrap().len(), 0, "{again}");
    assert_eq!(one.listing(), before, "a second repair wrote something");

    // A dry run names what would go, and writes nothing.
    let before = fx.listing();
    let dry = fx.env.json(&["repair", "snapshots", "--dry-run"]);
    assert_eq!(fx.listing(), before, "repair snapshots --dry-run wrote something");
    let src = source_path(&fx);
    let rep = dry["repaired"].as_array().unwrap();
    assert_eq!(rep.len(), 2, "{dry}");
    for r in rep {
        assert_eq!(relative(&fx.lost_paths(r), &src), lost, "{dry}");
    }
    fx.env.ok(&["repair", "index"]);
    let done = fx.env.json(&["repair", "snapshots", "--forget"]);
    assert_eq!(done["intact"].as_array().unwrap().len(), 1, "{done}");
    let (code, out) = fx.code(&["check", "--read-data"]);
    assert_eq!(code, Some(0), "check after the repair:\n{out}");
    assert_eq!(fx.tagged("s2").0.len() + fx.tagged("s3").0.len(), 0, "--forget left the originals");
    for tag in ["s2", "s3"] {
        let id = fx.repaired(tag);
        let (code, out) = fx.restore_compare(&id, tag, &lost, &format!("fixed-{tag}"));
        assert_eq!(code, Some(0), "{out}");
    }
    assert_eq!(fx.restore_compare(&s1, "s1", &none, "again-s1").0, Some(0));
}

#[test]
fn fixture_pack_truncated() {
    let fx = Fixture::open("broken/pack-truncated");
    let none = BTreeSet::new();
    let b = set(B_FILES);
    // The pack is shorter than the index says: the structural check sees it already.
    assert_eq!(fx.code(&["check"]).0, Some(4));
    assert_eq!(fx.code(&["check", "--read-data"]).0, Some(4));
    let (s1, s2) = (fx.one("s1"), fx.one("s2"));
    assert_eq!(fx.restore_compare(&s1, "s1", &none, "r1").0, Some(0));
    // Blobs before the cut still read; those after it are reported and not written. Which
    // files those are depends on the pack's (random) order, so anything of B may be missing.
    let target = fx.env.path("r2");
    let (code, out) = fx.code(&["restore", &s2, "--target", target.to_str().unwrap()]);
    assert_eq!(code, Some(3), "{out}");
    let root = target.join(source_path(&fx).trim_start_matches('/'));
    let missing: BTreeSet<String> =
        fx.entries("s2").keys().filter(|p| fs::symlink_metadata(root.join(p)).is_err()).cloned().collect();
    assert!(!missing.is_empty() && missing.is_subset(&b), "missing after restore: {missing:?}");
    compare(&root, &fx.entries("s2"), &missing);
    for f in &missing {
        assert!(out.contains(f.as_str()), "the restore does not name {f}:\n{out}");
    }

    let p = Fixture::open("broken/pack-truncated");
    let (code, out) = p.code(&["prune", "--keep-recent-packs", "0"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(p.restore_compare(&s1, "s1", &none, "p1").0, Some(0));

    // The pack's header is gone with its tail: `repair index` leaves the pack out, after storing
    // again the blobs before the cut that the old index knew.
    let (code, out) = fx.code(&["repair", "index"]);
    assert_eq!(code, Some(3), "{out}");
    let done = fx.env.json(&["repair", "snapshots", "--forget"]);
    let src = source_path(&fx);
    let rep = done["repaired"].as_array().unwrap();
    assert_eq!(rep.len(), 2, "{done}");
    let dropped = relative(&fx.lost_paths(&rep[0]), &src);
    assert!(!dropped.is_empty() && dropped.is_subset(&b), "{done}");
    // The cut pack is no longer indexed; prune removes it.
    fx.env.ok(&["prune", "--keep-recent-packs", "0"]);
    let (code, out) = fx.code(&["check", "--read-data"]);
    assert_eq!(code, Some(0), "check after the repair:\n{out}");
    for tag in ["s2", "s3"] {
        let id = fx.repaired(tag);
        assert_eq!(fx.restore_compare(&id, tag, &dropped, &format!("fixed-{tag}")).0, Some(0));
    }
}

#[test]
fn fixture_index_segment_missing() {
    let fx = Fixture::open("broken/index-segment-missing");
    let none = BTreeSet::new();
    assert_eq!(fx.code(&["check"]).0, Some(4));
    let (s1, s2, s3) = (fx.one("s1"), fx.one("s2"), fx.one("s3"));
    assert_eq!(fx.restore_compare(&s1, "s1", &none, "r1").0, Some(0));
    // s2's trees and data are unindexed: its restore fails or is partial, never wrong.
    let target = fx.env.path("r2");
    let (code, out) = fx.code(&["restore", &s2, "--target", target.to_str().unwrap()]);
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("repair index"), "the error does not point at `repair index`:\n{out}");

    // Prune refuses and deletes nothing.
    let before = fx.listing();
    let (code, out) = fx.code(&["prune", "--keep-recent-packs", "0"]);
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("repair index"), "{out}");
    let after: BTreeMap<_, _> =
        fx.listing().into_iter().filter(|(p, _)| !p.starts_with(fx.env.repo.join("locks"))).collect();
    let before: BTreeMap<_, _> =
        before.into_iter().filter(|(p, _)| !p.starts_with(fx.env.repo.join("locks"))).collect();
    assert_eq!(after, before, "a refused prune changed the repository");

    let rep = fx.env.json(&["repair", "index"]);
    assert_eq!(rep["unreadable"].as_array().unwrap().len(), 0, "{rep}");
    let (code, out) = fx.code(&["check", "--read-data"]);
    assert_eq!(code, Some(0), "check after repair index:\n{out}");
    for (id, tag) in [(&s1, "s1"), (&s2, "s2"), (&s3, "s3")] {
        assert_eq!(fx.restore_compare(id, tag, &none, &format!("fixed-{tag}")).0, Some(0));
    }
    let r = fx.env.json(&["repair", "snapshots"]);
    assert_eq!((r["intact"].as_array().unwrap().len(), r["repaired"].as_array().unwrap().len()), (3, 0), "{r}");
}

#[test]
fn fixture_duplicate_blobs() {
    let fx = Fixture::open("broken/duplicate-blobs");
    let none = BTreeSet::new();
    let (code, out) = fx.code(&["check", "--read-data"]);
    assert_eq!(code, Some(0), "{out}");
    let ids = [fx.one("s1"), fx.one("s2"), fx.one("s3")];
    for (id, tag) in ids.iter().zip(["s1", "s2", "s3"]) {
        assert_eq!(fx.restore_compare(id, tag, &none, &format!("r-{tag}")).0, Some(0));
    }
    let r = fx.env.json(&["repair", "snapshots"]);
    assert_eq!((r["intact"].as_array().unwrap().len(), r["repaired"].as_array().unwrap().len()), (3, 0), "{r}");
    // Prune may drop one of the copies; every snapshot still restores whole.
    let (code, out) = fx.code(&["prune", "--max-unused", "0", "--keep-recent-packs", "0"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = fx.code(&["check", "--read-data"]);
    assert_eq!(code, Some(0), "{out}");
    fx.env.ok(&["repair", "index"]);
    for (id, tag) in ids.iter().zip(["s1", "s2", "s3"]) {
        assert_eq!(fx.restore_compare(id, tag, &none, &format!("p-{tag}")).0, Some(0));
    }
    assert_eq!(fx.code(&["check", "--read-data"]).0, Some(0));
}

#[test]
fn fixture_snapshot_missing_tree() {
    let fx = Fixture::open("broken/snapshot-missing-tree");
    let none = BTreeSet::new();
    let (s1, s2, s3) = (fx.one("s1"), fx.one("s2"), fx.one("s3"));
    let (code, out) = fx.code(&["check"]);
    assert_eq!(code, Some(4), "{out}");
    assert!(out.contains(&s3), "check does not name snapshot {s3}:\n{out}");
    assert_eq!(fx.restore_compare(&s1, "s1", &none, "r1").0, Some(0));
    assert_eq!(fx.restore_compare(&s2, "s2", &none, "r2").0, Some(0));
    let (code, out) = fx.code(&["restore", &s3, "--target", fx.env.path("r3").to_str().unwrap()]);
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("hoard:") || out.contains("error"), "no clear error:\n{out}");

    let before = fx.listing();
    let (code, out) = fx.code(&["prune", "--keep-recent-packs", "0"]);
    assert_ne!(code, Some(0), "prune went on with a tree it cannot read:\n{out}");
    let strip = |l: BTreeMap<PathBuf, Option<String>>| -> BTreeMap<PathBuf, Option<String>> {
        l.into_iter().filter(|(p, _)| !p.starts_with(fx.env.repo.join("locks"))).collect()
    };
    assert_eq!(strip(fx.listing()), strip(before), "a refused prune changed the repository");

    fx.env.ok(&["repair", "index"]);
    let done = fx.env.json(&["repair", "snapshots", "--forget"]);
    let rep = done["repaired"].as_array().unwrap();
    assert_eq!(rep.len(), 1, "{done}");
    assert_eq!(rep[0]["original"], s3.as_str());
    assert_eq!(fx.lost_paths(&rep[0]), set(&["/"]), "{done}");
    let (code, out) = fx.code(&["check", "--read-data"]);
    assert_eq!(code, Some(0), "check after the repair:\n{out}");
    let fixed = fx.repaired("s3");
    let target = fx.env.path("fixed");
    assert_eq!(fx.code(&["restore", &fixed, "--target", target.to_str().unwrap()]).0, Some(0));
    assert!(
        fs::read_dir(&target).map(|mut d| d.next().is_none()).unwrap_or(true),
        "the emptied root restored something"
    );
    assert_eq!(fx.restore_compare(&s2, "s2", &none, "again-s2").0, Some(0));
}

/// Every command that opens the repository, with what it needs.
fn every_command(fx: &Fixture) -> Vec<Vec<String>> {
    let src = fx.env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    let target = fx.env.path("target").to_str().unwrap().to_string();
    [
        vec!["snapshots"],
        vec!["check"],
        vec!["check", "--read-data"],
        vec!["restore", "latest", "--target", &target],
        vec!["backup", src.to_str().unwrap()],
        vec!["ls", "latest"],
        vec!["stats"],
        vec!["forget", "--keep-last", "1"],
        vec!["prune", "--keep-recent-packs", "0"],
        vec!["repair", "index"],
        vec!["repair", "snapshots"],
        vec!["key", "list"],
    ]
    .into_iter()
    .map(|v| v.into_iter().map(String::from).collect())
    .collect()
}

fn refuses_everything(case: &str, code: i32, message: &[&str]) {
    let fx = Fixture::open(case);
    let before = fx.listing();
    for args in every_command(&fx) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (c, out) = fx.code(&args);
        assert_eq!(c, Some(code), "hoard {args:?}:\n{out}");
        for m in message {
            assert!(out.contains(m), "hoard {args:?} does not say {m:?}:\n{out}");
        }
    }
    assert_eq!(fx.listing(), before, "a refused command changed the repository");
}

#[test]
fn fixture_key_tampered() {
    refuses_everything("broken/key-tampered", 12, &["the password does not open any key"]);
}

#[test]
fn fixture_config_newer_version() {
    let v = hoard_core::FORMAT_VERSION;
    refuses_everything(
        "broken/config-newer-version",
        13,
        &[&format!("has format version {}", v + 1), &format!("understands up to {v}")],
    );
}

#[test]
fn fixture_compat_v2_still_opens() {
    let fx = Fixture::open("compat/v2");
    assert!(fx.manifest["format_version"].as_u64().unwrap() <= u64::from(hoard_core::FORMAT_VERSION));
    let snaps = fx.snapshots();
    let tags: Vec<&str> = snaps.iter().map(|s| s["tags"][0].as_str().unwrap()).collect();
    assert_eq!(tags, ["tree", "stream"]);
    let (code, out) = fx.code(&["check", "--read-data"]);
    assert_eq!(code, Some(0), "{out}");
    let tree = fx.one("tree");
    assert_eq!(fx.restore_compare(&tree, "tree", &BTreeSet::new(), "r").0, Some(0));
    let stream = fx.manifest["snapshots"][1]["stream"].clone();
    let o = fx.run(&["dump", &fx.one("stream")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.stdout.len() as u64, stream["size"].as_u64().unwrap());
    assert_eq!(blake3::hash(&o.stdout).to_hex().as_str(), stream["blake3"].as_str().unwrap());
    // This build writes into it.
    let src = fx.env.path("new");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("file"), noise(3, 10_000)).unwrap();
    fx.env.backup(&[src.to_str().unwrap(), "--tag", "new"]);
    assert_eq!(fx.snapshots().len(), 3);
    assert_eq!(fx.code(&["check", "--read-data"]).0, Some(0));
    fx.env.ok(&["restore", "latest", "--target", fx.env.path("rn").to_str().unwrap()]);
    assert_same_tree(&src, &fx.env.path("rn").join(src.strip_prefix("/").unwrap()));
}

//! Damage in storage is found, named, and never turns into wrong bytes on restore.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use crate::util::*;

fn packs(env: &Env) -> BTreeSet<PathBuf> {
    walk(&env.repo.join("data")).into_iter().filter(|p| fs::symlink_metadata(p).unwrap().is_file()).collect()
}

fn flip(p: &std::path::Path, at: usize) {
    let mut b = fs::read(p).unwrap();
    b[at] ^= 0x01;
    fs::write(p, b).unwrap();
}

/// Two snapshots over disjoint data; returns (env, dir a, dir b, id a, id b, packs of b).
fn two_snapshots() -> (Env, PathBuf, PathBuf, String, String, BTreeSet<PathBuf>) {
    let env = Env::new();
    let (a, b) = (env.path("a"), env.path("b"));
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    for i in 0..5 {
        fs::write(a.join(format!("a{i}")), noise(100 + i, 3 << 20)).unwrap();
        fs::write(b.join(format!("b{i}")), noise(200 + i, 3 << 20)).unwrap();
    }
    let sa = env.backup(&[a.to_str().unwrap()]);
    let before = packs(&env);
    let sb = env.backup(&[b.to_str().unwrap()]);
    let of_b: BTreeSet<PathBuf> = packs(&env).difference(&before).cloned().collect();
    let ids = (sa["id"].as_str().unwrap().to_string(), sb["id"].as_str().unwrap().to_string());
    (env, a, b, ids.0, ids.1, of_b)
}

#[test]
fn a_flipped_byte_in_a_pack_is_found_named_and_never_restored() {
    let (env, a, b, ida, idb, of_b) = two_snapshots();
    let data_pack = of_b.iter().max_by_key(|p| fs::metadata(p).unwrap().len()).unwrap();
    let len = fs::metadata(data_pack).unwrap().len() as usize;
    flip(data_pack, len / 3);
    // The structural check does not read data; --read-data does, and names pack and snapshot.
    let o = env.run(&["check", "--read-data"]);
    assert_eq!(o.status.code(), Some(4));
    let err = String::from_utf8_lossy(&o.stderr);
    let pack_name = data_pack.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(pack_name), "check does not name the damaged pack {pack_name}:\n{err}");
    let affected = err.lines().find(|l| l.starts_with("snapshots affected")).unwrap_or("");
    assert!(affected.contains(&idb) && !affected.contains(&ida), "{err}");
    // The unaffected snapshot restores completely.
    env.ok(&["restore", &ida[..8], "--target", env.path("ra").to_str().unwrap()]);
    assert_same_tree(&a, &env.path("ra").join(a.strip_prefix("/").unwrap()));
    // The affected one restores what it can; the damaged file fails loudly and is not left.
    let o = env.run(&["restore", &idb[..8], "--target", env.path("rb").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("authentication failed") || err.contains("does not match"), "{err}");
    let rb = env.path("rb").join(b.strip_prefix("/").unwrap());
    let mut present = 0;
    for i in 0..5 {
        let name = format!("b{i}");
        if let Ok(got) = fs::read(rb.join(&name)) {
            assert!(got == noise(200 + i, 3 << 20), "{name} restored with wrong bytes");
            present += 1;
        }
    }
    assert_eq!(present, 4, "exactly the file with the damaged chunk is missing");
}

#[test]
fn a_flipped_byte_in_an_index_segment_is_found_and_repaired() {
    let (env, a, _b, _ida, _idb, _) = two_snapshots();
    let seg = walk(&env.repo.join("index")).into_iter().find(|p| p.is_file()).unwrap();
    let len = fs::metadata(&seg).unwrap().len() as usize;
    flip(&seg, len / 2);
    fs::remove_dir_all(&env.cache).unwrap();
    let o = env.run(&["check"]);
    assert_eq!(o.status.code(), Some(4));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("index segment") && err.contains(seg.file_name().unwrap().to_str().unwrap()), "{err}");
    // Listing still works, and repair rebuilds the index from the packs.
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 2);
    env.ok(&["repair", "index"]);
    env.ok(&["check", "--read-data"]);
    env.ok(&["restore", "latest", "--target", env.path("r").to_str().unwrap()]);
    let _ = a;
}

#[test]
fn a_flipped_byte_in_a_snapshot_is_found() {
    let (env, a, _b, ida, idb, _) = two_snapshots();
    let snap = env.repo.join("snapshots").join(&idb);
    flip(&snap, 20);
    fs::remove_dir_all(&env.cache).unwrap();
    let o = env.run(&["check"]);
    assert_eq!(o.status.code(), Some(4));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("snapshot {idb}")), "{err}");
    // The other snapshot is listed and restores.
    let list = env.json(&["snapshots"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], ida.as_str());
    env.ok(&["restore", &ida, "--target", env.path("ra").to_str().unwrap()]);
    assert_same_tree(&a, &env.path("ra").join(a.strip_prefix("/").unwrap()));
}

#[test]
fn a_flipped_byte_in_a_tree_is_found_without_reading_data() {
    let (env, _a, _b, ida, idb, of_b) = two_snapshots();
    // b's trees live in its smallest new pack (tree blobs go to packs of their own).
    let tree_pack = of_b.iter().min_by_key(|p| fs::metadata(p).unwrap().len()).unwrap();
    flip(tree_pack, 10);
    fs::remove_dir_all(&env.cache).unwrap();
    let o = env.run(&["check"]);
    assert_eq!(o.status.code(), Some(4), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    let affected = err.lines().find(|l| l.starts_with("snapshots affected")).unwrap_or("");
    assert!(affected.contains(&idb) && !affected.contains(&ida), "{err}");
}

/// `repair snapshots` on a file long enough to keep its chunk ids in chunk-list blobs, one of
/// whose chunks is lost with its pack: the file is left out, the rest is kept.
#[test]
fn repair_snapshots_leaves_out_a_long_file_whose_chunk_is_lost() {
    let env = Env::bare();
    env.ok(&["init", "--kdf-memory", "1024", "--kdf-iterations", "1", "--chunk-size", "1KiB"]);
    let src = env.path("src");
    fs::create_dir_all(src.join("small")).unwrap();
    fs::write(src.join("small/keep"), noise(1, 5000)).unwrap();
    env.backup(&[src.to_str().unwrap()]);
    let before = packs(&env);
    fs::create_dir_all(src.join("big")).unwrap();
    // About 3,000 chunks: more than a tree node lists inline.
    fs::write(src.join("big/long"), noise(2, 3 << 20)).unwrap();
    let s2 = env.backup(&[src.to_str().unwrap()]);
    let new: Vec<PathBuf> = packs(&env).difference(&before).cloned().collect();
    let biggest = new.iter().max_by_key(|p| fs::metadata(p).unwrap().len()).unwrap();
    fs::remove_file(biggest).unwrap();
    assert_eq!(env.run(&["check"]).status.code(), Some(4));
    env.ok(&["repair", "index"]);
    let r = env.json(&["repair", "snapshots", "--forget"]);
    let rep = r["repaired"].as_array().unwrap();
    assert_eq!(rep.len(), 1, "{r}");
    assert_eq!(rep[0]["original"], s2["id"]);
    let dropped: Vec<&str> =
        rep[0]["dropped"].as_array().unwrap().iter().map(|d| d["path"].as_str().unwrap()).collect();
    assert_eq!(dropped, [format!("{}/big/long", src.display())], "{r}");
    assert_eq!(rep[0]["dropped"][0]["type"], "file");
    env.ok(&["check", "--read-data"]);
    env.ok(&["restore", "latest", "--target", env.path("r").to_str().unwrap()]);
    let out = env.path("r").join(src.strip_prefix("/").unwrap());
    assert_eq!(fs::read(out.join("small/keep")).unwrap(), noise(1, 5000));
    assert!(out.join("big").is_dir() && !out.join("big/long").exists());
}

/// A chunk damaged inside a pack that is still there: only `repair snapshots --read-data` sees
/// it, and leaves its file out; prune then drops the damaged copy, and check is clean.
#[test]
fn repair_snapshots_read_data_leaves_out_a_file_with_a_damaged_chunk() {
    let (env, _a, b, ida, idb, of_b) = two_snapshots();
    let data_pack = of_b.iter().max_by_key(|p| fs::metadata(p).unwrap().len()).unwrap();
    let len = fs::metadata(data_pack).unwrap().len() as usize;
    flip(data_pack, len / 3);
    let quick = env.json(&["repair", "snapshots"]);
    assert_eq!(quick["repaired"].as_array().unwrap().len(), 0, "without --read-data nothing is read: {quick}");
    let r = env.json(&["repair", "snapshots", "--read-data", "--forget"]);
    let rep = r["repaired"].as_array().unwrap();
    assert_eq!(rep.len(), 1, "{r}");
    assert_eq!(rep[0]["original"], idb.as_str());
    assert_eq!(r["intact"], serde_json::json!([ida]));
    let dropped = rep[0]["dropped"].as_array().unwrap();
    assert_eq!(dropped.len(), 1, "exactly the file with the damaged chunk goes: {r}");
    let gone = dropped[0]["path"].as_str().unwrap().to_string();
    env.ok(&["prune", "--max-unused", "0", "--keep-recent-packs", "0"]);
    env.ok(&["check", "--read-data"]);
    env.ok(&["restore", "latest", "--target", env.path("r").to_str().unwrap()]);
    let rb = env.path("r").join(b.strip_prefix("/").unwrap());
    for i in 0..5 {
        let name = format!("b{i}");
        if gone.ends_with(&format!("/{name}")) {
            assert!(!rb.join(&name).exists());
        } else {
            assert_eq!(fs::read(rb.join(&name)).unwrap(), noise(200 + i, 3 << 20), "{name}");
        }
    }
}

/// A pack cut short has no header left, but the blobs before the cut are whole: `repair index`
/// reads back the ones the old index knew, stores them again, and only the files whose chunks
/// were in the lost tail are left out by `repair snapshots`.
#[test]
fn repair_index_saves_the_whole_blobs_of_a_pack_cut_short() {
    let env = Env::bare();
    env.ok(&["init", "--kdf-memory", "1024", "--kdf-iterations", "1"]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    // Forty incompressible files of one chunk each, all in one data pack.
    for i in 0..40u64 {
        fs::write(src.join(format!("f{i:02}")), noise(700 + i, 200 << 10)).unwrap();
    }
    let snap = env.backup(&[src.to_str().unwrap()]);
    let pack = packs(&env).into_iter().max_by_key(|p| fs::metadata(p).unwrap().len()).unwrap();
    let len = fs::metadata(&pack).unwrap().len();
    fs::OpenOptions::new().write(true).open(&pack).unwrap().set_len(len / 2).unwrap();
    // As on a new host: the index comes from the repository alone.
    fs::remove_dir_all(&env.cache).unwrap();

    let o = env.run(&["--json", "repair", "index"]);
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    let rep: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let saved = rep["salvaged"].as_u64().unwrap();
    let note = rep["unreadable"][0].as_str().unwrap();
    assert!(note.contains(pack.file_name().unwrap().to_str().unwrap()), "{note}");
    // "…; of the N blobs the index knew in it, S were read back and stored again, 0 have another
    // copy, L are lost" (the packer may have spread the forty over more than one pack).
    let number_before = |word: &str| -> u64 {
        let at = note.find(word).unwrap_or_else(|| panic!("{word:?} not in {note}"));
        note[..at].trim_end().rsplit(' ').next().unwrap().parse().unwrap()
    };
    let (known, lost) = (number_before("blobs the index knew"), number_before("are lost"));
    assert_eq!(number_before("were read back"), saved, "{note}");
    assert_eq!(known, saved + lost, "{note}");
    // Half of the pack is left, so about half of its blobs: some saved, some lost.
    assert!(known >= 10 && saved >= known / 4 && lost >= known / 4, "{note}");

    let r = env.json(&["repair", "snapshots", "--forget"]);
    let rep = r["repaired"].as_array().unwrap();
    assert_eq!(rep.len(), 1, "{r}");
    assert_eq!(rep[0]["original"], snap["id"]);
    let dropped: BTreeSet<String> =
        rep[0]["dropped"].as_array().unwrap().iter().map(|d| d["path"].as_str().unwrap().to_string()).collect();
    assert_eq!(dropped.len() as u64, lost, "{r}");
    // The damaged pack is no longer indexed; prune removes it and the repository checks clean.
    env.ok(&["prune", "--keep-recent-packs", "0"]);
    assert!(!pack.exists());
    env.ok(&["check", "--read-data"]);
    let target = env.path("r");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let root = target.join(src.strip_prefix("/").unwrap());
    let mut kept = 0;
    for i in 0..40u64 {
        let name = format!("f{i:02}");
        let lost = dropped.contains(&format!("{}/{name}", src.display()));
        match fs::read(root.join(&name)) {
            Ok(got) => {
                assert!(!lost, "{name} was dropped but restored");
                assert!(got == noise(700 + i, 200 << 10), "{name} restored with wrong bytes");
                kept += 1;
            }
            Err(_) => assert!(lost, "{name} is missing but was not dropped"),
        }
    }
    assert_eq!(kept, 40 - lost);
}

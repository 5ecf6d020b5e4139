//! `cargo xtask fixtures [--force] [CASE]...`: writes the repositories under `tests/fixtures/`.
//!
//! - `tests/fixtures/broken/<case>/`: small repositories damaged on purpose, one way each, that
//!   `tests/fixtures.rs` runs check, restore, prune and repair against (docs/TESTING.md,
//!   "Fixture repositories broken on purpose").
//! - `tests/fixtures/compat/v2/`: a repository written by this build, in format version 2.
//!
//! Each case directory holds `repo/` (the repository), `password.txt`, `manifest.json` (what each
//! snapshot, found by its tag, holds: path → type, size, BLAKE3 of the content or symlink target)
//! and `README.md` (how it was made and what the tests expect).
//!
//! The hoard binary of this workspace makes every repository, through its command line; the
//! damage is then done to the files, except for `config-newer-version`, whose config is written
//! through `hoard_core` with the repository's own key, as a newer build would write it. The
//! source trees are deterministic, but the repositories are not bit-identical across runs
//! (keys, nonces, pack names and padding are random), and the tests do not depend on their bytes.
//!
//! Existing fixtures are never overwritten unless `--force` is given. The compatibility fixture
//! is never overwritten at all: once released, it is the proof that later builds still read what
//! the first builds wrote, and regenerating it with a later build would prove nothing. It is
//! written only when its directory does not exist.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use hoard_core::format::config::Config;
use hoard_core::format::keyfile::KeyFile;
use hoard_core::format::pack::decode_header;
use hoard_core::format::BlobType;
use hoard_core::{Id, Keys};
use serde_json::{json, Value};

use crate::cmd;

pub const PASSWORD: &str = "fixture password, not a secret";
const BROKEN: &str = "tests/fixtures/broken";
const COMPAT: &str = "tests/fixtures/compat/v2";
/// Where the source trees are made: a fixed path, since snapshots record absolute paths.
const WORK: &str = "/tmp/hoard-fixtures-work";

const CASES: &[&str] = &[
    "pack-missing",
    "pack-truncated",
    "index-segment-missing",
    "duplicate-blobs",
    "snapshot-missing-tree",
    "key-tampered",
    "config-newer-version",
];

pub fn run(args: &[String]) -> Result<()> {
    let mut force = false;
    let mut only = Vec::new();
    for a in args {
        match a.as_str() {
            "--force" => force = true,
            c if CASES.contains(&c) => only.push(c),
            other => bail!(
                "fixtures: unknown argument {other:?} (usage: cargo xtask fixtures [--force] [CASE]...; cases: {})",
                CASES.join(", ")
            ),
        }
    }
    let mut skipped = Vec::new();
    let mut todo = Vec::new();
    for case in CASES.iter().filter(|c| only.is_empty() || only.contains(c)) {
        let dir = Path::new(BROKEN).join(case);
        if dir.exists() && !force {
            skipped.push(dir.display().to_string());
        } else {
            todo.push((*case, dir));
        }
    }
    let compat = Path::new(COMPAT);
    let write_compat = only.is_empty() && !compat.exists();
    if only.is_empty() && compat.exists() {
        println!("{COMPAT} exists and is never regenerated (it is what later builds must read)");
    }
    if !todo.is_empty() || write_compat {
        let hoard = build_hoard()?;
        for (case, dir) in todo {
            if dir.exists() {
                fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
            }
            println!("writing {}", dir.display());
            broken(&hoard, case, &dir).with_context(|| format!("case {case}"))?;
        }
        if write_compat {
            println!("writing {COMPAT}");
            compat_v2(&hoard, compat)?;
        }
    }
    let _ = fs::remove_dir_all(WORK);
    if !skipped.is_empty() {
        bail!("these fixtures exist and were left alone (give --force to write them again): {}", skipped.join(", "));
    }
    Ok(())
}

fn build_hoard() -> Result<PathBuf> {
    cmd::run(&mut cmd::new("cargo", &["build", "--quiet", "--bin", "hoard"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("target"));
    let bin = target.join("debug/hoard");
    fs::canonicalize(&bin).with_context(|| format!("{} after cargo build", bin.display()))
}

/// Runs the hoard binary on one repository.
struct Hoard<'a> {
    bin: &'a Path,
    repo: PathBuf,
    cache: PathBuf,
    password_file: PathBuf,
}

impl Hoard<'_> {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin);
        c.arg("--repo")
            .arg(&self.repo)
            .arg("--cache-dir")
            .arg(&self.cache)
            .arg("--password-file")
            .arg(&self.password_file)
            .arg("--no-progress")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", WORK)
            .env("USER", "fixture")
            .env("TZ", "UTC")
            .stdin(std::process::Stdio::null());
        c
    }

    fn ok(&self, args: &[&str]) -> Result<String> {
        let mut c = self.command(args);
        let (ok, out, err) = cmd::output(&mut c)?;
        if !ok {
            bail!("`{}` failed:\n{out}{err}", cmd::show(&c));
        }
        Ok(out)
    }

    fn keys(&self) -> Result<Keys> {
        let dir = self.repo.join("keys");
        let key = fs::read_dir(&dir)?.next().context("no key file")??.path();
        let kf = KeyFile::decode(&fs::read(&key)?).map_err(|e| anyhow::anyhow!("{e}"))?;
        let (master, _) = kf.open(PASSWORD.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(master.keys())
    }
}

/// The objects of one kind directory (files below it), by name.
fn objects(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".tmp")) {
                out.insert(p);
            }
        }
    }
    out
}

/// What one backup added to the repository.
#[derive(Default)]
struct Added {
    data_packs: Vec<PathBuf>,
    tree_packs: Vec<PathBuf>,
    segments: Vec<PathBuf>,
}

fn pack_type(keys: &Keys, path: &Path) -> Result<BlobType> {
    let bytes = fs::read(path)?;
    let id = Id::from_hex(&path.file_name().unwrap().to_string_lossy()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let entries = decode_header(keys, &id, &bytes, bytes.len() as u64).map_err(|e| anyhow::anyhow!("{e}"))?;
    let types: BTreeSet<u8> = entries.iter().map(|e| e.blob_type as u8).collect();
    match types.into_iter().collect::<Vec<_>>()[..] {
        [0] => Ok(BlobType::Data),
        [1] => Ok(BlobType::Tree),
        _ => bail!("pack {} holds no blobs or both kinds", path.display()),
    }
}

/// One backup of `source`, tagged `tag`, at a fixed time; returns what it added.
fn backup(h: &Hoard, source: &Path, tag: &str, time: &str) -> Result<Added> {
    let (packs0, segs0) = (objects(&h.repo.join("data")), objects(&h.repo.join("index")));
    h.ok(&["backup", source.to_str().unwrap(), "--tag", tag, "--host", "fixture", "--time", time])?;
    let keys = h.keys()?;
    let mut added = Added::default();
    for p in objects(&h.repo.join("data")).difference(&packs0) {
        match pack_type(&keys, p)? {
            BlobType::Data => added.data_packs.push(p.clone()),
            BlobType::Tree => added.tree_packs.push(p.clone()),
        }
    }
    added.segments = objects(&h.repo.join("index")).difference(&segs0).cloned().collect();
    Ok(added)
}

/// Deterministic bytes (xorshift64*), so that the sources are the same on every run.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

fn text(what: &str, lines: usize) -> Vec<u8> {
    (0..lines).map(|i| format!("{what}: line {i} of {lines}\n")).collect::<String>().into_bytes()
}

fn write(root: &Path, rel: &str, content: &[u8]) -> Result<()> {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap())?;
    fs::write(&p, content)?;
    Ok(())
}

/// Sets every mtime below `root` (and its own) to one fixed time, so that a later stage changes
/// only the directories it adds to.
fn settle(root: &Path, secs: u64) -> Result<()> {
    let t = UNIX_EPOCH + Duration::from_secs(secs);
    let mut all = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p)?;
        if m.is_dir() {
            for e in fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
        if !m.file_type().is_symlink() {
            all.push(p);
        }
    }
    // Files before their directories.
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in all {
        let f = fs::File::open(&p)?;
        f.set_modified(t).with_context(|| format!("setting the mtime of {}", p.display()))?;
    }
    Ok(())
}

/// What a tree holds: path → entry, as `manifest.json` records it.
fn describe(root: &Path) -> Result<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p)?;
        let rel = p.strip_prefix(root)?.to_string_lossy().into_owned();
        let t = m.file_type();
        let v = if t.is_dir() {
            for e in fs::read_dir(&p)? {
                stack.push(e?.path());
            }
            json!({"type": "dir"})
        } else if t.is_symlink() {
            json!({"type": "symlink", "target": fs::read_link(&p)?.to_string_lossy()})
        } else {
            let b = fs::read(&p)?;
            json!({"type": "file", "size": b.len(), "blake3": blake3::hash(&b).to_hex().to_string()})
        };
        if !rel.is_empty() {
            out.insert(rel, v);
        }
    }
    Ok(out)
}

/// The three stages of the broken cases' source tree.
fn stage(source: &Path, n: u32) -> Result<()> {
    match n {
        1 => {
            write(source, "top.txt", &text("top", 20))?;
            write(source, "docs/readme.txt", &text("readme", 40))?;
            write(source, "data/a.bin", &noise(1, 3000))?;
        }
        2 => {
            write(source, "data/b.bin", &noise(2, 3000))?;
            write(source, "notes/c.txt", &text("notes", 30))?;
        }
        _ => write(source, "extra/d.bin", &noise(4, 3000))?,
    }
    settle(source, 1_767_225_600 + u64::from(n) * 86_400)
}

const TIMES: [&str; 3] = ["2026-01-01T12:00:00Z", "2026-01-02T12:00:00Z", "2026-01-03T12:00:00Z"];

/// A new repository and a scratch directory for `case`.
fn start<'a>(bin: &'a Path, case: &str, dir: &Path) -> Result<(Hoard<'a>, PathBuf)> {
    let work = Path::new(WORK).join(case);
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    fs::create_dir_all(dir)?;
    let password_file = dir.join("password.txt");
    fs::write(&password_file, format!("{PASSWORD}\n"))?;
    let h = Hoard {
        bin,
        repo: dir.join("repo"),
        cache: work.join("cache"),
        password_file: fs::canonicalize(&password_file)?,
    };
    h.ok(&[
        "init",
        "--kdf-memory",
        "1024",
        "--kdf-iterations",
        "1",
        "--new-password-file",
        h.password_file.to_str().unwrap(),
    ])?;
    Ok((h, work.join("source")))
}

/// Removes empty directories below `root` (git keeps none, so the committed fixture and the
/// one on disk must not differ by them).
fn drop_empty_dirs(root: &Path) -> Result<()> {
    for e in fs::read_dir(root)? {
        let p = e?.path();
        if fs::symlink_metadata(&p)?.is_dir() {
            drop_empty_dirs(&p)?;
            if fs::read_dir(&p)?.next().is_none() {
                fs::remove_dir(&p)?;
            }
        }
    }
    Ok(())
}

fn finish(dir: &Path, manifest: Value, readme: &str) -> Result<()> {
    drop_empty_dirs(&dir.join("repo"))?;
    fs::write(dir.join("manifest.json"), serde_json::to_string_pretty(&manifest)? + "\n")?;
    fs::write(dir.join("README.md"), readme)?;
    Ok(())
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn broken(bin: &Path, case: &str, dir: &Path) -> Result<()> {
    let (h, source) = start(bin, case, dir)?;
    let mut snapshots = Vec::new();
    let mut added = Vec::new();
    for n in 1..=3u32 {
        stage(&source, n)?;
        let tag = format!("s{n}");
        if case == "duplicate-blobs" && n == 3 {
            // Store s3 with neither the index nor the snapshots in sight and with an empty
            // cache: every blob it shares with s1 and s2 is stored again, in new packs with a
            // new index segment. Then the hidden objects come back: both copies are indexed.
            let hidden = Path::new(WORK).join(case).join("hidden");
            fs::create_dir_all(&hidden)?;
            for kind in ["index", "snapshots"] {
                fs::rename(h.repo.join(kind), hidden.join(kind))?;
                fs::create_dir(h.repo.join(kind))?;
            }
            fs::remove_dir_all(&h.cache)?;
            added.push(backup(&h, &source, &tag, TIMES[2])?);
            for kind in ["index", "snapshots"] {
                for f in fs::read_dir(hidden.join(kind))? {
                    let f = f?.path();
                    fs::rename(&f, h.repo.join(kind).join(f.file_name().unwrap()))?;
                }
            }
        } else {
            added.push(backup(&h, &source, &tag, TIMES[n as usize - 1])?);
        }
        snapshots.push(json!({"tag": tag, "entries": describe(&source)?}));
    }
    for (i, a) in added.iter().enumerate() {
        if a.data_packs.is_empty() || a.tree_packs.is_empty() || a.segments.len() != 1 {
            bail!(
                "backup s{} wrote {} data packs, {} tree packs, {} segments; the cases need at least one of each pack and one segment",
                i + 1,
                a.data_packs.len(),
                a.tree_packs.len(),
                a.segments.len()
            );
        }
    }
    let damage = match case {
        "pack-missing" => {
            let names: Vec<String> = added[1].data_packs.iter().map(|p| name(p)).collect();
            for p in &added[1].data_packs {
                fs::remove_file(p)?;
            }
            format!("deleted the data pack(s) written by the backup tagged s2: {}", names.join(", "))
        }
        "pack-truncated" => {
            if added[1].data_packs.len() != 1 {
                bail!("the backup tagged s2 wrote {} data packs, and this case needs one", added[1].data_packs.len());
            }
            let p = &added[1].data_packs[0];
            let len = fs::metadata(p)?.len();
            let f = fs::OpenOptions::new().write(true).open(p)?;
            // A quarter: the header (at the end) is gone, and so is at least the tail of the
            // 3000-byte chunk of data/b.bin, wherever the shuffle put it.
            f.set_len(len / 4)?;
            format!(
                "cut the data pack {} (written by the backup tagged s2) from {len} to {} bytes: its header and \
                 part of its blobs are gone",
                name(p),
                len / 4
            )
        }
        "index-segment-missing" => {
            let s = &added[1].segments[0];
            fs::remove_file(s)?;
            format!("deleted the index segment {} written by the backup tagged s2", name(s))
        }
        "duplicate-blobs" => {
            let n = added[2].data_packs.len() + added[2].tree_packs.len();
            format!(
                "stored the backup tagged s3 with the index and the snapshots hidden and an empty cache, \
                 so its {n} packs hold a second copy of every blob s1 and s2 have; both copies are indexed"
            )
        }
        "snapshot-missing-tree" => {
            let names: Vec<String> = added[2].tree_packs.iter().map(|p| name(p)).collect();
            for p in &added[2].tree_packs {
                fs::remove_file(p)?;
            }
            format!(
                "deleted the tree pack(s) written by the backup tagged s3 ({}): its root tree (and extra/'s) is gone, \
                 while the index still lists it",
                names.join(", ")
            )
        }
        "key-tampered" => {
            let key = objects(&h.repo.join("keys")).into_iter().next().context("no key")?;
            let mut b = fs::read(&key)?;
            let n = b.len();
            for i in [n - 60, n - 20] {
                b[i] ^= 0x5a;
            }
            fs::write(&key, b)?;
            format!("flipped two bytes in the sealed master key of the only key file, {}", name(&key))
        }
        "config-newer-version" => {
            let keys = h.keys()?;
            let path = h.repo.join("config");
            let mut c = Config::decode(&fs::read(&path)?, &keys).map_err(|e| anyhow::anyhow!("{e}"))?;
            c.version = hoard_core::FORMAT_VERSION + 1;
            fs::remove_file(&path)?;
            fs::write(&path, c.encode(&keys))?;
            format!(
                "wrote the config again with format version {} and a valid MAC under the repository's key, \
                 as a newer build would",
                hoard_core::FORMAT_VERSION + 1
            )
        }
        other => bail!("unknown case {other}"),
    };
    let expected = expected(case);
    let readme = format!(
        "# Fixture `{case}`\n\nA repository broken on purpose, made by `cargo xtask fixtures` (xtask/src/fixtures.rs) \
         and tested by `tests/fixtures.rs`. Password: `password.txt`. Three snapshots of one source tree, tagged \
         s1, s2 and s3 (`manifest.json` lists what each holds):\n\n\
         - s1: `top.txt`, `docs/readme.txt`, `data/a.bin`\n\
         - s2: s1 plus `data/b.bin`, `notes/c.txt`\n\
         - s3: s2 plus `extra/d.bin`\n\n\
         Each backup wrote its own data pack, tree pack and index segment, since it holds only the data new in it.\n\n\
         **Damage:** {damage}.\n\n**Expected:** {expected}\n\n\
         See docs/TESTING.md, \"Fixture repositories broken on purpose\".\n"
    );
    finish(dir, json!({"password_file": "password.txt", "snapshots": snapshots}), &readme)
}

fn expected(case: &str) -> &'static str {
    match case {
        "pack-missing" => {
            "`check` fails (exit 4) naming the missing pack; s1 restores whole; s2 and s3 restore all \
             but `data/b.bin` and `notes/c.txt`, which are reported (exit 3); `prune` works and leaves the rest \
             restorable; `repair index` then `repair snapshots --forget` replace s2 and s3 by snapshots without \
             the two files, after which `check --read-data` is clean."
        }
        "pack-truncated" => {
            "`check --read-data` fails (exit 4) naming the pack; the files whose chunks were in it are \
             reported on restore and never written with wrong bytes; `repair index` leaves the pack out \
             (exit 3); `repair snapshots --forget` then drops the files whose chunks are lost, and after `prune` \
             `check --read-data` is clean."
        }
        "index-segment-missing" => {
            "`check` fails (exit 4); `prune` refuses before deleting anything, saying to run `repair index`; \
             `repair index` rebuilds the index from the packs, after which nothing is lost: \
             `check --read-data` is clean and every snapshot restores whole."
        }
        "duplicate-blobs" => {
            "nothing is lost: `check --read-data` is clean, every snapshot restores whole, `repair snapshots` \
             finds every snapshot intact, and `prune` keeps it so."
        }
        "snapshot-missing-tree" => {
            "`check` fails (exit 4) naming s3; s1 and s2 restore whole, restoring s3 fails with a clear error; \
             `prune` refuses (a tree cannot be read); `repair index` then `repair snapshots --forget` replace s3 \
             with a snapshot whose root is an empty directory, after which `check --read-data` is clean."
        }
        "key-tampered" => {
            "every command that opens the repository fails with \"the password does not open any key\" (exit 12), \
             never a panic, and changes nothing."
        }
        "config-newer-version" => {
            "every command refuses with \"has format version N; this build of hoard understands up to M\" \
             (exit 13), before asking for a password, and changes nothing."
        }
        _ => "",
    }
}

/// The compatibility fixture: a file, an empty file, a symlink, directories and a stream.
/// Never regenerate it once released (see the module's documentation).
fn compat_v2(bin: &Path, dir: &Path) -> Result<()> {
    let (h, source) = start(bin, "compat", dir)?;
    write(&source, "hello.txt", &text("hello", 10))?;
    write(&source, "empty", b"")?;
    write(&source, "sub/deeper/data.bin", &noise(10, 5000))?;
    fs::create_dir_all(source.join("empty-dir"))?;
    std::os::unix::fs::symlink("sub/deeper/data.bin", source.join("link"))?;
    settle(&source, 1_767_225_600)?;
    h.ok(&["backup", source.to_str().unwrap(), "--tag", "tree", "--host", "fixture", "--time", TIMES[0]])?;
    let dump = text("pg_dump-like stream", 200);
    let stream = Path::new(WORK).join("compat/stream.sql");
    fs::write(&stream, &dump)?;
    let mut c = h.command(&[
        "backup", "--stdin", "--name", "db.sql", "--tag", "stream", "--host", "fixture", "--time", TIMES[1],
    ]);
    c.stdin(fs::File::open(&stream)?);
    let (ok, out, err) = cmd::output(&mut c)?;
    if !ok {
        bail!("`{}` failed:\n{out}{err}", cmd::show(&c));
    }
    let manifest = json!({
        "password_file": "password.txt",
        "format_version": hoard_core::FORMAT_VERSION,
        "snapshots": [
            {"tag": "tree", "entries": describe(&source)?},
            {"tag": "stream", "stream": {"name": "db.sql", "size": dump.len(), "blake3": blake3::hash(&dump).to_hex().to_string()}},
        ],
    });
    let readme = format!(
        "# Compatibility fixture, format version {v}\n\nWritten once by `cargo xtask fixtures` with the build of \
         format version {v}, and never regenerated: it is the proof that later builds still read what this \
         version wrote. Password: `password.txt`. Two snapshots (`manifest.json`): one tagged `tree`, of a \
         directory with a file, an empty file, an empty directory, a nested file and a symlink; one tagged \
         `stream`, of standard input named `db.sql`.\n\n`tests/fixtures.rs` opens it with the current build: \
         `snapshots` lists both, `check --read-data` is clean, `restore` and `dump` give back the manifest's \
         bytes, and a new backup into a copy of it works.\n",
        v = hoard_core::FORMAT_VERSION
    );
    finish(dir, manifest, &readme)
}

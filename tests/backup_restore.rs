//! File trees: round trips, incremental backups, dedup, excludes, partial backups, restore
//! safety.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::util::*;

/// A copy of real files no one here wrote, plus every awkward kind of entry.
fn real_tree(env: &Env) -> std::path::PathBuf {
    let src = env.path("src");
    copy_tree(&["/usr/share/vim", "/usr/share/perl5", "/usr/share/zoneinfo", "/usr/share/i18n"], &src);
    awkward_tree(&src.join("awkward"));
    src
}

fn restored(env: &Env, target: &str, src: &Path) -> std::path::PathBuf {
    env.path(target).join(src.strip_prefix("/").unwrap())
}

#[test]
fn tree_round_trip_is_byte_and_metadata_identical() {
    let env = Env::new();
    let src = real_tree(&env);
    let s = env.backup(&[src.to_str().unwrap()]);
    assert_eq!(s["partial"], false);
    assert!(s["summary"]["files_new"].as_u64().unwrap() > 1000, "{s}");
    env.ok(&["restore", "latest", "--target", env.path("out").to_str().unwrap()]);
    assert_same_tree(&src, &restored(&env, "out", &src));
    // The sparse file came back sparse.
    let m = fs::metadata(restored(&env, "out", &src).join("awkward/sparse")).unwrap();
    assert!(std::os::unix::fs::MetadataExt::blocks(&m) * 512 < 1 << 20, "sparse file restored dense");
    // A sub-path restores on its own.
    env.ok(&[
        "restore",
        &format!("latest:{}/awkward/keys", src.display()),
        "--target",
        env.path("keys").to_str().unwrap(),
    ]);
    assert_eq!(fs::read(env.path("keys/id_ed25519")).unwrap(), b"secret");
    env.ok(&["check", "--read-data"]);
}

#[test]
fn second_backup_reads_only_changed_files() {
    let env = Env::new();
    let src = env.path("src");
    copy_tree(&["/usr/share/perl5", "/usr/share/zoneinfo"], &src);
    let files: Vec<_> = walk(&src).into_iter().filter(|p| fs::symlink_metadata(p).unwrap().is_file()).collect();
    let first = env.backup(&[src.to_str().unwrap()]);
    let total = first["summary"]["files_new"].as_u64().unwrap();
    assert_eq!(total as usize, files.len());
    // Rewrite part of 2% of the files.
    let n = files.len() / 50;
    let mut changed_bytes = 0u64;
    for (i, f) in files.iter().step_by(50).take(n).enumerate() {
        let mut data = fs::read(f).unwrap();
        let at = data.len() / 2;
        data.splice(at..at, format!("change {i}").bytes());
        fs::write(f, &data).unwrap();
        changed_bytes += data.len() as u64;
    }
    let second = env.backup(&[src.to_str().unwrap()]);
    let m = &second["summary"];
    assert_eq!(m["files_changed"].as_u64().unwrap(), n as u64, "{m}");
    assert_eq!(m["files_unmodified"].as_u64().unwrap(), total - n as u64, "{m}");
    assert_eq!(m["bytes_read"].as_u64().unwrap(), changed_bytes, "only the changed files are read: {m}");
    assert_eq!(second["parent"], first["id"]);
    env.ok(&["restore", "latest", "--target", env.path("out").to_str().unwrap()]);
    assert_same_tree(&src, &restored(&env, "out", &src));
}

#[test]
fn same_data_twice_adds_under_one_percent() {
    let env = Env::new();
    let a = env.path("a");
    copy_tree(&["/usr/share/perl5", "/usr/share/vim", "/usr/share/i18n"], &a);
    env.backup(&[a.to_str().unwrap()]);
    let size1 = env.repo_size();
    let growth = |from: u64| (env.repo_size() - from) as f64 / from as f64;
    // The same tree again, every file read again.
    let s = env.backup(&[a.to_str().unwrap(), "--force"]);
    assert!(s["summary"]["bytes_read"].as_u64().unwrap() > 30 << 20);
    let g = growth(size1);
    assert!(g < 0.01, "the same data read again grew the repository by {:.3}%", g * 100.0);
    // A second copy elsewhere: new paths, inodes and times, so new trees, but no new data.
    let size2 = env.repo_size();
    let b = env.path("b");
    copy_tree(&["/usr/share/perl5", "/usr/share/vim", "/usr/share/i18n"], &b);
    env.backup(&[b.to_str().unwrap()]);
    let g = growth(size2);
    assert!(g < 0.01, "the same data in another place grew the repository by {:.3}%", g * 100.0);
}

#[test]
fn deleted_cache_is_rebuilt_with_the_same_results() {
    let env = Env::new();
    let src = env.path("src");
    copy_tree(&["/usr/share/zoneinfo"], &src);
    env.backup(&[src.to_str().unwrap()]);
    let snaps = env.json(&["snapshots"]);
    let ls = env.json(&["ls", "latest"]);
    let stats = env.json(&["stats"]);
    fs::remove_dir_all(&env.cache).unwrap();
    assert_eq!(env.json(&["snapshots"]), snaps);
    fs::remove_dir_all(&env.cache).unwrap();
    assert_eq!(env.json(&["ls", "latest"]), ls);
    assert_eq!(env.json(&["stats"]), stats);
    // A cache of the wrong schema (garbage) is replaced too.
    let db = walk(&env.cache).into_iter().find(|p| p.extension().is_some_and(|e| e == "sqlite")).unwrap();
    fs::write(&db, b"garbage").unwrap();
    for ext in ["sqlite-wal", "sqlite-shm"] {
        let _ = fs::remove_file(db.with_extension(ext));
    }
    assert_eq!(env.json(&["snapshots"]), snaps);
    env.ok(&["restore", "latest", "--target", env.path("out").to_str().unwrap()]);
    assert_same_tree(&src, &restored(&env, "out", &src));
}

#[test]
fn excludes_and_cache_directories() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(src.join("keep")).unwrap();
    fs::create_dir_all(src.join("cache")).unwrap();
    fs::create_dir_all(src.join("logs")).unwrap();
    fs::write(src.join("keep/a.txt"), b"a").unwrap();
    fs::write(src.join("keep/b.tmp"), b"b").unwrap();
    fs::write(src.join("logs/x.log"), b"x").unwrap();
    fs::write(src.join("cache/CACHEDIR.TAG"), b"Signature: 8a477f597d28d172789f06886806bc55\n").unwrap();
    fs::write(src.join("cache/blob"), b"c").unwrap();
    fs::write(env.path("excludes"), format!("# comment\n{}/logs\n", src.display())).unwrap();
    env.backup(&[
        src.to_str().unwrap(),
        "--exclude",
        "*.tmp",
        "--exclude-file",
        env.path("excludes").to_str().unwrap(),
        "--exclude-caches",
    ]);
    let ls = env.ok(&["ls", "latest"]);
    assert!(ls.contains("keep/a.txt"), "{ls}");
    assert!(!ls.contains("b.tmp"), "{ls}");
    assert!(!ls.contains("logs"), "{ls}");
    assert!(!ls.contains("cache"), "{ls}");
}

#[test]
fn unreadable_files_are_reported_and_give_a_partial_exit_code() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("readable"), b"fine").unwrap();
    fs::write(src.join("secret"), b"root only").unwrap();
    fs::set_permissions(src.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    // Run the backup as an unprivileged user who can write the repository but not read "secret".
    let st = Command::new("chown").arg("-R").arg("65534:65534").arg(&env.repo).arg(&env.cache).status().unwrap();
    assert!(st.success());
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = env.cmd(&["--json", "backup", src.to_str().unwrap()]);
    let args: Vec<_> = std::iter::once(c.get_program().to_owned()).chain(c.get_args().map(|a| a.to_owned())).collect();
    let envs: Vec<_> = c.get_envs().map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned()))).collect();
    let mut s = Command::new("setpriv");
    s.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).args(&args).env_clear();
    for (k, v) in envs {
        if let Some(v) = v {
            s.env(k, v);
        }
    }
    let o = s.output().unwrap();
    let _ = &mut c;
    assert_eq!(o.status.code(), Some(3), "stderr: {}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("secret") && stderr.contains("Permission denied"), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["partial"], true);
    assert_eq!(v["summary"]["errors"], 1);
    let ls = env.ok(&["ls", "latest"]);
    assert!(ls.contains("readable") && !ls.contains("secret"), "{ls}");
    // The partial snapshot is a sound one: everything it lists is stored.
    env.ok(&["check", "--read-data"]);
}

#[test]
fn restore_replaces_symlinks_in_the_target_instead_of_following_them() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(src.join("etc/passwd"), b"from the snapshot").unwrap();
    env.backup(&[src.to_str().unwrap()]);
    // A hostile target: where the snapshot has a directory, a symlink points elsewhere.
    let outside = env.path("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("passwd"), b"must stay").unwrap();
    let target = env.path("out");
    let at = restored(&env, "out", &src);
    fs::create_dir_all(&at).unwrap();
    std::os::unix::fs::symlink(&outside, at.join("etc")).unwrap();
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(fs::read(outside.join("passwd")).unwrap(), b"must stay");
    assert!(fs::symlink_metadata(at.join("etc")).unwrap().is_dir());
    assert_eq!(fs::read(at.join("etc/passwd")).unwrap(), b"from the snapshot");
}

#[test]
fn include_and_exclude_on_restore() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(src.join("a/deep")).unwrap();
    fs::create_dir_all(src.join("b")).unwrap();
    fs::write(src.join("a/deep/x.conf"), b"x").unwrap();
    fs::write(src.join("a/y.log"), b"y").unwrap();
    fs::write(src.join("b/z.conf"), b"z").unwrap();
    env.backup(&[src.to_str().unwrap()]);
    let t = env.path("out");
    env.ok(&["restore", "latest", "--target", t.to_str().unwrap(), "--include", "*.conf", "--exclude", "b"]);
    let r = restored(&env, "out", &src);
    assert!(r.join("a/deep/x.conf").exists());
    assert!(!r.join("a/y.log").exists());
    assert!(!r.join("b").exists());
}

/// An entry whose inode and ctime are the parent's takes the parent's extended attributes
/// without reading them (changing one moves ctime); one whose ctime moved has them read again.
#[test]
fn extended_attributes_of_directories_changed_between_backups_are_stored() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(src.join("a/b")).unwrap();
    fs::create_dir_all(src.join("c")).unwrap();
    fs::write(src.join("a/b/f"), b"x").unwrap();
    xattr::set(src.join("a"), "user.hoard.kept", b"1").unwrap();
    xattr::set(src.join("c"), "user.hoard.changed", b"old").unwrap();
    env.backup(&[src.to_str().unwrap()]);
    xattr::set(src.join("c"), "user.hoard.changed", b"new").unwrap();
    xattr::set(src.join("a/b"), "user.hoard.added", b"2").unwrap();
    let second = env.backup(&[src.to_str().unwrap()]);
    assert_eq!(second["summary"]["files_unmodified"], 1, "{second}");
    env.ok(&["restore", "latest", "--target", env.path("out").to_str().unwrap()]);
    let out = restored(&env, "out", &src);
    assert_same_tree(&src, &out);
    let get = |p: &str, name: &str| xattr::get(out.join(p), name).unwrap();
    assert_eq!(get("a", "user.hoard.kept").as_deref(), Some(&b"1"[..]));
    assert_eq!(get("c", "user.hoard.changed").as_deref(), Some(&b"new"[..]));
    assert_eq!(get("a/b", "user.hoard.added").as_deref(), Some(&b"2"[..]));
}

#[test]
fn diff_names_what_changed() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("same"), b"1").unwrap();
    fs::write(src.join("edit"), b"1").unwrap();
    fs::write(src.join("gone"), b"1").unwrap();
    let a = env.backup(&[src.to_str().unwrap()]);
    fs::write(src.join("edit"), b"22").unwrap();
    fs::remove_file(src.join("gone")).unwrap();
    fs::write(src.join("new"), b"3").unwrap();
    let b = env.backup(&[src.to_str().unwrap()]);
    let d = env.json(&["diff", a["id"].as_str().unwrap(), &b["short_id"].as_str().unwrap()[..6]]);
    let changes: Vec<(String, String)> = d["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().rsplit('/').next().unwrap().to_string(),
                c["change"].as_str().unwrap().to_string(),
            )
        })
        .filter(|(p, _)| p != "src")
        .collect();
    assert_eq!(changes, vec![("edit".into(), "M".into()), ("gone".into(), "-".into()), ("new".into(), "+".into())]);
}

#[test]
fn a_file_that_changes_while_read_is_noted_in_the_summary() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    let path = src.join("growing.log");
    fs::write(&path, noise(9, 64 << 20)).unwrap();
    // Append for as long as the backup runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, path) = (stop.clone(), path.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(&[b'x'; 4096]).unwrap();
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        })
    };
    let s = env.backup(&[src.to_str().unwrap()]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(s["summary"]["changed_during_read"], 1, "{s}");
    assert!(
        s["warnings"].as_array().unwrap().iter().any(|w| w.as_str().unwrap().contains("changed while it was read")),
        "{s}"
    );
    // What was read is consistent: the stored size is what restore gives back.
    let ls = env.json(&["ls", "latest"]);
    let node = ls.as_array().unwrap().iter().find(|n| n["path"].as_str().unwrap().ends_with("growing.log")).unwrap();
    env.ok(&["restore", "latest", "--target", env.path("out").to_str().unwrap()]);
    let got = fs::metadata(restored(&env, "out", &src).join("growing.log")).unwrap().len();
    assert_eq!(got, node["size"].as_u64().unwrap());
    env.ok(&["check", "--read-data"]);
}

/// Symlinks that loop, or point back up the tree, are stored as links and never followed: a
/// backup that followed them would never end (or stop with ELOOP and a partial exit code).
#[test]
fn symlink_loops_are_stored_as_links_and_restored_identically() {
    use std::os::unix::fs::symlink;
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(src.join("dir/sub")).unwrap();
    fs::write(src.join("dir/sub/file"), b"the only file").unwrap();
    symlink("b", src.join("a")).unwrap(); // a -> b -> a
    symlink("a", src.join("b")).unwrap();
    symlink("..", src.join("dir/sub/up")).unwrap(); // a directory link to its parent
    symlink(&src, src.join("dir/root")).unwrap(); // an absolute link to the backed-up root
    symlink("self", src.join("self")).unwrap(); // a link to itself
                                                // A backup that loops must fail this test, not hang it.
    let mut child =
        env.cmd(&["--json", "backup", src.to_str().unwrap()]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the backup of a tree with symlink loops did not end in 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(0), "a clean backup, not a partial one");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["partial"], false, "{s}");
    assert_eq!(s["summary"]["files_new"], 1, "only the one regular file is read: {s}");
    assert_eq!(s["summary"]["errors"], 0, "{s}");
    // Stored as links, with their targets as written.
    let ls = env.json(&["ls", "latest"]);
    let node = |name: &str| {
        ls.as_array()
            .unwrap()
            .iter()
            .find(|n| n["path"].as_str().unwrap().ends_with(&format!("/src/{name}")))
            .unwrap_or_else(|| panic!("{name} is not in the snapshot: {ls}"))
            .clone()
    };
    for (name, target) in
        [("a", "b"), ("b", "a"), ("dir/sub/up", ".."), ("dir/root", src.to_str().unwrap()), ("self", "self")]
    {
        let n = node(name);
        assert_eq!(n["type"], "symlink", "{n}");
        assert_eq!(n["link_target"], target, "{n}");
    }
    let nothing_below = ls
        .as_array()
        .unwrap()
        .iter()
        .all(|n| !n["path"].as_str().unwrap().contains("/up/") && !n["path"].as_str().unwrap().contains("/root/"));
    assert!(nothing_below, "a link was followed: {ls}");
    env.ok(&["restore", "latest", "--target", env.path("out").to_str().unwrap()]);
    assert_same_tree(&src, &restored(&env, "out", &src));
    env.ok(&["check", "--read-data"]);
}

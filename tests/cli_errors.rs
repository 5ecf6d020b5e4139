//! Bad input gets a clear message, a distinct exit code, and changes nothing.

use std::fs;

use crate::util::*;

fn listing(env: &Env) -> Vec<(std::path::PathBuf, u64)> {
    walk(&env.repo)
        .into_iter()
        .map(|p| {
            let m = fs::symlink_metadata(&p).unwrap();
            (p, if m.is_file() { m.len() } else { 0 })
        })
        .collect()
}

#[test]
fn wrong_password() {
    let env = Env::new();
    let before = listing(&env);
    let o = env.cmd(&["snapshots"]).env("HOARD_PASSWORD", "wrong").output().unwrap();
    assert_eq!(o.status.code(), Some(12));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("password does not open"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = env.cmd(&["backup", "/etc/hostname"]).env("HOARD_PASSWORD", "wrong").output().unwrap();
    assert_eq!(o.status.code(), Some(12));
    assert_eq!(listing(&env), before, "a failed unlock wrote to the repository");
}

#[test]
fn missing_repository() {
    let env = Env::bare();
    let o = env.run(&["snapshots"]);
    assert_eq!(o.status.code(), Some(10));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no hoard repository") && err.contains("hoard init"), "{err}");
    assert!(!env.repo.exists());
}

#[test]
fn repository_of_an_unknown_format_version() {
    let env = Env::new();
    let cfg = env.repo.join("config");
    let mut b = fs::read(&cfg).unwrap();
    b[8..12].copy_from_slice(&99u32.to_le_bytes());
    fs::write(&cfg, &b).unwrap();
    let before = listing(&env);
    let o = env.cmd(&["backup", "/etc/hostname"]).env_remove("HOARD_PASSWORD").output().unwrap();
    assert_eq!(o.status.code(), Some(13), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("format version 99") && err.contains("upgrade"), "{err}");
    assert_eq!(listing(&env), before);
}

#[test]
fn repository_path_is_a_file() {
    let env = Env::bare();
    fs::write(&env.repo, b"not a repository").unwrap();
    let o = env.run(&["snapshots"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is a file"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = env.run(&["init"]);
    assert_ne!(o.status.code(), Some(0));
    assert_eq!(fs::read(&env.repo).unwrap(), b"not a repository");
}

#[test]
fn init_refuses_an_existing_repository() {
    let env = Env::new();
    let before = listing(&env);
    let o = env.run(&["init"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    assert_eq!(listing(&env), before);
}

#[test]
fn unknown_snapshot_and_usage_errors() {
    let env = Env::new();
    let o = env.run(&["ls", "deadbeef"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no snapshot matches"));
    let o = env.run(&["backup", "--no-such-flag"]);
    assert_eq!(o.status.code(), Some(2));
}

/// SIGINT in the middle of a backup: exit 130, no snapshot, a repository that checks clean.
/// The signal goes out only once hoard handles SIGINT and has written a pack, with most of the
/// data still to read, so neither a slow start nor a fast machine changes what is tested.
#[test]
fn interrupted_backup_exits_130_and_commits_nothing() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..48 {
        fs::write(src.join(format!("f{i}")), noise(i, 4 << 20)).unwrap();
    }
    let child = env.cmd(&["backup", src.to_str().unwrap()]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    crate::servers::wait_for("hoard's SIGINT handler", 30, || handles_sigint(pid));
    let data = env.repo.join("data");
    crate::servers::wait_for("a first pack", 30, || {
        // Tolerant of files that come and go while this looks (temporary names renamed).
        fs::read_dir(&data).into_iter().flatten().flatten().any(|d| {
            fs::read_dir(d.path()).into_iter().flatten().flatten().any(|f| f.file_type().is_ok_and(|t| t.is_file()))
        })
    });
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("interrupted; nothing was committed"));
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 0);
    env.ok(&["check"]);
}

/// Whether process `pid` catches SIGINT (bit 2 of SigCgt in /proc/PID/status).
fn handles_sigint(pid: u32) -> bool {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|m| m & (1 << (libc::SIGINT - 1)) != 0)
}

/// A repository on a tiny filesystem: running out of space is reported as such and leaves no
/// snapshot behind. Needs mount(2) (root); outside CI it says why it does not run.
#[test]
fn a_full_disk_is_reported_and_commits_nothing() {
    let env = Env::bare();
    let mnt = env.path("small");
    fs::create_dir_all(&mnt).unwrap();
    let st = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"]).arg(&mnt).status();
    let mounted = match st {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("mount exited with {s} (needs root)")),
        Err(e) => Err(format!("cannot run mount: {e}")),
    };
    let Some(()) = found(mounted, "a small tmpfs (mount(2))") else { return };
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let repo = mnt.join("repo");
    let run = |args: &[&str]| env.cmd(args).env("HOARD_REPOSITORY", &repo).output().unwrap();
    assert!(run(&["init", "--kdf-memory", "1024", "--kdf-iterations", "1"]).status.success());
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("small"), b"fits").unwrap();
    assert!(run(&["backup", src.to_str().unwrap()]).status.success());
    for i in 0..5 {
        fs::write(src.join(format!("big{i}")), noise(i, 4 << 20)).unwrap();
    }
    let o = run(&["backup", src.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(15), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no space left"), "{}", String::from_utf8_lossy(&o.stderr));
    // One file much larger than a pack: the disk fills while the reader is still cutting it,
    // and the reader's early stop must not hide why (regression: this exited 1).
    let big = env.path("big");
    fs::create_dir_all(&big).unwrap();
    fs::write(big.join("huge"), noise(9, 160 << 20)).unwrap();
    let o = run(&["backup", big.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(15), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no space left"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = env.cmd(&["--json", "snapshots"]).env("HOARD_REPOSITORY", &repo).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "only the first snapshot exists");
    assert!(run(&["check"]).status.success());
}

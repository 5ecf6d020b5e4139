//! `hoard forget`: retention policies and named snapshots, on snapshots whose times are set with
//! `backup --time`.

use std::collections::BTreeSet;
use std::fs;

use serde_json::Value;

use crate::util::*;

/// Backs up `dir` (made if missing) as host "h" at `time`; returns the snapshot id.
fn backup_at(env: &Env, dir: &str, time: &str) -> String {
    backup_with(env, dir, time, time.as_bytes())
}

/// Backs up `dir` holding one file with `content`.
fn backup_with(env: &Env, dir: &str, time: &str, content: &[u8]) -> String {
    let path = env.path(dir);
    fs::create_dir_all(&path).unwrap();
    fs::write(path.join("file"), content).unwrap();
    let v = env.backup(&["--host", "h", "--time", time, path.to_str().unwrap()]);
    assert_eq!(v["time"], rfc3339_utc(time), "backup --time sets the snapshot's time");
    v["id"].as_str().unwrap().to_string()
}

/// "2024-01-01T12:00:00Z" as the JSON listings print it.
fn rfc3339_utc(t: &str) -> String {
    format!("{}.000000000Z", t.trim_end_matches('Z'))
}

/// Runs with `--json` in the time zone `tz`, expecting success.
fn json_in(env: &Env, tz: &str, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let o = env.cmd(&a).env("TZ", tz).output().unwrap();
    assert!(o.status.success(), "hoard {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn ids(v: &Value) -> BTreeSet<String> {
    v.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
}

fn listed(env: &Env) -> BTreeSet<String> {
    ids(&env.json(&["snapshots"]))
}

fn set(ids: &[&String]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

#[test]
fn keep_daily_dry_run_then_for_real() {
    let env = Env::new();
    let jan1 = backup_at(&env, "data", "2024-01-01T12:00:00Z");
    let jan2 = backup_at(&env, "data", "2024-01-02T12:00:00Z");
    let jan3 = backup_at(&env, "data", "2024-01-03T12:00:00Z");
    let jan3_later = backup_at(&env, "data", "2024-01-03T13:00:00Z");
    // Another source is another group: the policy keeps its only snapshot.
    let other = backup_at(&env, "other", "2024-01-01T12:00:00Z");
    let all = set(&[&jan1, &jan2, &jan3, &jan3_later, &other]);
    assert_eq!(listed(&env), all);

    let plan = json_in(&env, "UTC", &["forget", "--keep-daily", "2", "--dry-run"]);
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["removed"], serde_json::json!([]));
    let groups = plan["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    let data = groups.iter().find(|g| g["key"]["source"]["name"].as_str().unwrap().ends_with("/data")).unwrap();
    assert_eq!(data["key"]["host"], "h");
    assert_eq!(data["key"]["source"]["kind"], "path");
    assert_eq!(data["key"]["paths"], Value::Null);
    let keep: Vec<&str> = data["keep"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(keep, [jan3_later.as_str(), jan2.as_str()], "newest first");
    for k in data["keep"].as_array().unwrap() {
        assert_eq!(k["reasons"], serde_json::json!(["daily"]));
    }
    assert_eq!(ids(&data["remove"]), set(&[&jan1, &jan3]));
    let rest = groups.iter().find(|g| g["key"]["source"]["name"].as_str().unwrap().ends_with("/other")).unwrap();
    assert_eq!(ids(&rest["keep"]), set(&[&other]));
    assert_eq!(listed(&env), all, "a dry run removes nothing");

    // The text form says what each snapshot gets and why.
    let text = env.ok(&["forget", "--keep-daily", "2", "-n"]);
    assert!(text.contains("would remove 2 snapshots and keep 3"), "{text}");
    let line = |id: &str| text.lines().find(|l| l.starts_with(&id[..8])).unwrap().to_string();
    assert!(line(&jan3_later).contains("keep") && line(&jan3_later).ends_with("daily"), "{text}");
    assert!(line(&jan1).contains("remove"), "{text}");

    // Filters narrow what is considered; --group-by changes the groups.
    let v = json_in(&env, "UTC", &["forget", "--keep-last", "1", "-n", "--filter-host", "nobody"]);
    assert_eq!(v["groups"], serde_json::json!([]));
    let v = json_in(&env, "UTC", &["forget", "--keep-last", "1", "-n", "--group-by", "host"]);
    assert_eq!(v["groups"].as_array().unwrap().len(), 1);
    assert_eq!(v["groups"][0]["key"]["source"], Value::Null);
    assert_eq!(ids(&v["groups"][0]["keep"]), set(&[&jan3_later]));

    let done = json_in(&env, "UTC", &["forget", "--keep-daily", "2"]);
    assert_eq!(done["dry_run"], false);
    let removed: BTreeSet<String> =
        done["removed"].as_array().unwrap().iter().map(|id| id.as_str().unwrap().to_string()).collect();
    assert_eq!(removed, set(&[&jan1, &jan3]));
    assert_eq!(listed(&env), set(&[&jan2, &jan3_later, &other]));
    // Forgetting leaves the data, and the repository consistent.
    env.ok(&["check"]);
    // Applying the same policy again changes nothing.
    let again = json_in(&env, "UTC", &["forget", "--keep-daily", "2"]);
    assert_eq!(again["removed"], serde_json::json!([]));
    assert_eq!(listed(&env), set(&[&jan2, &jan3_later, &other]));
}

#[test]
fn days_are_those_of_the_tz_time_zone() {
    let env = Env::new();
    let a = backup_at(&env, "data", "2024-06-10T12:00:00Z"); // New York Jun 10 08:00, Tokyo Jun 10 21:00
    let b = backup_at(&env, "data", "2024-06-10T23:30:00Z"); // New York Jun 10 19:30, Tokyo Jun 11 08:30
    let c = backup_at(&env, "data", "2024-06-11T05:00:00Z"); // New York Jun 11 01:00, Tokyo Jun 11 14:00
    let kept = |tz: &str| ids(&json_in(&env, tz, &["forget", "--keep-daily", "5", "-n"])["groups"][0]["keep"]);
    assert_eq!(kept("America/New_York"), set(&[&c, &b]));
    assert_eq!(kept("Asia/Tokyo"), set(&[&c, &a]));
    assert_eq!(kept("UTC"), set(&[&c, &b]));
}

#[test]
fn forget_named_snapshots() {
    let env = Env::new();
    let a = backup_at(&env, "data", "2024-01-01T12:00:00Z");
    let b = backup_at(&env, "data", "2024-01-02T12:00:00Z");
    let c = backup_at(&env, "data", "2024-01-03T12:00:00Z");
    // One unknown id and nothing is removed.
    let o = env.run(&["forget", &a, "0000000000"]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(listed(&env), set(&[&a, &b, &c]));
    // A full id and a unique prefix.
    let v = env.json(&["forget", &a, &b[..12]]);
    assert_eq!(v["removed"].as_array().unwrap().len(), 2);
    assert_eq!(v["groups"][0]["keep"], serde_json::json!([]));
    assert_eq!(listed(&env), set(&[&c]));
}

#[test]
fn no_rule_refuses() {
    let env = Env::new();
    let a = backup_at(&env, "data", "2024-01-01T12:00:00Z");
    for args in
        [&["forget"][..], &["forget", "--keep-last", "0"], &["forget", "--keep-within", "0d"], &["forget", "-n"]]
    {
        let o = env.run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("no retention policy"), "{args:?}: {err}");
    }
    // Ids and a policy together are refused too.
    let o = env.run(&["forget", &a, "--keep-last", "1"]);
    assert_eq!(o.status.code(), Some(2));
    // So are a malformed duration and an unknown group field.
    assert_eq!(env.run(&["forget", "--keep-within", "3x"]).status.code(), Some(2));
    assert_eq!(env.run(&["forget", "--keep-last", "1", "--group-by", "colour"]).status.code(), Some(2));
    assert_eq!(env.run(&["backup", "--time", "yesterday", "/etc/hostname"]).status.code(), Some(2));
    assert_eq!(listed(&env), set(&[&a]));
}

#[test]
fn forget_then_prune_frees_what_only_the_forgotten_snapshot_used() {
    let env = Env::new();
    // Incompressible content of its own in each snapshot.
    let a = backup_with(&env, "data", "2024-01-01T12:00:00Z", &noise(1, 300_000));
    let b = backup_with(&env, "data", "2024-01-02T12:00:00Z", &noise(2, 300_000));
    let before = env.repo_size();
    // A dry run forgets nothing and prunes nothing.
    env.ok(&["forget", "--keep-last", "1", "--prune", "--dry-run"]);
    assert_eq!(listed(&env), set(&[&a, &b]));
    assert_eq!(env.repo_size(), before);
    let text = env.ok(&["forget", "--keep-last", "1", "--prune", "--keep-recent-packs", "0"]);
    assert!(text.contains("removed 1 snapshots, kept 1"), "{text}");
    assert_eq!(listed(&env), set(&[&b]));
    let after = env.repo_size();
    assert!(after + 250_000 < before, "prune freed {} bytes", before - after);
    env.ok(&["check", "--read-data"]);
    env.ok(&["restore", "latest", "--target", env.path("r").to_str().unwrap()]);
    let restored = walk(&env.path("r")).into_iter().find(|p| p.ends_with("file")).unwrap();
    assert_eq!(fs::read(restored).unwrap(), noise(2, 300_000));
    // With --json, one document: forget's decisions and prune's report in its `prune` field.
    backup_with(&env, "data", "2024-01-03T12:00:00Z", &noise(3, 300_000));
    let v = env.json(&["forget", "--keep-last", "1", "--prune", "--keep-recent-packs", "0"]);
    assert_eq!(v["removed"].as_array().unwrap().len(), 1, "{v}");
    assert!(v["prune"]["deleted_bytes"].as_u64().unwrap() > 250_000, "{v}");
}

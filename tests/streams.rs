//! Byte streams: standard input and commands (how database dumps arrive).

use std::io::Write;
use std::process::Stdio;

use crate::util::*;

fn backup_stdin(env: &Env, name: &str, data: &[u8]) -> serde_json::Value {
    let mut c = env.cmd(&["--json", "backup", "--stdin", "--name", name]);
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let w = std::thread::spawn(move || stdin.write_all(&data));
    let o = child.wait_with_output().unwrap();
    w.join().unwrap().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn a_200_mb_stream_with_one_percent_changed_adds_under_five_percent() {
    let env = Env::new();
    let mut data = noise(1, 200 << 20);
    let first = backup_stdin(&env, "db.sql", &data);
    assert_eq!(first["summary"]["bytes_total"].as_u64().unwrap(), 200 << 20);
    // 1% of the bytes changed in a few places: inserts, overwrites and deletes.
    let piece = (200 << 20) / 100 / 4;
    data.splice(20 << 20..20 << 20, noise(2, piece));
    let at = 80 << 20;
    data[at..at + piece].copy_from_slice(&noise(3, piece));
    data.drain(140 << 20..(140 << 20) + piece);
    data.splice(190 << 20..190 << 20, noise(4, piece));
    let second = backup_stdin(&env, "db.sql", &data);
    let new = second["summary"]["bytes_new"].as_u64().unwrap();
    let limit = data.len() as u64 / 20;
    assert!(new < limit, "night 2 stored {new} new bytes, limit {limit}");
    assert_eq!(second["parent"], first["id"]);
    let o = env.cmd(&["dump", "latest", "db.sql"]).output().unwrap();
    assert!(o.status.success());
    assert!(o.stdout == data, "dump differs from what was backed up");
}

#[test]
fn a_failing_command_commits_nothing_and_shows_its_error() {
    let env = Env::new();
    let o = env.run(&[
        "backup",
        "--from-command",
        "echo some output; echo 'pg_dump: connection refused' >&2; exit 3",
        "--name",
        "db.sql",
    ]);
    assert_eq!(o.status.code(), Some(14), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("connection refused") && err.contains("nothing was committed"), "{err}");
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 0);
    // A command killed by a signal counts as failed too.
    let o = env.run(&["backup", "--from-command", "head -c 100000 /dev/urandom; kill -9 $$", "--name", "db.sql"]);
    assert_eq!(o.status.code(), Some(14));
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 0);
    env.ok(&["check"]);
}

#[test]
fn a_command_stream_round_trips() {
    let env = Env::new();
    let s = env.backup(&["--from-command", "seq 1 200000", "--name", "numbers.txt", "--tag", "nightly"]);
    assert_eq!(s["source_kind"], "command");
    assert_eq!(s["tags"][0], "nightly");
    let o = env.cmd(&["dump", "latest"]).output().unwrap();
    let expect = std::process::Command::new("seq").args(["1", "200000"]).output().unwrap().stdout;
    assert_eq!(o.stdout, expect);
}

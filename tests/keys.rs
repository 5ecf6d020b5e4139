//! Passwords: several keys open one repository; keys can be added, removed and changed.

use crate::util::*;

#[test]
fn add_list_remove_and_change_passwords() {
    let env = Env::new();
    env.backup(&["/etc/hostname"]);
    let out = env.cmd(&["key", "add"]).env("HOARD_NEW_PASSWORD", "second").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let keys = env.json(&["key", "list"]);
    assert_eq!(keys.as_array().unwrap().len(), 2);
    // The new password opens the same snapshots.
    let o = env.cmd(&["--json", "snapshots"]).env("HOARD_PASSWORD", "second").output().unwrap();
    assert!(o.status.success());
    // The key in use cannot be removed; another one can.
    let current =
        keys.as_array().unwrap().iter().find(|k| k["current"] == true).unwrap()["id"].as_str().unwrap().to_string();
    let other =
        keys.as_array().unwrap().iter().find(|k| k["current"] == false).unwrap()["id"].as_str().unwrap().to_string();
    assert!(!env.run(&["key", "remove", &current[..8]]).status.success());
    env.ok(&["key", "remove", &other[..10]]);
    assert_eq!(env.cmd(&["snapshots"]).env("HOARD_PASSWORD", "second").output().unwrap().status.code(), Some(12));
    // passwd: the old password stops working, the new one works.
    let o = env.cmd(&["key", "passwd"]).env("HOARD_NEW_PASSWORD", "third").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(env.run(&["snapshots"]).status.code(), Some(12));
    let o = env.cmd(&["--json", "snapshots"]).env("HOARD_PASSWORD", "third").output().unwrap();
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
}

#[test]
fn password_from_file_and_command() {
    let env = Env::new();
    std::fs::write(env.path("pw"), format!("{PASSWORD}\n")).unwrap();
    let o = env
        .cmd(&["snapshots"])
        .env_remove("HOARD_PASSWORD")
        .env("HOARD_PASSWORD_FILE", env.path("pw"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = env
        .cmd(&["snapshots"])
        .env_remove("HOARD_PASSWORD")
        .env("HOARD_PASSWORD_COMMAND", format!("cat {}", env.path("pw").display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // No password source and no terminal: a clear error, not a hang.
    let mut c = env.cmd(&["snapshots"]);
    c.env_remove("HOARD_PASSWORD");
    // SAFETY: setsid is async-signal-safe; it detaches the child from any controlling terminal.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut c, || {
            libc::setsid();
            Ok(())
        });
    }
    let o = c.output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("HOARD_PASSWORD"));
}

/// A key file copied in from another repository that opens with the same password must not stop
/// this repository's own key from opening it; a malformed key file is listed and removable.
#[test]
fn foreign_and_malformed_key_files_do_not_lock_users_out() {
    let env = Env::new();
    env.backup(&["/etc/hostname"]);
    let other = Env::new();
    let foreign = std::fs::read_dir(other.repo.join("keys")).unwrap().next().unwrap().unwrap().path();
    // Names sort before the repository's own key, so they are tried first.
    std::fs::copy(&foreign, env.repo.join("keys").join("0".repeat(64))).unwrap();
    std::fs::write(env.repo.join("keys").join(format!("{}1", "0".repeat(63))), b"HRDKEY not really").unwrap();
    let o = env.run(&["--json", "snapshots"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap().as_array().unwrap().len(), 1);
    assert!(String::from_utf8_lossy(&o.stderr).contains("belongs to another repository"));

    let keys = env.json(&["key", "list"]);
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 3);
    let bad = keys.iter().find(|k| !k["error"].is_null()).expect("the malformed key is listed with its error");
    env.ok(&["key", "remove", bad["id"].as_str().unwrap()]);
    env.ok(&["key", "remove", &"0".repeat(64)]);
    assert_eq!(env.json(&["key", "list"]).as_array().unwrap().len(), 1);

    // Only the foreign key left that opens with the password: a clear error, not "wrong password".
    let lone = Env::new();
    std::fs::remove_file(std::fs::read_dir(lone.repo.join("keys")).unwrap().next().unwrap().unwrap().path()).unwrap();
    std::fs::copy(&foreign, lone.repo.join("keys").join("0".repeat(64))).unwrap();
    let o = lone.run(&["snapshots"]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("copied from another repository"));
}

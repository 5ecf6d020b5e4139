//! A backup killed at any instant loses nothing that was committed before it.

use std::fs;
use std::time::{Duration, Instant};

use crate::util::*;

#[test]
fn sigkill_during_backup_at_twenty_points_leaves_earlier_snapshots_restorable() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..40 {
        fs::write(src.join(format!("f{i:02}")), noise(i, 2 << 20)).unwrap();
    }
    copy_tree(&["/usr/share/zoneinfo"], &src);
    let first = env.backup(&[src.to_str().unwrap()]);
    let first_id = first["id"].as_str().unwrap().to_string();
    // How long a full read of the tree takes, to spread the kill points over it.
    let t = Instant::now();
    env.backup(&[src.to_str().unwrap(), "--force"]);
    let full = t.elapsed();
    let points = 20;
    let mut killed = 0;
    for k in 0..points {
        // New data each round, so the killed backup has real work to do.
        for i in 0..8 {
            fs::write(src.join(format!("f{:02}", (k * 8 + i) % 40)), noise(1000 + k * 100 + i, 2 << 20)).unwrap();
        }
        let mut child = env
            .cmd(&["backup", src.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let delay = full.mul_f64((k as f64 + 0.5) / points as f64);
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            killed += 1;
        }
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // Every earlier snapshot is intact and the repository checks clean.
        let o = env.run(&["check"]);
        assert!(
            o.status.success(),
            "check after kill {k} at {delay:?} failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        if k % 5 == 0 {
            let target = env.path(&format!("r{k}"));
            env.ok(&["restore", &first_id, "--target", target.to_str().unwrap(), "--include", "/**/zoneinfo/Europe"]);
            assert!(target.join(src.strip_prefix("/").unwrap()).join("zoneinfo/Europe/Paris").exists());
            fs::remove_dir_all(&target).unwrap();
        }
    }
    assert!(
        killed >= points / 2,
        "only {killed} of {points} backups were still running when killed; the kill points do not cover the run"
    );
    // The next backup succeeds and everything verifies.
    let last = env.backup(&[src.to_str().unwrap()]);
    assert_eq!(last["partial"], false);
    env.ok(&["check", "--read-data"]);
    env.ok(&["restore", "latest", "--target", env.path("final").to_str().unwrap()]);
    assert_same_tree(&src, &env.path("final").join(src.strip_prefix("/").unwrap()));
    let _ = Duration::ZERO;
}

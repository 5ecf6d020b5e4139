//! Docker volumes against the real Docker Engine: back up, remove, restore, compare from inside a
//! container; both ways of reading give one tree; labelled containers are stopped and started
//! again, also on failure and SIGTERM; errors a user can act on. Test volumes and containers get
//! unique names and are removed by a guard, also when a test fails.
//!
//! Setup and checks use the `docker` command line, not hoard's own client, so a bug there cannot
//! hide itself; containers run hoard's helper image (busybox, made without a registry).

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

const IMAGE: &str = hoard_docker::HELPER_IMAGE;

/// The engine is there and the helper image made (by the same code hoard uses).
fn engine() -> Option<()> {
    let probe = hoard_docker::Engine::connect().and_then(|e| e.ensure_helper_image());
    found(probe, "the Docker engine")
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).stdin(Stdio::null()).output().unwrap()
}

fn docker_ok(args: &[&str]) -> String {
    let o = docker(args);
    assert!(o.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// Unique names, and removal of everything named through it when dropped.
struct Scratch {
    prefix: String,
    containers: std::cell::RefCell<Vec<String>>,
    volumes: std::cell::RefCell<Vec<String>>,
}

impl Scratch {
    fn new(test: &str) -> Scratch {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        Scratch {
            prefix: format!("hoardt-{test}-{}-{:x}", std::process::id(), t & 0xffffff),
            containers: Default::default(),
            volumes: Default::default(),
        }
    }

    fn volume(&self, name: &str, labels: &[&str]) -> String {
        let v = format!("{}-{name}", self.prefix);
        let mut args = vec!["volume", "create"];
        for l in labels {
            args.extend(["--label", l]);
        }
        args.push(&v);
        docker_ok(&args);
        self.volumes.borrow_mut().push(v.clone());
        v
    }

    /// Runs a shell script in a throwaway container with these mounts (`-v` arguments).
    fn sh(&self, mounts: &[&str], script: &str) -> String {
        let mut args = vec!["run", "--rm", "--network", "none"];
        for m in mounts {
            args.extend(["-v", m]);
        }
        args.extend([IMAGE, "sh", "-c", script]);
        docker_ok(&args)
    }

    /// Starts a long-running container.
    fn container(&self, name: &str, labels: &[&str], mounts: &[&str]) -> String {
        let c = format!("{}-{name}", self.prefix);
        let mut args = vec!["run", "-d", "--network", "none", "--name", &c];
        for l in labels {
            args.extend(["--label", l]);
        }
        for m in mounts {
            args.extend(["-v", m]);
        }
        args.extend([IMAGE, "sleep", "100000"]);
        docker_ok(&args);
        self.containers.borrow_mut().push(c.clone());
        c
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for c in self.containers.borrow().iter() {
            let _ = docker(&["rm", "-f", c]);
        }
        for v in self.volumes.borrow().iter() {
            let _ = docker(&["volume", "rm", "-f", v]);
        }
    }
}

/// Every entry's type and mode, owner, mtime and link target, every file's size and md5, from
/// inside a container.
const LISTING: &str = "cd /d && find . -exec stat -c '%n %f %u:%g %Y %N' {} + | sort \
    && find . -type f -exec stat -c '%n %s' {} + | sort && find . -type f -exec md5sum {} + | sort";

fn listing(s: &Scratch, volume: &str) -> String {
    s.sh(&[&format!("{volume}:/d:ro")], LISTING)
}

fn populate(s: &Scratch, volume: &str) {
    s.sh(
        &[&format!("{volume}:/d")],
        "set -e; cd /d
         for d in $(seq 1 20); do mkdir -p tree/$d; for f in $(seq 1 30); do echo \"file $d/$f\" > tree/$d/$f; done; done
         dd if=/dev/urandom of=tree/random bs=1k count=3000 2>/dev/null
         mkdir keys && echo private > keys/id && chmod 600 keys/id && chmod 700 keys
         echo pg > pg && chown 999:999 pg && echo graf > graf && chown 472:472 graf && chmod 640 graf
         mkdir -p pgdata/base && chown -R 999:999 pgdata && chmod 700 pgdata
         ln -s keys/id link-rel && ln -s /nonexistent dangling && ln -s pgdata dirlink
         mkdir -p empty/deeper/still
         truncate -s 200M sparse && echo end >> sparse
         touch -d '2001-02-03 04:05:06' keys/id
         chown 999:999 . && chmod 750 .",
    );
}

fn sparse_kib(s: &Scratch, volume: &str) -> u64 {
    s.sh(&[&format!("{volume}:/d:ro")], "du -k /d/sparse | cut -f1").trim().parse().unwrap()
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn backup_json(env: &Env, args: &[&str]) -> Value {
    let mut a = vec!["--json", "backup", "docker"];
    a.extend_from_slice(args);
    serde_json::from_str(&env.ok(&a)).unwrap()
}

#[test]
fn a_volume_comes_back_byte_for_byte_with_owners_modes_times_and_links() {
    let Some(()) = engine() else { return };
    let s = Scratch::new("roundtrip");
    let env = Env::new();
    let v = s.volume("data", &["app=roundtrip", "tier=db"]);
    populate(&s, &v);
    let before = listing(&s, &v);
    assert!(before.contains("./keys 41c0 0:0"), "{before}");
    assert!(before.contains("./graf 81a0 472:472"), "{before}");
    assert!(before.contains(". 41e8 999:999"), "{before}");

    let r = backup_json(&env, &[&v]);
    let snap = &r["snapshots"][0];
    assert_eq!(snap["kind"], "docker-volume");
    assert_eq!(snap["source"], v.as_str());
    let snaps = env.json(&["snapshots"]);
    let labels = &snaps[0]["labels"];
    assert_eq!(labels["app"], "roundtrip", "{snaps}");
    let root = labels["hoard.volume.root"].as_str().unwrap();
    assert!(root.starts_with("mode=0750 uid=999 gid=999 mtime="), "{root}");

    // Through the mountpoint.
    docker_ok(&["volume", "rm", &v]);
    env.ok(&["restore", "docker", "latest", "--volume", &v]);
    assert_eq!(listing(&s, &v), before);
    assert!(sparse_kib(&s, &v) < 1024, "the 200 MiB sparse file came back dense");
    let inspect = docker_ok(&["volume", "inspect", "-f", "{{json .Labels}}", &v]);
    let got: Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(got["app"], "roundtrip");
    assert_eq!(got["tier"], "db");

    // Through a helper container and the archive API.
    docker_ok(&["volume", "rm", &v]);
    env.ok(&["restore", "docker", "latest", "--volume", &v, "--via-container"]);
    assert_eq!(listing(&s, &v), before);
}

#[test]
fn the_helper_container_and_the_mountpoint_give_the_same_tree() {
    let Some(()) = engine() else { return };
    let s = Scratch::new("sametree");
    let env = Env::new();
    let v = s.volume("data", &[]);
    populate(&s, &v);
    let a = backup_json(&env, &[&v]);
    let b = backup_json(&env, &[&v, "--via-container"]);
    let (ta, tb) = (&a["snapshots"][0]["tree"], &b["snapshots"][0]["tree"]);
    assert!(ta.is_string());
    assert_eq!(ta, tb, "mountpoint and helper container gave different trees");
    // And the tree is the volume's content, not the mountpoint's path.
    let ls = env.ok(&["ls", &a["snapshots"][0]["id"].as_str().unwrap()[..8]]);
    assert!(ls.lines().any(|l| l.trim_end_matches('/') == "/keys" || l.trim_end_matches('/') == "keys"), "{ls}");
    assert!(!ls.contains("/var/lib/docker"), "{ls}");
}

#[test]
fn a_non_empty_volume_is_refused_without_force_and_replaced_with_it() {
    let Some(()) = engine() else { return };
    let s = Scratch::new("force");
    let env = Env::new();
    let v = s.volume("data", &[]);
    s.sh(&[&format!("{v}:/d")], "echo one > /d/a");
    backup_json(&env, &[&v]);
    s.sh(&[&format!("{v}:/d")], "echo two > /d/a && echo extra > /d/b");
    for via in [false, true] {
        let mut args = vec!["restore", "docker", "latest", "--volume", &v];
        if via {
            args.push("--via-container");
        }
        let o = env.run(&args);
        assert_eq!(code(&o), Some(17), "{}", stderr(&o));
        assert!(stderr(&o).contains("is not empty; use --force"), "{}", stderr(&o));
        args.push("--force");
        env.ok(&args);
        assert_eq!(s.sh(&[&format!("{v}:/d")], "ls /d && cat /d/a"), "a\none\n");
        s.sh(&[&format!("{v}:/d")], "echo two > /d/a && echo extra > /d/b");
    }
}

/// Docker events for a container between two times: the actions (stop, die, start, …).
fn events(container: &str, since: i64) -> Vec<String> {
    let until = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 1;
    let out = docker_ok(&[
        "events",
        "--since",
        &since.to_string(),
        "--until",
        &until.to_string(),
        "--filter",
        &format!("container={container}"),
        "--format",
        "{{.Action}}",
    ]);
    out.lines().map(String::from).collect()
}

fn now_s() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 - 1
}

fn running(c: &str) -> bool {
    docker_ok(&["inspect", "-f", "{{.State.Running}}", c]).trim() == "true"
}

#[test]
fn a_labelled_container_is_stopped_for_its_volume_only_and_started_again_also_on_failure() {
    let Some(()) = engine() else { return };
    let s = Scratch::new("stop");
    let env = Env::new();
    let v = s.volume("db", &[]);
    let other = s.volume("other", &[]);
    s.sh(&[&format!("{v}:/d")], "echo data > /d/x");
    let db = s.container("db", &["hoard.stop=true"], &[&format!("{v}:/data")]);
    let reader = s.container("reader", &[], &[&format!("{v}:/data:ro")]);
    let bystander = s.container("bystander", &["hoard.stop=true"], &[&format!("{other}:/data")]);
    let since = now_s();
    let o = env.run(&["backup", "docker", &v]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The unlabelled container that uses the volume is a warning, and is left running.
    assert!(stderr(&o).contains("without the label hoard.stop=true"), "{}", stderr(&o));
    let ev = events(&db, since);
    assert!(ev.iter().any(|e| e == "stop") && ev.iter().any(|e| e == "start"), "events of {db}: {ev:?}");
    assert!(running(&db), "{db} was not started again");
    assert!(events(&reader, since).iter().all(|e| e != "stop" && e != "die"), "the unlabelled container was stopped");
    assert!(
        events(&bystander, since).iter().all(|e| e != "stop" && e != "die"),
        "a container of another volume was stopped"
    );

    // --require-quiet refuses the volume the unlabelled container uses, and stops nothing.
    let since = now_s();
    let o = env.run(&["backup", "docker", &v, "--require-quiet"]);
    assert_eq!(code(&o), Some(17), "{}", stderr(&o));
    assert!(stderr(&o).contains("--require-quiet"), "{}", stderr(&o));
    assert!(events(&db, since).iter().all(|e| e != "stop"));

    // A backup that fails while the volume is read (the repository cannot take packs) still
    // starts the container again, and commits nothing.
    docker_ok(&["rm", "-f", &reader]);
    s.sh(&[&format!("{v}:/d")], "dd if=/dev/urandom of=/d/big bs=1M count=8 2>/dev/null");
    let before = env.json(&["snapshots"]).as_array().unwrap().len();
    std::fs::remove_dir_all(env.repo.join("data")).unwrap();
    std::fs::write(env.repo.join("data"), b"not a directory").unwrap();
    let since = now_s();
    let o = env.run(&["backup", "docker", &v]);
    assert_ne!(code(&o), Some(0), "the backup should have failed");
    let ev = events(&db, since);
    assert!(ev.iter().any(|e| e == "stop"), "events of {db}: {ev:?}");
    assert!(running(&db), "{db} was left stopped after a failed backup: {}", stderr(&o));
    std::fs::remove_file(env.repo.join("data")).unwrap();
    std::fs::create_dir(env.repo.join("data")).unwrap();
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), before);
}

#[test]
fn sigterm_during_a_volume_backup_starts_the_stopped_container_again() {
    let Some(()) = engine() else { return };
    let s = Scratch::new("sigterm");
    let env = Env::new();
    let v = s.volume("db", &[]);
    // Enough data that the read is still going when the signal comes.
    s.sh(
        &[&format!("{v}:/d")],
        "for i in 1 2 3 4 5 6; do dd if=/dev/urandom of=/d/f$i bs=1M count=100 2>/dev/null; done",
    );
    let db = s.container("db", &["hoard.stop=true"], &[&format!("{v}:/data")]);
    let mut child = env.cmd(&["backup", "docker", &v]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let t = Instant::now();
    while running(&db) {
        assert!(t.elapsed() < Duration::from_secs(60), "the container was never stopped");
        assert!(child.try_wait().unwrap().is_none(), "hoard ended before the container was stopped");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), Some(130), "{}", stderr(&o));
    assert!(running(&db), "the container was left stopped after SIGTERM");
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 0, "an interrupted backup committed");
}

#[test]
fn the_second_night_reads_only_changed_files() {
    let Some(()) = engine() else { return };
    let s = Scratch::new("night");
    let env = Env::new();
    let v = s.volume("data", &[]);
    s.sh(
        &[&format!("{v}:/d")],
        "for i in $(seq 1 10); do dd if=/dev/urandom of=/d/f$i bs=1M count=2 2>/dev/null; done; touch -d '2020-01-01' /d/f*",
    );
    let first = backup_json(&env, &[&v]);
    assert_eq!(first["bytes_read"], 20 << 20);
    s.sh(&[&format!("{v}:/d")], "dd if=/dev/urandom of=/d/f3 bs=1M count=2 2>/dev/null");
    let o = env.run(&["backup", "docker", &v]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout).into_owned() + &stderr(&o);
    // Time and bytes in the summary.
    assert!(text.contains("read 2.00 MiB of 20.00 MiB in"), "{text}");
    let snaps = env.json(&["snapshots"]);
    assert_eq!(snaps[1]["parent"], snaps[0]["id"], "{snaps}");
    assert_eq!(snaps[1]["summary"]["files_unmodified"], 9, "{snaps}");
    // A volume of the same name on another host is not this one's parent: everything is read.
    let other = backup_json(&env, &[&v, "--host", "elsewhere"]);
    assert_eq!(other["bytes_read"], 20 << 20);
    let snaps = env.json(&["snapshots"]);
    assert!(snaps[2]["parent"].is_null(), "{snaps}");
}

#[test]
fn engine_unavailable_and_volume_not_found_are_clear_errors() {
    let Some(()) = engine() else { return };
    let env = Env::new();
    let o = env
        .cmd(&["backup", "docker", "anything"])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    assert_eq!(code(&o), Some(16), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the Docker engine at unix:///nonexistent/docker.sock is not reachable"),
        "{}",
        stderr(&o)
    );
    let o = env.cmd(&["docker", "ls"]).env("DOCKER_HOST", "unix:///nonexistent/docker.sock").output().unwrap();
    assert_eq!(code(&o), Some(16), "{}", stderr(&o));

    let o = env.run(&["backup", "docker", "hoardt-no-such-volume"]);
    assert_eq!(code(&o), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("volume hoardt-no-such-volume not found"), "{}", stderr(&o));
    let o = env.run(&["backup", "docker"]);
    assert_eq!(code(&o), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("nothing to back up"), "{}", stderr(&o));
    // Plain path backups still parse as before.
    let o = env.run(&["backup", env.dir.path().join("missing").to_str().unwrap()]);
    assert_eq!(code(&o), Some(1), "{}", stderr(&o));
}

#[test]
fn a_socket_this_user_may_not_use_is_a_clear_error() {
    let Some(()) = engine() else { return };
    let Some(_) = found(Command::new("setpriv").arg("--version").output(), "setpriv (util-linux)") else { return };
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not run: needs root to drop to another user");
        return;
    }
    let env = Env::bare();
    let o = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", env!("CARGO_BIN_EXE_hoard"), "docker", "ls"])
        .env_clear()
        .env("HOME", env.dir.path())
        .output()
        .unwrap();
    assert_eq!(code(&o), Some(16), "{}", stderr(&o));
    assert!(stderr(&o).contains("permission denied on the Docker socket"), "{}", stderr(&o));
}

#[test]
fn a_project_restores_the_snapshots_of_the_time_asked_for() {
    let Some(()) = engine() else { return };
    let s = Scratch::new("ptime");
    let env = Env::new();
    let project = format!("{}p", s.prefix.replace('-', ""));
    let v = s.volume("data", &[&format!("com.docker.compose.project={project}")]);
    s.sh(&[&format!("{v}:/d")], "echo monday > /d/day");
    env.ok(&["backup", "docker", "--project", &project]);
    std::thread::sleep(Duration::from_millis(1100));
    s.sh(&[&format!("{v}:/d")], "echo tuesday > /d/day");
    env.ok(&["backup", "docker", "--project", &project]);
    let snaps = env.json(&["snapshots", "--filter-tag", &format!("project={project}")]);
    let monday = snaps[0]["time"].as_str().unwrap().to_string();
    docker_ok(&["volume", "rm", &v]);
    env.ok(&["restore", "docker", "--project", &project, "--snapshot-time", &monday]);
    assert_eq!(s.sh(&[&format!("{v}:/d")], "cat /d/day"), "monday\n");
    env.ok(&["restore", "docker", "--project", &project, "--force"]);
    assert_eq!(s.sh(&[&format!("{v}:/d")], "cat /d/day"), "tuesday\n");
    let o = env.run(&["restore", "docker", "--project", &project, "--snapshot-time", "2001-01-01T00:00:00Z"]);
    assert_eq!(code(&o), Some(1));
    assert!(stderr(&o).contains("no snapshots tagged"), "{}", stderr(&o));
}

#[test]
fn docker_ls_shows_volumes_their_users_and_bind_mounts() {
    let Some(()) = engine() else { return };
    let s = Scratch::new("ls");
    let env = Env::bare();
    let v = s.volume("data", &["com.docker.compose.project=lsproj"]);
    let bind = env.path("bind");
    std::fs::create_dir_all(&bind).unwrap();
    let c = s.container("app", &["hoard.stop=true"], &[&format!("{v}:/data:ro"), &format!("{}:/srv", bind.display())]);
    let j: Value = serde_json::from_str(&env.ok(&["--json", "docker", "ls"])).unwrap();
    let vol = j["volumes"].as_array().unwrap().iter().find(|x| x["name"] == v.as_str()).unwrap();
    assert_eq!(vol["project"], "lsproj");
    assert_eq!(vol["driver"], "local");
    assert_eq!(vol["mounts"][0]["container"], c.as_str());
    assert_eq!(vol["mounts"][0]["rw"], false);
    assert_eq!(vol["mounts"][0]["stop"], true);
    let b = j["binds"].as_array().unwrap().iter().find(|x| x["container"] == c.as_str()).unwrap();
    assert_eq!(b["source"], bind.to_str().unwrap());
    let text = env.ok(&["docker", "ls"]);
    assert!(text.contains(&v) && text.contains(&format!("{c}:ro [stop]")), "{text}");
}

#[test]
fn pre_and_post_commands_run_in_the_container_and_a_failing_one_fails_the_volume() {
    let Some(()) = engine() else { return };
    let s = Scratch::new("hooks");
    let env = Env::new();
    let v = s.volume("data", &[]);
    let c = s.container(
        "app",
        &["hoard.pre=echo flushed > /data/flushed", "hoard.post=touch /data/post-ran"],
        &[&format!("{v}:/data")],
    );
    let r = backup_json(&env, &[&v]);
    let id = r["snapshots"][0]["id"].as_str().unwrap().to_string();
    // What pre wrote is in the snapshot; post ran after the read.
    let ls = env.ok(&["ls", &id]);
    assert!(ls.contains("flushed") && !ls.contains("post-ran"), "{ls}");
    assert_eq!(docker_ok(&["exec", &c, "ls", "/data"]), "flushed\npost-ran\n");

    let bad = s.container("bad", &["hoard.pre=echo cannot flush >&2; exit 7"], &[&format!("{v}:/data")]);
    let before = env.json(&["snapshots"]).as_array().unwrap().len();
    let o = env.run(&["backup", "docker", &v]);
    assert_eq!(code(&o), Some(14), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("hoard.pre") && e.contains(&bad) && e.contains("exited with code 7") && e.contains("cannot flush"),
        "{e}"
    );
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), before);
}

/// A compose project, brought down (with `-v`) by the guard.
struct Compose<'a> {
    dir: &'a std::path::Path,
    project: String,
}

impl Compose<'_> {
    fn run(&self, args: &[&str]) -> String {
        let o = Command::new("docker-compose")
            .args(["-p", &self.project, "-f"])
            .arg(self.dir.join("docker-compose.yml"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(o.status.success(), "docker-compose {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    }
}

impl Drop for Compose<'_> {
    fn drop(&mut self) {
        let _ = Command::new("docker-compose")
            .args(["-p", &self.project, "-f"])
            .arg(self.dir.join("docker-compose.yml"))
            .args(["down", "-v"])
            .output();
    }
}

#[test]
fn a_compose_project_is_backed_up_and_restored_by_one_command_each() {
    let Some(()) = engine() else { return };
    let Some(_) = found(Command::new("docker-compose").arg("version").output(), "docker-compose") else { return };
    let env = Env::new();
    let dir = env.path("stack");
    std::fs::create_dir_all(dir.join("conf")).unwrap();
    std::fs::write(dir.join("conf/app.conf"), "setting = 1\n").unwrap();
    std::fs::write(dir.join("app.ini"), "[single]\nfile = bind\n").unwrap();
    std::fs::write(
        dir.join("docker-compose.yml"),
        format!(
            "version: '3'\nservices:\n  app:\n    image: {IMAGE}\n    command: [sleep, '100000']\n    network_mode: none\n    \
             labels:\n      hoard.stop: 'true'\n    volumes:\n      - data:/data\n      - logs:/logs\n      - ./conf:/conf\n      - ./app.ini:/etc/app.ini:ro\n      - /var/run/docker.sock:/var/run/docker.sock\n\
             volumes:\n  data:\n  logs:\n"
        ),
    )
    .unwrap();
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let stack = Compose { dir: &dir, project: format!("hoardt{}x{:x}", std::process::id(), t & 0xffffff) };
    stack.run(&["up", "-d"]);
    let script =
        "echo rows > /data/table && chown 999:999 /data/table && echo line > /logs/app.log && mkdir -m 700 /data/keys";
    stack.run(&["exec", "-T", "app", "sh", "-c", script]);
    let state = "cd / && find data logs conf -exec stat -c '%n %f %u:%g %Y' {} + | sort && cat data/table logs/app.log conf/app.conf etc/app.ini";
    let before = stack.run(&["exec", "-T", "app", "sh", "-c", state]);

    let o = env.run(&["--json", "backup", "docker", "--project", &stack.project]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The Docker socket a service mounts is left out, with a word.
    assert!(stderr(&o).contains("bind mount /var/run/docker.sock is not a file or directory"), "{}", stderr(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    let snaps = r["snapshots"].as_array().unwrap();
    let mut sources: Vec<String> = snaps.iter().map(|s| s["source"].as_str().unwrap().to_string()).collect();
    sources.sort();
    let conf = dir.join("conf").display().to_string();
    let ini = dir.join("app.ini").display().to_string();
    let mut want = vec![conf.clone(), ini, format!("{}_data", stack.project), format!("{}_logs", stack.project)];
    want.sort();
    assert_eq!(sources, want);
    let listed = env.json(&["snapshots", "--filter-tag", &format!("project={}", stack.project)]);
    assert_eq!(listed.as_array().unwrap().len(), 4, "{listed}");

    stack.run(&["down", "-v"]);
    std::fs::remove_dir_all(dir.join("conf")).unwrap();
    std::fs::remove_file(dir.join("app.ini")).unwrap();
    env.ok(&["restore", "docker", "--project", &stack.project]);
    stack.run(&["up", "-d"]);
    let after = stack.run(&["exec", "-T", "app", "sh", "-c", state]);
    assert_eq!(after, before);
}

//! The exec API and the helper image against the real Docker Engine. With CI=true an engine must be
//! there; elsewhere the tests say why they skip.

use std::io::Read;

use hoard_docker::{DockerError, Engine};

fn engine() -> Option<Engine> {
    match Engine::connect() {
        Ok(e) => Some(e),
        // The suite's rule (tests/util.rs `found`): under CI (set, not empty) a missing engine fails.
        Err(e) if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) => {
            panic!("CI is set but no Docker engine: {e}")
        }
        Err(e) => {
            eprintln!("not run: no Docker engine here: {e}");
            None
        }
    }
}

#[test]
fn exec_streams_stdout_and_reports_exit_code_and_stderr() {
    let Some(engine) = engine() else { return };
    let c = engine.helper(&[]).unwrap();
    // 8 MiB through stdout, counted without holding it.
    let mut r = engine
        .exec(&c.id, &["sh", "-c", "dd if=/dev/zero bs=1M count=8 2>/dev/null; echo oops >&2; exit 3"], &[])
        .unwrap();
    let n = std::io::copy(&mut r, &mut std::io::sink()).unwrap();
    assert_eq!(n, 8 << 20);
    let st = r.finish().unwrap();
    assert_eq!(st.code, 3);
    assert!(st.stderr.contains("oops"), "{st:?}");
    match st.check() {
        Err(DockerError::CommandFailed { code: 3, .. }) => {}
        other => panic!("{other:?}"),
    }
    let out = engine.exec_output(&c.id, &["sh", "-c", "echo \"$GREETING\""], 100).unwrap();
    assert_eq!(out, b"\n");
    let mut r = engine.exec(&c.id, &["sh", "-c", "echo \"$GREETING\""], &["GREETING=hi there"]).unwrap();
    let mut s = String::new();
    r.read_to_string(&mut s).unwrap();
    r.finish().unwrap().check().unwrap();
    assert_eq!(s, "hi there\n");
}

#[test]
fn exec_with_stdin_streams_both_ways() {
    let Some(engine) = engine() else { return };
    let c = engine.helper(&[]).unwrap();
    // 16 MiB in, the same bytes out at once (cat), so neither side may wait for the other's end.
    let input: Vec<u8> = (0..16u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let mut r = engine.exec_with_stdin(&c.id, &["cat"], &[], std::io::Cursor::new(input.clone())).unwrap();
    let mut out = Vec::new();
    r.read_to_end(&mut out).unwrap();
    r.finish().unwrap().check().unwrap();
    assert_eq!(out.len(), input.len());
    assert!(out == input);
}

#[test]
fn missing_container_and_volume_are_not_found() {
    let Some(engine) = engine() else { return };
    match engine.exec("hoard-no-such-container", &["true"], &[]) {
        Err(DockerError::NotFound(_)) => {}
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("exec in a missing container worked"),
    }
    match engine.volume("hoard-no-such-volume") {
        Err(DockerError::NotFound(m)) => assert!(m.contains("hoard-no-such-volume")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unreachable_engine_is_unavailable() {
    // DOCKER_HOST is read at connect; this test runs in its own process env only via a child.
    if std::env::var("HOARD_TEST_CHILD").is_ok() {
        match Engine::connect() {
            Err(e) => {
                assert!(e.is_unavailable(), "{e:?}");
                println!("MESSAGE {e}");
            }
            Ok(_) => panic!("connected to unix:///nonexistent"),
        }
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["unreachable_engine_is_unavailable", "--exact", "--nocapture"])
        .env("HOARD_TEST_CHILD", "1")
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{s}{}", String::from_utf8_lossy(&out.stderr));
    assert!(s.contains("MESSAGE the Docker engine at unix:///nonexistent/docker.sock is not reachable"), "{s}");
}

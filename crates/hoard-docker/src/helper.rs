//! The helper image and helper containers. hoard builds its image itself, with no registry: a rootfs
//! of one static busybox binary plus its applet links, imported through the API. A helper container
//! mounts the volumes to read or fill, and the archive API moves tar streams in and out of it.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, DownloadFromContainerOptions, RemoveContainerOptions,
    UploadToContainerOptions,
};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::{BodyReader, DockerError, Engine, Result};

/// The helper image's name; one per hoard version, made once per engine.
pub const HELPER_IMAGE: &str = concat!("hoard-helper:", env!("CARGO_PKG_VERSION"));

/// Where busybox is looked for (Debian's busybox-static puts it at /bin/busybox).
const BUSYBOX: &[&str] = &["/bin/busybox", "/usr/bin/busybox"];

/// Applets the helper and the tests use.
const APPLETS: &[&str] = &[
    "sh",
    "ls",
    "cat",
    "tar",
    "find",
    "stat",
    "md5sum",
    "sha256sum",
    "sleep",
    "chown",
    "chmod",
    "mkdir",
    "rm",
    "cp",
    "dd",
    "truncate",
    "touch",
    "ln",
    "sync",
    "true",
    "false",
    "id",
    "xargs",
    "du",
    "echo",
    "head",
    "sort",
    "wc",
    "test",
    "printf",
    "mv",
    "env",
    "readlink",
    "seq",
    "sed",
    "grep",
    "date",
];

/// A container made from the helper image; removed (with force) when dropped.
pub struct HelperContainer {
    engine: Engine,
    pub id: String,
}

impl Drop for HelperContainer {
    fn drop(&mut self) {
        let opts = RemoveContainerOptions { force: true, v: false, link: false };
        let _ = self.engine.block_on(self.engine.docker().remove_container(&self.id, Some(opts)));
    }
}

fn rootfs(busybox: &Path) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let dir = |b: &mut tar::Builder<Vec<u8>>, name: &str, mode: u32| -> std::io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        b.append_data(&mut h, name, std::io::empty())
    };
    for (d, m) in [("bin", 0o755), ("tmp", 0o1777), ("etc", 0o755), ("v", 0o755)] {
        dir(&mut b, d, m)?;
    }
    let data = std::fs::read(busybox)?;
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o755);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, "bin/busybox", &data[..])?;
    for a in APPLETS {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        b.append_link(&mut h, format!("bin/{a}"), "busybox")?;
    }
    let passwd = b"root:x:0:0:root:/:/bin/sh\n";
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(passwd.len() as u64);
    b.append_data(&mut h, "etc/passwd", &passwd[..])?;
    b.into_inner()
}

impl Engine {
    /// Makes sure [`HELPER_IMAGE`] exists, importing it from the local busybox binary if not.
    pub fn ensure_helper_image(&self) -> Result<()> {
        match self.block_on(self.docker().inspect_image(HELPER_IMAGE)) {
            Ok(_) => return Ok(()),
            Err(e) => match self.err("image", e) {
                DockerError::NotFound(_) => {}
                e => return Err(e),
            },
        }
        let busybox = BUSYBOX.iter().map(Path::new).find(|p| p.is_file()).ok_or_else(|| {
            DockerError::NotFound(
                "busybox (hoard builds its helper image from it; install Debian's busybox-static)".into(),
            )
        })?;
        let tar = rootfs(busybox)
            .map_err(|e| DockerError::Io { context: format!("reading {}", busybox.display()), source: e })?;
        let (repo, tag) = HELPER_IMAGE.split_once(':').unwrap();
        let opts = CreateImageOptions {
            from_src: Some("-".into()),
            repo: Some(repo.into()),
            tag: Some(tag.into()),
            message: Some("hoard helper: static busybox".into()),
            changes: vec!["CMD [\"sh\"]".into()],
            ..Default::default()
        };
        let mut s = self.docker().create_image(Some(opts), Some(bollard::body_full(Bytes::from(tar))), None);
        while let Some(r) = self.block_on(s.next()) {
            r.map_err(|e| self.err("importing the helper image", e))?;
        }
        Ok(())
    }

    /// Creates and starts a helper container (no network, idling in `sleep`) with these volumes
    /// mounted: (volume name, path in the container, read-only).
    pub fn helper(&self, volumes: &[(&str, &str, bool)]) -> Result<HelperContainer> {
        self.ensure_helper_image()?;
        let binds = volumes.iter().map(|(v, p, ro)| format!("{v}:{p}:{}", if *ro { "ro" } else { "rw" })).collect();
        let body = ContainerCreateBody {
            image: Some(HELPER_IMAGE.into()),
            cmd: Some(vec!["sleep".into(), "2147483647".into()]),
            network_disabled: Some(true),
            labels: Some(HashMap::from([("hoard.helper".to_string(), "true".to_string())])),
            host_config: Some(HostConfig {
                binds: Some(binds),
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let name = format!("hoard-helper-{}-{}", std::process::id(), unique());
        let opts = CreateContainerOptions { name: Some(name), platform: String::new() };
        let created = self
            .block_on(self.docker().create_container(Some(opts), body))
            .map_err(|e| self.err("creating a helper container", e))?;
        let c = HelperContainer { engine: self.clone(), id: created.id };
        self.start_container(&c.id)?;
        Ok(c)
    }

    /// Starts a container.
    pub fn start_container(&self, id: &str) -> Result<()> {
        self.block_on(self.docker().start_container(id, None)).map_err(|e| self.err(&format!("container {id}"), e))
    }

    /// Stops a container (10 s, then killed).
    pub fn stop_container(&self, id: &str) -> Result<()> {
        let opts = bollard::query_parameters::StopContainerOptions { t: Some(10), signal: None };
        self.block_on(self.docker().stop_container(id, Some(opts))).map_err(|e| self.err(&format!("container {id}"), e))
    }

    /// Whether a container is running now.
    pub fn is_running(&self, id: &str) -> Result<bool> {
        let r = self
            .block_on(self.docker().inspect_container(id, None))
            .map_err(|e| self.err(&format!("container {id}"), e))?;
        Ok(r.state.and_then(|s| s.running).unwrap_or(false))
    }

    /// A tar stream of `path` in a container (the archive API). Its entries are under one top
    /// directory, named like `path`'s last component.
    pub fn read_archive(&self, container: &str, path: &str) -> Result<BodyReader> {
        let opts = DownloadFromContainerOptions { path: path.into() };
        let s = self.docker().download_from_container(container, Some(opts));
        Ok(BodyReader::new(self, format!("reading {path} in container {container}"), Box::pin(s)))
    }

    /// Extracts a tar stream into `path` in a container (the archive API), owners included. The
    /// stream is read on a thread of its own as the engine takes it, never held whole.
    pub fn write_archive<R: Read + Send + 'static>(&self, container: &str, path: &str, tar: R) -> Result<()> {
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
        let feeder = std::thread::spawn(move || {
            let mut tar = tar;
            loop {
                let mut buf = vec![0u8; 256 * 1024];
                match tar.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
        let opts = UploadToContainerOptions { path: path.into(), ..Default::default() };
        let r =
            self.block_on(self.docker().upload_to_container(container, Some(opts), bollard::body_try_stream(stream)));
        let _ = feeder.join();
        r.map_err(|e| self.err(&format!("writing into {path} in container {container}"), e))
    }
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}{}", t & 0xffff_ffff, N.fetch_add(1, Ordering::Relaxed))
}

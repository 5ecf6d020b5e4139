//! Discovery: volumes (driver, labels, compose project, who mounts them) and containers (their
//! labels, named volumes and bind mounts).

use std::collections::HashMap;

use bollard::models::ContainerSummaryStateEnum;
use bollard::query_parameters::ListContainersOptions;

use crate::{sorted_labels, DockerError, Engine, Result, COMPOSE_PROJECT, LABEL_POST, LABEL_PRE, LABEL_STOP};

/// A container's use of a volume.
#[derive(Debug, Clone)]
pub struct Mount {
    pub container: ContainerInfo,
    /// Where it is mounted in the container.
    pub destination: String,
    pub rw: bool,
}

/// A named volume.
#[derive(Debug, Clone)]
pub struct VolumeInfo {
    pub name: String,
    pub driver: String,
    /// Where the engine keeps it (a path on the engine's host).
    pub mountpoint: String,
    /// Sorted by key.
    pub labels: Vec<(String, String)>,
    /// The compose project, from the volume's own label.
    pub project: Option<String>,
    /// Bytes used, when the engine knows it.
    pub size: Option<i64>,
    /// Containers (running or not) that mount it.
    pub mounts: Vec<Mount>,
}

/// A host directory mounted into a container.
#[derive(Debug, Clone)]
pub struct BindMount {
    pub source: String,
    pub destination: String,
    pub rw: bool,
}

/// A container, with what hoard needs to know about it.
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    pub running: bool,
    /// The image it was created from, as given (`postgres:16-alpine`, `docker.io/library/redis`).
    pub image: String,
    pub labels: Vec<(String, String)>,
    pub project: Option<String>,
    /// Named volumes: (volume, destination, rw).
    pub volumes: Vec<(String, String, bool)>,
    pub binds: Vec<BindMount>,
}

impl ContainerInfo {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    /// Carries `hoard.stop=true`.
    pub fn stop_label(&self) -> bool {
        self.label(LABEL_STOP).is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }
    /// Its `hoard.pre` command, if any.
    pub fn pre(&self) -> Option<&str> {
        self.label(LABEL_PRE).filter(|s| !s.trim().is_empty())
    }
    /// Its `hoard.post` command, if any.
    pub fn post(&self) -> Option<&str> {
        self.label(LABEL_POST).filter(|s| !s.trim().is_empty())
    }
}

impl Engine {
    /// Every container, running or not.
    pub fn containers(&self) -> Result<Vec<ContainerInfo>> {
        let opts = ListContainersOptions { all: true, ..Default::default() };
        let list = self.block_on(self.docker().list_containers(Some(opts))).map_err(|e| self.err("containers", e))?;
        let mut out = Vec::new();
        for c in list {
            let labels = c.labels.unwrap_or_default();
            let mut info = ContainerInfo {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .unwrap_or_default()
                    .first()
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                running: c.state == Some(ContainerSummaryStateEnum::RUNNING),
                image: c.image.unwrap_or_default(),
                project: labels.get(COMPOSE_PROJECT).cloned(),
                labels: sorted_labels(&labels),
                volumes: Vec::new(),
                binds: Vec::new(),
            };
            for m in c.mounts.unwrap_or_default() {
                let rw = m.rw.unwrap_or(true);
                let dest = m.destination.unwrap_or_default();
                match m.typ.as_deref() {
                    Some("volume") => {
                        if let Some(n) = m.name {
                            info.volumes.push((n, dest, rw));
                        }
                    }
                    Some("bind") => {
                        info.binds.push(BindMount { source: m.source.unwrap_or_default(), destination: dest, rw })
                    }
                    _ => {}
                }
            }
            out.push(info);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Every volume, with the containers that mount it, sorted by name.
    pub fn volumes(&self) -> Result<Vec<VolumeInfo>> {
        let list = self
            .block_on(self.docker().list_volumes(None::<bollard::query_parameters::ListVolumesOptions>))
            .map_err(|e| self.err("volumes", e))?;
        let containers = self.containers()?;
        let mut out: Vec<VolumeInfo> =
            list.volumes.unwrap_or_default().into_iter().map(|v| volume_info(v, &containers)).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// One volume; [`DockerError::NotFound`] if there is none of that name.
    pub fn volume(&self, name: &str) -> Result<VolumeInfo> {
        let v = self.block_on(self.docker().inspect_volume(name)).map_err(|e| {
            match self.err(&format!("volume {name}"), e) {
                DockerError::NotFound(_) => DockerError::NotFound(format!("volume {name}")),
                e => e,
            }
        })?;
        let containers = self.containers()?;
        Ok(volume_info(v, &containers))
    }

    /// Creates a volume with these labels (local driver).
    pub fn create_volume(&self, name: &str, labels: &[(String, String)]) -> Result<VolumeInfo> {
        let body = bollard::models::VolumeCreateRequest {
            name: Some(name.to_string()),
            labels: Some(labels.iter().cloned().collect::<HashMap<_, _>>()),
            ..Default::default()
        };
        self.block_on(self.docker().create_volume(body))
            .map_err(|e| self.err(&format!("creating volume {name}"), e))?;
        self.volume(name)
    }

    /// Removes a volume (it must not be in use).
    pub fn remove_volume(&self, name: &str) -> Result<()> {
        self.block_on(self.docker().remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>))
            .map_err(|e| self.err(&format!("volume {name}"), e))
    }
}

fn volume_info(v: bollard::models::Volume, containers: &[ContainerInfo]) -> VolumeInfo {
    let mounts = containers
        .iter()
        .flat_map(|c| {
            c.volumes.iter().filter(|(n, _, _)| *n == v.name).map(move |(_, dest, rw)| Mount {
                container: c.clone(),
                destination: dest.clone(),
                rw: *rw,
            })
        })
        .collect();
    VolumeInfo {
        project: v.labels.get(COMPOSE_PROJECT).cloned(),
        labels: sorted_labels(&v.labels),
        size: v.usage_data.map(|u| u.size).filter(|s| *s >= 0),
        name: v.name,
        driver: v.driver,
        mountpoint: v.mountpoint,
        mounts,
    }
}

//! Container runtimes behind one trait, and which runtime a cgroup path belongs to.
//!
//! Every method works from the node: through the runtime's API, never by executing anything
//! inside the container (`top` is answered by the runtime running `ps` on the host).

use std::{fmt, future::Future, pin::Pin};

use bytes::Bytes;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

/// A boxed future, so that the trait can be used as `dyn ContainerRuntime`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// A stream of bytes from the runtime (logs, a filesystem export).
pub type ByteStream<'a> = BoxStream<'a, Result<Bytes, RuntimeError>>;

/// Failure talking to a container runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime's API could not be reached.
    #[error("cannot reach {runtime} at {endpoint}: {source}")]
    Connect {
        /// Runtime name.
        runtime: &'static str,
        /// Socket or URL.
        endpoint: String,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An API call failed.
    #[error("{runtime} {operation} failed: {source}")]
    Api {
        /// Runtime name.
        runtime: &'static str,
        /// The call, e.g. `export`.
        operation: &'static str,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The runtimes a cgroup path can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Docker Engine.
    Docker,
    /// containerd (through the CRI plugin).
    Containerd,
    /// CRI-O.
    Crio,
    /// Podman (libpod).
    Podman,
    /// A container id with nothing that names its runtime (kubelet with the cgroupfs driver).
    Unknown,
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Docker => "docker",
            Self::Containerd => "containerd",
            Self::Crio => "cri-o",
            Self::Podman => "podman",
            Self::Unknown => "unknown",
        })
    }
}

/// What a cgroup path says about the container in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeHint {
    /// The runtime.
    pub kind: RuntimeKind,
    /// The container id (64 hex digits).
    pub container_id: String,
}

/// Finds the container id and runtime in a cgroup path: the last component that names one,
/// so that a pod's or a slice's own directory does not count. Recognises
/// `docker-<id>.scope`, `/docker/<id>`, `cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `libpod-<id>.scope`, their cgroupfs forms `crio-<id>` (CRI-O under the kubelet) and
/// `libpod-<id>` (Podman), and a bare `<id>` (the kubelet's cgroupfs layout, runtime unknown):
/// every container [`crate::attribution::cgroup_path::parse`] finds.
pub fn detect(cgroup_path: &str) -> Option<RuntimeHint> {
    let parts: Vec<&str> = cgroup_path.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate().rev() {
        let scoped = |prefix: &str| {
            part.strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(".scope"))
                .filter(|id| is_container_id(id))
        };
        let prefixed = |prefix: &str| part.strip_prefix(prefix).filter(|id| is_container_id(id));
        let found = if let Some(id) = scoped("docker-") {
            Some((RuntimeKind::Docker, id))
        } else if let Some(id) = scoped("cri-containerd-") {
            Some((RuntimeKind::Containerd, id))
        } else if let Some(id) = scoped("crio-") {
            Some((RuntimeKind::Crio, id))
        } else if let Some(id) = scoped("libpod-") {
            Some((RuntimeKind::Podman, id))
        } else if let Some(id) = prefixed("crio-") {
            // CRI-O under the kubelet's cgroupfs driver.
            Some((RuntimeKind::Crio, id))
        } else if let Some(id) = prefixed("libpod-") {
            // Podman's cgroupfs manager.
            Some((RuntimeKind::Podman, id))
        } else if is_container_id(part) {
            let kind = match i.checked_sub(1).map(|p| parts[p]) {
                Some("docker") => RuntimeKind::Docker,
                Some("libpod_parent") => RuntimeKind::Podman,
                _ => RuntimeKind::Unknown,
            };
            Some((kind, *part))
        } else {
            None
        };
        if let Some((kind, id)) = found {
            return Some(RuntimeHint {
                kind,
                container_id: id.to_owned(),
            });
        }
    }
    None
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// One entry of a container's filesystem diff against its image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsChange {
    /// `A` added, `C` changed, `D` deleted (as `docker diff` prints them).
    pub kind: char,
    /// Path inside the container.
    pub path: String,
}

/// A container runtime's API, reached from the node, for what only the runtime knows: its
/// record of the container, its process view and the logs it keeps. Everything else (the
/// freeze, the changed files, the export, the image) is read from the node, whatever the
/// runtime.
pub trait ContainerRuntime: Send + Sync {
    /// The runtime's name, for the manifest.
    fn name(&self) -> &'static str;
    /// Where it was reached, for the manifest (`docker:/var/run/docker.sock`).
    fn endpoint(&self) -> String;
    /// Inspect: the runtime's full description of the container, as JSON.
    fn inspect<'a>(&'a self, id: &'a str)
    -> BoxFuture<'a, Result<serde_json::Value, RuntimeError>>;
    /// The process table as the runtime sees it (from the host).
    fn top<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<serde_json::Value, RuntimeError>>;
    /// The container's logs (stdout and stderr, timestamped).
    fn logs<'a>(&'a self, id: &'a str) -> ByteStream<'a>;
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "5c527088bded276772bd4f0995a962458a31114f5cea7d35ffcc8db48a830957";

    #[test]
    fn runtime_from_cgroup_paths() {
        let cases = [
            (
                format!("/system.slice/docker-{ID}.scope"),
                RuntimeKind::Docker,
            ),
            (format!("/docker/{ID}"), RuntimeKind::Docker),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-{ID}.scope"
                ),
                RuntimeKind::Containerd,
            ),
            (
                format!("/kubepods.slice/kubepods-pod1.slice/crio-{ID}.scope"),
                RuntimeKind::Crio,
            ),
            (
                format!("/machine.slice/libpod-{ID}.scope"),
                RuntimeKind::Podman,
            ),
            (
                format!("/kubepods/besteffort/podabc/{ID}"),
                RuntimeKind::Unknown,
            ),
            // The cgroupfs layouts of CRI-O and Podman, which attribution knows: the `cgroup_path`
            // fuzz target found evidence capture missing them.
            (
                format!("/kubepods/burstable/podabc/crio-{ID}"),
                RuntimeKind::Crio,
            ),
            (format!("/libpod_parent/libpod-{ID}"), RuntimeKind::Podman),
        ];
        for (path, kind) in cases {
            let hint = detect(&path).unwrap_or_else(|| panic!("{path}"));
            assert_eq!(hint.kind, kind, "{path}");
            assert_eq!(hint.container_id, ID, "{path}");
        }
        for none in [
            "/",
            "/kubepods/besteffort/podabc",
            "/system.slice/docker.service",
            "/system.slice/docker-abc.scope",
            "/user.slice/user-0.slice",
        ] {
            assert_eq!(detect(none), None, "{none}");
        }
    }
}

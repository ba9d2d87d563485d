//! Pure parsing of cgroup paths into the pod and container they belong to.
//!
//! Handles every layout the kubelet and the runtimes produce, on cgroup v1 and v2 alike (the
//! path shapes are the same; only where the path comes from differs):
//!
//! - kubelet with the systemd driver:
//!   `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice/cri-containerd-<id>.scope`
//!   (also `crio-<id>.scope`, `docker-<id>.scope`; guaranteed pods sit directly below
//!   `kubepods.slice` as `kubepods-pod<uid>.slice`);
//! - kubelet with the cgroupfs driver: `kubepods/besteffort/pod<uid>/<id>` (`crio-<id>` for
//!   CRI-O; guaranteed pods as `kubepods/pod<uid>/<id>`);
//! - plain Docker and Podman: `docker/<id>`, `system.slice/docker-<id>.scope`,
//!   `machine.slice/libpod-<id>.scope`, `libpod_parent/libpod-<id>`;
//! - any of these below a prefix (kind nodes, Docker-in-Docker, a test's own parent cgroup):
//!   the innermost match wins.

use std::fmt;

/// The pod and container a cgroup belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupIdentity {
    /// The pod, for kubelet-managed cgroups.
    pub pod: Option<PodRef>,
    /// The container, absent for a pod-level cgroup or a runtime helper (`crio-conmon-...`).
    pub container: Option<ContainerRef>,
}

/// A pod as its cgroup path names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    /// Pod UID with dashes (`_` of the systemd layout turned back into `-`).
    pub uid: String,
    /// QoS class.
    pub qos: Qos,
}

/// A container as its cgroup path names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    /// Full container id (64 hex digits).
    pub id: String,
    /// The runtime the path names; [`Runtime::Unknown`] for the bare ids of the cgroupfs driver.
    pub runtime: Runtime,
}

/// Pod QoS class, from the cgroup path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    /// Requests equal limits; the pod cgroup sits directly below `kubepods`.
    Guaranteed,
    /// Below `kubepods/burstable`.
    Burstable,
    /// Below `kubepods/besteffort`.
    BestEffort,
}

impl Qos {
    /// The lowercase name used in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Guaranteed => "guaranteed",
            Self::Burstable => "burstable",
            Self::BestEffort => "besteffort",
        }
    }
}

/// A container runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// containerd (CRI or plain).
    Containerd,
    /// CRI-O.
    CriO,
    /// Docker (dockerd, or cri-dockerd under the kubelet).
    Docker,
    /// Podman.
    Podman,
    /// The path does not say (cgroupfs driver with bare ids).
    Unknown,
}

impl Runtime {
    /// The name used in events, matching the scheme of `containerStatuses[].containerID`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
            Self::Docker => "docker",
            Self::Podman => "podman",
            Self::Unknown => "unknown",
        }
    }

    /// The runtime of a `containerStatuses[].containerID` scheme (`containerd://...`).
    pub fn from_scheme(scheme: &str) -> Self {
        match scheme {
            "containerd" => Self::Containerd,
            "cri-o" | "crio" => Self::CriO,
            "docker" => Self::Docker,
            "podman" => Self::Podman,
            _ => Self::Unknown,
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a cgroup path is not a container's: the clear "not a container" result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotContainer {
    /// The path has no component naming a pod or a container (a system service, a user slice,
    /// the root).
    #[error("no pod or container in cgroup path")]
    NoContainerComponent,
    /// The path is inside the kubepods tree but above any pod (a QoS-class cgroup).
    #[error("cgroup path is in the kubepods tree but names no pod")]
    NoPod,
    /// A pod component whose UID does not have the shape of a pod UID.
    #[error("malformed pod uid in cgroup component {0:?}")]
    MalformedPodUid(String),
}

/// Parses a cgroup path (relative to the hierarchy's root, with or without a leading `/`).
pub fn parse(path: &str) -> Result<CgroupIdentity, NotContainer> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if let Some(root) = parts.iter().rposition(|p| is_kubepods_root(p)) {
        return parse_kubepods(&parts[root + 1..]);
    }
    // Outside the kubelet's tree: the innermost runtime component.
    for (i, part) in parts.iter().enumerate().rev() {
        let parent = i.checked_sub(1).map(|j| parts[j]);
        if let Some(container) = runtime_scope(part)
            .or_else(|| (parent == Some("docker")).then(|| bare_id(part, Runtime::Docker))?)
            .or_else(|| {
                (parent == Some("libpod_parent"))
                    .then(|| prefixed_id(part, "libpod-", Runtime::Podman))?
            })
        {
            return Ok(CgroupIdentity {
                pod: None,
                container: Some(container),
            });
        }
    }
    Err(NotContainer::NoContainerComponent)
}

/// The cgroup path of a process from `/proc/<pid>/cgroup` text: the cgroup v2 entry (`0::`)
/// when there is one, else the v1 hierarchy most likely to carry the container layout.
pub fn path_from_proc_cgroup(text: &str) -> Option<&str> {
    let mut v1 = None;
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            return Some(path);
        }
        let preferred = controllers
            .split(',')
            .any(|c| matches!(c, "pids" | "memory" | "cpu" | "name=systemd"));
        if preferred && v1.is_none() {
            v1 = Some(path);
        }
    }
    v1
}

fn is_kubepods_root(part: &str) -> bool {
    // `kubelet-kubepods.slice` is the root under kind and other nested kubelets.
    part == "kubepods" || part == "kubepods.slice" || part.ends_with("-kubepods.slice")
}

fn parse_kubepods(parts: &[&str]) -> Result<CgroupIdentity, NotContainer> {
    let mut qos = Qos::Guaranteed;
    let mut rest = parts;
    if let Some(first) = rest.first() {
        let class = first
            .strip_suffix(".slice")
            .and_then(|s| s.rsplit('-').next())
            .unwrap_or(first);
        match class {
            "burstable" => qos = Qos::Burstable,
            "besteffort" => qos = Qos::BestEffort,
            _ => {}
        }
        if qos != Qos::Guaranteed {
            rest = &rest[1..];
        }
    }
    let Some(pod_part) = rest.first() else {
        return Err(NotContainer::NoPod);
    };
    let uid = pod_uid(pod_part)?;
    let container = rest.get(1).and_then(|part| {
        runtime_scope(part)
            .or_else(|| prefixed_id(part, "crio-", Runtime::CriO))
            .or_else(|| bare_id(part, Runtime::Unknown))
    });
    Ok(CgroupIdentity {
        pod: Some(PodRef { uid, qos }),
        container,
    })
}

fn pod_uid(part: &str) -> Result<String, NotContainer> {
    let raw = if let Some(slice) = part.strip_suffix(".slice") {
        // `kubepods-burstable-pod<uid>.slice` or `kubepods-pod<uid>.slice`: systemd's escape of
        // the uid has `_` for each `-` (a `-` there would be another slice level).
        match slice.rsplit_once("-pod") {
            Some((_, uid)) if !uid.contains('-') => uid.replace('_', "-"),
            Some(_) => return Err(NotContainer::MalformedPodUid(part.to_owned())),
            None => return Err(NotContainer::NoPod),
        }
    } else if let Some(uid) = part.strip_prefix("pod") {
        uid.to_owned()
    } else {
        return Err(NotContainer::NoPod);
    };
    if is_pod_uid(&raw) {
        Ok(raw)
    } else {
        Err(NotContainer::MalformedPodUid(part.to_owned()))
    }
}

/// A UUID (`8-4-4-4-12` hex), or the 32 hex digits of a static pod's hash.
fn is_pod_uid(uid: &str) -> bool {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    if uid.len() == 32 {
        return hex(uid);
    }
    let groups: Vec<&str> = uid.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]) && groups.iter().all(|g| hex(g))
}

fn runtime_scope(part: &str) -> Option<ContainerRef> {
    let inner = part.strip_suffix(".scope")?;
    [
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("docker-", Runtime::Docker),
        ("libpod-", Runtime::Podman),
    ]
    .into_iter()
    .find_map(|(prefix, runtime)| prefixed_id(inner, prefix, runtime))
}

fn prefixed_id(part: &str, prefix: &str, runtime: Runtime) -> Option<ContainerRef> {
    bare_id(part.strip_prefix(prefix)?, runtime)
}

fn bare_id(part: &str, runtime: Runtime) -> Option<ContainerRef> {
    (part.len() == 64 && part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then(|| {
        ContainerRef {
            id: part.to_owned(),
            runtime,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4c1e2a5f3b9d8e7a6c5b4a3928171615f4e3d2c1b0a9988776655443322110ff";
    const UID: &str = "1f2e3d4c-5b6a-4789-9abc-def012345678";
    const UID_: &str = "1f2e3d4c_5b6a_4789_9abc_def012345678";

    fn pod(qos: Qos) -> Option<PodRef> {
        Some(PodRef {
            uid: UID.to_owned(),
            qos,
        })
    }

    fn container(runtime: Runtime) -> Option<ContainerRef> {
        Some(ContainerRef {
            id: ID.to_owned(),
            runtime,
        })
    }

    #[test]
    fn every_real_layout() {
        use Qos::*;
        use Runtime::*;
        let cases: Vec<(String, Option<PodRef>, Option<ContainerRef>)> = vec![
            // kubelet, systemd driver.
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                pod(Burstable),
                container(Containerd),
            ),
            (
                format!(
                    "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope"
                ),
                pod(BestEffort),
                container(CriO),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/docker-{ID}.scope"),
                pod(Guaranteed),
                container(Docker),
            ),
            // A cgroup nested inside the container (systemd in a container, a test's child).
            (
                format!(
                    "/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope/init.scope"
                ),
                pod(Guaranteed),
                container(Containerd),
            ),
            // CRI-O's conmon: the pod, no container.
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{ID}.scope"),
                pod(Guaranteed),
                None,
            ),
            // The pod cgroup itself.
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"
                ),
                pod(Burstable),
                None,
            ),
            // kubelet, cgroupfs driver (cgroup v1 and v2 paths look alike).
            (
                format!("/kubepods/besteffort/pod{UID}/{ID}"),
                pod(BestEffort),
                container(Unknown),
            ),
            (
                format!("/kubepods/burstable/pod{UID}/{ID}"),
                pod(Burstable),
                container(Unknown),
            ),
            (
                format!("/kubepods/pod{UID}/{ID}"),
                pod(Guaranteed),
                container(Unknown),
            ),
            (
                format!("/kubepods/besteffort/pod{UID}/crio-{ID}"),
                pod(BestEffort),
                container(CriO),
            ),
            // Nested kubelets: kind, Docker-in-Docker, a test's parent cgroup.
            (
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                pod(BestEffort),
                container(Containerd),
            ),
            (
                format!(
                    "/docker/{}/kubepods/burstable/pod{UID}/{ID}",
                    "a".repeat(64)
                ),
                pod(Burstable),
                container(Unknown),
            ),
            (
                format!(
                    "/detector-test-42/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                pod(Guaranteed),
                container(Containerd),
            ),
            // Plain runtimes.
            (format!("/docker/{ID}"), None, container(Docker)),
            (
                format!("/system.slice/docker-{ID}.scope"),
                None,
                container(Docker),
            ),
            (
                format!("/machine.slice/libpod-{ID}.scope"),
                None,
                container(Podman),
            ),
            (
                format!("/libpod_parent/libpod-{ID}"),
                None,
                container(Podman),
            ),
            (
                format!("/system.slice/containerd.service/cri-containerd-{ID}.scope"),
                None,
                container(Containerd),
            ),
        ];
        for (path, pod, container) in cases {
            let parsed = parse(&path).unwrap_or_else(|err| panic!("{path}: {err}"));
            assert_eq!(parsed, CgroupIdentity { pod, container }, "{path}");
        }
    }

    #[test]
    fn static_pod_uids_are_hashes() {
        let uid = "6f3b8c2a1d4e5f60718293a4b5c6d7e8";
        let parsed = parse(&format!("/kubepods/burstable/pod{uid}/{ID}")).unwrap();
        assert_eq!(parsed.pod.unwrap().uid, uid);
    }

    #[test]
    fn malformed_and_foreign_paths_are_not_containers() {
        use NotContainer::*;
        let cases: Vec<(String, NotContainer)> = vec![
            (String::new(), NoContainerComponent),
            ("/".into(), NoContainerComponent),
            ("//".into(), NoContainerComponent),
            (
                "/user.slice/user-0.slice/session-3.scope".into(),
                NoContainerComponent,
            ),
            ("/system.slice/docker.service".into(), NoContainerComponent),
            (
                "/system.slice/containerd.service".into(),
                NoContainerComponent,
            ),
            ("/init.scope".into(), NoContainerComponent),
            (
                format!("/system.slice/docker-{}.scope", &ID[..12]),
                NoContainerComponent,
            ),
            (
                format!("/docker/{}", ID.to_uppercase()),
                NoContainerComponent,
            ),
            (
                format!("/system.slice/docker-{ID}.service"),
                NoContainerComponent,
            ),
            ("/docker".into(), NoContainerComponent),
            ("/kubepods".into(), NoPod),
            ("/kubepods.slice".into(), NoPod),
            ("/kubepods/burstable".into(), NoPod),
            ("/kubepods.slice/kubepods-besteffort.slice".into(), NoPod),
            ("/kubepods/burstable/notapod".into(), NoPod),
            (
                "/kubepods/burstable/pod".into(),
                MalformedPodUid("pod".into()),
            ),
            (
                "/kubepods/burstable/podxyz/abc".into(),
                MalformedPodUid("podxyz".into()),
            ),
            (
                "/kubepods.slice/kubepods-pod1234.slice".into(),
                MalformedPodUid("kubepods-pod1234.slice".into()),
            ),
            (
                // Found by the `cgroup_path` fuzz target: a uid half escaped.
                "/kubepods.slice/kubepods-pod1f2e3d4c_5b6a_4789_9abc-def012345678.slice".into(),
                MalformedPodUid("kubepods-pod1f2e3d4c_5b6a_4789_9abc-def012345678.slice".into()),
            ),
            (
                format!("/kubepods/pod{}/{ID}", &UID[..35]),
                MalformedPodUid(format!("pod{}", &UID[..35])),
            ),
            ("\u{0}/kubepods/\u{1f600}".into(), NoPod),
        ];
        for (path, expected) in cases {
            assert_eq!(parse(&path), Err(expected), "{path:?}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let samples = [
            "-pod",
            ".slice",
            "kubepods/-pod.slice",
            "kubepods/pod-",
            "a/b/c/d/e/f/g",
        ];
        for s in samples {
            let _ = parse(s);
        }
        // Every prefix of a real path, byte by byte.
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
        );
        for end in 0..=path.len() {
            let _ = parse(&path[..end]);
        }
    }

    #[test]
    fn proc_cgroup_text_v1_and_v2() {
        let v2 = "0::/kubepods/besteffort/podX/abc\n";
        assert_eq!(
            path_from_proc_cgroup(v2),
            Some("/kubepods/besteffort/podX/abc")
        );
        let hybrid = "12:pids:/kubepods/pod1/c\n1:name=systemd:/kubepods/pod1/c\n0::/other\n";
        assert_eq!(path_from_proc_cgroup(hybrid), Some("/other"));
        let v1 = "11:devices:/a\n5:memory:/kubepods/pod1/c\n3:cpu,cpuacct:/b\n";
        assert_eq!(path_from_proc_cgroup(v1), Some("/kubepods/pod1/c"));
        assert_eq!(path_from_proc_cgroup("garbage"), None);
        assert_eq!(path_from_proc_cgroup(""), None);
    }
}

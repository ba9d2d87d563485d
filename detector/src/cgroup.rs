//! cgroup2 facts the sensors need: where the hierarchy is mounted, and which directories are
//! the roots of container cgroups.
//!
//! A cgroup id, as `bpf_get_current_cgroup_id()` returns it, is the inode number of the cgroup2
//! directory.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// The cgroup2 mount point from `/proc/self/mountinfo` (`/sys/fs/cgroup` on a unified host,
/// `/sys/fs/cgroup/unified` on a hybrid one).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_cgroup2_mount(&mountinfo)
}

/// Finds the first cgroup2 mount in mountinfo text.
pub fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "<id> <parent> <maj:min> <root> <mount point> <options> [optional...] - <fstype> ..."
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

fn unescape_mountinfo(field: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo octal.
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let digits: String = chars.clone().take(3).collect();
            if digits.len() == 3
                && let Ok(value) = u8::from_str_radix(&digits, 8)
            {
                out.push(char::from(value));
                chars.nth(2);
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// Whether a cgroup directory, given relative to the cgroup2 root, is where a container runtime
/// or the kubelet puts containers: everything below it (or it itself, for a scope) is watched in
/// `containers` mode.
pub fn is_container_root(relative: &str) -> bool {
    let mut parts = relative.split('/').filter(|p| !p.is_empty());
    let (Some(first), second, None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let runtime_scope = |name: &str| {
        ["docker-", "crio-", "cri-containerd-", "libpod-"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            && name.ends_with(".scope")
    };
    match second {
        None => {
            matches!(
                first,
                "kubepods" | "kubepods.slice" | "docker" | "crio" | "containerd" | "libpod_parent"
            ) || runtime_scope(first)
        }
        Some(name) => first == "system.slice" && runtime_scope(name),
    }
}

/// The cgroups where container roots live, classified: the kernel watches below `roots`, not
/// below `known`, and treats any cgroup at those levels in neither as new (watched until the
/// next classification).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchLayout {
    /// Container roots, sorted.
    pub roots: Vec<u64>,
    /// The node's own cgroups at levels 1 and 2 (outside container roots), sorted; at most
    /// `WATCH_KNOWN_MAX` (the rest stay watched as unknown).
    pub known: Vec<u64>,
}

/// Classifies the first two levels below `cgroup2` (see [`WatchLayout`]).
pub fn watch_layout(cgroup2: &Path) -> WatchLayout {
    let mut layout = WatchLayout::default();
    let dirs = |dir: &Path| {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
    };
    let max_known = detector_common::WATCH_KNOWN_MAX as usize;
    for entry in dirs(cgroup2) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(meta) = entry.metadata() else { continue };
        if is_container_root(&name) {
            layout.roots.push(meta.ino());
            continue;
        }
        if layout.known.len() < max_known {
            layout.known.push(meta.ino());
        }
        for child in dirs(&entry.path()) {
            let child_name = child.file_name().to_string_lossy().into_owned();
            let Ok(meta) = child.metadata() else { continue };
            if is_container_root(&format!("{name}/{child_name}")) {
                layout.roots.push(meta.ino());
            } else if layout.known.len() < max_known {
                layout.known.push(meta.ino());
            }
        }
    }
    layout.roots.sort_unstable();
    layout.known.sort_unstable();
    layout
}

/// Ids of the container roots below `cgroup2`, sorted.
pub fn container_roots(cgroup2: &Path) -> Vec<u64> {
    watch_layout(cgroup2).roots
}

/// This process's cgroup2 path relative to the hierarchy's root (the `0::` line of
/// `/proc/self/cgroup`).
pub fn own_cgroup_path() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    parse_unified_cgroup(&text)
}

/// The cgroup2 path in `/proc/<pid>/cgroup` text, relative to the hierarchy's root.
pub fn parse_unified_cgroup(text: &str) -> Option<PathBuf> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(|path| PathBuf::from(path.trim_start_matches('/')))
}

/// The cgroup id of a cgroup2 directory.
pub fn cgroup_id(dir: &Path) -> std::io::Result<u64> {
    Ok(std::fs::metadata(dir)?.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_on_hybrid_and_unified_hosts() {
        let hybrid = "25 24 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let escaped = "30 1 0:26 / /mnt/with\\040space rw - cgroup2 none rw\n";
        assert_eq!(
            parse_cgroup2_mount(escaped),
            Some(PathBuf::from("/mnt/with space"))
        );
        assert_eq!(parse_cgroup2_mount("garbage\n\n1 2 3\n"), None);
    }

    #[test]
    fn unified_line_of_proc_cgroup() {
        let hybrid = "12:pids:/user.slice\n1:name=systemd:/user.slice/session-1.scope\n0::/user.slice/session-1.scope\n";
        assert_eq!(
            parse_unified_cgroup(hybrid),
            Some(PathBuf::from("user.slice/session-1.scope"))
        );
        assert_eq!(parse_unified_cgroup("0::/\n"), Some(PathBuf::new()));
        assert_eq!(parse_unified_cgroup("3:cpu:/x\n"), None);
    }

    #[test]
    fn container_roots_by_name() {
        for yes in [
            "kubepods",
            "kubepods.slice",
            "docker",
            "system.slice/docker-0123abcd.scope",
            "system.slice/cri-containerd-ab.scope",
            "crio-1.scope",
        ] {
            assert!(is_container_root(yes), "{yes}");
        }
        for no in [
            "",
            "user.slice",
            "system.slice",
            "system.slice/ssh.service",
            "kubepods/burstable",
            "a/b/c",
            "system.slice/docker.service",
        ] {
            assert!(!is_container_root(no), "{no}");
        }
    }

    #[test]
    fn watch_layout_classifies_two_levels() {
        let dir = tempfile::tempdir().unwrap();
        for sub in [
            "kubepods.slice/kubepods-besteffort.slice",
            "system.slice/docker-0123.scope",
            "system.slice/ssh.service/deeper",
            "user.slice/user-0.slice",
        ] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let id = |p: &str| cgroup_id(&dir.path().join(p)).unwrap();
        let layout = watch_layout(dir.path());
        let mut roots = vec![id("kubepods.slice"), id("system.slice/docker-0123.scope")];
        roots.sort_unstable();
        assert_eq!(layout.roots, roots);
        let mut known = vec![
            id("system.slice"),
            id("system.slice/ssh.service"),
            id("user.slice"),
            id("user.slice/user-0.slice"),
        ];
        known.sort_unstable();
        // Below a root and deeper than two levels: neither (the kernel does not look there).
        assert_eq!(layout.known, known);
    }
}

//! cgroup id to cgroup path, by walking the cgroup2 mount and matching directory inode numbers.
//!
//! A cgroup id is the inode number of the cgroup2 directory. The walk fills a cache of every
//! directory; an id missing from it (a cgroup created after the last walk) triggers a fresh
//! walk, so cgroups created after start resolve on their first event. Ids still missing after
//! a walk (the cgroup is already gone) are remembered for [`MISS_TTL`] so that a stream of
//! events from a dead cgroup does not walk the tree once per event.
//!
//! Memory bound: at most [`MAX_CGROUPS`] paths (a node has a few thousand cgroups; a path is
//! about 200 bytes, so about 13 MiB at the cap, under 1 MiB on a node with 250 pods) plus
//! [`MAX_MISSES`] remembered misses of 24 bytes.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use super::CgroupLookup;

/// Directories the walk records at most.
pub const MAX_CGROUPS: usize = 65_536;
/// Ids remembered as missing at most.
pub const MAX_MISSES: usize = 4096;
/// How long a missing id is not looked for again.
pub const MISS_TTL: Duration = Duration::from_secs(5);

/// The cache of cgroup paths under one cgroup2 mount.
#[derive(Debug)]
pub struct CgroupPaths {
    root: PathBuf,
    paths: HashMap<u64, Arc<str>>,
    misses: HashMap<u64, Instant>,
    walks: u64,
}

impl CgroupPaths {
    /// A cache for the cgroup2 hierarchy mounted at `root`; the first lookup walks it.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            paths: HashMap::new(),
            misses: HashMap::new(),
            walks: 0,
        }
    }

    /// How many times the tree was walked.
    pub fn walks(&self) -> u64 {
        self.walks
    }

    /// Walks the hierarchy again, replacing the cache (removed cgroups drop out).
    pub fn rescan(&mut self) {
        self.walks += 1;
        let mut paths = HashMap::with_capacity(self.paths.len().max(64));
        if let Ok(meta) = std::fs::metadata(&self.root) {
            paths.insert(meta.ino(), Arc::from("/"));
        }
        walk(&self.root, "", &mut paths);
        self.paths = paths;
    }

    /// Approximate heap bytes held.
    pub fn approx_bytes(&self) -> usize {
        let entry = size_of::<u64>() + size_of::<Arc<str>>() + 1;
        self.paths.capacity() * entry
            + self.paths.values().map(|p| p.len() + 16).sum::<usize>()
            + self.misses.capacity() * (size_of::<u64>() + size_of::<Instant>() + 1)
    }
}

fn walk(dir: &Path, relative: &str, paths: &mut HashMap<u64, Arc<str>>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if paths.len() >= MAX_CGROUPS {
            return;
        }
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Ok(meta) = entry.metadata() else { continue };
        let child = format!("{relative}/{name}");
        walk(&entry.path(), &child, paths);
        paths.insert(meta.ino(), Arc::from(child));
    }
}

impl CgroupLookup for CgroupPaths {
    fn path(&mut self, cgroup_id: u64, now: Instant) -> Option<Arc<str>> {
        if let Some(path) = self.paths.get(&cgroup_id) {
            return Some(path.clone());
        }
        if let Some(since) = self.misses.get(&cgroup_id)
            && now.saturating_duration_since(*since) < MISS_TTL
        {
            return None;
        }
        self.rescan();
        if let Some(path) = self.paths.get(&cgroup_id) {
            self.misses.remove(&cgroup_id);
            return Some(path.clone());
        }
        if self.misses.len() >= MAX_MISSES {
            self.misses
                .retain(|_, since| now.saturating_duration_since(*since) < MISS_TTL);
            if self.misses.len() >= MAX_MISSES {
                self.misses.clear();
            }
        }
        self.misses.insert(cgroup_id, now);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_directories_created_after_the_first_walk() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        let mut paths = CgroupPaths::new(dir.path());
        let now = Instant::now();
        let b = std::fs::metadata(dir.path().join("a/b")).unwrap().ino();
        assert_eq!(paths.path(b, now).as_deref(), Some("/a/b"));
        assert_eq!(paths.walks(), 1);
        std::fs::create_dir_all(dir.path().join("a/c/d")).unwrap();
        let d = std::fs::metadata(dir.path().join("a/c/d")).unwrap().ino();
        assert_eq!(paths.path(d, now).as_deref(), Some("/a/c/d"));
        assert_eq!(paths.walks(), 2);
        // Cached: no walk.
        assert_eq!(paths.path(b, now).as_deref(), Some("/a/b"));
        assert_eq!(paths.walks(), 2);
        // A missing id walks once, then not again until the miss expires.
        assert_eq!(paths.path(u64::MAX, now), None);
        assert_eq!(paths.path(u64::MAX, now), None);
        assert_eq!(paths.walks(), 3);
        assert_eq!(paths.path(u64::MAX, now + MISS_TTL), None);
        assert_eq!(paths.walks(), 4);
        let root = std::fs::metadata(dir.path()).unwrap().ino();
        assert_eq!(paths.path(root, now).as_deref(), Some("/"));
    }
}

//! The network quarantine pinned in bpffs, so that it outlives the daemon.
//!
//! The quarantine's maps and the programs that enforce it (`connect4`, `connect6` and the
//! `cgroup_skb` pair) are pinned in `sensors.pin_dir`: when the daemon is killed, OOM-killed or
//! replaced by a rollout, a contained pod stays cut off. The next start (of this version or a
//! later one) adopts the pinned maps, so the loader hands its programs the maps that hold what
//! is blocked; it attaches its own programs, pins them in place of the old ones and only then
//! lets the old ones go, so that nothing passes in between. A stop with nothing quarantined
//! removes the pins; while anything is, they stay, and only a release lifts a block.
//!
//! ```text
//! <pin_dir>/QUARANTINE          cgroup ids cut off (hash map, u64 -> u32)
//! <pin_dir>/QUARANTINE_ACTIVE   how many there are (array of one u32)
//! <pin_dir>/links/<program>     the links attaching the enforcing programs to the cgroup2 root
//! ```

use std::{
    ffi::CString,
    io,
    os::unix::{ffi::OsStrExt as _, fs::DirBuilderExt as _},
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, Map, MapData, MapInfo, MapType},
    programs::links::{FdLink, PinnedLink},
};
use detector_common::{MAP_QUARANTINE, MAP_QUARANTINE_ACTIVE, QUARANTINE_MAX_ENTRIES};
use tracing::{info, warn};

/// The links' directory under the pin directory.
const LINKS_DIR: &str = "links";
/// `statfs(2)`'s `f_type` of a bpf filesystem.
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;

/// What went wrong pinning the quarantine.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The pin directory could not be made ready on a bpf filesystem.
    #[error("{path}: {what}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// The directory is not on a bpf filesystem and none can be mounted for it.
    #[error(
        "{0} is not on a bpf filesystem, and its parent is not an empty directory to mount one on \
         (mount -t bpf bpf /sys/fs/bpf, or set sensors.pin_dir to null)"
    )]
    NotBpffs(PathBuf),
    /// A map pinned by an earlier run has another layout than this build's.
    #[error(
        "{path}: the pinned map is {found}, this build needs {want}; release the incidents it \
         holds with the version that pinned it, or remove the pin to drop its blocks"
    )]
    Layout {
        /// The pinned map.
        path: PathBuf,
        /// Its layout.
        found: String,
        /// The layout this build needs.
        want: String,
    },
}

/// A map's layout: what decides whether this build's programs can use a pinned one.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Layout {
    map_type: MapType,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} of {} entries, {}-byte keys, {}-byte values",
            self.map_type, self.max_entries, self.key_size, self.value_size
        )
    }
}

/// The maps pinned, with the layout this build's programs declare for each.
const PINNED_MAPS: [(&str, Layout); 2] = [
    (
        MAP_QUARANTINE,
        Layout {
            map_type: MapType::Hash,
            key_size: 8,
            value_size: 4,
            max_entries: QUARANTINE_MAX_ENTRIES,
        },
    ),
    (
        MAP_QUARANTINE_ACTIVE,
        Layout {
            map_type: MapType::Array,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
        },
    ),
];

/// The pin directory, ready: on a bpf filesystem, its pinned maps (if any) of this build's
/// layout.
#[derive(Debug)]
pub struct PinDir {
    dir: PathBuf,
    /// The links this run pinned, by program.
    links: Vec<(&'static str, PinnedLink)>,
}

impl PinDir {
    /// Makes `dir` ready: creates it on the bpf filesystem of its parent, mounting one there
    /// when the parent is an empty directory that has none (what Cilium and Tetragon do on a
    /// node that has not mounted `/sys/fs/bpf`), and checks the maps an earlier run pinned.
    pub fn prepare(dir: &Path) -> Result<Self, PinError> {
        let io_err = |path: &Path, what| {
            let path = path.to_owned();
            move |source| PinError::Io { path, what, source }
        };
        if !(dir.is_dir() && on_bpffs(dir).map_err(io_err(dir, "statfs"))?) {
            let parent = dir
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .ok_or_else(|| PinError::NotBpffs(dir.to_owned()))?;
            if !on_bpffs(parent).map_err(io_err(parent, "statfs"))? {
                let empty = std::fs::read_dir(parent)
                    .map_err(io_err(parent, "read the directory"))?
                    .next()
                    .is_none();
                if !empty {
                    return Err(PinError::NotBpffs(dir.to_owned()));
                }
                mount_bpffs(parent).map_err(io_err(parent, "mount a bpf filesystem"))?;
                info!("mounted a bpf filesystem on {}", parent.display());
            }
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err(dir, "create the pin directory"))?;
        }
        for (name, want) in PINNED_MAPS {
            let path = dir.join(name);
            if !path.exists() {
                continue;
            }
            let info = MapInfo::from_pin(&path).map_err(|err| PinError::Io {
                path: path.clone(),
                what: "read the pinned map",
                source: io::Error::other(err),
            })?;
            let found = Layout {
                map_type: info.map_type().unwrap_or(MapType::Unspecified),
                key_size: info.key_size(),
                value_size: info.value_size(),
                max_entries: info.max_entries(),
            };
            if found != want {
                return Err(PinError::Layout {
                    path,
                    found: found.to_string(),
                    want: want.to_string(),
                });
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            links: Vec::new(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The programs whose links this run pinned.
    pub fn programs(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.links.iter().map(|(program, _)| *program)
    }

    /// Where map `name` is pinned.
    pub fn map_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The maps pinned here, for the loader to adopt or pin.
    pub fn maps(&self) -> impl Iterator<Item = (&'static str, PathBuf)> + '_ {
        PINNED_MAPS
            .iter()
            .map(|&(name, _)| (name, self.map_path(name)))
    }

    /// Pins this run's link of `program` in place of any earlier run's, which is let go only
    /// once this one is pinned: both are attached in between, never neither.
    pub fn pin_link(&mut self, program: &'static str, link: FdLink) -> Result<(), PinError> {
        let links = self.dir.join(LINKS_DIR);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&links)
            .map_err(|source| PinError::Io {
                path: links.clone(),
                what: "create the links directory",
                source,
            })?;
        let path = links.join(program);
        // The earlier link, held open while its pin is removed and this one's takes its place.
        let earlier = take_pinned(&path)?;
        let pinned = link.pin(&path).map_err(|err| PinError::Io {
            path: path.clone(),
            what: "pin the link",
            source: io::Error::other(err),
        })?;
        drop(earlier);
        self.links.push((program, pinned));
        Ok(())
    }

    /// Lets go of the links earlier runs pinned for programs this run did not pin (a program
    /// renamed or dropped by an upgrade); call after [`PinDir::pin_link`] for each of ours.
    pub fn release_stale_links(&self) -> Result<Vec<String>, PinError> {
        let links = self.dir.join(LINKS_DIR);
        let Ok(entries) = std::fs::read_dir(&links) else {
            return Ok(Vec::new());
        };
        let mut released = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if self.links.iter().any(|(program, _)| *program == name) {
                continue;
            }
            drop(take_pinned(&entry.path())?);
            released.push(name);
        }
        Ok(released)
    }

    /// How many cgroups the pinned quarantine holds.
    pub fn quarantined(&self) -> Result<usize, PinError> {
        let path = self.map_path(MAP_QUARANTINE);
        let read = || -> Result<usize, aya::maps::MapError> {
            let map =
                HashMap::<MapData, u64, u32>::try_from(Map::HashMap(MapData::from_pin(&path)?))?;
            Ok(map.keys().filter(Result::is_ok).count())
        };
        read().map_err(|err| PinError::Io {
            path: path.clone(),
            what: "read the pinned quarantine",
            source: io::Error::other(err),
        })
    }

    /// At the daemon's stop: with nothing quarantined, removes every pin (the programs detach
    /// with the daemon's other links); otherwise leaves them, so that the quarantine holds
    /// while no daemon runs.
    pub fn close(mut self) {
        match self.quarantined() {
            Ok(0) => {
                for (_, link) in self.links.drain(..) {
                    if let Err(err) = link.unpin() {
                        warn!(%err, "removing a link's pin");
                    }
                }
                for (_, path) in self.maps() {
                    if let Err(err) = std::fs::remove_file(&path)
                        && err.kind() != io::ErrorKind::NotFound
                    {
                        warn!(%err, "removing {}", path.display());
                    }
                }
                let _ = std::fs::remove_dir(self.dir.join(LINKS_DIR));
                let _ = std::fs::remove_dir(&self.dir);
            }
            Ok(count) => info!(
                "{count} cgroup(s) stay cut off the network by the programs pinned in {} until \
                 released",
                self.dir.display()
            ),
            Err(err) => warn!(%err, "leaving the quarantine pinned"),
        }
    }
}

/// The link pinned at `path`, its pin removed; `None` when there is none.
fn take_pinned(path: &Path) -> Result<Option<FdLink>, PinError> {
    if !path.exists() {
        return Ok(None);
    }
    let io_err = |what, source| PinError::Io {
        path: path.to_owned(),
        what,
        source,
    };
    let pinned = PinnedLink::from_pin(path)
        .map_err(|err| io_err("open the pinned link", io::Error::other(err)))?;
    pinned
        .unpin()
        .map(Some)
        .map_err(|err| io_err("remove the link's pin", err))
}

/// Whether `path` is on a bpf filesystem.
fn on_bpffs(path: &Path) -> io::Result<bool> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statfs writes into the zeroed struct; the path is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_type as u32 == BPF_FS_MAGIC)
}

fn mount_bpffs(path: &Path) -> io::Result<()> {
    let target = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_off_bpffs_with_a_busy_parent_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("other"), "").unwrap();
        let err = PinDir::prepare(&dir.path().join("detector")).unwrap_err();
        assert!(matches!(err, PinError::NotBpffs(_)), "{err}");
        assert!(err.to_string().contains("sensors.pin_dir"), "{err}");
        assert!(!dir.path().join("detector").exists());
    }
}

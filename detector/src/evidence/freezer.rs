//! Pausing a container through its cgroup's freezer, whatever the runtime: the evidence of a
//! frozen container does not change while it is read, and its processes cannot react to it.
//!
//! [`freeze`] returns a [`FreezeGuard`]; the container runs again when the guard is thawed
//! explicitly ([`FreezeGuard::thaw`], which reports failures) or dropped on any other path (an
//! early return, a `?`, a panic), so an error between the two halves never leaves it frozen.
//! A cgroup someone else had frozen before is left frozen.
//!
//! Both freezers are supported: cgroup v2's `cgroup.freeze` / `cgroup.events` (kernel 5.2+) and
//! cgroup v1's `freezer.state` (the `freezer` hierarchy of a hybrid layout).
//!
//! The functions block (they poll the cgroup's state every few milliseconds until `timeout`);
//! an async caller runs them in `spawn_blocking`.

use std::{
    fs, io,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

/// How often the state is read while waiting for the kernel to settle it.
const POLL: Duration = Duration::from_millis(5);

/// A failure to freeze or thaw a cgroup.
#[derive(Debug, thiserror::Error)]
pub enum FreezerError {
    /// The directory has neither cgroup v2's `cgroup.freeze` nor v1's `freezer.state`.
    #[error("{dir}: not a freezable cgroup (neither cgroup.freeze nor freezer.state)")]
    NotFreezable {
        /// The cgroup directory.
        dir: PathBuf,
    },
    /// A freezer file could not be read or written.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// `read` or `write`.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// The kernel did not reach the state in time (a task stuck in an uninterruptible sleep
    /// can hold a freeze back); the request was withdrawn.
    #[error("{path}: not {state} within {timeout:?}")]
    Timeout {
        /// The file watched.
        path: PathBuf,
        /// The state waited for (`frozen 1`, `THAWED`, ...).
        state: &'static str,
        /// How long it was waited for.
        timeout: Duration,
    },
}

/// Which freezer a cgroup directory has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freezer {
    /// cgroup v2: `cgroup.freeze` is written, `cgroup.events` says when it took effect.
    V2,
    /// cgroup v1: `freezer.state` is written and read back.
    V1,
}

impl Freezer {
    /// The freezer of `dir`, from the files the kernel shows there.
    pub fn of(dir: &Path) -> Result<Self, FreezerError> {
        if dir.join("cgroup.freeze").exists() {
            Ok(Self::V2)
        } else if dir.join("freezer.state").exists() {
            Ok(Self::V1)
        } else {
            Err(FreezerError::NotFreezable {
                dir: dir.to_owned(),
            })
        }
    }

    /// The file written to request a state, and the values for frozen and thawed.
    fn control(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::V2 => ("cgroup.freeze", "1", "0"),
            Self::V1 => ("freezer.state", "FROZEN", "THAWED"),
        }
    }

    /// The file that says whether the state took effect.
    fn status_file(self) -> &'static str {
        match self {
            Self::V2 => "cgroup.events",
            Self::V1 => "freezer.state",
        }
    }

    /// Whether the status file's content shows the cgroup `frozen` (or thawed when false).
    /// v1 reads `FREEZING` while a freeze is under way, which is neither.
    fn settled(self, status: &str, frozen: bool) -> bool {
        match self {
            Self::V2 => status
                .lines()
                .any(|l| l == if frozen { "frozen 1" } else { "frozen 0" }),
            Self::V1 => status.trim() == if frozen { "FROZEN" } else { "THAWED" },
        }
    }

    /// Whether someone already asked for this cgroup to be frozen (v2: its own `cgroup.freeze`
    /// or a frozen ancestor; v1: `FROZEN` or `FREEZING`).
    fn requested_frozen(self, dir: &Path) -> Result<bool, FreezerError> {
        match self {
            Self::V2 => Ok(read(&dir.join("cgroup.freeze"))?.trim() == "1"
                || self.settled(&read(&dir.join("cgroup.events"))?, true)),
            Self::V1 => Ok(read(&dir.join("freezer.state"))?.trim() != "THAWED"),
        }
    }

    /// Requests `frozen` (or thawed) and waits until the kernel reports it, up to `timeout`.
    fn set(self, dir: &Path, frozen: bool, timeout: Duration) -> Result<(), FreezerError> {
        let (file, on, off) = self.control();
        write(&dir.join(file), if frozen { on } else { off })?;
        self.wait(dir, frozen, timeout)
    }

    fn wait(self, dir: &Path, frozen: bool, timeout: Duration) -> Result<(), FreezerError> {
        let path = dir.join(self.status_file());
        let deadline = Instant::now() + timeout;
        loop {
            if self.settled(&read(&path)?, frozen) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let state = match (self, frozen) {
                    (Self::V2, true) => "frozen 1",
                    (Self::V2, false) => "frozen 0",
                    (Self::V1, true) => "FROZEN",
                    (Self::V1, false) => "THAWED",
                };
                return Err(FreezerError::Timeout {
                    path,
                    state,
                    timeout,
                });
            }
            thread::sleep(POLL);
        }
    }
}

/// A frozen cgroup; thawed by [`FreezeGuard::thaw`] or on drop, unless it was frozen before.
#[derive(Debug)]
#[must_use = "dropping the guard thaws the cgroup at once"]
pub struct FreezeGuard {
    dir: PathBuf,
    freezer: Freezer,
    timeout: Duration,
    /// Frozen by someone else before [`freeze`]: theirs to thaw, not ours.
    was_frozen: bool,
    /// Thawed already through [`FreezeGuard::thaw`]: nothing left for the drop.
    thawed: bool,
}

/// Freezes the cgroup `dir` (a v2 directory with `cgroup.freeze`, or a v1 directory of the
/// `freezer` hierarchy) and waits up to `timeout` until every task in it is frozen.
///
/// On a timeout the freeze is withdrawn (the cgroup thawed) before the error is returned, so
/// no half-frozen container is left behind.
pub fn freeze(dir: &Path, timeout: Duration) -> Result<FreezeGuard, FreezerError> {
    let freezer = Freezer::of(dir)?;
    let was_frozen = freezer.requested_frozen(dir)?;
    let guard = FreezeGuard {
        dir: dir.to_owned(),
        freezer,
        timeout,
        was_frozen,
        thawed: false,
    };
    if was_frozen {
        // Whoever froze it may still be waiting for the tasks to stop: so do we.
        freezer.wait(dir, true, timeout)?;
    } else {
        // The guard exists before the write: a timeout drops it, which thaws.
        freezer.set(dir, true, timeout)?;
    }
    Ok(guard)
}

impl FreezeGuard {
    /// The cgroup directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Which freezer was used.
    pub fn freezer(&self) -> Freezer {
        self.freezer
    }

    /// Whether the cgroup was frozen before [`freeze`] (then it stays frozen afterwards).
    pub fn was_frozen(&self) -> bool {
        self.was_frozen
    }

    /// Thaws the cgroup and waits until its tasks run again; a no-op when it was frozen
    /// before [`freeze`].
    pub fn thaw(mut self) -> Result<(), FreezerError> {
        let result = self.thaw_now();
        // Thawed, or failed to and the caller knows: the drop must not try again.
        self.thawed = true;
        result
    }

    /// Leaves the cgroup frozen for good (`evidence.unpause: false`: containment decides).
    pub fn keep(mut self) {
        self.thawed = true;
    }

    fn thaw_now(&self) -> Result<(), FreezerError> {
        if self.was_frozen || self.thawed {
            return Ok(());
        }
        match self.freezer.set(&self.dir, false, self.timeout) {
            // The cgroup is gone (the container ended while frozen): nothing is left frozen.
            Err(FreezerError::Io { source, .. }) if !self.dir.exists() => {
                tracing::debug!(cgroup = %self.dir.display(), "cgroup gone before the thaw: {source}");
                Ok(())
            }
            result => result,
        }
    }
}

impl Drop for FreezeGuard {
    fn drop(&mut self) {
        if let Err(err) = self.thaw_now() {
            tracing::error!(
                cgroup = %self.dir.display(),
                "cannot thaw the container's cgroup: {err}"
            );
        }
    }
}

fn read(path: &Path) -> Result<String, FreezerError> {
    fs::read_to_string(path).map_err(|source| FreezerError::Io {
        op: "read",
        path: path.to_owned(),
        source,
    })
}

fn write(path: &Path, value: &str) -> Result<(), FreezerError> {
    fs::write(path, value).map_err(|source| FreezerError::Io {
        op: "write",
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cgroup(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            fs::write(dir.path().join(name), content).unwrap();
        }
        dir
    }

    #[test]
    fn a_directory_without_freezer_files_is_refused_by_name() {
        let dir = cgroup(&[]);
        let err = freeze(dir.path(), Duration::from_millis(10)).unwrap_err();
        assert!(matches!(err, FreezerError::NotFreezable { .. }), "{err}");
        assert!(err.to_string().contains(&dir.path().display().to_string()));
    }

    #[test]
    fn v2_state_is_read_from_cgroup_events() {
        let events = "populated 1\nfrozen 1\n";
        assert!(Freezer::V2.settled(events, true));
        assert!(!Freezer::V2.settled(events, false));
        assert!(!Freezer::V1.settled("FREEZING\n", true));
        assert!(!Freezer::V1.settled("FREEZING\n", false));
        assert!(Freezer::V1.settled("FROZEN\n", true));
    }

    #[test]
    fn a_cgroup_removed_while_frozen_needs_no_thaw() {
        let dir = cgroup(&[("cgroup.freeze", "0\n"), ("cgroup.events", "frozen 1\n")]);
        let guard = FreezeGuard {
            dir: dir.path().join("gone"),
            freezer: Freezer::V2,
            timeout: Duration::from_millis(10),
            was_frozen: false,
            thawed: false,
        };
        guard.thaw().unwrap();
    }

    #[test]
    fn a_freeze_that_never_settles_times_out_and_is_withdrawn() {
        // A plain directory: the write lands, but no kernel updates cgroup.events.
        let dir = cgroup(&[("cgroup.freeze", "0\n"), ("cgroup.events", "frozen 0\n")]);
        let err = freeze(dir.path(), Duration::from_millis(30)).unwrap_err();
        assert!(
            matches!(
                err,
                FreezerError::Timeout {
                    state: "frozen 1",
                    ..
                }
            ),
            "{err}"
        );
        let freeze_file = fs::read_to_string(dir.path().join("cgroup.freeze")).unwrap();
        assert_eq!(freeze_file, "0", "the freeze request was not withdrawn");
    }
}

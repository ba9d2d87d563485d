//! The container's filesystem as a tar archive, read from the node through
//! `/proc/<pid>/root`: what `docker export` gives, for any runtime.
//!
//! Only the root's own filesystem is archived: mounts below it (`/proc`, `/sys`, `/dev`,
//! volumes, secrets, the runtime's bind-mounted `/etc/hosts`) appear as their mount point,
//! without their contents, and are listed in the summary. Mounts are told by mount id
//! (`statx`), so a bind mount of the root's own filesystem is one too; `st_dev` would also
//! split an overlay whose layers lie on different filesystems (its files then carry a
//! per-layer device number). Symlinks are archived as links,
//! never followed (see [`super::archive`]). The export stops cleanly (a complete archive,
//! shorter) at a size or a deadline, and the summary says which.
//!
//! [`export_root`] blocks (it reads the whole tree): an async caller runs it in
//! `spawn_blocking`, ideally while the container is frozen ([`super::freezer`]) so that the
//! archive is one moment's state.

use std::{
    ffi::OsStr,
    io::{self, Write},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Instant,
};

use super::archive::{Dir, EntryError, TarWriter};

/// Bytes a tar entry takes besides its content (a header; a long name or xattrs add more,
/// which the limit check leaves to the next entry).
const HEADER: u64 = 512;

/// A failure that ends an export with no usable archive.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The root could not be opened (the process exited, or no permission).
    #[error("cannot open {path}: {source}")]
    Root {
        /// The root directory.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// The archive could not be written to the output.
    #[error("cannot write the archive (after {entries} entries): {source}")]
    Write {
        /// Entries written before the failure.
        entries: u64,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
}

/// Why an export stopped before the end of the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truncated {
    /// The next entry would have passed `max_bytes`.
    Size,
    /// The deadline passed.
    Deadline,
}

/// What an export wrote and what it left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportSummary {
    /// Entries archived.
    pub entries: u64,
    /// Bytes of the archive, its end blocks included.
    pub bytes: u64,
    /// Set when the export stopped early.
    pub truncated: Option<Truncated>,
    /// Mount points below the root (paths inside the container), archived without contents.
    pub skipped_mounts: Vec<String>,
    /// Entries that could not be read, with the error (a file removed meanwhile, a socket).
    pub unreadable: Vec<(String, String)>,
}

/// Archives the tree at `root` (`/proc/<pid>/root`, or any directory) to `out` as an
/// uncompressed tar with numeric owners, modes, times and xattrs, staying on the root's
/// filesystem; stops before `max_bytes` or at `deadline`. Entries are named relative to the
/// root (`etc/passwd`), as `docker export` names them.
///
/// Both bounds are checked between entries: a file is archived whole or not at all, so one
/// large file can outlast the deadline by the time it takes to read. A file that fails to
/// read half-way is archived padded with zeros to its size and listed as unreadable.
pub fn export_root(
    root: &Path,
    out: impl Write,
    max_bytes: u64,
    deadline: Instant,
) -> Result<ExportSummary, ExportError> {
    let opened = |source| ExportError::Root {
        path: root.to_owned(),
        source,
    };
    let dir = Dir::open_root(root).map_err(opened)?;
    let filesystem = match dir.mount_id().map_err(opened)? {
        Some(id) => RootFs::Mount(id),
        None => RootFs::Device(dir.metadata().map_err(opened)?.dev()),
    };
    let mut export = Export {
        tar: TarWriter::new(out),
        filesystem,
        max_bytes,
        deadline,
        summary: ExportSummary::default(),
    };
    export.dir(&dir, Path::new(""))?;
    let entries = export.summary.entries;
    let (_, bytes) = export
        .tar
        .finish()
        .map_err(|source| ExportError::Write { entries, source })?;
    export.summary.bytes = bytes;
    Ok(export.summary)
}

/// How the root's own filesystem is told from what is mounted below it.
#[derive(Debug, Clone, Copy)]
enum RootFs {
    /// By mount id (kernel 5.8+): exact, bind mounts of the same filesystem included.
    Mount(u64),
    /// By `st_dev`, on older kernels.
    Device(u64),
}

impl RootFs {
    fn has_entry(self, dir: &Dir, name: &OsStr, meta: &std::fs::Metadata) -> io::Result<bool> {
        match self {
            Self::Mount(id) => Ok(dir.entry_mount_id(name)? == Some(id)),
            Self::Device(dev) => Ok(meta.dev() == dev),
        }
    }

    fn has_dir(self, dir: &Dir) -> io::Result<bool> {
        match self {
            Self::Mount(id) => Ok(dir.mount_id()? == Some(id)),
            Self::Device(dev) => Ok(dir.metadata()?.dev() == dev),
        }
    }
}

struct Export<W: Write> {
    tar: TarWriter<W>,
    filesystem: RootFs,
    max_bytes: u64,
    deadline: Instant,
    summary: ExportSummary,
}

impl<W: Write> Export<W> {
    /// Archives the entries of `dir` (at `rel` in the tree) and below; false once stopped.
    fn dir(&mut self, dir: &Dir, rel: &Path) -> Result<bool, ExportError> {
        let names = match dir.names() {
            Ok(names) => names,
            Err(err) => {
                self.unreadable(rel, &err);
                return Ok(true);
            }
        };
        for name in &names {
            if !self.entry(dir, name, &rel.join(name))? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn entry(&mut self, dir: &Dir, name: &OsStr, rel: &Path) -> Result<bool, ExportError> {
        if Instant::now() >= self.deadline {
            self.summary.truncated = Some(Truncated::Deadline);
            return Ok(false);
        }
        let meta = match std::fs::symlink_metadata(dir.entry(name)) {
            Ok(meta) => meta,
            Err(err) => {
                self.unreadable(rel, &err);
                return Ok(true);
            }
        };
        let content = if meta.is_file() {
            meta.len().div_ceil(512) * 512
        } else {
            0
        };
        // Two end-of-archive blocks must still fit after this entry.
        if self.tar.written() + HEADER + content + 1024 > self.max_bytes {
            self.summary.truncated = Some(Truncated::Size);
            return Ok(false);
        }
        let other_mount = match self.filesystem.has_entry(dir, name, &meta) {
            Ok(on_root) => !on_root,
            Err(err) => {
                self.unreadable(rel, &err);
                return Ok(true);
            }
        };
        if other_mount {
            self.summary.skipped_mounts.push(container_path(rel));
        }
        let entries = self.summary.entries;
        match self.tar.append(dir, name, rel, &meta, None) {
            Ok(()) => self.summary.entries += 1,
            Err(EntryError::Write(source)) => return Err(ExportError::Write { entries, source }),
            Err(EntryError::Read(err)) => self.unreadable(rel, &err),
        }
        if !meta.is_dir() || other_mount {
            return Ok(true);
        }
        // The directory may have been swapped since the lstat: what was opened is checked.
        let sub = dir
            .open_dir(name)
            .and_then(|sub| Ok((self.filesystem.has_dir(&sub)?, sub)));
        match sub {
            Ok((true, sub)) => self.dir(&sub, rel),
            Ok((false, _)) => Ok(true),
            Err(err) => {
                self.unreadable(rel, &err);
                Ok(true)
            }
        }
    }

    fn unreadable(&mut self, rel: &Path, err: &io::Error) {
        self.summary
            .unreadable
            .push((container_path(rel), err.to_string()));
    }
}

fn container_path(rel: &Path) -> String {
    format!("/{}", rel.display())
}

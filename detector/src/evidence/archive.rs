//! What [`super::fsexport`] and [`super::oci`] share: reading a directory tree the container
//! controls without ever following a symlink out of it, and writing its entries to a tar
//! archive with their owners, modes, times and extended attributes.
//!
//! Each directory is opened relative to its parent's descriptor with `O_NOFOLLOW`, and entries
//! are looked up through `/proc/self/fd/<dir>/<name>` with the `l*` calls: a container that
//! swaps a directory for a symlink while it is read makes the open fail, it never redirects it
//! to the host's files.

use std::{
    collections::HashMap,
    ffi::{CStr, CString, OsStr, OsString},
    fs,
    io::{self, Read, Write},
    mem::MaybeUninit,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{
            ffi::OsStrExt as _,
            fs::{FileTypeExt as _, MetadataExt as _},
        },
    },
    path::{Path, PathBuf},
};

use tar::{EntryType, Header};

/// An open directory of the tree being read.
pub(crate) struct Dir {
    fd: OwnedFd,
}

impl Dir {
    /// Opens the tree's root (following it: `/proc/<pid>/root` is a link by design).
    pub(crate) fn open_root(path: &Path) -> io::Result<Self> {
        open_at(libc::AT_FDCWD, path.as_os_str(), libc::O_DIRECTORY, path).map(|fd| Self { fd })
    }

    /// Opens subdirectory `name`; fails on a symlink.
    pub(crate) fn open_dir(&self, name: &OsStr) -> io::Result<Self> {
        open_at(
            self.raw(),
            name,
            libc::O_DIRECTORY | libc::O_NOFOLLOW,
            Path::new(name),
        )
        .map(|fd| Self { fd })
    }

    /// Opens file `name` for reading; fails on a symlink.
    pub(crate) fn open_file(&self, name: &OsStr) -> io::Result<fs::File> {
        let fd = open_at(
            self.raw(),
            name,
            libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK,
            Path::new(name),
        )?;
        Ok(fs::File::from(fd))
    }

    /// The directory's own metadata (of what was opened, whatever the path shows now).
    pub(crate) fn metadata(&self) -> io::Result<fs::Metadata> {
        fs::metadata(self.proc_path())
    }

    /// The id of the mount this directory is on; `None` on a kernel before 5.8.
    pub(crate) fn mount_id(&self) -> io::Result<Option<u64>> {
        statx_mount_id(self.raw(), c"", libc::AT_EMPTY_PATH)
    }

    /// The id of the mount entry `name` is on (a symlink not followed); `None` on a kernel
    /// before 5.8. A mount point's id differs from its directory's, even for a bind mount
    /// of the same filesystem, which `st_dev` cannot tell apart.
    pub(crate) fn entry_mount_id(&self, name: &OsStr) -> io::Result<Option<u64>> {
        let c_name = c_string(name, Path::new(name))?;
        statx_mount_id(self.raw(), &c_name, libc::AT_SYMLINK_NOFOLLOW)
    }

    /// Entry names, sorted (the archive's order is the same on every run).
    pub(crate) fn names(&self) -> io::Result<Vec<OsString>> {
        let mut names = fs::read_dir(self.proc_path())?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<Vec<_>>>()?;
        names.sort();
        Ok(names)
    }

    /// A path to entry `name` that resolves through this directory's descriptor; only the
    /// `l*` calls (which do not follow the last component) may be used on it.
    pub(crate) fn entry(&self, name: &OsStr) -> PathBuf {
        self.proc_path().join(name)
    }

    fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.raw()))
    }

    fn raw(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

fn c_string(name: &OsStr, shown: &Path) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} holds a NUL", shown.display()),
        )
    })
}

fn statx_mount_id(dir: i32, name: &CStr, flags: i32) -> io::Result<Option<u64>> {
    let mut buf = MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: name is NUL-terminated and outlives the call; buf is a statx the kernel writes.
    let rc = unsafe {
        libc::statx(
            dir,
            name.as_ptr(),
            flags | libc::AT_NO_AUTOMOUNT,
            libc::STATX_MNT_ID,
            buf.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zeroed integers are a valid statx, and the kernel filled it in.
    let buf = unsafe { buf.assume_init() };
    Ok((buf.stx_mask & libc::STATX_MNT_ID != 0).then_some(buf.stx_mnt_id))
}

fn open_at(dir: i32, name: &OsStr, flags: i32, shown: &Path) -> io::Result<OwnedFd> {
    let c_name = c_string(name, shown)?;
    // SAFETY: c_name is a valid NUL-terminated string that outlives the call; dir is an open
    // descriptor or AT_FDCWD.
    let fd = unsafe {
        libc::openat(
            dir,
            c_name.as_ptr(),
            flags | libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A writer that counts what went through it and remembers whether it failed (tar reports
/// the reading and the writing side of an entry alike).
pub(crate) struct Counting<W> {
    inner: W,
    written: u64,
    failed: bool,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf).inspect_err(|_| self.failed = true)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|_| self.failed = true)
    }
}

/// Extended attributes that are overlay's own bookkeeping, never the container's.
fn is_overlay_xattr(name: &OsStr) -> bool {
    let name = name.as_bytes();
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

/// Why an entry was not archived whole.
#[derive(Debug)]
pub(crate) enum EntryError {
    /// The entry could not be read: nothing was written for it, or (a read failing half-way
    /// through a file) its content was padded with zeros to the size its header gives.
    Read(io::Error),
    /// The output failed: the archive is unusable.
    Write(io::Error),
}

/// A tar archive being written, with the hard links seen so far.
pub(crate) struct TarWriter<W: Write> {
    builder: tar::Builder<Counting<W>>,
    /// First archived path of each multiply-linked inode, by (device, inode).
    links: HashMap<(u64, u64), PathBuf>,
}

/// What an entry needs read before anything of it is written (so that a failed read leaves
/// no half entry, nor an extended header that would apply to the next one).
enum Content {
    None,
    File(fs::File),
    Link(PathBuf),
}

impl<W: Write> TarWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        Self {
            builder: tar::Builder::new(Counting {
                inner: out,
                written: 0,
                failed: false,
            }),
            links: HashMap::new(),
        }
    }

    /// Bytes written to the output so far.
    pub(crate) fn written(&self) -> u64 {
        self.builder.get_ref().written
    }

    /// Appends entry `name` of `dir`, archived as `path`, with `meta` (its lstat): a regular
    /// file with its content, a directory, symlink, fifo or device node, or a hard link to
    /// the first path of the same inode. Sockets cannot be archived (a `Read` error).
    ///
    /// `data` is a regular file's content when it is not the entry's own: an overlay entry
    /// copied up for its metadata only (`metacopy=on`, CRI-O's default) keeps its data in a
    /// lower layer.
    pub(crate) fn append(
        &mut self,
        dir: &Dir,
        name: &OsStr,
        path: &Path,
        meta: &fs::Metadata,
        data: Option<fs::File>,
    ) -> Result<(), EntryError> {
        let mut read_error = None;
        let result = self.append_entry(dir, name, path, meta, data, &mut read_error);
        if self.builder.get_ref().failed {
            return Err(EntryError::Write(
                result
                    .err()
                    .unwrap_or_else(|| io::Error::other("the output failed")),
            ));
        }
        match (result, read_error) {
            (Err(err), _) | (Ok(()), Some(err)) => Err(EntryError::Read(err)),
            (Ok(()), None) => Ok(()),
        }
    }

    fn append_entry(
        &mut self,
        dir: &Dir,
        name: &OsStr,
        path: &Path,
        meta: &fs::Metadata,
        data: Option<fs::File>,
        read_error: &mut Option<io::Error>,
    ) -> io::Result<()> {
        let file_type = meta.file_type();
        if file_type.is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a socket cannot be archived",
            ));
        }
        let linked = (!meta.is_dir() && meta.nlink() > 1).then(|| (meta.dev(), meta.ino()));
        let first = linked.and_then(|key| self.links.get(&key).cloned());
        let content = match (&first, data) {
            (Some(_), _) => Content::None,
            (None, _) if file_type.is_symlink() => Content::Link(fs::read_link(dir.entry(name))?),
            (None, Some(data)) if file_type.is_file() => Content::File(data),
            (None, None) if file_type.is_file() => Content::File(dir.open_file(name)?),
            (None, _) => Content::None,
        };
        let records = xattr_records(&dir.entry(name))?;
        let mut header = header_of(meta);
        let size = match &content {
            Content::File(file) => file.metadata()?.len(),
            _ => 0,
        };
        header.set_size(size);
        if file_type.is_char_device() || file_type.is_block_device() {
            header.set_device_major(libc::major(meta.rdev()))?;
            header.set_device_minor(libc::minor(meta.rdev()))?;
        }
        self.append_pax(&records, path)?;
        if let Some(first) = first {
            header.set_entry_type(EntryType::Link);
            header.set_size(0);
            return self.builder.append_link(&mut header, path, first);
        }
        if let Some(key) = linked {
            self.links.insert(key, path.to_owned());
        }
        match content {
            Content::Link(target) => {
                header.set_entry_type(EntryType::Symlink);
                self.builder.append_link(&mut header, path, target)
            }
            Content::File(file) => {
                let reader = Padded {
                    file,
                    left: size,
                    error: read_error,
                };
                self.builder.append_data(&mut header, path, reader)
            }
            Content::None => self.builder.append_data(&mut header, path, io::empty()),
        }
    }

    /// Appends an empty regular file `path` (an OCI whiteout marker), owned by root.
    pub(crate) fn append_marker(&mut self, path: &Path, mtime: u64) -> io::Result<()> {
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_mode(0o600);
        header.set_mtime(mtime);
        header.set_size(0);
        self.builder.append_data(&mut header, path, io::empty())
    }

    /// Writes the end of the archive; returns the output and the bytes written.
    pub(crate) fn finish(self) -> io::Result<(W, u64)> {
        let counting = self.builder.into_inner()?;
        Ok((counting.inner, counting.written))
    }

    /// A PAX extended header with `records`, before the entry it applies to.
    fn append_pax(&mut self, records: &[u8], path: &Path) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut header = Header::new_ustar();
        header.set_entry_type(EntryType::XHeader);
        header.set_mode(0o644);
        header.set_size(records.len() as u64);
        // The name is informational; readers apply the records to the next entry.
        let name = Path::new("PaxHeaders").join(path.file_name().unwrap_or(OsStr::new("x")));
        header.set_path(shorten(&name))?;
        header.set_cksum();
        self.builder.append(&header, records)
    }
}

/// The entry's xattrs as PAX records (`SCHILY.xattr.<name>`, as GNU tar, Docker and
/// containerd read them), overlay's own left out.
fn xattr_records(entry: &Path) -> io::Result<Vec<u8>> {
    let mut records = Vec::new();
    let names = match xattr::list(entry) {
        Ok(names) => names,
        Err(err) if err.raw_os_error() == Some(libc::ENOTSUP) => return Ok(records),
        Err(err) => return Err(err),
    };
    for name in names.filter(|n| !is_overlay_xattr(n)) {
        if let Some(value) = xattr::get(entry, &name)? {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(name.as_bytes());
            records.extend(pax_record(&key, &value));
        }
    }
    Ok(records)
}

/// Exactly `left` bytes of a file: cut if it grew since it was stat'ed, padded with zeros if
/// it shrank or a read failed (the error is kept), so the header's size stays true and the
/// archive readable.
struct Padded<'a> {
    file: fs::File,
    left: u64,
    error: &'a mut Option<io::Error>,
}

impl Read for Padded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = if self.error.is_some() {
            0
        } else {
            match self.file.read(&mut buf[..want]) {
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => return Err(err),
                Err(err) => {
                    *self.error = Some(err);
                    0
                }
            }
        };
        // Nothing more to read: zeros up to the size.
        let n = if n == 0 {
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.left -= n as u64;
        Ok(n)
    }
}

/// `"<len> <key>=<value>\n"`, where `<len>` counts the whole record, its own digits included.
fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // space, '=', newline
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut record = format!("{len} ").into_bytes();
    record.extend_from_slice(key);
    record.push(b'=');
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

/// A name that fits the ustar header's 100 bytes (the PAX header's own name is never read).
fn shorten(path: &Path) -> PathBuf {
    let bytes = path.as_os_str().as_bytes();
    PathBuf::from(OsStr::from_bytes(&bytes[..bytes.len().min(99)]))
}

fn header_of(meta: &fs::Metadata) -> Header {
    let mut header = Header::new_gnu();
    let file_type = meta.file_type();
    header.set_entry_type(if file_type.is_dir() {
        EntryType::Directory
    } else if file_type.is_fifo() {
        EntryType::Fifo
    } else if file_type.is_char_device() {
        EntryType::Char
    } else if file_type.is_block_device() {
        EntryType::Block
    } else {
        EntryType::Regular
    });
    header.set_mode(meta.mode() & 0o7777);
    header.set_uid(u64::from(meta.uid()));
    header.set_gid(u64::from(meta.gid()));
    header.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_its_own_digits() {
        assert_eq!(pax_record(b"a", b"b"), b"6 a=b\n");
        assert_eq!(pax_record(b"key", b"value"), b"13 key=value\n");
        // 98 bytes without the length: two digits would make 100, so three are needed.
        let record = pax_record(b"k", &[b'v'; 94]);
        assert_eq!(record.len(), 101);
        assert!(record.starts_with(b"101 k="));
    }
}

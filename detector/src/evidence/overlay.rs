//! A container's overlay layers, found in its mountinfo, and its changed files read from the
//! upper layer: what `docker diff` gives, for any runtime that mounts the root filesystem with
//! overlayfs (containerd's overlayfs snapshotter, Docker's overlay2, CRI-O and podman).
//!
//! [`OverlayLayers::of_pid`] reads `/proc/<pid>/mountinfo` of one of the container's processes;
//! [`changes`] walks the upper directory. Both block (the walk can read many directories): an
//! async caller runs them in `spawn_blocking`. Nothing is read through the container's own
//! root, so nothing it does to its mount namespace changes what is listed.
//!
//! Overlay's on-disk format (Documentation/filesystems/overlayfs.rst): a deleted lower entry
//! is a whiteout in the upper layer (a 0:0 character device, or since 6.7 a file with the
//! `overlay.whiteout` xattr); a directory that replaced a lower one is opaque (`overlay.opaque`
//! = `y`). The xattrs are in the `trusted.` namespace, or `user.` for a `userxattr` mount.

use std::{
    collections::{BTreeSet, HashMap},
    ffi::OsString,
    fs, io,
    os::unix::{
        ffi::OsStringExt as _,
        fs::{FileTypeExt as _, MetadataExt as _},
    },
    path::{Path, PathBuf},
};

use super::runtime::FsChange;

/// A failure to find a container's layers or to read them.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// The mountinfo file could not be read.
    #[error("cannot read {path}: {source}")]
    Mountinfo {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// Nothing is mounted at the mount point.
    #[error("no mount at {mount_point} in mountinfo")]
    NoMount {
        /// The mount point looked for.
        mount_point: String,
    },
    /// The mount at the mount point is not an overlay (a VM-based runtime, a devmapper or
    /// btrfs snapshotter): its layers cannot be read from the node this way.
    #[error("mountinfo line {line}: {mount_point} is {fstype}, not overlay")]
    NotOverlay {
        /// The mount point.
        mount_point: String,
        /// Its filesystem type.
        fstype: String,
        /// The line of mountinfo (from 1).
        line: usize,
    },
    /// A mountinfo line has too few fields or an overlay lacks an option it needs.
    #[error("mountinfo line {line}: {reason}")]
    Malformed {
        /// The line of mountinfo (from 1).
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A layer's entry could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
}

/// The directories of an overlay mount, as the host names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayLayers {
    /// The read-only layers, top first (overlay's `lowerdir` order).
    pub lower: Vec<PathBuf>,
    /// The writable layer: every change the container made.
    pub upper: PathBuf,
    /// Overlay's scratch directory (never part of the container's files).
    pub work: Option<PathBuf>,
    /// Data-only layers (`lowerdir=a::data` or `datadir+=`): file contents that lower layers'
    /// metacopy entries redirect to, never visible as entries of their own.
    pub data: Vec<PathBuf>,
}

impl OverlayLayers {
    /// The layers of the root filesystem of process `pid` (any process of the container),
    /// reading `<host_root>/proc/<pid>/mountinfo`. The paths returned are the host's, as
    /// overlay shows them: read them under `host_root` too ([`OverlayLayers::under`]).
    pub fn of_pid(pid: u32, host_root: &Path) -> Result<Self, OverlayError> {
        let path = host_root.join(format!("proc/{pid}/mountinfo"));
        let text =
            fs::read_to_string(&path).map_err(|source| OverlayError::Mountinfo { path, source })?;
        Self::from_mountinfo(&text, "/")
    }

    /// The layers of the overlay mounted at `mount_point` in mountinfo `text` (the last such
    /// mount when several are stacked: it is the one visible).
    pub fn from_mountinfo(text: &str, mount_point: &str) -> Result<Self, OverlayError> {
        let mut found = None;
        for (i, line) in text.lines().enumerate() {
            if let Some(mount) = Mount::parse(line, i + 1)?
                && mount.point == mount_point.as_bytes()
            {
                found = Some((i + 1, mount));
            }
        }
        let (line, mount) = found.ok_or_else(|| OverlayError::NoMount {
            mount_point: mount_point.to_owned(),
        })?;
        if mount.fstype != "overlay" {
            return Err(OverlayError::NotOverlay {
                mount_point: mount_point.to_owned(),
                fstype: mount.fstype.to_owned(),
                line,
            });
        }
        Self::from_options(mount.super_options, line)
    }

    /// The same layers read under `host_root` (`/` leaves them as they are).
    pub fn under(&self, host_root: &Path) -> Self {
        let on = |p: &PathBuf| host_root.join(p.strip_prefix("/").unwrap_or(p));
        Self {
            lower: self.lower.iter().map(on).collect(),
            upper: on(&self.upper),
            work: self.work.as_ref().map(on),
            data: self.data.iter().map(on).collect(),
        }
    }

    fn from_options(options: &str, line: usize) -> Result<Self, OverlayError> {
        let (mut lower, mut data, mut upper, mut work) = (Vec::new(), Vec::new(), None, None);
        for option in split(&decode(options), b',') {
            let Some(eq) = option.iter().position(|t| t.is(b'=')) else {
                continue;
            };
            let (key, value) = (text(&option[..eq]), &option[eq + 1..]);
            match key.as_slice() {
                b"lowerdir" => parse_lowerdir(value, &mut lower, &mut data),
                b"lowerdir+" => lower.push(path(value)),
                b"datadir+" => data.push(path(value)),
                b"upperdir" => upper = Some(path(value)),
                b"workdir" => work = Some(path(value)),
                _ => {}
            }
        }
        let malformed = |reason: &str| OverlayError::Malformed {
            line,
            reason: reason.to_owned(),
        };
        if lower.is_empty() {
            return Err(malformed("overlay without lowerdir"));
        }
        let upper = upper.ok_or_else(|| {
            malformed("overlay without upperdir (a read-only root has no changes to read)")
        })?;
        Ok(Self {
            lower,
            upper,
            work,
            data,
        })
    }
}

/// The fields of one mountinfo line this module needs (proc(5)).
struct Mount<'a> {
    point: Vec<u8>,
    fstype: &'a str,
    super_options: &'a str,
}

impl<'a> Mount<'a> {
    /// `None` for an empty line.
    fn parse(line: &'a str, number: usize) -> Result<Option<Self>, OverlayError> {
        if line.trim().is_empty() {
            return Ok(None);
        }
        let malformed = || OverlayError::Malformed {
            line: number,
            reason: format!("not a mountinfo line: {line:?}"),
        };
        let (left, right) = line.split_once(" - ").ok_or_else(malformed)?;
        let point = left.split(' ').nth(4).ok_or_else(malformed)?;
        let mut right = right.split(' ');
        let fstype = right.next().ok_or_else(malformed)?;
        let super_options = right.nth(1).ok_or_else(malformed)?;
        Ok(Some(Self {
            point: text(&decode(point)),
            fstype,
            super_options,
        }))
    }
}

/// One byte of an option value, and whether it is a separator (`,` `:` `=`) where it stands.
#[derive(Debug, Clone, Copy)]
struct Token {
    byte: u8,
    literal: bool,
}

impl Token {
    fn is(self, separator: u8) -> bool {
        !self.literal && self.byte == separator
    }
}

/// Undoes both escapes a path in mountinfo's overlay options goes through: the kernel's octal
/// `\ooo` for space, tab, newline, backslash (and, by kernel version, `,` `=` `:`), and
/// overlay's own backslash before a `:` or `,` that is part of a path (the user's escape,
/// shown back by kernels before 6.5 as `\134:`). An octal-escaped byte is never a separator;
/// a backslash, raw or octal-escaped, makes the byte after it literal.
fn decode(raw: &str) -> Vec<Token> {
    let raw = raw.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let (mut i, mut escape_next) = (0, false);
    while i < raw.len() {
        let (byte, octal) = match octal_at(raw, i) {
            Some(byte) => {
                i += 4;
                (byte, true)
            }
            None => {
                i += 1;
                (raw[i - 1], false)
            }
        };
        if escape_next {
            out.push(Token {
                byte,
                literal: true,
            });
            escape_next = false;
        } else if byte == b'\\' {
            escape_next = true;
        } else {
            out.push(Token {
                byte,
                literal: octal,
            });
        }
    }
    out
}

/// The byte an octal escape `\ooo` at `i` stands for.
fn octal_at(raw: &[u8], i: usize) -> Option<u8> {
    let digits = raw.get(i + 1..i + 4)?;
    if raw[i] != b'\\' || !digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
        return None;
    }
    let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
    u8::try_from(value).ok()
}

fn split(tokens: &[Token], separator: u8) -> impl Iterator<Item = &[Token]> {
    tokens.split(move |t| t.is(separator))
}

fn text(tokens: &[Token]) -> Vec<u8> {
    tokens.iter().map(|t| t.byte).collect()
}

fn path(tokens: &[Token]) -> PathBuf {
    PathBuf::from(OsString::from_vec(text(tokens)))
}

/// `lowerdir=top:...:bottom[::data1::data2]`: after the first empty element (`::`) come the
/// data-only layers (kernel 6.5+).
fn parse_lowerdir(value: &[Token], lower: &mut Vec<PathBuf>, data: &mut Vec<PathBuf>) {
    let mut in_data = false;
    for element in split(value, b':') {
        if element.is_empty() {
            in_data = true;
        } else if in_data {
            data.push(path(element));
        } else {
            lower.push(path(element));
        }
    }
}

/// The changed entries of a container, as `docker diff` lists them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// `A` added, `C` changed, `D` deleted; absolute paths inside the container, sorted.
    pub entries: Vec<FsChange>,
    /// The walk stopped at the limit: more changes exist than are listed.
    pub truncated: bool,
}

/// The container's changes against its image, from the upper layer: every entry there is
/// listed (`C` when the lower layers have it, `A` when not), whiteouts as `D`, and the lower
/// entries an opaque directory hides as `D`. Parent directories of a change are in the upper
/// layer by construction (overlay copies them up), so they appear as `C` as in `docker diff`.
///
/// `host_root` prefixes the layers' paths (`/` when the daemon sees the host's filesystem);
/// `limit` bounds the entries listed.
pub fn changes(
    layers: &OverlayLayers,
    host_root: &Path,
    limit: usize,
) -> Result<Changes, OverlayError> {
    let layers = layers.under(host_root);
    let mut walk = Walk {
        upper: &layers.upper,
        work: layers.work.as_deref(),
        lower: Lower::new(&layers.lower),
        limit,
        out: Changes::default(),
    };
    walk.dir(Path::new(""), false)?;
    walk.out.entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(walk.out)
}

struct Walk<'a> {
    upper: &'a Path,
    work: Option<&'a Path>,
    lower: Lower<'a>,
    limit: usize,
    out: Changes,
}

impl Walk<'_> {
    /// Lists the entries of upper directory `rel` and what they hide. `hides_lower`: this
    /// directory (or one above it) is opaque, so none of the lower layers' entries below show.
    /// Returns false once the limit is reached.
    fn dir(&mut self, rel: &Path, hides_lower: bool) -> Result<bool, OverlayError> {
        let dir = self.upper.join(rel);
        let names = sorted_names(&dir)?;
        if hides_lower {
            let upper: BTreeSet<&OsString> = names.iter().collect();
            for name in self.lower.children(rel)? {
                if !upper.contains(&name) && !self.push('D', &rel.join(&name)) {
                    return Ok(false);
                }
            }
        }
        for name in &names {
            let rel = rel.join(name);
            let full = self.upper.join(&rel);
            if Some(full.as_path()) == self.work {
                continue;
            }
            let meta = lstat(&full)?;
            if is_whiteout(&full, &meta)? {
                if !self.push('D', &rel) {
                    return Ok(false);
                }
                continue;
            }
            let kind = if self.lower.visible(&rel)? { 'C' } else { 'A' };
            if !self.push(kind, &rel) {
                return Ok(false);
            }
            if meta.is_dir() && !self.dir(&rel, hides_lower || is_opaque(&full)?)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Adds an entry; false (and the result marked truncated) when the limit is reached.
    fn push(&mut self, kind: char, rel: &Path) -> bool {
        if self.out.entries.len() >= self.limit {
            self.out.truncated = true;
            return false;
        }
        self.out.entries.push(FsChange {
            kind,
            path: format!("/{}", rel.to_string_lossy()),
        });
        true
    }
}

/// The merged view of the lower layers, as overlay shows it (whiteouts and opaque directories
/// of higher lower layers hide what is below them).
struct Lower<'a> {
    layers: &'a [PathBuf],
    /// Whether directory `rel` of layer `i` hides the layers below it (it is a whiteout, not a
    /// directory, or opaque): asked for every ancestor of every entry, so remembered.
    hides: HashMap<(usize, PathBuf), bool>,
}

impl<'a> Lower<'a> {
    fn new(layers: &'a [PathBuf]) -> Self {
        Self {
            layers,
            hides: HashMap::new(),
        }
    }

    /// Whether `rel` exists in the merged lower layers.
    fn visible(&mut self, rel: &Path) -> Result<bool, OverlayError> {
        Ok(!self.present_in(rel)?.is_empty())
    }

    /// The names in directory `rel` of the merged lower layers.
    fn children(&mut self, rel: &Path) -> Result<Vec<OsString>, OverlayError> {
        let mut names = BTreeSet::new();
        for i in self.present_in(rel)? {
            let dir = self.layers[i].join(rel);
            if dir.is_dir() {
                names.extend(sorted_names(&dir)?);
            }
        }
        let mut out = Vec::new();
        for name in names {
            if self.visible(&rel.join(&name))? {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// The layers (top first) whose `rel` shows in the merged view.
    fn present_in(&mut self, rel: &Path) -> Result<Vec<usize>, OverlayError> {
        let mut present = Vec::new();
        for i in 0..self.layers.len() {
            let full = self.layers[i].join(rel);
            match fs::symlink_metadata(&full) {
                Ok(meta) if is_whiteout(&full, &meta)? => break,
                Ok(meta) => {
                    present.push(i);
                    if !meta.is_dir() || is_opaque(&full)? {
                        break;
                    }
                }
                Err(err) if is_absent(&err) => {
                    if self.hidden_below(i, rel)? {
                        break;
                    }
                }
                Err(source) => return Err(OverlayError::Read { path: full, source }),
            }
        }
        Ok(present)
    }

    /// Whether an ancestor of `rel` in layer `i` hides the layers below.
    fn hidden_below(&mut self, i: usize, rel: &Path) -> Result<bool, OverlayError> {
        for ancestor in rel.ancestors().skip(1) {
            if ancestor.as_os_str().is_empty() {
                break;
            }
            let key = (i, ancestor.to_owned());
            let hides = match self.hides.get(&key) {
                Some(&hides) => hides,
                None => {
                    let full = self.layers[i].join(ancestor);
                    let hides = match fs::symlink_metadata(&full) {
                        Ok(meta) => {
                            !meta.is_dir() || is_whiteout(&full, &meta)? || is_opaque(&full)?
                        }
                        Err(err) if is_absent(&err) => false,
                        Err(source) => return Err(OverlayError::Read { path: full, source }),
                    };
                    self.hides.insert(key, hides);
                    hides
                }
            };
            if hides {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

fn is_absent(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound || err.raw_os_error() == Some(libc::ENOTDIR)
}

/// The prefixes overlay's xattrs take: `trusted.` by default, `user.` on a `userxattr` mount.
const XATTR_PREFIXES: [&str; 2] = ["trusted.overlay.", "user.overlay."];

/// Whether an upper- or lower-layer entry is a whiteout: a 0:0 character device, or a file
/// carrying the `overlay.whiteout` xattr (kernel 6.7+).
pub(crate) fn is_whiteout(path: &Path, meta: &fs::Metadata) -> Result<bool, OverlayError> {
    if meta.file_type().is_char_device() {
        return Ok(meta.rdev() == 0);
    }
    if !meta.is_file() || meta.len() != 0 {
        return Ok(false);
    }
    Ok(overlay_xattr(path, "whiteout")?.is_some())
}

/// Whether a directory is opaque (`overlay.opaque` = `y`): it replaced a lower one, whose
/// entries do not show through. (`x` marks a directory holding xattr whiteouts; not opaque.)
pub(crate) fn is_opaque(path: &Path) -> Result<bool, OverlayError> {
    Ok(overlay_xattr(path, "opaque")?.as_deref() == Some(b"y"))
}

/// Where a metadata-only copy-up keeps its data (`metacopy=on`): `None` for an entry with
/// data of its own; otherwise the path, relative to a layer's root, of the lower entry holding
/// it: the `overlay.redirect` xattr when the entry was renamed, else the entry's own `rel`.
pub(crate) fn metacopy_origin(path: &Path, rel: &Path) -> Result<Option<PathBuf>, OverlayError> {
    if overlay_xattr(path, "metacopy")?.is_none() {
        return Ok(None);
    }
    let Some(redirect) = overlay_xattr(path, "redirect")? else {
        return Ok(Some(rel.to_owned()));
    };
    let redirect = PathBuf::from(OsString::from_vec(redirect));
    Ok(Some(match redirect.strip_prefix("/") {
        Ok(absolute) => absolute.to_owned(),
        Err(_) => rel.with_file_name(redirect),
    }))
}

fn overlay_xattr(path: &Path, name: &str) -> Result<Option<Vec<u8>>, OverlayError> {
    for prefix in XATTR_PREFIXES {
        match xattr::get(path, format!("{prefix}{name}")) {
            Ok(Some(value)) => return Ok(Some(value)),
            Ok(None) => {}
            // A filesystem without xattrs has no overlay markers either.
            Err(err) if err.raw_os_error() == Some(libc::ENOTSUP) => return Ok(None),
            Err(source) => {
                return Err(OverlayError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        }
    }
    Ok(None)
}

fn lstat(path: &Path) -> Result<fs::Metadata, OverlayError> {
    fs::symlink_metadata(path).map_err(|source| OverlayError::Read {
        path: path.to_owned(),
        source,
    })
}

/// A directory's entry names, sorted (so a walk cut at its limit is the same on every run).
fn sorted_names(dir: &Path) -> Result<Vec<OsString>, OverlayError> {
    let read = |source| OverlayError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut names = fs::read_dir(dir)
        .map_err(read)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTAINERD: &str = "1234 1100 0:123 / / rw,relatime master:456 - overlay overlay rw,lowerdir=/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/12/fs:/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/11/fs,upperdir=/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/13/fs,workdir=/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/13/work
1235 1234 0:125 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
1236 1234 0:126 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755,inode64
";
    const DOCKER: &str = "576 545 0:52 / / rw,relatime master:301 - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/4MDDVGQ2XWEBJGW4RUTRQQGRWC:/var/lib/docker/overlay2/l/JZ7AW3RK6PZBYG7CWOEZHKS4TZ,upperdir=/var/lib/docker/overlay2/6f3a1cb5e0d0b1b7e5f4c5d5e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3/diff,workdir=/var/lib/docker/overlay2/6f3a1cb5e0d0b1b7e5f4c5d5e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3/work,nouserxattr
";
    // The SELinux context holds a comma inside its quotes: the split leaves a stray `c456"`.
    const CRIO: &str = "2310 2233 0:260 / / rw,relatime - overlay overlay rw,context=\"system_u:object_r:container_file_t:s0:c123,c456\",lowerdir=/var/lib/containers/storage/overlay/l/Q3QXJ5VZ2JHT3W6A5DFE6F7DTY:/var/lib/containers/storage/overlay/l/XYZ2A7WUBCQHPK5LRJCDMFNCAH,upperdir=/var/lib/containers/storage/overlay/7f0e8e2a/diff,workdir=/var/lib/containers/storage/overlay/7f0e8e2a/work,metacopy=on,volatile
";

    fn paths(list: &[&str]) -> Vec<PathBuf> {
        list.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn containerd_snapshotter_layers_top_first() {
        let layers = OverlayLayers::from_mountinfo(CONTAINERD, "/").unwrap();
        let snap = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots";
        assert_eq!(
            layers.lower,
            paths(&[&format!("{snap}/12/fs"), &format!("{snap}/11/fs")])
        );
        assert_eq!(layers.upper, PathBuf::from(format!("{snap}/13/fs")));
        assert_eq!(layers.work, Some(PathBuf::from(format!("{snap}/13/work"))));
        assert!(layers.data.is_empty());
    }

    #[test]
    fn docker_overlay2_uses_short_links() {
        let layers = OverlayLayers::from_mountinfo(DOCKER, "/").unwrap();
        assert_eq!(layers.lower.len(), 2);
        assert_eq!(
            layers.lower[0],
            PathBuf::from("/var/lib/docker/overlay2/l/4MDDVGQ2XWEBJGW4RUTRQQGRWC")
        );
        assert!(layers.upper.ends_with("diff"));
    }

    #[test]
    fn crio_options_with_a_quoted_selinux_context() {
        let layers = OverlayLayers::from_mountinfo(CRIO, "/").unwrap();
        assert_eq!(
            layers.lower,
            paths(&[
                "/var/lib/containers/storage/overlay/l/Q3QXJ5VZ2JHT3W6A5DFE6F7DTY",
                "/var/lib/containers/storage/overlay/l/XYZ2A7WUBCQHPK5LRJCDMFNCAH"
            ])
        );
        assert_eq!(
            layers.work,
            Some(PathBuf::from(
                "/var/lib/containers/storage/overlay/7f0e8e2a/work"
            ))
        );
    }

    #[test]
    fn per_layer_options_and_data_only_layers() {
        let plus = "90 80 0:70 / /run/c/merged rw - overlay overlay rw,lowerdir+=/l/top,lowerdir+=/l/bottom,datadir+=/d/one,upperdir=/u,workdir=/w,redirect_dir=on,metacopy=on\n";
        let layers = OverlayLayers::from_mountinfo(plus, "/run/c/merged").unwrap();
        assert_eq!(layers.lower, paths(&["/l/top", "/l/bottom"]));
        assert_eq!(layers.data, paths(&["/d/one"]));

        let colons =
            "90 80 0:70 / / rw - overlay overlay rw,lowerdir=/l1:/l2::/d1::/d2,upperdir=/u\n";
        let layers = OverlayLayers::from_mountinfo(colons, "/").unwrap();
        assert_eq!(layers.lower, paths(&["/l1", "/l2"]));
        assert_eq!(layers.data, paths(&["/d1", "/d2"]));
        assert_eq!(layers.work, None);
    }

    #[test]
    fn escapes_of_mountinfo_and_of_overlay_are_undone() {
        // A space in the mount point; in lowerdir a tab, a backslash-escaped colon as kernels
        // before 6.5 show it (`\134:`), an octal colon as later ones do, a raw `\:` and `\,`,
        // and an octal comma in upperdir.
        let line = r"7 6 0:9 / /tmp/my\040root rw - overlay overlay rw,lowerdir=/a\011tab:/b\134:c:/d\072e:/f\:g\,h,upperdir=/u\054v,workdir=/w";
        let layers = OverlayLayers::from_mountinfo(line, "/tmp/my root").unwrap();
        assert_eq!(layers.lower, paths(&["/a\ttab", "/b:c", "/d:e", "/f:g,h"]));
        assert_eq!(layers.upper, PathBuf::from("/u,v"));
    }

    #[test]
    fn the_last_of_stacked_mounts_is_the_visible_one() {
        let text = format!("{CONTAINERD}{DOCKER}");
        let layers = OverlayLayers::from_mountinfo(&text, "/").unwrap();
        assert!(layers.upper.starts_with("/var/lib/docker"));
    }

    #[test]
    fn errors_name_the_mount_and_the_line() {
        let err = OverlayLayers::from_mountinfo(CONTAINERD, "/dev").unwrap_err();
        assert_eq!(
            err.to_string(),
            "mountinfo line 3: /dev is tmpfs, not overlay"
        );
        let err = OverlayLayers::from_mountinfo(CONTAINERD, "/data").unwrap_err();
        assert_eq!(err.to_string(), "no mount at /data in mountinfo");
        let err = OverlayLayers::from_mountinfo("1 2 3\n", "/").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("mountinfo line 1: not a mountinfo line"),
            "{err}"
        );
        let readonly = "1 0 0:1 / / ro - overlay overlay ro,lowerdir=/a:/b\n";
        let err = OverlayLayers::from_mountinfo(readonly, "/").unwrap_err();
        assert!(
            err.to_string().contains("line 1: overlay without upperdir"),
            "{err}"
        );
    }

    #[test]
    fn of_pid_names_the_file_it_cannot_read() {
        let err = OverlayLayers::of_pid(1, Path::new("/nonexistent-root")).unwrap_err();
        assert!(
            err.to_string()
                .contains("/nonexistent-root/proc/1/mountinfo"),
            "{err}"
        );
    }

    #[test]
    fn under_prefixes_every_layer() {
        let layers = OverlayLayers::from_mountinfo(CONTAINERD, "/").unwrap();
        let host = layers.under(Path::new("/proc/1/root"));
        assert!(host.upper.starts_with("/proc/1/root/var/lib/containerd"));
        assert!(host.lower.iter().all(|l| l.starts_with("/proc/1/root/var")));
    }

    /// Layers laid out by hand in the xattr forms (`user.overlay.*`, which needs no mount and
    /// no privilege), with a lower layer that itself hides part of the one below.
    #[test]
    fn changes_in_the_xattr_forms_against_a_merged_lower_view() {
        let root = tempfile::tempdir().unwrap();
        let dir = |p: &str| {
            let p = root.path().join(p);
            fs::create_dir_all(&p).unwrap();
            p
        };
        let file = |p: &str| fs::write(root.path().join(p), "x").unwrap();
        let set = |p: &str, name: &str, v: &[u8]| {
            xattr::set(root.path().join(p), name, v).unwrap();
        };
        // bottom: /etc/{passwd,old}, /opt/app/{a,b}; top: /opt opaque with /opt/new only,
        // and /etc/old whited out.
        for d in [
            "bottom/etc",
            "bottom/opt/app",
            "top/opt",
            "top/etc",
            "upper/etc",
            "upper/var/x",
        ] {
            dir(d);
        }
        for f in [
            "bottom/etc/passwd",
            "bottom/etc/old",
            "bottom/opt/app/a",
            "bottom/opt/app/b",
        ] {
            file(f);
        }
        file("top/opt/new");
        set("top/opt", "user.overlay.opaque", b"y");
        fs::write(root.path().join("top/etc/old"), "").unwrap();
        set("top/etc/old", "user.overlay.whiteout", b"");
        // upper: /etc/passwd changed, /etc/shadow added, /opt/new deleted (xattr whiteout),
        // /etc/old "recreated", /var/x/y added, /opt/app (hidden below) recreated as opaque.
        dir("upper/opt/app");
        set("upper/opt/app", "user.overlay.opaque", b"y");
        for f in [
            "upper/etc/passwd",
            "upper/etc/shadow",
            "upper/etc/old",
            "upper/var/x/y",
        ] {
            file(f);
        }
        fs::write(root.path().join("upper/opt/new"), "").unwrap();
        set("upper/opt/new", "user.overlay.whiteout", b"");
        let layers = OverlayLayers {
            lower: vec![root.path().join("top"), root.path().join("bottom")],
            upper: root.path().join("upper"),
            work: None,
            data: Vec::new(),
        };
        let got = changes(&layers, Path::new("/"), 100).unwrap();
        let listed: Vec<String> = got
            .entries
            .iter()
            .map(|c| format!("{} {}", c.kind, c.path))
            .collect();
        assert_eq!(
            listed,
            [
                "C /etc",
                "A /etc/old",
                "C /etc/passwd",
                "A /etc/shadow",
                "C /opt",
                "A /opt/app",
                "D /opt/new",
                "A /var",
                "A /var/x",
                "A /var/x/y",
            ]
        );
        assert!(!got.truncated);

        let cut = changes(&layers, Path::new("/"), 3).unwrap();
        assert_eq!(cut.entries.len(), 3);
        assert!(cut.truncated);
    }
}

//! The guests' whole root file system, as an initramfs: an uncompressed cpio archive in the
//! "newc" format the kernel unpacks at boot (`Documentation/driver-api/early-userspace/
//! buffer-format.rst`), written here ([`Cpio`]; the machine has no `cpio` binary).
//!
//! It holds static busybox with a link per applet, the machine's `/bin/bash` and the
//! libraries `ldd` lists for it and for the checker (the machine is Debian bookworm: its glibc
//! runs on every guest kernel), `detector-kernel-check` without its debug information, a few
//! files of `/etc` the checks read, and `/init`, which mounts what the sensors need, runs the
//! checker on the console and powers the guest off.

use std::{
    collections::BTreeSet,
    fs,
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};

/// The machine's static busybox (Debian's `busybox-static`).
const BUSYBOX: &str = "/usr/bin/busybox";
/// The machine's bash (the checks use its `/dev/tcp`).
const BASH: &str = "/bin/bash";
/// Where the checker lives in the guest.
pub const GUEST_CHECKER: &str = "/bin/detector-kernel-check";
/// What `/init` prints around the checker, for the harness to time the boot and the check.
pub const GUEST_MARK: &str = "DETECTOR-GUEST";

/// The file-type bits of a cpio mode.
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// A newc cpio archive being written: entries in order, every parent directory before what
/// it holds, then the trailer. Owners are root, times zero: the same inputs give the same bytes.
pub struct Cpio<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
    paths: BTreeSet<String>,
}

impl<W: Write> Cpio<W> {
    /// An empty archive writing to `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            next_ino: 1,
            written: 0,
            paths: BTreeSet::new(),
        }
    }

    /// A directory (and its missing parents).
    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        let path = path.trim_matches('/');
        if path.is_empty() || self.paths.contains(path) {
            return Ok(());
        }
        self.parents(path)?;
        self.entry(path, S_IFDIR | mode, 2, (0, 0), &[])
    }

    /// A regular file holding `data` (parents made as needed).
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let path = path.trim_matches('/');
        self.parents(path)?;
        self.entry(path, S_IFREG | mode, 1, (0, 0), data)
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let path = path.trim_matches('/');
        self.parents(path)?;
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// A character device node.
    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        let path = path.trim_matches('/');
        self.parents(path)?;
        self.entry(path, S_IFCHR | mode, 1, (major, minor), &[])
    }

    /// Whether `path` is in the archive already.
    pub fn contains(&self, path: &str) -> bool {
        self.paths.contains(path.trim_matches('/'))
    }

    /// Writes the trailer; the writer back, and the archive's size.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[])?;
        self.out.flush()?;
        Ok((self.out, self.written))
    }

    fn parents(&mut self, path: &str) -> io::Result<()> {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent, 0o755)?;
        }
        Ok(())
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        (rdev_major, rdev_minor): (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::other(format!("{name} is too large for cpio")))?;
        let ino = self.next_ino;
        self.next_ino += 1;
        // Fields: ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
        // rdevminor, namesize (with its NUL), check.
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            rdev_major,
            rdev_minor,
            name.len() as u32 + 1,
            0,
        ];
        let mut header = String::from("070701");
        for field in fields {
            header.push_str(&format!("{field:08x}"));
        }
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()?;
        self.paths.insert(name.to_owned());
        Ok(())
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Headers and file data each start on a 4-byte boundary.
    fn pad(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0; 3][..pad])
    }
}

/// Writes the guests' initramfs to `out`, with `checker` stripped of its debug information
/// into `work` first; the checker runs in the guest with `--timeout check_timeout`. Returns
/// the archive's size in bytes.
pub fn build(
    out: &Path,
    checker: &Path,
    work: &Path,
    check_timeout: Duration,
) -> anyhow::Result<u64> {
    fs::create_dir_all(work).with_context(|| format!("cannot create {}", work.display()))?;
    let stripped = work.join("detector-kernel-check");
    let status = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(checker)
        .arg(&stripped)
        .status()
        .context("cannot run objcopy (binutils) to strip the checker")?;
    ensure!(
        status.success(),
        "objcopy --strip-debug {} failed: {status}",
        checker.display()
    );
    ensure!(
        Path::new(BUSYBOX).is_file(),
        "no {BUSYBOX}: install busybox-static (`cargo xtask test` does)"
    );

    let tmp = out.with_extension("tmp");
    let file =
        fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut cpio = Cpio::new(BufWriter::new(file));
    let written = fill(&mut cpio, &stripped, check_timeout)
        .and_then(|()| cpio.finish().context("cannot finish the archive"));
    let (_, size) = written.with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, out)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), out.display()))?;
    Ok(size)
}

/// Every entry of the initramfs.
fn fill<W: Write>(
    cpio: &mut Cpio<W>,
    checker: &Path,
    check_timeout: Duration,
) -> anyhow::Result<()> {
    for dir in [
        "bin", "sbin", "usr/bin", "usr/sbin", "lib", "lib64", "etc", "proc", "sys", "dev", "run",
        "root", "var",
    ] {
        cpio.dir(dir, 0o755)?;
    }
    cpio.dir("tmp", 0o1777)?;
    // The kernel opens /dev/console for init before anything is mounted.
    cpio.char_device("dev/console", 0o600, 5, 1)?;
    cpio.char_device("dev/null", 0o666, 1, 3)?;

    add_host_file(cpio, Path::new(BASH), "bin/bash", 0o755)?;
    add_host_file(cpio, checker, GUEST_CHECKER, 0o755)?;
    let mut libraries = BTreeSet::new();
    for binary in [Path::new(BASH), checker] {
        libraries.extend(shared_libraries(binary)?);
    }
    for library in libraries {
        let inside = library.display().to_string();
        add_host_file(cpio, &library, &inside, 0o755)?;
    }

    add_host_file(cpio, Path::new(BUSYBOX), "bin/busybox", 0o755)?;
    let applets = super::command_output(Command::new(BUSYBOX).arg("--list-full"))?;
    for applet in applets.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !cpio.contains(applet) {
            cpio.symlink(applet, "/bin/busybox")?;
        }
    }

    cpio.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")?;
    cpio.file("etc/group", 0o644, b"root:x:0:\nshadow:x:42:\n")?;
    cpio.file("etc/shadow", 0o640, b"root:*:20000:0:99999:7:::\n")?;
    cpio.file("etc/hostname", 0o644, b"detector-guest\n")?;
    cpio.file("init", 0o755, init_script(check_timeout).as_bytes())?;
    Ok(())
}

/// `/init`: mounts, loopback, the checker with its output on the console, power-off.
fn init_script(check_timeout: Duration) -> String {
    let timeout = check_timeout.as_secs().max(1);
    format!(
        r#"#!/bin/sh
# The guest's init (see tests/src/kernels/initramfs.rs). Everything is in this initramfs.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
ip link set lo up
# Only emergencies on the console while the checker writes its report line there.
dmesg -n 1
echo "{GUEST_MARK} booted $(cut -d ' ' -f 1 /proc/uptime)"
{GUEST_CHECKER} --timeout {timeout}
echo "{GUEST_MARK} checked $(cut -d ' ' -f 1 /proc/uptime) status $?"
echo "{GUEST_MARK} kernel messages of note:"
dmesg | grep -E 'WARNING|BUG|Oops|Call Trace|general protection|segfault' | tail -n 20
poweroff -f
"#
    )
}

/// Adds the machine's file `from` (symlinks followed) as `to`.
fn add_host_file<W: Write>(
    cpio: &mut Cpio<W>,
    from: &Path,
    to: &str,
    mode: u32,
) -> anyhow::Result<()> {
    let data = fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
    cpio.file(to, mode, &data)
        .with_context(|| format!("cannot add {} as {to}", from.display()))
}

/// The shared libraries (and the loader) `ldd` lists for `binary`, at the paths it lists.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = super::command_output(Command::new("ldd").arg(binary))
        .with_context(|| format!("cannot list the libraries of {}", binary.display()))?;
    parse_ldd(&out).with_context(|| format!("ldd {}", binary.display()))
}

/// The absolute paths in `ldd` output. Pure.
fn parse_ldd(out: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = match line.split_once("=>") {
            Some((name, _)) if line.contains("not found") => bail!("{} not found", name.trim()),
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        // linux-vdso.so.1 is the kernel's: no file.
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            paths.push(PathBuf::from(path));
        }
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A newc header from its thirteen fields.
    fn header(fields: [u32; 13]) -> String {
        let hex: String = fields.iter().map(|f| format!("{f:08x}")).collect();
        format!("070701{hex}")
    }

    #[test]
    fn newc_entries_are_padded_and_parents_come_first() {
        let mut cpio = Cpio::new(Vec::new());
        cpio.file("/etc/x", 0o644, b"hello").unwrap();
        let (bytes, size) = cpio.finish().unwrap();
        assert_eq!(size, bytes.len() as u64);
        assert_eq!(size % 4, 0);
        // The directory first: ino 1, 040755, two links, no data, name "etc" and its NUL.
        assert_eq!(
            &bytes[..110],
            header([1, 0o40755, 0, 0, 2, 0, 0, 0, 0, 0, 0, 4, 0]).as_bytes()
        );
        assert_eq!(&bytes[110..116], b"etc\0\0\0");
        // Then the file, its header on a 4-byte boundary: ino 2, 0100644, one link, 5 bytes.
        assert_eq!(
            &bytes[116..226],
            header([2, 0o100644, 0, 0, 1, 0, 5, 0, 0, 0, 0, 6, 0]).as_bytes()
        );
        assert_eq!(&bytes[226..232], b"etc/x\0");
        assert_eq!(&bytes[232..240], b"hello\0\0\0");
        // The trailer closes it.
        assert_eq!(
            &bytes[240..350],
            header([3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 11, 0]).as_bytes()
        );
        assert_eq!(&bytes[350..361], b"TRAILER!!!\0");
        assert_eq!(bytes.len(), 364);
    }

    #[test]
    fn ldd_output_gives_the_files_to_copy() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibtinfo.so.6 => /lib/x86_64-linux-gnu/libtinfo.so.6 (0x00007f1b)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f1b)\n";
        assert_eq!(
            parse_ldd(out).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libtinfo.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }
}

//! A realistic Debian image for container tests, built once with `debootstrap` and cached.
//!
//! The image is Debian bookworm (`--variant=minbase`) plus what real workloads and attackers
//! use: a shell and coreutils, Python (`python3`, not only `python3-minimal`, whose standard
//! library lacks `http.server`), Perl, curl, netcat, procps, iproute2, nginx, Redis,
//! PostgreSQL, logrotate and `dig`. It lives under the target directory
//! (`CARGO_TARGET_DIR`, else the workspace's `target/`) as `corpus-image/<key>/`, where the key
//! hashes the suite, the package list and [`FORMAT`]:
//!
//! - `rootfs/`: the tree, for tests that want a chroot or to look inside;
//! - `rootfs.tar`: the same as a tar archive (numeric owners), the image's only layer;
//! - `rootfs.tar.sha256`, `info.json`: the layer's digest and size, and how the image was made;
//! - `oci/<tag>.tar`: OCI image layouts made by [`DebianImage::oci_archive`].
//!
//! A build holds an exclusive lock (`corpus-image/<key>.lock`), so two test binaries building
//! at once wait for each other, and happens in `<key>.tmp-<pid>`, renamed into place only when
//! complete: a directory named by its key is always a whole image. Later calls only check that
//! it exists.
//!
//! `debootstrap` runs in new mount and PID namespaces: the `proc` and `sys` mounts it makes in
//! the target vanish with it, and no service a package's maintainer script might start can
//! outlive it. The mirror is the machine's own, read from its apt sources at run time.
//!
//! Under `CI=true` an image that cannot be built is a failure ([`DebianImage::for_test`]
//! panics); elsewhere the test is skipped with the reason printed.

use std::{
    fs,
    io::{self, Read as _, Write as _},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::docker::{Dockerd, which};

/// The Debian release of the image.
pub const SUITE: &str = "bookworm";

/// Packages installed on top of `--variant=minbase`. `bind9-dnsutils` is bookworm's name for
/// `dig` (`dnsutils` is only a transitional package there). PostgreSQL is left out: it made the
/// build about 40 s longer and the layer about 360 MiB larger (its LLVM for JIT), and the
/// imports 10 to 18 s each, for a server the corpora do not use (nginx and redis are the
/// benign servers).
pub const PACKAGES: &[&str] = &[
    "bash",
    "coreutils",
    "python3",
    "perl-base",
    "curl",
    "netcat-openbsd",
    "procps",
    "iproute2",
    "nginx-light",
    "redis-server",
    "logrotate",
    "bind9-dnsutils",
    "findutils",
    "grep",
    "tar",
    "gzip",
    "util-linux",
];

/// Bumped whenever the steps after `debootstrap` change, so that old caches are not reused.
pub const FORMAT: u32 = 1;

/// The `PATH` of the image's processes, as Debian's official images set it.
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long a build may take before it is abandoned.
const BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// A built Debian image in the cache.
#[derive(Debug, Clone)]
pub struct DebianImage {
    dir: PathBuf,
    rootfs: PathBuf,
    rootfs_tar: PathBuf,
    layer: Descriptor,
}

/// A blob's digest (`sha256:<hex>`) and size.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Descriptor {
    digest: String,
    size: u64,
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

impl DebianImage {
    /// The image for a test, or says why not (`None`: skipped; panics under `CI=true`).
    pub fn for_test(test: &str) -> Option<Self> {
        let why = match Self::ensure() {
            Ok(image) => return Some(image),
            Err(err) => format!("cannot build the Debian image: {err:#}"),
        };
        assert!(!under_ci(), "{test}: {why}, and CI=true");
        eprintln!("skipped {test}: {why}");
        None
    }

    /// Builds the image, or reuses the cached one (instant once built).
    pub fn ensure() -> anyhow::Result<Self> {
        let root = cache_root();
        let key = cache_key();
        let dir = root.join(&key);
        if let Ok(image) = Self::open(&dir) {
            return Ok(image);
        }
        // SAFETY: geteuid has no preconditions.
        ensure!(
            unsafe { libc::geteuid() } == 0,
            "needs root to run debootstrap"
        );
        ensure!(
            which("debootstrap").is_some() && which("unshare").is_some(),
            "needs debootstrap (apt-get install debootstrap; `cargo xtask test` does it)"
        );
        fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
        let _lock = Lock::exclusive(&root.join(format!("{key}.lock")))?;
        // Another binary may have finished the build while this one waited for the lock.
        if let Ok(image) = Self::open(&dir) {
            return Ok(image);
        }
        // Whatever the lock holder left half-built is stale.
        for entry in fs::read_dir(&root)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{key}.tmp-")) {
                fs::remove_dir_all(entry.path())
                    .with_context(|| format!("cannot remove {}", entry.path().display()))?;
            }
        }
        let tmp = root.join(format!("{key}.tmp-{}", std::process::id()));
        let built = build(&tmp);
        if let Err(err) = built {
            let _ = fs::remove_dir_all(&tmp);
            return Err(err);
        }
        fs::rename(&tmp, &dir)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), dir.display()))?;
        Self::open(&dir)
    }

    fn open(dir: &Path) -> anyhow::Result<Self> {
        let text = fs::read_to_string(dir.join("rootfs.tar.sha256"))?;
        let (digest, size) = text
            .trim()
            .split_once(' ')
            .context("malformed rootfs.tar.sha256")?;
        let layer = Descriptor {
            digest: digest.to_owned(),
            size: size.parse()?,
        };
        let rootfs_tar = dir.join("rootfs.tar");
        ensure!(
            fs::metadata(&rootfs_tar)?.len() == layer.size,
            "{} has changed since it was built",
            rootfs_tar.display()
        );
        Ok(Self {
            dir: dir.to_owned(),
            rootfs: dir.join("rootfs"),
            rootfs_tar,
            layer,
        })
    }

    /// The cache directory of this image (`corpus-image/<key>`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The unpacked tree. Shared by every test: read it, never change it.
    pub fn rootfs(&self) -> &Path {
        &self.rootfs
    }

    /// The tree as a tar archive (`tar -C rootfs -c .`, numeric owners).
    pub fn rootfs_tar(&self) -> &Path {
        &self.rootfs_tar
    }

    /// Imports the image into `dockerd` as `tag` (`docker import`), with `bash` as its command
    /// and Debian's `PATH`.
    pub fn import_docker(&self, dockerd: &Dockerd, tag: &str) -> anyhow::Result<()> {
        let path = self.rootfs_tar.to_string_lossy();
        dockerd
            .cli(&[
                "import",
                "--change",
                r#"CMD ["bash"]"#,
                "--change",
                &format!("ENV {PATH_ENV}"),
                &path,
                tag,
            ])
            .map(drop)
    }

    /// An OCI image layout archive of the image, named `tag` (normalized the way Docker and
    /// the kubelet do: `detector-debian:1` becomes `docker.io/library/detector-debian:1`), for
    /// `ctr images import`. Built once per tag, cached under `oci/`.
    ///
    /// The archive holds `oci-layout`, `index.json` and `blobs/sha256/`: the plain (not
    /// compressed) layer, which is `rootfs.tar` itself, the image configuration (`bash`,
    /// Debian's `PATH`, the layer's diff id) and the manifest. The index names the image in
    /// both `org.opencontainers.image.ref.name` and containerd's `io.containerd.image.name`.
    pub fn oci_archive(&self, tag: &str) -> anyhow::Result<PathBuf> {
        let name = normalize_reference(tag);
        let file = name.replace(['/', ':', '@'], "_");
        let oci = self.dir.join("oci");
        let out = oci.join(format!("{file}.tar"));
        if out.exists() {
            return Ok(out);
        }
        fs::create_dir_all(&oci)?;
        let _lock = Lock::exclusive(&oci.join(format!("{file}.lock")))?;
        if out.exists() {
            return Ok(out);
        }
        let tmp = oci.join(format!("{file}.tar.tmp-{}", std::process::id()));
        write_oci_archive(&tmp, &name, &self.rootfs_tar, &self.layer)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, &out)?;
        Ok(out)
    }
}

/// `corpus-image/` under the target directory.
fn cache_root() -> PathBuf {
    crate::target_dir().join("corpus-image")
}

/// The cache key: the suite, the variant, the packages and [`FORMAT`], hashed.
fn cache_key() -> String {
    let recipe = format!(
        "{SUITE}\nminbase\n{}\nformat {FORMAT}\n",
        PACKAGES.join(",")
    );
    let hash = hex(&Sha256::digest(recipe.as_bytes()));
    format!("{SUITE}-{}", &hash[..16])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An exclusive `flock` on a file, released on drop.
struct Lock(fs::File);

impl Lock {
    fn exclusive(path: &Path) -> anyhow::Result<Self> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        loop {
            // SAFETY: flock has no memory-safety preconditions; the descriptor is open.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(Self(file));
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: as above; closing the file would release the lock too.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Builds the image into `tmp` (which must not exist yet).
fn build(tmp: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let mirror = debian_mirror()?;
    let rootfs = tmp.join("rootfs");
    fs::create_dir_all(&rootfs)?;
    let log_path = tmp.join("debootstrap.log");
    let log = fs::File::create(&log_path)?;
    eprintln!(
        "building the Debian image ({SUITE}, {} packages) from {mirror}: about 90 s, once",
        PACKAGES.len()
    );
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--pid", "--fork", "--kill-child", "--"])
        .arg("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(SUITE)
        .arg(&rootfs)
        .arg(&mirror)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: prctl is async-signal-safe; it only asks for SIGKILL when this thread exits, so
    // that a test killed mid-build does not leave debootstrap running.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().context("cannot spawn debootstrap")?;
    let deadline = Instant::now() + BUILD_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            // `--kill-child` takes debootstrap and everything in its PID namespace along.
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "debootstrap did not finish within {} s:\n{}",
                BUILD_TIMEOUT.as_secs(),
                tail(&log_path)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    ensure!(
        status.success(),
        "debootstrap failed ({status}):\n{}",
        tail(&log_path)
    );
    let debootstrapped = started.elapsed();
    tidy(&rootfs)?;

    let tar = tmp.join("rootfs.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["--numeric-owner", "--xattrs", "-cf"])
        .arg(&tar)
        .arg(".")
        .status()
        .context("cannot run tar")?;
    ensure!(status.success(), "tar of the rootfs failed: {status}");
    let layer = sha256_file(&tar)?;
    fs::write(
        tmp.join("rootfs.tar.sha256"),
        format!("{} {}\n", layer.digest, layer.size),
    )?;
    let info = json!({
        "suite": SUITE,
        "variant": "minbase",
        "packages": PACKAGES,
        "format": FORMAT,
        "mirror": mirror,
        "debootstrap_seconds": debootstrapped.as_secs_f64(),
        "build_seconds": started.elapsed().as_secs_f64(),
        "layer": { "digest": layer.digest, "size": layer.size },
    });
    fs::write(tmp.join("info.json"), serde_json::to_vec_pretty(&info)?)?;
    eprintln!(
        "built the Debian image in {:.0} s (debootstrap {:.0} s); layer {} MiB",
        started.elapsed().as_secs_f64(),
        debootstrapped.as_secs_f64(),
        layer.size >> 20
    );
    Ok(())
}

/// What image builds do after installing: drop apt's caches, and point the resolver at
/// loopback instead of the build machine's resolver that debootstrap copied in (the
/// containers have no network; a lookup must not leave them).
fn tidy(rootfs: &Path) -> anyhow::Result<()> {
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let Ok(entries) = fs::read_dir(rootfs.join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type()?.is_file() {
                fs::remove_file(entry.path())?;
            }
        }
    }
    fs::write(rootfs.join("etc/resolv.conf"), "nameserver 127.0.0.1\n")?;
    fs::write(rootfs.join("etc/hostname"), "debian\n")?;
    Ok(())
}

/// The last lines of a log, for an error message.
fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The machine's Debian mirror, from its apt sources (deb822 `.sources` files first, then
/// `sources.list`).
fn debian_mirror() -> anyhow::Result<String> {
    let mut deb822 = Vec::new();
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "sources") {
                deb822.push(fs::read_to_string(&path).unwrap_or_default());
            }
        }
    }
    deb822.sort();
    let list = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    mirror_from_sources(&deb822, &list, SUITE)
        .context("no Debian mirror for bookworm in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list")
}

/// The first `deb` source serving `suite`, else the first `deb` source whose URI does not look
/// like a security or update archive. Pure: `deb822` holds the text of `.sources` files,
/// `list` that of `sources.list`.
fn mirror_from_sources(deb822: &[String], list: &str, suite: &str) -> Option<String> {
    let mut sources: Vec<(String, Vec<String>)> = Vec::new();
    for text in deb822 {
        for paragraph in text.split("\n\n") {
            let mut types = "";
            let mut uris = "";
            let mut suites = "";
            let mut enabled = true;
            for line in paragraph.lines() {
                let line = line.trim_end();
                if line.starts_with('#') || line.starts_with(char::is_whitespace) {
                    continue;
                }
                let Some((field, value)) = line.split_once(':') else {
                    continue;
                };
                let value = value.trim();
                match field.trim().to_ascii_lowercase().as_str() {
                    "types" => types = value,
                    "uris" => uris = value,
                    "suites" => suites = value,
                    "enabled" => enabled = value != "no",
                    _ => {}
                }
            }
            if !enabled || !types.split_whitespace().any(|t| t == "deb") {
                continue;
            }
            let suites: Vec<String> = suites.split_whitespace().map(str::to_owned).collect();
            for uri in uris.split_whitespace() {
                sources.push((uri.to_owned(), suites.clone()));
            }
        }
    }
    for line in list.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            continue;
        }
        let mut uri = words.next();
        if uri.is_some_and(|u| u.starts_with('[')) {
            // Options: `[arch=amd64 signed-by=...]`, possibly over several words.
            let mut word = uri;
            while let Some(w) = word {
                if w.ends_with(']') {
                    break;
                }
                word = words.next();
            }
            uri = words.next();
        }
        if let (Some(uri), Some(dist)) = (uri, words.next()) {
            sources.push((uri.to_owned(), vec![dist.to_owned()]));
        }
    }
    let usable = |uri: &str| uri.starts_with("http://") || uri.starts_with("https://");
    sources
        .iter()
        .find(|(uri, suites)| usable(uri) && suites.iter().any(|s| s == suite))
        .or_else(|| {
            sources
                .iter()
                .find(|(uri, _)| usable(uri) && !uri.contains("security"))
        })
        .map(|(uri, _)| uri.trim_end_matches('/').to_owned())
}

/// A reference as Docker and the kubelet spell it in full: `name:tag` becomes
/// `docker.io/library/name:tag`, `org/name` becomes `docker.io/org/name:latest`; a reference
/// with a registry (`host.example:5000/name`, `localhost/name`) keeps it.
pub fn normalize_reference(reference: &str) -> String {
    let (first, _) = reference.split_once('/').unwrap_or(("", reference));
    let has_registry = first.contains(['.', ':']) || first == "localhost";
    let mut full = if has_registry {
        reference.to_owned()
    } else if reference.contains('/') {
        format!("docker.io/{reference}")
    } else {
        format!("docker.io/library/{reference}")
    };
    let last = full.rsplit('/').next().unwrap_or_default();
    if !last.contains([':', '@']) {
        full.push_str(":latest");
    }
    full
}

/// The SHA-256 and size of a file.
fn sha256_file(path: &Path) -> anyhow::Result<Descriptor> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    let mut size = 0;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok(Descriptor {
        digest: format!("sha256:{}", hex(&hasher.finalize())),
        size,
    })
}

fn descriptor(bytes: &[u8]) -> Descriptor {
    Descriptor {
        digest: format!("sha256:{}", hex(&Sha256::digest(bytes))),
        size: bytes.len() as u64,
    }
}

/// The image configuration, manifest and index of a one-layer image. Pure, and returns the
/// bytes of each, with the index last.
fn oci_documents(name: &str, layer: &Descriptor) -> anyhow::Result<[Vec<u8>; 3]> {
    let tag = name
        .rsplit_once(':')
        .filter(|(_, tag)| !tag.contains('/'))
        .map_or("latest", |(_, tag)| tag);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": [PATH_ENV],
            "Cmd": ["bash"],
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": [layer.digest] },
        "history": [{ "created_by": format!("debootstrap --variant=minbase {SUITE}") }],
    }))?;
    let config_desc = descriptor(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_desc.digest,
            "size": config_desc.size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer.digest,
            "size": layer.size,
        }],
    }))?;
    let manifest_desc = descriptor(&manifest);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_desc.digest,
            "size": manifest_desc.size,
            "platform": { "architecture": "amd64", "os": "linux" },
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }))?;
    Ok([config, manifest, index])
}

/// Writes the OCI layout of a one-layer image as a tar archive to `out`.
fn write_oci_archive(
    out: &Path,
    name: &str,
    layer_path: &Path,
    layer: &Descriptor,
) -> anyhow::Result<()> {
    let [config, manifest, index] = oci_documents(name, layer)?;
    let blob = |digest: &str| format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    let mut tar = TarWriter(io::BufWriter::new(fs::File::create(out)?));
    tar.dir("blobs/")?;
    tar.dir("blobs/sha256/")?;
    tar.file(
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#.len() as u64,
        &mut &br#"{"imageLayoutVersion":"1.0.0"}"#[..],
    )?;
    tar.file("index.json", index.len() as u64, &mut index.as_slice())?;
    for doc in [&config, &manifest] {
        tar.file(
            &blob(&descriptor(doc).digest),
            doc.len() as u64,
            &mut doc.as_slice(),
        )?;
    }
    let mut layer_file = fs::File::open(layer_path)?;
    ensure!(
        layer_file.metadata()?.len() == layer.size,
        "{} changed size",
        layer_path.display()
    );
    tar.file(&blob(&layer.digest), layer.size, &mut layer_file)?;
    let mut file = tar.finish()?;
    file.flush()?;
    file.get_ref().sync_all()?;
    Ok(())
}

/// A minimal POSIX ustar writer: directories and regular files with short names, enough for
/// an OCI layout.
struct TarWriter<W: io::Write>(W);

impl<W: io::Write> TarWriter<W> {
    fn header(&mut self, name: &str, size: u64, mode: u32, kind: u8) -> io::Result<()> {
        if name.len() > 100 {
            return Err(io::Error::other(format!("tar name too long: {name}")));
        }
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let octal = |field: &mut [u8], value: u64| {
            let text = format!("{value:0width$o}", width = field.len() - 1);
            field[..text.len()].copy_from_slice(text.as_bytes());
        };
        octal(&mut h[100..108], u64::from(mode));
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], 0);
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        // The checksum is computed with its own field as spaces.
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let text = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(text.as_bytes());
        self.0.write_all(&h)
    }

    fn dir(&mut self, name: &str) -> io::Result<()> {
        self.header(name, 0, 0o755, b'5')
    }

    fn file(&mut self, name: &str, size: u64, content: &mut impl io::Read) -> io::Result<()> {
        self.header(name, size, 0o644, b'0')?;
        let copied = io::copy(&mut content.take(size), &mut self.0)?;
        if copied != size {
            return Err(io::Error::other(format!(
                "{name}: {copied} of {size} bytes"
            )));
        }
        let pad = (512 - size % 512) % 512;
        self.0.write_all(&vec![0; pad as usize])
    }

    fn finish(mut self) -> io::Result<W> {
        self.0.write_all(&[0; 1024])?;
        Ok(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_from_deb822_and_one_line_sources() {
        let deb822 = vec![
            "Types: deb\n# a comment\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n\nTypes: deb deb-src\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n".to_owned(),
        ];
        assert_eq!(
            mirror_from_sources(&deb822, "", "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        let list = "# deb http://old.example/debian bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://list.example/debian bookworm main\n";
        assert_eq!(
            mirror_from_sources(&[], list, "bookworm").as_deref(),
            Some("http://list.example/debian")
        );
        let disabled = vec![
            "Enabled: no\nTypes: deb\nURIs: http://off.example/d\nSuites: bookworm\n".to_owned(),
        ];
        assert_eq!(mirror_from_sources(&disabled, "", "bookworm"), None);
        // No source names the suite: any non-security archive will do.
        let other = "deb http://sec.example/debian-security trixie-security main\ndeb http://any.example/debian trixie main\n";
        assert_eq!(
            mirror_from_sources(&[], other, "bookworm").as_deref(),
            Some("http://any.example/debian")
        );
    }

    #[test]
    fn references_in_full() {
        assert_eq!(
            normalize_reference("detector-debian:1"),
            "docker.io/library/detector-debian:1"
        );
        assert_eq!(normalize_reference("org/app"), "docker.io/org/app:latest");
        assert_eq!(
            normalize_reference("localhost:5000/app:2"),
            "localhost:5000/app:2"
        );
        assert_eq!(
            normalize_reference("docker.io/library/x:1"),
            "docker.io/library/x:1"
        );
    }

    #[test]
    fn oci_documents_reference_each_other_by_digest() {
        let layer = Descriptor {
            digest: format!("sha256:{}", "ab".repeat(32)),
            size: 1234,
        };
        let [config, manifest, index] =
            oci_documents("docker.io/library/detector-debian:1", &layer).unwrap();
        let manifest_json: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        let config_desc = descriptor(&config);
        assert_eq!(manifest_json["config"]["digest"], config_desc.digest);
        assert_eq!(manifest_json["config"]["size"], config_desc.size);
        assert_eq!(manifest_json["layers"][0]["digest"], layer.digest);
        assert_eq!(manifest_json["layers"][0]["size"], 1234);
        let config_json: serde_json::Value = serde_json::from_slice(&config).unwrap();
        assert_eq!(config_json["rootfs"]["diff_ids"][0], layer.digest);
        let index_json: serde_json::Value = serde_json::from_slice(&index).unwrap();
        let entry = &index_json["manifests"][0];
        assert_eq!(entry["digest"], descriptor(&manifest).digest);
        assert_eq!(entry["size"], manifest.len());
        assert_eq!(
            entry["annotations"]["org.opencontainers.image.ref.name"],
            "1"
        );
    }

    #[test]
    fn tar_writer_output_is_read_by_tar() {
        let dir = std::env::temp_dir().join(format!("detector-tarwriter-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let archive = dir.join("a.tar");
        let mut tar = TarWriter(fs::File::create(&archive).unwrap());
        tar.dir("blobs/").unwrap();
        tar.file("blobs/x", 5, &mut &b"hello"[..]).unwrap();
        tar.file("empty", 0, &mut &b""[..]).unwrap();
        tar.finish().unwrap();
        let out = Command::new("tar")
            .arg("-tvf")
            .arg(&archive)
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{listing}");
        assert!(listing.contains("blobs/x"), "{listing}");
        let extract = dir.join("x");
        fs::create_dir_all(&extract).unwrap();
        let status = Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&extract)
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(fs::read(extract.join("blobs/x")).unwrap(), b"hello");
        fs::remove_dir_all(&dir).unwrap();
    }
}

//! Debian kernels fetched with apt through a private configuration: its own sources list, lists,
//! cache and state under `<kernels>/apt/`, the machine's keyrings in `/usr/share/keyrings`.
//! Nothing is installed and the machine's own sources and lists are left as they are: the
//! metapackage's dependency names the versioned image package, `apt-get download` fetches it,
//! `dpkg -x` unpacks it, and only `boot/vmlinuz-*` and `boot/config-*` are kept.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::Context as _;

use super::command_output;

/// The suites of [`super::KERNELS`]: one sources line each, main only.
const SUITES: [&str; 3] = ["bullseye", "bookworm", "trixie"];

/// The keyring the archive's Release files are checked against (Debian's
/// `debian-archive-keyring`: the keys of every supported release).
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Debian's archive when the machine's apt names none.
const DEFAULT_ARCHIVE: &str = "http://deb.debian.org/debian";

/// apt run with the private configuration in `dir`.
pub struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    /// Writes the private configuration under `dir` (its sources list, and the lists, cache,
    /// state and preferences directories); the archive is the one the machine's apt uses.
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        for sub in [
            "lists/partial",
            "cache/archives/partial",
            "state",
            "preferences.d",
            "debs",
        ] {
            let path = dir.join(sub);
            fs::create_dir_all(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
        }
        let archive = machine_archive();
        let sources: String = SUITES
            .iter()
            .map(|suite| format!("deb [signed-by={KEYRING}] {archive} {suite} main\n"))
            .collect();
        let list = dir.join("sources.list");
        fs::write(&list, sources).with_context(|| format!("cannot write {}", list.display()))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// `program` (`apt-get`, `apt-cache`) with the private configuration. The machine's
    /// `apt.conf.d` still applies (a proxy set there is needed here too); the sources, the
    /// preferences, the lists, the cache and the dpkg status are the private ones. Only
    /// the Packages indices are fetched (no translations, no DEP-11 metadata).
    fn command(&self, program: &str) -> Command {
        let dir = &self.dir;
        let mut cmd = Command::new(program);
        let options = [
            format!(
                "Dir::Etc::sourcelist={}",
                dir.join("sources.list").display()
            ),
            "Dir::Etc::sourceparts=-".to_owned(),
            format!(
                "Dir::Etc::preferencesparts={}",
                dir.join("preferences.d").display()
            ),
            "Dir::Etc::preferences=/dev/null".to_owned(),
            format!("Dir::State={}", dir.join("state").display()),
            format!("Dir::State::lists={}", dir.join("lists").display()),
            "Dir::State::status=/dev/null".to_owned(),
            format!("Dir::Cache={}", dir.join("cache").display()),
            format!("Dir::Etc::trusted={KEYRING}"),
            "Dir::Etc::trustedparts=-".to_owned(),
            "Acquire::Languages=none".to_owned(),
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".to_owned(),
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".to_owned(),
            "APT::Architectures=amd64".to_owned(),
            // The files are ours, under the target directory, which apt's `_apt` user may not
            // be able to reach: download as the user running this.
            "APT::Sandbox::User=root".to_owned(),
        ];
        for option in options {
            cmd.arg("-o").arg(option);
        }
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        cmd
    }

    /// `apt-get update` with the private sources.
    pub fn update(&self) -> anyhow::Result<()> {
        command_output(self.command("apt-get").args(["-q", "update"]))
            .context("apt-get update with the private sources")
            .map(drop)
    }

    /// The versioned image package `metapackage` of `suite` depends on
    /// (`linux-image-amd64` of bookworm: `linux-image-6.1.0-50-amd64`).
    pub fn image_package(&self, metapackage: &str, suite: &str) -> anyhow::Result<String> {
        let out = command_output(
            self.command("apt-cache")
                .arg("depends")
                .arg(format!("{metapackage}/{suite}")),
        )?;
        image_dependency(&out).with_context(|| {
            format!("{metapackage} of {suite} depends on no linux-image package:\n{out}")
        })
    }

    /// Downloads `packages` (`name/suite` each) into the private `debs/` directory; their
    /// paths, in the same order.
    pub fn download(&self, packages: &[(String, String)]) -> anyhow::Result<Vec<PathBuf>> {
        let debs = self.dir.join("debs");
        let mut cmd = self.command("apt-get");
        cmd.current_dir(&debs).args(["-q", "download"]);
        for (package, suite) in packages {
            cmd.arg(format!("{package}/{suite}"));
        }
        command_output(&mut cmd).context("apt-get download of the kernel images")?;
        packages
            .iter()
            .map(|(package, _)| {
                let prefix = format!("{package}_");
                fs::read_dir(&debs)?
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .find(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
                    })
                    .with_context(|| {
                        format!(
                            "apt-get download left no {prefix}*.deb in {}",
                            debs.display()
                        )
                    })
            })
            .collect()
    }
}

/// Unpacks the kernel package `deb` (`dpkg -x`) and keeps `boot/vmlinuz-*` and
/// `boot/config-*` in `into`; returns the kernel image's path. The modules are dropped: the
/// guests boot from an initramfs that needs none.
pub fn extract_kernel(deb: &Path, into: &Path) -> anyhow::Result<PathBuf> {
    let staging = into.with_extension("unpack");
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging).with_context(|| format!("cannot create {}", staging.display()))?;
    let unpacked = command_output(Command::new("dpkg").arg("-x").arg(deb).arg(&staging));
    let kept = unpacked.and_then(|_| {
        fs::create_dir_all(into).with_context(|| format!("cannot create {}", into.display()))?;
        let boot = staging.join("boot");
        let mut image = None;
        for entry in
            fs::read_dir(&boot).with_context(|| format!("{} has no boot/", deb.display()))?
        {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.starts_with("vmlinuz-") || name.starts_with("config-") {
                let to = into.join(name);
                fs::rename(&path, &to).with_context(|| {
                    format!("cannot move {} to {}", path.display(), to.display())
                })?;
                if name.starts_with("vmlinuz-") {
                    image = Some(to);
                }
            }
        }
        image.with_context(|| format!("{} has no boot/vmlinuz-*", deb.display()))
    });
    let _ = fs::remove_dir_all(&staging);
    kept
}

/// The kernel image already in `dir` (`vmlinuz-*`), if any.
pub fn cached_kernel(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
}

/// The first `Depends: linux-image-*` of `apt-cache depends` output. Pure.
fn image_dependency(depends: &str) -> Option<String> {
    depends.lines().find_map(|line| {
        let line = line.trim().trim_start_matches('|');
        let package = line.strip_prefix("Depends: ")?.trim();
        let package = package.trim_start_matches('<').trim_end_matches('>');
        package
            .starts_with("linux-image-")
            .then(|| package.to_owned())
    })
}

/// The URI of the Debian archive the machine's apt uses (not its security or updates
/// suites), as apt itself reads the machine's sources; [`DEFAULT_ARCHIVE`] when it names none.
fn machine_archive() -> String {
    let listed = Command::new("apt-get")
        .args([
            "indextargets",
            "--format",
            "$(REPO_URI) $(RELEASE)",
            "Created-By: Packages",
        ])
        .stderr(Stdio::null())
        .output();
    let text = listed
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    archive_from_indextargets(&text).unwrap_or_else(|| DEFAULT_ARCHIVE.to_owned())
}

/// The first repository of a plain Debian suite (`bookworm`, not `bookworm-security`) in
/// `apt-get indextargets` output, without its trailing slash. Pure.
fn archive_from_indextargets(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (uri, release) = line.trim().split_once(' ')?;
        let plain = !release.contains('-') && !uri.contains("security");
        plain.then(|| uri.trim_end_matches('/').to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_versioned_image_is_read_from_the_metapackages_dependencies() {
        let out = "linux-image-amd64\n  Depends: linux-image-6.1.0-50-amd64\n  Depends: firmware\n";
        assert_eq!(
            image_dependency(out).as_deref(),
            Some("linux-image-6.1.0-50-amd64")
        );
        let alternatives = "linux-image-amd64\n |Depends: linux-image-6.12.117+deb13-amd64\n  Depends: <linux-image-6.12.117+deb13-amd64-unsigned>\n";
        assert_eq!(
            image_dependency(alternatives).as_deref(),
            Some("linux-image-6.12.117+deb13-amd64")
        );
        assert_eq!(image_dependency("linux-image-amd64\n"), None);
    }

    #[test]
    fn the_archive_is_the_plain_suites_repository() {
        let text = "http://deb.debian.org/debian-security/ bookworm-security\n\
                    http://deb.debian.org/debian/ bookworm-updates\n\
                    http://deb.debian.org/debian/ bookworm\n";
        assert_eq!(
            archive_from_indextargets(text).as_deref(),
            Some("http://deb.debian.org/debian")
        );
        assert_eq!(archive_from_indextargets(""), None);
    }
}

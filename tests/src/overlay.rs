//! A real overlay mount of the test's own, laid out like a container's root: two lower
//! layers (the bottom one a busybox rootfs, so that a runtime can run the image made from it),
//! an upper and a work directory, and the merged directory the test changes files through (so
//! that the kernel makes the whiteouts and opaque directories). Unmounted and removed on drop,
//! failure or not.

use std::{
    fs,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, ensure};

use crate::{docker::which, host::remove_with_mounts};

/// A mounted overlay under a temporary directory.
pub struct OverlayMount {
    dir: PathBuf,
}

impl OverlayMount {
    /// Lays out the layers and mounts them (root is needed) under a fresh directory named
    /// after `test`.
    pub fn mount(test: &str) -> anyhow::Result<Self> {
        Self::mount_with(test, "")
    }

    /// [`OverlayMount::mount`] with more mount options (`metacopy=on`), comma separated.
    pub fn mount_with(test: &str, extra_options: &str) -> anyhow::Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("detector-overlay-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let overlay = Self { dir };
        for sub in ["bottom", "top", "upper", "work", "merged"] {
            fs::create_dir_all(overlay.dir.join(sub))?;
        }
        overlay.fill_bottom()?;
        write(&overlay.top().join("etc/motd"), b"welcome\n")?;
        write(&overlay.top().join("srv/data.txt"), b"data\n")?;
        let mut options = format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            overlay.top().display(),
            overlay.bottom().display(),
            overlay.upper().display(),
            overlay.dir.join("work").display()
        );
        if !extra_options.is_empty() {
            options = format!("{options},{extra_options}");
        }
        let status = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &options])
            .arg(overlay.merged())
            .status()
            .context("cannot run mount")?;
        ensure!(status.success(), "mount -t overlay -o {options}: {status}");
        Ok(overlay)
    }

    /// A busybox rootfs (`sh`, `cat`, `test`, `ls` as links to it), with files the test
    /// changes: `/etc/passwd`, `/usr/bin/tool`, `/opt/app/{bin,lib/x}`, two hard links
    /// `/usr/lib/{a,b}`, and an empty `/mnt` to mount something on.
    fn fill_bottom(&self) -> anyhow::Result<()> {
        let bottom = self.bottom();
        for sub in ["bin", "tmp", "proc", "sys", "dev", "mnt", "usr/lib"] {
            fs::create_dir_all(bottom.join(sub))?;
        }
        fs::set_permissions(bottom.join("tmp"), fs::Permissions::from_mode(0o1777))?;
        let busybox = which("busybox").context("no busybox")?;
        fs::copy(&busybox, bottom.join("bin/busybox"))?;
        for applet in ["sh", "cat", "test", "ls", "echo"] {
            symlink("busybox", bottom.join("bin").join(applet))?;
        }
        write(
            &bottom.join("etc/passwd"),
            b"root:x:0:0:root:/root:/bin/sh\n",
        )?;
        write(
            &bottom.join("usr/bin/tool"),
            b"a tool the attacker deletes\n",
        )?;
        write(&bottom.join("opt/app/bin"), b"app\n")?;
        write(&bottom.join("opt/app/lib/x"), b"lib\n")?;
        write(&bottom.join("usr/lib/a"), b"linked\n")?;
        fs::hard_link(bottom.join("usr/lib/a"), bottom.join("usr/lib/b"))?;
        Ok(())
    }

    /// The bottom lower layer.
    pub fn bottom(&self) -> PathBuf {
        self.dir.join("bottom")
    }

    /// The top lower layer.
    pub fn top(&self) -> PathBuf {
        self.dir.join("top")
    }

    /// The upper (writable) layer.
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }

    /// The work directory.
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }

    /// The merged directory: the container's root.
    pub fn merged(&self) -> PathBuf {
        self.dir.join("merged")
    }

    /// A scratch directory beside the layers (removed with them).
    pub fn scratch(&self) -> anyhow::Result<PathBuf> {
        let scratch = self.dir.join("scratch");
        fs::create_dir_all(&scratch)?;
        Ok(scratch)
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        remove_with_mounts(&self.dir);
    }
}

/// Writes `content` to `path`, making its parents.
pub fn write(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(path, content).with_context(|| format!("cannot write {}", path.display()))
}

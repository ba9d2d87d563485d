//! One guest under qemu's software emulation: a distribution kernel and the initramfs, no
//! disk and no network device, the serial console written to a file, a wall-clock limit.
//!
//! This machine kind's `/dev/kvm` runs only PVM guests, and `thread=multi` once left a 6.12
//! guest with an "int3" oops while a tracepoint was being live-patched: one emulation thread.

use std::{
    fs, io,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;

/// The emulator; Debian's `qemu-system-x86` installs it.
pub const QEMU: &str = "qemu-system-x86_64";

/// How a guest ended.
#[derive(Debug)]
pub struct GuestRun {
    /// Everything the guest and qemu wrote (serial console, qemu's errors).
    pub console: String,
    /// Wall-clock time from qemu's start to its exit (or to its kill).
    pub elapsed: Duration,
    /// qemu's exit status; `None` when it was killed at the time limit.
    pub status: Option<ExitStatus>,
}

/// Boots `kernel` with `initrd`, the console going to `console_log`; kills qemu (by its pid)
/// once `timeout` has passed.
pub fn boot(
    kernel: &Path,
    initrd: &Path,
    console_log: &Path,
    timeout: Duration,
) -> anyhow::Result<GuestRun> {
    let log = fs::File::create(console_log)
        .with_context(|| format!("cannot create {}", console_log.display()))?;
    let mut cmd = Command::new(QEMU);
    cmd.args(["-accel", "tcg,thread=single", "-cpu", "max"])
        .args(["-m", "2G", "-smp", "1"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 rdinit=/init"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: prctl is async-signal-safe; it asks for SIGKILL when the spawning thread ends, so
    // that an interrupted harness leaves no guest running.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {QEMU} (apt-get install qemu-system-x86)"))?;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for qemu")? {
            break Some(status);
        }
        if started.elapsed() >= timeout {
            // Our own child, not yet reaped: its pid is still its own.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let elapsed = started.elapsed();
    let console = fs::read(console_log)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .with_context(|| format!("cannot read {}", console_log.display()))?;
    Ok(GuestRun {
        console,
        elapsed,
        status,
    })
}

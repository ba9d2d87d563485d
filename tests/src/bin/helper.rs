//! Workloads for benchmarks, run as separate processes so that they can be placed in a cgroup
//! and timed on their own. Each prints its elapsed nanoseconds on standard output.
//!
//! ```text
//! detector-test-helper open-loop PATH N    # N x (openat(O_RDONLY) + close)
//! detector-test-helper open-server PATH     # for each N read from stdin, N read-only
//!                                           # open+close timed in chunks (see below)
//! detector-test-helper write-loop PATH N   # N x (openat(O_WRONLY|O_CREAT) + close)
//! detector-test-helper exec-loop N         # N x (spawn /bin/true and wait)
//! detector-test-helper chroot-writes ROOT OUTSIDE INSIDE
//!     # chroot to ROOT, then write-open OUTSIDE (through a directory fd opened before, so
//!     # outside the new root) and INSIDE (a path in the new root); needs root
//! detector-test-helper uring-open PATH read|write
//!     # opens PATH through an io_uring ring (IORING_OP_OPENAT, no openat system call),
//!     # read-only or write-only with O_CREAT; prints the descriptor the ring returned
//! ```

use std::{ffi::CString, process::ExitCode, time::Instant};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["open-loop", path, n] => open_loop(path, n, libc::O_RDONLY),
        ["open-server", path] => return open_server(path),
        ["write-loop", path, n] => open_loop(path, n, libc::O_WRONLY | libc::O_CREAT),
        ["exec-loop", n] => exec_loop(n),
        ["chroot-writes", root, outside, inside] => chroot_opens(root, outside, inside, WRITE),
        ["chroot-reads", root, outside, inside] => chroot_opens(root, outside, inside, READ),
        ["uring-open", path, mode] => uring_open(path, mode),
        _ => Err("usage: detector-test-helper open-loop|write-loop PATH N | \
             open-server PATH | exec-loop N | chroot-writes|chroot-reads ROOT OUTSIDE INSIDE | \
             uring-open PATH read|write"
            .into()),
    };
    match result {
        Ok(elapsed_ns) => {
            println!("{elapsed_ns}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("detector-test-helper: {err}");
            ExitCode::FAILURE
        }
    }
}

fn count(n: &str) -> Result<u64, String> {
    n.parse().map_err(|_| format!("not a count: {n:?}"))
}

fn open_loop(path: &str, n: &str, flags: libc::c_int) -> Result<u128, String> {
    let n = count(n)?;
    let path = CString::new(path).map_err(|_| "path contains NUL".to_owned())?;
    let start = Instant::now();
    open_close(&path, n, flags)?;
    Ok(start.elapsed().as_nanos())
}

/// Iterations per timed chunk of [`open_chunks`]: about 3 ms here, short enough that most chunks
/// see no interrupt, no preemption and no hypervisor steal.
const CHUNK: u64 = 1000;

/// N read-only open+close iterations timed chunk by chunk; returns N times the median chunk's
/// time per iteration. On a shared VM a whole loop's time varies by 10% from run to run with
/// what else the host runs; the median chunk leaves those bursts out and keeps what every
/// iteration pays, which is what a hook adds.
fn open_chunks(path: &str, n: &str) -> Result<u128, String> {
    let n = count(n)?;
    let path = CString::new(path).map_err(|_| "path contains NUL".to_owned())?;
    let mut per_iteration = Vec::with_capacity((n / CHUNK + 1) as usize);
    let mut left = n;
    while left > 0 {
        let chunk = left.min(CHUNK);
        let start = Instant::now();
        open_close(&path, chunk, libc::O_RDONLY)?;
        per_iteration.push(start.elapsed().as_nanos() as f64 / chunk as f64);
        left -= chunk;
    }
    per_iteration.sort_by(f64::total_cmp);
    let median = per_iteration[per_iteration.len() / 2];
    Ok((median * n as f64) as u128)
}

/// Runs [`open_chunks`] with `N` for each line `N` of standard input, printing each one's
/// nanoseconds on a line of its own, until standard input ends: the benchmark switches what is
/// attached between two requests, so that each stretch of the loop is compared with its
/// neighbours rather than with a run seconds away.
fn open_server(path: &str) -> ExitCode {
    use std::io::{BufRead as _, Write as _};
    let mut stdout = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let result = line
            .map_err(|err| format!("read a request: {err}"))
            .and_then(|n| open_chunks(path, n.trim()));
        match result {
            Ok(elapsed_ns) => {
                if writeln!(stdout, "{elapsed_ns}")
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    return ExitCode::FAILURE;
                }
            }
            Err(err) => {
                eprintln!("detector-test-helper: {err}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

fn open_close(path: &CString, n: u64, flags: libc::c_int) -> Result<(), String> {
    for _ in 0..n {
        // SAFETY: `path` is a valid NUL-terminated string; the fd is closed at once.
        let fd = unsafe {
            libc::openat(
                libc::AT_FDCWD,
                path.as_ptr(),
                flags | libc::O_CLOEXEC,
                0o644,
            )
        };
        if fd < 0 {
            return Err(format!("openat: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just opened by this loop.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Open flags of [`chroot_opens`]: a write-open that creates, and a read-only open.
const WRITE: libc::c_int = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;
const READ: libc::c_int = libc::O_RDONLY;

/// Opens `outside` through a directory descriptor taken before chrooting into `root` (a file
/// outside the process's root), then `inside` (a path in the new root), with `flags`.
fn chroot_opens(
    root: &str,
    outside: &str,
    inside: &str,
    flags: libc::c_int,
) -> Result<u128, String> {
    let start = Instant::now();
    let outside = std::path::Path::new(outside);
    let (Some(dir), Some(name)) = (outside.parent(), outside.file_name()) else {
        return Err(format!("{} has no parent directory", outside.display()));
    };
    let c = |s: &std::ffi::OsStr| {
        CString::new(s.as_encoded_bytes()).map_err(|_| "path contains NUL".to_owned())
    };
    let (dir, name, root, inside) = (
        c(dir.as_os_str())?,
        c(name)?,
        c(root.as_ref())?,
        c(inside.as_ref())?,
    );
    let os_error = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: plain syscalls on NUL-terminated strings; every fd is closed here.
    unsafe {
        let dirfd = libc::open(
            dir.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if dirfd < 0 {
            return Err(os_error("open the outside directory"));
        }
        if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
            return Err(os_error("chroot"));
        }
        for (at, path) in [(dirfd, &name), (libc::AT_FDCWD, &inside)] {
            let fd = libc::openat(at, path.as_ptr(), flags | libc::O_CLOEXEC, 0o644);
            if fd < 0 {
                return Err(os_error("open"));
            }
            libc::close(fd);
        }
        libc::close(dirfd);
    }
    Ok(start.elapsed().as_nanos())
}

fn exec_loop(n: &str) -> Result<u128, String> {
    let n = count(n)?;
    let start = Instant::now();
    for _ in 0..n {
        let status = std::process::Command::new("/bin/true")
            .status()
            .map_err(|err| format!("spawn /bin/true: {err}"))?;
        if !status.success() {
            return Err(format!("/bin/true: {status}"));
        }
    }
    Ok(start.elapsed().as_nanos())
}

/// Opens `path` through an io_uring ring and returns the descriptor (see [`tests::uring`]).
fn uring_open(path: &str, mode: &str) -> Result<u128, String> {
    let write = match mode {
        "read" => false,
        "write" => true,
        other => return Err(format!("uring-open: mode {other}: read or write")),
    };
    tests::uring::open(path, write)
        .map(|fd| fd as u128)
        .map_err(|err| format!("uring-open {path}: {err}"))
}

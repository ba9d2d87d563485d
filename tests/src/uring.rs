//! Opening a file through an io_uring ring (`IORING_OP_OPENAT`): no `openat` system call, for
//! the tests and the kernel checker of the io_uring program.

use std::ffi::CString;

/// Opens `path` through a ring of this process, read-only or write-only with `O_CREAT`
/// (mode 0600), and returns the descriptor the completion carried; the file stays open until
/// the process exits.
pub fn open(path: &str, write: bool) -> Result<i32, String> {
    let flags = if write {
        libc::O_WRONLY | libc::O_CREAT
    } else {
        libc::O_RDONLY
    };
    let path = CString::new(path).map_err(|err| err.to_string())?;
    let mut ring = io_uring::IoUring::new(4).map_err(|err| format!("io_uring_setup: {err}"))?;
    let open = io_uring::opcode::OpenAt::new(io_uring::types::Fd(libc::AT_FDCWD), path.as_ptr())
        .flags(flags)
        .mode(0o600)
        .build();
    // SAFETY: `path` outlives the operation: its completion is waited for below.
    unsafe { ring.submission().push(&open) }.map_err(|_| "submission queue full".to_owned())?;
    ring.submit_and_wait(1)
        .map_err(|err| format!("io_uring_enter: {err}"))?;
    let cqe = ring
        .completion()
        .next()
        .ok_or_else(|| "no completion".to_owned())?;
    let fd = cqe.result();
    if fd < 0 {
        return Err(std::io::Error::from_raw_os_error(-fd).to_string());
    }
    Ok(fd)
}

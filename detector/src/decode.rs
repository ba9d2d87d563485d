//! Decoding ring-buffer records into [`Event`]s: pure, no I/O, time injected through [`Clock`].
//!
//! A record is checked before it is read: long enough for its header, a known kind, long enough
//! for that kind's type. Lengths inside the record are clamped to their buffers. Strings that
//! are not UTF-8 are decoded lossily. Syscall records are decoded in [`syscall`].

mod syscall;

use std::{
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::Pod;
use detector_common::{
    ConnectEvent, EventHeader, EventKind, ExecEvent, ExitEvent, FileEvent, FileOp, PATH_MAX_BYTES,
    RenameEvent, SyscallEvent, exec_flags, file_flags, header_flags, path_class,
};

use crate::{
    clock::Clock,
    event::{Body, Connect, Event, Exec, Exit, FileActivity, FileOperation, ProcessFields},
    paths::lexical,
};

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than the type its kind names.
    #[error("{kind} record of {got} bytes, {need} needed")]
    Truncated {
        /// The kind, or `header`.
        kind: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes received.
        got: usize,
    },
    /// The header names no known kind.
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    /// A file record names no known operation.
    #[error("file record with unknown operation {0}")]
    UnknownFileOp(u32),
    /// A file operation in the wrong record: a rename, link or symlink needs a rename record
    /// (it has a second path), the others a file record.
    #[error("{kind} record with operation {op}, which a {needs} record carries")]
    MisplacedFileOp {
        /// The record's kind, `file` or `rename`.
        kind: &'static str,
        /// The operation.
        op: &'static str,
        /// The kind of record the operation comes in.
        needs: &'static str,
    },
    /// A syscall record names no known operation.
    #[error("syscall record with unknown operation {0}")]
    UnknownSyscallOp(u32),
}

impl DecodeError {
    /// The kind of the undecodable record, for loss accounting.
    pub fn record_kind(&self) -> String {
        match self {
            Self::Truncated { kind, .. } => (*kind).to_owned(),
            Self::UnknownKind(kind) => format!("unknown({kind})"),
            Self::UnknownFileOp(_) => "file".to_owned(),
            Self::MisplacedFileOp { kind, .. } => (*kind).to_owned(),
            Self::UnknownSyscallOp(_) => "syscall".to_owned(),
        }
    }
}

/// Decodes one ring-buffer record.
pub fn decode(record: &[u8], clock: &Clock) -> Result<Event, DecodeError> {
    let header: EventHeader = read(record, "header")?;
    let kind = EventKind::try_from(header.kind).map_err(DecodeError::UnknownKind)?;
    let body = match kind {
        EventKind::Exec => exec(&read::<ExecEvent>(record, "exec")?),
        EventKind::Exit => exit(&read::<ExitEvent>(record, "exit")?),
        EventKind::File => file(&read_file(record)?, None)?,
        EventKind::Rename => {
            let rename: RenameEvent = read(record, "rename")?;
            let target = text(&rename.target, rename.target_len);
            file(&rename.file, Some(target))?
        }
        EventKind::Connect => connect(&read::<ConnectEvent>(record, "connect")?),
        EventKind::Syscall => syscall::decode(&read::<SyscallEvent>(record, "syscall")?)?,
    };
    Ok(Event {
        time: clock.wall_time(header.ktime_ns),
        ktime_ns: header.ktime_ns,
        process: process(&header),
        cgroup_id: Some(header.cgroup_id),
        container: None,
        pod: None,
        ancestry: Vec::new(),
        lineage: None,
        body,
    })
}

fn read<T: Pod>(record: &[u8], kind: &'static str) -> Result<T, DecodeError> {
    if record.len() < size_of::<T>() {
        return Err(DecodeError::Truncated {
            kind,
            need: size_of::<T>(),
            got: record.len(),
        });
    }
    // SAFETY: the length was checked, `read_unaligned` has no alignment requirement, and `T`
    // is `Pod`: every bit pattern is a valid value.
    Ok(unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<T>()) })
}

/// A file record, sent cut after its path (`FileEvent::record_bytes`): the fixed part and the
/// path's bytes must be there; what is missing after them reads as zeros.
fn read_file(record: &[u8]) -> Result<FileEvent, DecodeError> {
    let truncated = |need: usize| DecodeError::Truncated {
        kind: "file",
        need,
        got: record.len(),
    };
    if record.len() < FileEvent::FIXED_BYTES {
        return Err(truncated(FileEvent::FIXED_BYTES));
    }
    let mut bytes = [0u8; size_of::<FileEvent>()];
    let len = record.len().min(bytes.len());
    bytes[..len].copy_from_slice(&record[..len]);
    let event: FileEvent = read(&bytes, "file")?;
    let need = FileEvent::FIXED_BYTES + (event.path_len as usize).min(PATH_MAX_BYTES);
    if record.len() < need {
        return Err(truncated(need));
    }
    Ok(event)
}

fn process(header: &EventHeader) -> ProcessFields {
    ProcessFields {
        pid: Some(header.tgid),
        tid: Some(header.pid),
        ppid: (header.flags & header_flags::PPID_UNKNOWN == 0).then_some(header.ppid),
        uid: Some(header.uid),
        gid: Some(header.gid),
        ns_pid: (header.ns_tgid != 0).then_some(header.ns_tgid),
        comm: Some(nul_terminated(&header.comm)),
    }
}

/// Bytes up to `len` (clamped to the buffer) as text.
fn text(bytes: &[u8], len: u32) -> String {
    let len = (len as usize).min(bytes.len());
    String::from_utf8_lossy(&bytes[..len]).into_owned()
}

/// Bytes up to the first NUL as text.
fn nul_terminated(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn exec(event: &ExecEvent) -> Body {
    let args_len = (event.args_len as usize).min(event.args.len());
    let args = &event.args[..args_len];
    // Each argument ends with a NUL; a truncated vector ends mid-argument without one.
    let mut argv: Vec<String> = args
        .split(|&b| b == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    if args.last() == Some(&0) {
        argv.pop();
    }
    Body::Exec(Exec {
        filename: text(&event.filename, event.filename_len),
        argv,
        argv_truncated: event.flags & exec_flags::ARGS_TRUNCATED != 0,
        filename_truncated: event.flags & exec_flags::FILENAME_TRUNCATED != 0,
        tty: event.flags & exec_flags::TTY != 0,
        parent_cgroup_id: (event.parent_cgroup_id != 0).then_some(event.parent_cgroup_id),
        fileless: event.flags & exec_flags::FILELESS != 0,
        stdin_socket: event.flags & exec_flags::STDIN_SOCKET != 0,
        stdout_socket: event.flags & exec_flags::STDOUT_SOCKET != 0,
        deleted: event.flags & exec_flags::DELETED != 0,
    })
}

fn exit(event: &ExitEvent) -> Body {
    let code = event.exit_code;
    let signal = code & 0x7f;
    Body::Exit(Exit {
        exit_code: code,
        exit_status: (signal == 0).then_some((code >> 8) & 0xff),
        signal: (signal != 0).then_some(signal),
    })
}

/// A file record, or the file part of a rename record with its `target`.
fn file(event: &FileEvent, mut target: Option<String>) -> Result<Body, DecodeError> {
    let op = match FileOp::try_from(event.op).map_err(DecodeError::UnknownFileOp)? {
        FileOp::Open => FileOperation::Open,
        FileOp::Unlink => FileOperation::Unlink,
        FileOp::Chmod => FileOperation::Chmod,
        FileOp::Truncate => FileOperation::Truncate,
        FileOp::Rename => FileOperation::Rename,
        FileOp::Link => FileOperation::Link,
        FileOp::Symlink => FileOperation::Symlink,
    };
    let two_paths = matches!(
        op,
        FileOperation::Rename | FileOperation::Link | FileOperation::Symlink
    );
    if two_paths != target.is_some() {
        let (kind, needs) = if two_paths {
            ("file", "rename")
        } else {
            ("rename", "file")
        };
        return Err(DecodeError::MisplacedFileOp {
            kind,
            op: op.as_str(),
            needs,
        });
    }
    let relative = event.flags & file_flags::RELATIVE != 0;
    let mut path = text(&event.path, event.path_len);
    let (mut original_path, mut original_target) = (None, None);
    if event.flags & file_flags::DOT_COMPONENTS != 0 {
        normalize(&mut path, &mut original_path);
        if let Some(target) = &mut target {
            normalize(target, &mut original_target);
        }
    }
    let h = &event.header;
    let self_path = crate::paths::own_proc_entry(&path, [h.tgid, h.pid, h.ns_tgid]);
    Ok(Body::File(FileActivity {
        op,
        path,
        flags: event.open_flags,
        write: event.flags & file_flags::WRITE_INTENT != 0,
        sensitive: event.class & path_class::SENSITIVE_WRITE != 0,
        read_sensitive: event.class & path_class::READ_SENSITIVE != 0,
        relative,
        dirfd: relative.then_some(event.dirfd),
        path_truncated: event.flags & file_flags::PATH_TRUNCATED != 0,
        target,
        suppressed: event.suppressed,
        result: Some(event.result),
        resolved: event.flags & file_flags::RESOLVED != 0,
        outside_root: event.flags & file_flags::OTHER_ROOT != 0,
        joined: event.flags & file_flags::JOINED != 0,
        self_path,
        original_path,
        original_target,
        log: event.class & path_class::LOG != 0,
        unresolved: event.flags & file_flags::UNRESOLVED != 0,
        io_uring: event.flags & file_flags::IO_URING != 0,
    }))
}

/// Resolves `.` and `..` in `path` by its text, keeping what it was in `original` when that
/// changed it (see [`crate::paths`]).
fn normalize(path: &mut String, original: &mut Option<String>) {
    if let Some(normal) = lexical(path)
        && normal != *path
    {
        *original = Some(std::mem::replace(path, normal));
    }
}

fn connect(event: &ConnectEvent) -> Body {
    const AF_INET6: u32 = 10;
    let (family, daddr) = if event.family == AF_INET6 {
        ("ipv6".to_owned(), IpAddr::V6(Ipv6Addr::from(event.daddr)))
    } else {
        let [a, b, c, d, ..] = event.daddr;
        ("ipv4".to_owned(), IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
    };
    let protocol = match event.protocol {
        6 => "tcp".to_owned(),
        17 => "udp".to_owned(),
        other => other.to_string(),
    };
    Body::Connect(Connect {
        family,
        protocol,
        daddr,
        dport: event.dport as u16,
        blocked: event.blocked != 0,
    })
}

#[cfg(test)]
mod tests {
    use detector_common::{ARGS_MAX_BYTES, COMM_LEN, FILENAME_MAX_BYTES, PATH_MAX_BYTES};

    use super::*;

    pub(super) fn clock() -> Clock {
        Clock::with_offset(1_700_000_000_000_000_000)
    }

    pub(super) fn header(kind: EventKind) -> EventHeader {
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"curl");
        EventHeader {
            kind: kind as u32,
            flags: 0,
            ktime_ns: 5_000_000_000,
            cgroup_id: 4242,
            pid: 101,
            tgid: 100,
            ppid: 1,
            uid: 1000,
            gid: 1000,
            ns_tgid: 7,
            comm,
        }
    }

    pub(super) fn bytes<T>(value: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain-old-data value for the test.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn exec_event(args: &[u8], flags: u32) -> ExecEvent {
        let mut event = ExecEvent {
            header: header(EventKind::Exec),
            flags,
            filename_len: 7,
            args_len: args.len() as u32,
            _pad: 0,
            parent_cgroup_id: 0,
            filename: [0; FILENAME_MAX_BYTES],
            args: [0; ARGS_MAX_BYTES],
        };
        event.filename[..7].copy_from_slice(b"/bin/sh");
        event.args[..args.len()].copy_from_slice(args);
        event
    }

    #[test]
    fn exec_with_argv() {
        let event = decode(&bytes(&exec_event(b"sh\0-c\0echo hi\0", 0)), &clock()).unwrap();
        assert_eq!(event.process.pid, Some(100));
        assert_eq!(event.process.tid, Some(101));
        assert_eq!(event.process.comm.as_deref(), Some("curl"));
        assert_eq!(event.cgroup_id, Some(4242));
        assert_eq!(event.ktime_ns, 5_000_000_000);
        assert_eq!(event.time.unix_timestamp_nanos(), 1_700_000_005_000_000_000);
        let Body::Exec(exec) = event.body else {
            panic!("not exec")
        };
        assert_eq!(exec.filename, "/bin/sh");
        assert_eq!(exec.argv, ["sh", "-c", "echo hi"]);
        assert!(!exec.argv_truncated);
    }

    #[test]
    fn truncated_argv_keeps_the_partial_argument_and_says_so() {
        let record = bytes(&exec_event(
            b"tar\0-czf\0/tmp/ou",
            exec_flags::ARGS_TRUNCATED,
        ));
        let Body::Exec(exec) = decode(&record, &clock()).unwrap().body else {
            panic!("not exec")
        };
        assert_eq!(exec.argv, ["tar", "-czf", "/tmp/ou"]);
        assert!(exec.argv_truncated);
    }

    #[test]
    fn lengths_beyond_the_buffers_are_clamped() {
        let mut event = exec_event(b"a\0", 0);
        event.args_len = u32::MAX;
        event.filename_len = u32::MAX;
        let Body::Exec(exec) = decode(&bytes(&event), &clock()).unwrap().body else {
            panic!("not exec")
        };
        assert_eq!(exec.filename.len(), FILENAME_MAX_BYTES);
        assert_eq!(exec.argv[0], "a");
    }

    #[test]
    fn short_records_are_errors_not_panics() {
        let record = bytes(&exec_event(b"sh\0", 0));
        for len in [0, 1, 63, 64, 100, record.len() - 1] {
            let err = decode(&record[..len], &clock()).unwrap_err();
            assert!(
                matches!(err, DecodeError::Truncated { got, .. } if got == len),
                "{len}"
            );
        }
    }

    #[test]
    fn file_records_are_sent_cut_after_their_path() {
        let mut event = FileEvent {
            header: header(EventKind::File),
            op: FileOp::Open as u32,
            flags: file_flags::WRITE_INTENT | file_flags::RESOLVED,
            class: 0,
            open_flags: 0o1101,
            dirfd: -100,
            path_len: 10,
            suppressed: 0,
            result: 3,
            path: [0; PATH_MAX_BYTES],
        };
        event.path[..11].copy_from_slice(b"/dev/shm/x\0");
        let full = bytes(&event);
        let sent = FileEvent::record_bytes(event.path_len);
        assert_eq!(sent, 112);
        let Body::File(file) = decode(&full[..sent], &clock()).unwrap().body else {
            panic!("not file")
        };
        assert_eq!(file.path, "/dev/shm/x");
        assert_eq!(file.result, Some(3));
        // Cut inside the path, or inside the fixed part: truncated, naming what was needed.
        for (len, need) in [(100, 106), (95, FileEvent::FIXED_BYTES)] {
            assert_eq!(
                decode(&full[..len], &clock()),
                Err(DecodeError::Truncated {
                    kind: "file",
                    need,
                    got: len
                })
            );
        }
    }

    #[test]
    fn unknown_kind_and_operation_are_errors() {
        let mut h = header(EventKind::Exit);
        h.kind = 99;
        let mut record = bytes(&h);
        record.extend_from_slice(&[0; 64]);
        assert_eq!(decode(&record, &clock()), Err(DecodeError::UnknownKind(99)));

        let mut file = FileEvent {
            header: header(EventKind::File),
            op: 77,
            flags: 0,
            class: 0,
            open_flags: 0,
            dirfd: -100,
            path_len: 0,
            suppressed: 0,
            result: 0,
            path: [0; PATH_MAX_BYTES],
        };
        assert_eq!(
            decode(&bytes(&file), &clock()),
            Err(DecodeError::UnknownFileOp(77))
        );
        file.op = FileOp::Open as u32;
        assert!(decode(&bytes(&file), &clock()).is_ok());
    }

    #[test]
    fn file_write_with_classes_and_lossy_path() {
        let mut event = FileEvent {
            header: header(EventKind::File),
            op: FileOp::Open as u32,
            flags: file_flags::WRITE_INTENT | file_flags::RELATIVE,
            class: path_class::SENSITIVE_WRITE,
            open_flags: 0o1101,
            dirfd: 3,
            path_len: 6,
            suppressed: 12,
            result: -13,
            path: [0; PATH_MAX_BYTES],
        };
        event.path[..6].copy_from_slice(b"ab\xffcd\0");
        let Body::File(file) = decode(&bytes(&event), &clock()).unwrap().body else {
            panic!("not file")
        };
        assert_eq!(file.op, FileOperation::Open);
        assert!(file.write && file.sensitive && !file.read_sensitive && file.relative);
        assert_eq!(file.dirfd, Some(3));
        assert_eq!(file.path, "ab\u{fffd}cd\0");
        assert_eq!(file.suppressed, 12);
        assert_eq!(file.result, Some(-13));
        assert!(!file.resolved && !file.outside_root);
    }

    #[test]
    fn resolved_path_of_a_file_in_another_namespace() {
        let mut event = FileEvent {
            header: header(EventKind::File),
            op: FileOp::Open as u32,
            flags: file_flags::RESOLVED | file_flags::OTHER_ROOT,
            class: path_class::READ_SENSITIVE,
            open_flags: 0,
            dirfd: -100,
            path_len: 11,
            suppressed: 0,
            result: 3,
            path: [0; PATH_MAX_BYTES],
        };
        event.path[..11].copy_from_slice(b"/etc/shadow");
        let Body::File(file) = decode(&bytes(&event), &clock()).unwrap().body else {
            panic!("not file")
        };
        assert!(file.resolved && file.outside_root && file.read_sensitive && !file.write);
        assert_eq!((file.path.as_str(), file.result), ("/etc/shadow", Some(3)));
    }

    /// A rename record from `path` to `target`.
    fn rename_event(flags: u32, class: u32, path: &[u8], target: &[u8]) -> RenameEvent {
        let mut event = RenameEvent {
            file: FileEvent {
                header: header(EventKind::Rename),
                op: FileOp::Rename as u32,
                flags,
                class,
                open_flags: 0,
                dirfd: -100,
                path_len: path.len() as u32,
                suppressed: 0,
                result: 0,
                path: [0; PATH_MAX_BYTES],
            },
            target_len: target.len() as u32,
            target_dirfd: -100,
            target: [0; PATH_MAX_BYTES],
        };
        event.file.path[..path.len()].copy_from_slice(path);
        event.target[..target.len()].copy_from_slice(target);
        event
    }

    #[test]
    fn rename_carries_its_target() {
        let flags = file_flags::RELATIVE | file_flags::JOINED;
        let event = rename_event(flags, path_class::SENSITIVE_WRITE, b"/tmp", b"/usr/bin");
        let Body::File(file) = decode(&bytes(&event), &clock()).unwrap().body else {
            panic!("not file")
        };
        assert_eq!(file.op, FileOperation::Rename);
        assert_eq!(file.target.as_deref(), Some("/usr/bin"));
        // Relative as passed, joined to its directory in the kernel: not the kernel's
        // resolution of a file.
        assert!(file.relative && file.joined && !file.resolved, "{file:?}");
        // A rename record cut to the size of a file record is an error, not a rename without
        // a target.
        let record = bytes(&event);
        assert!(decode(&record[..size_of::<FileEvent>()], &clock()).is_err());
    }

    #[test]
    fn dot_components_are_resolved_and_what_the_kernel_saw_is_kept() {
        let (path, target) = (b"/tmp/./x/../y", b"/tmp/../etc/passwd");
        let mut event = rename_event(file_flags::DOT_COMPONENTS, 0, path, target);
        let Body::File(file) = decode(&bytes(&event), &clock()).unwrap().body else {
            panic!("not file")
        };
        assert_eq!(file.path, "/tmp/y");
        assert_eq!(file.original_path.as_deref(), Some("/tmp/./x/../y"));
        assert_eq!(file.target.as_deref(), Some("/etc/passwd"));
        assert_eq!(file.original_target.as_deref(), Some("/tmp/../etc/passwd"));
        // Without the flag, paths are as the kernel sent them.
        event.file.flags = 0;
        let Body::File(file) = decode(&bytes(&event), &clock()).unwrap().body else {
            panic!("not file")
        };
        assert_eq!(file.path, "/tmp/./x/../y");
        assert_eq!((file.original_path, file.original_target), (None, None));
    }

    #[test]
    fn truncate_is_a_file_record_with_its_classes_and_flags() {
        let mut event = rename_event(
            file_flags::UNRESOLVED | file_flags::IO_URING,
            path_class::LOG,
            b"/var/log/auth.log",
            b"",
        )
        .file;
        event.header.kind = EventKind::File as u32;
        event.op = FileOp::Truncate as u32;
        let Body::File(file) = decode(&bytes(&event), &clock()).unwrap().body else {
            panic!("not file")
        };
        assert_eq!(file.op, FileOperation::Truncate);
        assert_eq!(
            (file.path.as_str(), file.target.as_deref()),
            ("/var/log/auth.log", None)
        );
        assert!(file.log && file.unresolved && file.io_uring, "{file:?}");
        assert!(!file.sensitive && !file.read_sensitive && !file.resolved);
        // Without the bits, none of the three.
        event.flags = 0;
        event.class = path_class::SENSITIVE_WRITE;
        let Body::File(file) = decode(&bytes(&event), &clock()).unwrap().body else {
            panic!("not file")
        };
        assert!(!file.log && !file.unresolved && !file.io_uring && file.sensitive);
    }

    #[test]
    fn link_and_symlink_come_in_rename_records() {
        for (op, operation) in [
            (FileOp::Link, FileOperation::Link),
            (FileOp::Symlink, FileOperation::Symlink),
        ] {
            let mut event = rename_event(0, path_class::SENSITIVE_WRITE, b"/etc/shadow", b"/tmp/s");
            event.file.op = op as u32;
            let Body::File(file) = decode(&bytes(&event), &clock()).unwrap().body else {
                panic!("not file")
            };
            assert_eq!(file.op, operation);
            assert_eq!(file.path, "/etc/shadow");
            assert_eq!(file.target.as_deref(), Some("/tmp/s"));
            // In a file record, without the second path, it is malformed.
            let mut alone = event.file;
            alone.header.kind = EventKind::File as u32;
            let err = decode(&bytes(&alone), &clock()).unwrap_err();
            assert_eq!(
                err,
                DecodeError::MisplacedFileOp {
                    kind: "file",
                    op: operation.as_str(),
                    needs: "rename"
                }
            );
            assert_eq!(err.record_kind(), "file");
        }
        // A one-path operation in a rename record is malformed too.
        let mut event = rename_event(0, 0, b"/tmp/a", b"/tmp/b");
        event.file.op = FileOp::Truncate as u32;
        let err = decode(&bytes(&event), &clock()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "rename record with operation truncate, which a file record carries"
        );
        assert_eq!(err.record_kind(), "rename");
    }

    #[test]
    fn exec_flags_fileless_and_sockets_on_standard_io() {
        let flags = exec_flags::FILELESS | exec_flags::STDIN_SOCKET | exec_flags::STDOUT_SOCKET;
        let Body::Exec(exec) = decode(&bytes(&exec_event(b"x\0", flags)), &clock())
            .unwrap()
            .body
        else {
            panic!("not exec")
        };
        assert!(exec.fileless && exec.stdin_socket && exec.stdout_socket && !exec.tty);
        for (flag, which) in [
            (exec_flags::FILELESS, 0),
            (exec_flags::STDIN_SOCKET, 1),
            (exec_flags::STDOUT_SOCKET, 2),
        ] {
            let Body::Exec(exec) = decode(&bytes(&exec_event(b"x\0", flag)), &clock())
                .unwrap()
                .body
            else {
                panic!("not exec")
            };
            let got = [exec.fileless, exec.stdin_socket, exec.stdout_socket];
            assert_eq!(got.iter().filter(|b| **b).count(), 1, "{got:?}");
            assert!(got[which], "{got:?}");
        }
    }

    #[test]
    fn connect_v4_and_v6() {
        let mut event = ConnectEvent {
            header: header(EventKind::Connect),
            family: 2,
            protocol: 6,
            dport: 8080,
            blocked: 1,
            daddr: [0; 16],
        };
        event.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let Body::Connect(c) = decode(&bytes(&event), &clock()).unwrap().body else {
            panic!("not connect")
        };
        assert_eq!(c.daddr, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(
            (c.family.as_str(), c.protocol.as_str(), c.dport),
            ("ipv4", "tcp", 8080)
        );

        event.family = 10;
        event.protocol = 17;
        event.daddr = Ipv6Addr::LOCALHOST.octets();
        let Body::Connect(c) = decode(&bytes(&event), &clock()).unwrap().body else {
            panic!("not connect")
        };
        assert_eq!(c.daddr, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!((c.family.as_str(), c.protocol.as_str()), ("ipv6", "udp"));
    }

    #[test]
    fn exit_status_and_signal() {
        let mut event = ExitEvent {
            header: header(EventKind::Exit),
            exit_code: 3 << 8,
            _pad: 0,
        };
        let Body::Exit(e) = decode(&bytes(&event), &clock()).unwrap().body else {
            panic!("not exit")
        };
        assert_eq!((e.exit_status, e.signal), (Some(3), None));
        event.exit_code = 9;
        let Body::Exit(e) = decode(&bytes(&event), &clock()).unwrap().body else {
            panic!("not exit")
        };
        assert_eq!((e.exit_status, e.signal), (None, Some(9)));
    }

    #[test]
    fn unknown_ppid_is_null() {
        let mut event = ExitEvent {
            header: header(EventKind::Exit),
            exit_code: 0,
            _pad: 0,
        };
        event.header.flags = header_flags::PPID_UNKNOWN;
        assert_eq!(decode(&bytes(&event), &clock()).unwrap().process.ppid, None);
    }
}

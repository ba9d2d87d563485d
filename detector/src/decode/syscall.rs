//! Syscall records ([`SyscallEvent`]) to [`Syscall`]: the call's name from its number, the
//! arguments of its operation typed, and the same arguments as the words rules match (`tags`).
//!
//! The constants are the kernel's UAPI values (`include/uapi/linux/{ptrace,socket,mount,sched,
//! memfd,bpf}.h`, `include/uapi/linux/stat.h`); the system call numbers are those of
//! `arch/x86/entry/syscalls/syscall_64.tbl` and `include/uapi/asm-generic/unistd.h` (aarch64).

use detector_common::{
    SyscallEvent, SyscallOp,
    linux::{
        AF_INET, AF_INET6, AF_PACKET, S_IFBLK, S_IFCHR, S_IFMT, SOCK_PACKET, SOCK_RAW,
        SOCK_TYPE_MASK,
    },
};

use super::{DecodeError, text};
use crate::event::{Body, Syscall, SyscallOperation};

/// The system calls the sensors report on x86_64, by number.
const X86_64: &[(u32, &str)] = &[
    (33, "dup2"),
    (41, "socket"),
    (101, "ptrace"),
    (105, "setuid"),
    (113, "setreuid"),
    (117, "setresuid"),
    (133, "mknod"),
    (155, "pivot_root"),
    (165, "mount"),
    (166, "umount2"),
    (175, "init_module"),
    (259, "mknodat"),
    (272, "unshare"),
    (292, "dup3"),
    (308, "setns"),
    (313, "finit_module"),
    (319, "memfd_create"),
    (321, "bpf"),
    (425, "io_uring_setup"),
    (428, "open_tree"),
    (429, "move_mount"),
    (430, "fsopen"),
];

/// The system calls the sensors report on aarch64, by number (aarch64 has no `dup2` nor
/// `mknod`: C libraries call `dup3` and `mknodat`).
const AARCH64: &[(u32, &str)] = &[
    (24, "dup3"),
    (33, "mknodat"),
    (39, "umount2"),
    (40, "mount"),
    (41, "pivot_root"),
    (97, "unshare"),
    (105, "init_module"),
    (117, "ptrace"),
    (145, "setreuid"),
    (146, "setuid"),
    (147, "setresuid"),
    (198, "socket"),
    (268, "setns"),
    (273, "finit_module"),
    (279, "memfd_create"),
    (280, "bpf"),
    (425, "io_uring_setup"),
    (428, "open_tree"),
    (429, "move_mount"),
    (430, "fsopen"),
];

/// The table of the architecture the daemon (and so the kernel programs) runs on; none
/// elsewhere, where calls go by their numbers.
const NATIVE: &[(u32, &str)] = if cfg!(target_arch = "x86_64") {
    X86_64
} else if cfg!(target_arch = "aarch64") {
    AARCH64
} else {
    &[]
};

/// `PTRACE_*` requests the sensors report, and their tags.
const PTRACE_REQUESTS: [(u64, &str); 3] = [(0, "traceme"), (16, "attach"), (0x4206, "seize")];

/// `MS_*` mount flags, and their tags.
const MOUNT_FLAGS: [(u64, &str); 12] = [
    (1, "rdonly"),
    (2, "nosuid"),
    (4, "nodev"),
    (8, "noexec"),
    (32, "remount"),
    (4096, "bind"),
    (8192, "move"),
    (16384, "rec"),
    (1 << 17, "unbindable"),
    (1 << 18, "private"),
    (1 << 19, "slave"),
    (1 << 20, "shared"),
];

/// `MNT_*` umount flags, and their tags.
const UMOUNT_FLAGS: [(u64, &str); 3] = [(1, "force"), (2, "detach"), (4, "expire")];

/// `CLONE_NEW*` namespace flags, and their tags.
const NAMESPACE_FLAGS: [(u64, &str); 8] = [
    (0x0002_0000, "newns"),
    (0x0200_0000, "newcgroup"),
    (0x0400_0000, "newuts"),
    (0x0800_0000, "newipc"),
    (0x1000_0000, "newuser"),
    (0x2000_0000, "newpid"),
    (0x4000_0000, "newnet"),
    (0x0000_0080, "newtime"),
];

/// `MFD_*` memfd_create flags, and their tags.
const MEMFD_FLAGS: [(u64, &str); 5] = [
    (1, "cloexec"),
    (2, "allow_sealing"),
    (4, "hugetlb"),
    (8, "noexec_seal"),
    (0x10, "exec"),
];

/// `BPF_PROG_TYPE_*` names, indexed by number (0, unspecified, has none).
const BPF_PROG_TYPES: [&str; 33] = [
    "",
    "socket_filter",
    "kprobe",
    "sched_cls",
    "sched_act",
    "tracepoint",
    "xdp",
    "perf_event",
    "cgroup_skb",
    "cgroup_sock",
    "lwt_in",
    "lwt_out",
    "lwt_xmit",
    "sock_ops",
    "sk_skb",
    "cgroup_device",
    "sk_msg",
    "raw_tracepoint",
    "cgroup_sock_addr",
    "lwt_seg6local",
    "lirc_mode2",
    "sk_reuseport",
    "flow_dissector",
    "cgroup_sysctl",
    "raw_tracepoint_writable",
    "cgroup_sockopt",
    "tracing",
    "struct_ops",
    "ext",
    "lsm",
    "sk_lookup",
    "syscall",
    "netfilter",
];

/// The name of system call `nr` on `table`'s architecture, or the number.
fn syscall_name(table: &[(u32, &str)], nr: u32) -> String {
    table
        .iter()
        .find(|(n, _)| *n == nr)
        .map_or_else(|| nr.to_string(), |(_, name)| (*name).to_owned())
}

/// Decodes a syscall record.
pub(super) fn decode(event: &SyscallEvent) -> Result<Body, DecodeError> {
    let op = SyscallOp::try_from(event.op).map_err(DecodeError::UnknownSyscallOp)?;
    let [a0, a1, a2, _] = event.args;
    let text_arg = || text(&event.text, event.text_len);
    let mut call = Syscall::new(operation(op), syscall_name(NATIVE, event.nr), event.result);
    let mut tags: Vec<String> = Vec::new();
    match op {
        SyscallOp::Ptrace => {
            let name = PTRACE_REQUESTS.iter().find(|(r, _)| *r == a0).map(|p| p.1);
            tags.extend(name.map(str::to_owned));
            call.request = Some(name.map_or_else(|| a0.to_string(), str::to_owned));
            // PTRACE_TRACEME names no process: the parent becomes the tracer.
            call.target_pid = (a0 != 0).then_some(a1 as u32);
        }
        SyscallOp::Socket => {
            tags.push(match a0 {
                AF_PACKET => "packet".to_owned(),
                AF_INET => "inet".to_owned(),
                AF_INET6 => "inet6".to_owned(),
                other => other.to_string(),
            });
            match a1 & SOCK_TYPE_MASK {
                SOCK_RAW => tags.push("raw".to_owned()),
                SOCK_PACKET => tags.push("packet_type".to_owned()),
                _ => {}
            }
            call.family = Some(a0 as u32);
            call.socket_type = Some(a1 as u32);
            call.protocol = Some(a2 as u32);
        }
        SyscallOp::Mount => {
            flag_tags(&mut tags, a0, &MOUNT_FLAGS);
            let fstype = text_of(&event.aux, event.aux_len);
            if let Some(fstype) = &fstype {
                tags.push(format!("fstype:{fstype}"));
            }
            // `fsopen` names only a filesystem type; `open_tree` and `move_mount` carry no
            // `MS_*` flags (the kernel sends none).
            call.path = (event.text_len > 0).then(text_arg);
            call.fstype = fstype;
            call.flags = Some(a0);
        }
        SyscallOp::Umount => {
            flag_tags(&mut tags, a0, &UMOUNT_FLAGS);
            call.path = Some(text_arg());
            call.flags = Some(a0);
        }
        SyscallOp::Unshare => {
            flag_tags(&mut tags, a0, &NAMESPACE_FLAGS);
            call.flags = Some(a0);
        }
        SyscallOp::Setns => {
            if a1 == 0 {
                tags.push("any".to_owned());
            }
            flag_tags(&mut tags, a1, &NAMESPACE_FLAGS);
            call.fd = Some(a0 as i32);
            call.flags = Some(a1);
        }
        SyscallOp::PivotRoot => call.path = Some(text_arg()),
        SyscallOp::MemfdCreate => {
            flag_tags(&mut tags, a0, &MEMFD_FLAGS);
            call.name = Some(text_arg());
            call.flags = Some(a0);
        }
        SyscallOp::ModuleLoad => {
            if a0 == 0 {
                tags.push("init_module".to_owned());
                call.length = Some(a1);
            } else {
                tags.push("finit_module".to_owned());
                call.fd = Some(a1 as i32);
                call.flags = Some(a2);
            }
        }
        SyscallOp::BpfProgLoad => {
            let name = BPF_PROG_TYPES
                .get(a1 as usize)
                .filter(|name| !name.is_empty());
            tags.push(name.map_or_else(|| a1.to_string(), |n| (*n).to_owned()));
            call.prog_type = Some(a1 as u32);
        }
        SyscallOp::Setuid => {
            // The kernel reports only calls asking for uid 0; whether the caller was root
            // before is the process table's to say (`from_non_root`).
            tags.push("to_root".to_owned());
            let uid = |arg: u64| Some(arg as u32).filter(|&u| u != u32::MAX);
            (call.ruid, call.euid, call.suid) = (uid(a0), uid(a1), uid(a2));
        }
        SyscallOp::DupSocket => {
            match a1 {
                0 => tags.push("stdin".to_owned()),
                1 => tags.push("stdout".to_owned()),
                2 => tags.push("stderr".to_owned()),
                _ => {}
            }
            call.old_fd = Some(a0 as i32);
            call.new_fd = Some(a1 as i32);
            call.family = Some(a2 as u32);
        }
        SyscallOp::IoUringSetup => {
            call.entries = Some(a0 as u32);
            call.flags = Some(a1);
        }
        SyscallOp::Mknod => {
            match a0 & S_IFMT {
                S_IFBLK => tags.push("block".to_owned()),
                S_IFCHR => tags.push("char".to_owned()),
                _ => {}
            }
            call.path = Some(text_arg());
            call.mode = Some(a0 as u32);
            call.dev = Some(a1);
        }
    }
    if event.result < 0 {
        tags.push("refused".to_owned());
    }
    call.tags = tags;
    Ok(Body::Syscall(call))
}

fn operation(op: SyscallOp) -> SyscallOperation {
    match op {
        SyscallOp::Ptrace => SyscallOperation::Ptrace,
        SyscallOp::Socket => SyscallOperation::Socket,
        SyscallOp::Mount => SyscallOperation::Mount,
        SyscallOp::Umount => SyscallOperation::Umount,
        SyscallOp::Unshare => SyscallOperation::Unshare,
        SyscallOp::Setns => SyscallOperation::Setns,
        SyscallOp::PivotRoot => SyscallOperation::PivotRoot,
        SyscallOp::MemfdCreate => SyscallOperation::MemfdCreate,
        SyscallOp::ModuleLoad => SyscallOperation::ModuleLoad,
        SyscallOp::BpfProgLoad => SyscallOperation::BpfProgLoad,
        SyscallOp::Setuid => SyscallOperation::Setuid,
        SyscallOp::DupSocket => SyscallOperation::DupSocket,
        SyscallOp::IoUringSetup => SyscallOperation::IoUringSetup,
        SyscallOp::Mknod => SyscallOperation::Mknod,
    }
}

/// The names of the bits of `flags` that `names` lists, in its order.
fn flag_tags(tags: &mut Vec<String>, flags: u64, names: &[(u64, &str)]) {
    tags.extend(
        names
            .iter()
            .filter(|(bit, _)| flags & bit != 0)
            .map(|(_, name)| (*name).to_owned()),
    );
}

/// A string argument, `None` when empty.
fn text_of(bytes: &[u8], len: u32) -> Option<String> {
    Some(text(bytes, len)).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use detector_common::{
        EventKind, SYSCALL_AUX_BYTES, SYSCALL_TEXT_BYTES, Stat, SyscallEvent, SyscallOp,
    };

    use super::{super::tests::*, *};
    use crate::decode::decode as decode_record;

    /// A syscall record of `op` with `args`, `result`, `text` and `aux`, numbered as on this
    /// architecture by `name`.
    fn record(op: SyscallOp, name: &str, args: [u64; 4], result: i64, text: &[u8]) -> SyscallEvent {
        let nr = NATIVE
            .iter()
            .find(|(_, n)| *n == name)
            .map_or(9999, |(nr, _)| *nr);
        let mut event = SyscallEvent {
            header: header(EventKind::Syscall),
            op: op as u32,
            nr,
            result,
            args,
            text_len: text.len() as u32,
            aux_len: 0,
            text: [0; SYSCALL_TEXT_BYTES],
            aux: [0; SYSCALL_AUX_BYTES],
        };
        event.text[..text.len()].copy_from_slice(text);
        event
    }

    fn call(event: &SyscallEvent) -> Syscall {
        match decode_record(&bytes(event), &clock()).unwrap().body {
            Body::Syscall(call) => call,
            other => panic!("not a syscall: {other:?}"),
        }
    }

    fn tags(event: &SyscallEvent) -> Vec<String> {
        call(event).tags
    }

    #[test]
    fn a_syscall_record_has_its_header_name_and_result() {
        let record = record(SyscallOp::Ptrace, "ptrace", [16, 4242, 0, 0], 0, b"");
        let event = decode_record(&bytes(&record), &clock()).unwrap();
        assert_eq!(
            (event.process.pid, event.cgroup_id),
            (Some(100), Some(4242))
        );
        assert_eq!(event.body.kind(), "syscall");
        let Body::Syscall(call) = event.body else {
            panic!("not a syscall")
        };
        assert_eq!(call.op, SyscallOperation::Ptrace);
        if !NATIVE.is_empty() {
            assert_eq!(call.syscall, "ptrace");
        }
        assert_eq!(call.result, 0);
        assert_eq!(call.request.as_deref(), Some("attach"));
        assert_eq!(call.target_pid, Some(4242));
        assert_eq!(call.tags, ["attach"]);
        // Losses of the kind have their own counter.
        assert_eq!(Stat::lost(EventKind::Syscall), Stat::LostSyscall);
    }

    #[test]
    fn syscall_names_per_architecture() {
        for (table, nr, name) in [
            (X86_64, 117, "setresuid"),
            (X86_64, 313, "finit_module"),
            (X86_64, 292, "dup3"),
            (X86_64, 33, "dup2"),
            (X86_64, 166, "umount2"),
            (X86_64, 259, "mknodat"),
            (AARCH64, 147, "setresuid"),
            (AARCH64, 273, "finit_module"),
            (AARCH64, 24, "dup3"),
            (AARCH64, 39, "umount2"),
            (AARCH64, 33, "mknodat"),
            (AARCH64, 425, "io_uring_setup"),
            (X86_64, 429, "move_mount"),
            (AARCH64, 430, "fsopen"),
        ] {
            assert_eq!(syscall_name(table, nr), name);
        }
        assert_eq!(syscall_name(X86_64, 9999), "9999");
        // Every operation's calls are named on both architectures, and no number twice.
        for table in [X86_64, AARCH64] {
            for name in [
                "ptrace",
                "socket",
                "mount",
                "umount2",
                "unshare",
                "setns",
                "pivot_root",
                "memfd_create",
                "init_module",
                "finit_module",
                "bpf",
                "setuid",
                "setreuid",
                "setresuid",
                "dup3",
                "io_uring_setup",
                "mknodat",
            ] {
                assert!(table.iter().any(|(_, n)| *n == name), "{name}");
            }
            for (i, (nr, _)) in table.iter().enumerate() {
                assert!(table[i + 1..].iter().all(|(other, _)| other != nr), "{nr}");
            }
        }
    }

    #[test]
    fn ptrace_requests() {
        let seize = record(SyscallOp::Ptrace, "ptrace", [0x4206, 7, 0, 0], -1, b"");
        assert_eq!(tags(&seize), ["seize", "refused"]);
        let traceme = call(&record(SyscallOp::Ptrace, "ptrace", [0; 4], 0, b""));
        assert_eq!(traceme.tags, ["traceme"]);
        assert_eq!(traceme.target_pid, None);
        let other = call(&record(SyscallOp::Ptrace, "ptrace", [5, 7, 0, 0], 0, b""));
        assert_eq!((other.request.as_deref(), other.tags.len()), (Some("5"), 0));
    }

    #[test]
    fn socket_families_and_types() {
        // AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL).
        let packet = call(&record(
            SyscallOp::Socket,
            "socket",
            [17, 3 | 0o2_000_000, 0x0300, 0],
            5,
            b"",
        ));
        assert_eq!(packet.tags, ["packet", "raw"]);
        assert_eq!(
            (packet.family, packet.socket_type, packet.protocol),
            (Some(17), Some(3 | 0o2_000_000), Some(0x0300))
        );
        let inet = record(SyscallOp::Socket, "socket", [2, 3, 1, 0], -1, b"");
        assert_eq!(tags(&inet), ["inet", "raw", "refused"]);
        let inet6 = record(SyscallOp::Socket, "socket", [10, 10, 0, 0], 4, b"");
        assert_eq!(tags(&inet6), ["inet6", "packet_type"]);
        let other = record(SyscallOp::Socket, "socket", [38, 3, 0, 0], 4, b"");
        assert_eq!(tags(&other), ["38", "raw"]);
    }

    #[test]
    fn mount_flags_type_and_target() {
        let mut event = record(
            SyscallOp::Mount,
            "mount",
            [4096 | 16384 | 1, 0, 0, 0],
            0,
            b"/host",
        );
        event.aux[..4].copy_from_slice(b"none");
        event.aux_len = 4;
        let mount = call(&event);
        assert_eq!(mount.tags, ["rdonly", "bind", "rec", "fstype:none"]);
        assert_eq!(mount.path.as_deref(), Some("/host"));
        assert_eq!(mount.fstype.as_deref(), Some("none"));
        assert_eq!(mount.flags, Some(4096 | 16384 | 1));
        // Propagation changes and a remount, no type.
        let flags = 32 | 2 | 4 | 8 | (1 << 17) | (1 << 18) | (1 << 19) | (1 << 20) | 8192;
        let event = record(SyscallOp::Mount, "mount", [flags, 0, 0, 0], -1, b"/");
        assert_eq!(
            tags(&event),
            [
                "nosuid",
                "nodev",
                "noexec",
                "remount",
                "move",
                "unbindable",
                "private",
                "slave",
                "shared",
                "refused"
            ]
        );
        assert_eq!(call(&event).fstype, None);
        let umount = call(&record(
            SyscallOp::Umount,
            "umount2",
            [7, 0, 0, 0],
            0,
            b"/proc",
        ));
        assert_eq!(umount.tags, ["force", "detach", "expire"]);
        assert_eq!(umount.path.as_deref(), Some("/proc"));
        if !NATIVE.is_empty() {
            assert_eq!(umount.syscall, "umount2");
        }
        let pivot = call(&record(
            SyscallOp::PivotRoot,
            "pivot_root",
            [0; 4],
            0,
            b"/new",
        ));
        assert_eq!((pivot.path.as_deref(), pivot.tags.len()), (Some("/new"), 0));
    }

    #[test]
    fn namespaces() {
        let every = 0x0002_0000 | 0x7e00_0000 | 0x80;
        let unshare = call(&record(
            SyscallOp::Unshare,
            "unshare",
            [every, 0, 0, 0],
            0,
            b"",
        ));
        assert_eq!(
            unshare.tags,
            [
                "newns",
                "newcgroup",
                "newuts",
                "newipc",
                "newuser",
                "newpid",
                "newnet",
                "newtime"
            ]
        );
        assert_eq!(unshare.flags, Some(every));
        let setns = call(&record(SyscallOp::Setns, "setns", [3, 0, 0, 0], 0, b""));
        assert_eq!(
            (setns.tags.as_slice(), setns.fd),
            (&["any".to_owned()][..], Some(3))
        );
        let setns = record(SyscallOp::Setns, "setns", [4, 0x4000_0000, 0, 0], -1, b"");
        assert_eq!(tags(&setns), ["newnet", "refused"]);
    }

    #[test]
    fn memfd_modules_and_bpf() {
        let memfd = call(&record(
            SyscallOp::MemfdCreate,
            "memfd_create",
            [0x1f, 0, 0, 0],
            3,
            b"",
        ));
        assert_eq!(
            memfd.tags,
            ["cloexec", "allow_sealing", "hugetlb", "noexec_seal", "exec"]
        );
        assert_eq!(memfd.name.as_deref(), Some(""));
        let memfd = call(&record(
            SyscallOp::MemfdCreate,
            "memfd_create",
            [1, 0, 0, 0],
            3,
            b"x",
        ));
        assert_eq!((memfd.name.as_deref(), memfd.flags), (Some("x"), Some(1)));

        let init = call(&record(
            SyscallOp::ModuleLoad,
            "init_module",
            [0, 4096, 0, 0],
            -1,
            b"",
        ));
        assert_eq!(init.tags, ["init_module", "refused"]);
        assert_eq!((init.length, init.fd), (Some(4096), None));
        let finit = call(&record(
            SyscallOp::ModuleLoad,
            "finit_module",
            [1, 5, 2, 0],
            0,
            b"",
        ));
        assert_eq!(finit.tags, ["finit_module"]);
        assert_eq!(
            (finit.fd, finit.flags, finit.length),
            (Some(5), Some(2), None)
        );
        if !NATIVE.is_empty() {
            assert_eq!(finit.syscall, "finit_module");
        }

        for (prog_type, name) in [(2, "kprobe"), (6, "xdp"), (29, "lsm"), (32, "netfilter")] {
            let bpf = call(&record(
                SyscallOp::BpfProgLoad,
                "bpf",
                [5, prog_type, 0, 0],
                7,
                b"",
            ));
            assert_eq!(
                (bpf.tags, bpf.prog_type),
                (vec![name.to_owned()], Some(prog_type as u32))
            );
        }
        for unnamed in [0, 33, u64::MAX] {
            let bpf = record(SyscallOp::BpfProgLoad, "bpf", [5, unnamed, 0, 0], -1, b"");
            assert_eq!(tags(&bpf), [unnamed.to_string(), "refused".to_owned()]);
        }
    }

    #[test]
    fn setuid_to_root_with_unchanged_ids_left_out() {
        let max = u64::from(u32::MAX);
        let set = call(&record(
            SyscallOp::Setuid,
            "setresuid",
            [max, 0, max, 0],
            0,
            b"",
        ));
        assert_eq!(set.tags, ["to_root"]);
        assert_eq!((set.ruid, set.euid, set.suid), (None, Some(0), None));
        if !NATIVE.is_empty() {
            assert_eq!(set.syscall, "setresuid");
        }
        // The kernel may pass a -1 sign-extended.
        let set = call(&record(
            SyscallOp::Setuid,
            "setreuid",
            [0, u64::MAX, max, 0],
            -1,
            b"",
        ));
        assert_eq!(set.tags, ["to_root", "refused"]);
        assert_eq!((set.ruid, set.euid, set.suid), (Some(0), None, None));
    }

    #[test]
    fn sockets_on_standard_io_io_uring_and_device_nodes() {
        let dup = call(&record(SyscallOp::DupSocket, "dup3", [3, 0, 2, 0], 0, b""));
        assert_eq!(dup.tags, ["stdin"]);
        assert_eq!(
            (dup.old_fd, dup.new_fd, dup.family),
            (Some(3), Some(0), Some(2))
        );
        for (fd, tag) in [(1, "stdout"), (2, "stderr")] {
            let dup = record(SyscallOp::DupSocket, "dup2", [3, fd, 10, 0], 0, b"");
            assert_eq!(tags(&dup), [tag]);
        }

        let ring = call(&record(
            SyscallOp::IoUringSetup,
            "io_uring_setup",
            [64, 2, 0, 0],
            4,
            b"",
        ));
        assert_eq!(
            (ring.entries, ring.flags, ring.tags.len()),
            (Some(64), Some(2), 0)
        );

        let block = call(&record(
            SyscallOp::Mknod,
            "mknodat",
            [0o060_600, 0x0801, 0, 0],
            0,
            b"sda1",
        ));
        assert_eq!(block.tags, ["block"]);
        assert_eq!(
            (block.path.as_deref(), block.mode, block.dev),
            (Some("sda1"), Some(0o060_600), Some(0x0801))
        );
        let char = record(
            SyscallOp::Mknod,
            "mknod",
            [0o020_666, 0x0103, 0, 0],
            -1,
            b"/x",
        );
        assert_eq!(tags(&char), ["char", "refused"]);
    }

    #[test]
    fn malformed_syscall_records_are_errors() {
        let mut event = record(SyscallOp::Mount, "mount", [0; 4], 0, b"/");
        // Lengths beyond the buffers are clamped.
        event.text_len = u32::MAX;
        event.aux_len = u32::MAX;
        let mount = call(&event);
        assert_eq!(mount.path.map(|p| p.len()), Some(SYSCALL_TEXT_BYTES));
        assert_eq!(mount.fstype.map(|t| t.len()), Some(SYSCALL_AUX_BYTES));
        // A record cut anywhere is truncated, naming the kind and what was needed.
        let full = bytes(&event);
        for len in [64, 100, full.len() - 1] {
            assert_eq!(
                decode_record(&full[..len], &clock()),
                Err(DecodeError::Truncated {
                    kind: "syscall",
                    need: full.len(),
                    got: len
                })
            );
        }
        // An operation the decoder does not know.
        event.op = 99;
        let err = decode_record(&bytes(&event), &clock()).unwrap_err();
        assert_eq!(err, DecodeError::UnknownSyscallOp(99));
        assert_eq!(err.record_kind(), "syscall");
        assert_eq!(err.to_string(), "syscall record with unknown operation 99");
    }

    #[test]
    fn operation_names_match_the_json_form() {
        for op in SyscallOperation::ALL {
            assert_eq!(serde_json::to_value(op).unwrap(), op.as_str());
        }
    }
}

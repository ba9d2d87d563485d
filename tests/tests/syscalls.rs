//! Privileged tests of the system-call sensors and of the file and exec flags that came with
//! them: ptrace, raw and packet sockets, mounts and namespaces, memfd creation, execs of a
//! memfd (fileless) or of an unlinked file (deleted), set-id chmods, log clearing, module and
//! BPF loads, setuid to root, a socket on standard output, io_uring, device nodes,
//! `/proc/*/environ` reads, paths too deep to resolve, and symlinks. Each sensor is triggered
//! by real processes (perl's `syscall()`, coreutils, util-linux, bash) in a cgroup of the
//! test's own, its decoded events are checked field by field, and the ordinary counterpart of
//! each call is shown not to be reported.
//!
//! Run as root (CI does). Without root they fail under `CI=true` and say why they skip
//! elsewhere. The perl triggers pass x86_64 system call numbers: on another architecture the
//! tests that use them fail, saying so.

use std::{
    collections::HashMap,
    io::Read as _,
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use detector::{
    attribution::{
        AttributionConfig, Enricher,
        pods::{PodIndex, PodLimits},
    },
    config::SensorsConfig,
    event::{Body, Event, Exec, FileActivity, FileOperation, Syscall, SyscallOperation},
};
use tempfile::TempDir;
use tests::{Collector, TestCgroup, dump, host, privileged};

const WAIT: Duration = Duration::from_secs(10);
const PERL: &str = "/usr/bin/perl";

fn collector(config: &SensorsConfig) -> Collector {
    Collector::start(config, Duration::from_millis(200)).expect("sensors load and attach")
}

/// Fails, never skips, off x86_64: the perl triggers call `syscall()` with x86_64 numbers and
/// the tests assert that table's names.
fn assert_x86_64(test: &str) {
    assert_eq!(
        std::env::consts::ARCH,
        "x86_64",
        "{test}: the triggers pass x86_64 system call numbers to perl's syscall(); \
         give them this architecture's numbers"
    );
}

/// A temporary directory of the test's own, removed on drop.
fn temp_dir(name: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("detector-{name}-"))
        .tempdir()
        .unwrap()
}

fn text(path: &Path) -> String {
    path.display().to_string()
}

/// What one script left: its shell's pid, its standard output, and the events of its cgroup.
struct Run {
    pid: u32,
    stdout: String,
    events: Vec<Event>,
}

/// Runs `sh -c script` in `cgroup` with `env` added to its environment (perl code goes there,
/// unquoted), waits for the shell's exit, then for its exit event and what trails it. Panics,
/// dumping the events, when the script failed or its exit was not seen.
fn run(collector: &mut Collector, cgroup: &TestCgroup, script: &str, env: &[(&str, &str)]) -> Run {
    let child = cgroup
        .command("/bin/sh")
        .unwrap()
        .args(["-c", script])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    let done = collector.wait_for_exit(WAIT, pid);
    let run = Run {
        pid,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        events: collector
            .from_cgroup(cgroup.id())
            .into_iter()
            .cloned()
            .collect(),
    };
    if !output.status.success() || !done {
        run.dump();
    }
    assert!(
        output.status.success(),
        "`{script}`: {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(done, "no exit event for pid {pid}");
    run
}

impl Run {
    fn dump(&self) {
        dump(&self.events.iter().collect::<Vec<_>>());
    }

    /// The pids printed on the line of standard output that starts with `tag`.
    fn printed(&self, tag: &str) -> Vec<i64> {
        let line = self
            .stdout
            .lines()
            .find_map(|line| line.strip_prefix(tag))
            .unwrap_or_else(|| panic!("no `{tag}` line in {:?}", self.stdout));
        line.split_whitespace()
            .map(|n| n.parse().unwrap_or_else(|_| panic!("{line:?}")))
            .collect()
    }

    fn syscalls(&self) -> impl Iterator<Item = (&Event, &Syscall)> {
        self.events.iter().filter_map(|e| match &e.body {
            Body::Syscall(call) => Some((e, call)),
            _ => None,
        })
    }

    fn files(&self) -> impl Iterator<Item = (&Event, &FileActivity)> {
        self.events.iter().filter_map(|e| match &e.body {
            Body::File(file) => Some((e, file)),
            _ => None,
        })
    }

    fn execs(&self) -> impl Iterator<Item = (&Event, &Exec)> {
        self.events.iter().filter_map(|e| match &e.body {
            Body::Exec(exec) => Some((e, exec)),
            _ => None,
        })
    }

    /// The syscall event that `matches`, dumping the events when there is none.
    fn syscall(
        &self,
        what: &str,
        matches: impl Fn(&Event, &Syscall) -> bool,
    ) -> (&Event, &Syscall) {
        let found = self.syscalls().find(|(e, call)| matches(e, call));
        if found.is_none() {
            self.dump();
        }
        found.unwrap_or_else(|| panic!("no {what} event"))
    }

    /// The file event that `matches`, dumping the events when there is none.
    fn file(&self, what: &str, matches: impl Fn(&FileActivity) -> bool) -> (&Event, &FileActivity) {
        let found = self.files().find(|(_, file)| matches(file));
        if found.is_none() {
            self.dump();
        }
        found.unwrap_or_else(|| panic!("no {what} event"))
    }

    /// The exec event that `matches`, dumping the events when there is none.
    fn exec(&self, what: &str, matches: impl Fn(&Event, &Exec) -> bool) -> (&Event, &Exec) {
        let found = self.execs().find(|(e, exec)| matches(e, exec));
        if found.is_none() {
            self.dump();
        }
        found.unwrap_or_else(|| panic!("no exec of {what}"))
    }

    /// Asserts that no file event has `path` as its path or target.
    fn assert_no_file_event(&self, path: &str, why: &str) {
        let found: Vec<_> = self
            .files()
            .filter(|(_, f)| f.path == path || f.target.as_deref() == Some(path))
            .map(|(e, _)| e)
            .collect();
        if !found.is_empty() {
            dump(&found);
        }
        assert!(found.is_empty(), "{why}: {path} reported");
    }
}

/// A process the test started, killed and reaped on drop, failure or not.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// PTRACE_TRACEME (0): the shell becomes the tracer; the process exits at once, before any
/// signal could stop it.
const TRACEME: &str = r#"
    syscall(101, 0, 0, 0, 0) == 0 or die "PTRACE_TRACEME: $!";
    print "traceme $$\n";
"#;

/// PTRACE_ATTACH (16) to a child of its own, waited for until it stops, then PTRACE_DETACH
/// (17); the child is killed and reaped whatever happens.
const ATTACH: &str = r#"
    my $child = fork // die "fork: $!";
    if ($child == 0) { sleep 30; exit 0 }
    my $ok = syscall(101, 16, $child, 0, 0) == 0 && waitpid($child, 0) == $child
        && syscall(101, 17, $child, 0, 0) == 0;
    my $error = "$!";
    kill 9, $child;
    waitpid($child, 0);
    $ok or die "PTRACE_ATTACH or PTRACE_DETACH: $error";
    print "attach $$ $child\n";
"#;

#[test]
fn ptrace_traceme_and_attach_are_reported_and_detach_is_not() {
    const TEST: &str = "ptrace_traceme_and_attach_are_reported_and_detach_is_not";
    if !privileged(TEST) {
        return;
    }
    assert_x86_64(TEST);
    let mut collector = collector(&SensorsConfig::default());
    let cgroup = TestCgroup::for_test("ptrace").unwrap();
    let run = run(
        &mut collector,
        &cgroup,
        r#""$PERL" -e "$TRACEME" && "$PERL" -e "$ATTACH""#,
        &[("PERL", PERL), ("TRACEME", TRACEME), ("ATTACH", ATTACH)],
    );
    let traced = run.printed("traceme")[0] as u32;
    let [tracer, child] = run.printed("attach")[..] else {
        panic!("{:?}", run.stdout)
    };
    let (tracer, child) = (tracer as u32, child as u32);

    let (traced_event, traceme) = run.syscall("PTRACE_TRACEME", |e, call| {
        call.op == SyscallOperation::Ptrace && e.process.pid == Some(traced)
    });
    assert_eq!(traceme.syscall, "ptrace");
    assert_eq!(traceme.request.as_deref(), Some("traceme"), "{traceme:?}");
    assert_eq!(traceme.tags, ["traceme"]);
    // The tracer is the parent: no process is named.
    assert_eq!(
        (traceme.target_pid, traceme.result),
        (None, 0),
        "{traceme:?}"
    );
    assert_eq!(
        traced_event.process.ppid,
        Some(run.pid),
        "the shell, its parent, traces it"
    );

    let (_, attach) = run.syscall("PTRACE_ATTACH", |e, call| {
        call.op == SyscallOperation::Ptrace && e.process.pid == Some(tracer)
    });
    assert_eq!(attach.syscall, "ptrace");
    assert_eq!(attach.request.as_deref(), Some("attach"), "{attach:?}");
    assert_eq!(attach.tags, ["attach"]);
    assert_eq!(
        (attach.target_pid, attach.result),
        (Some(child), 0),
        "{attach:?}"
    );

    let ptrace: Vec<_> = run
        .syscalls()
        .filter(|(_, call)| call.op == SyscallOperation::Ptrace)
        .map(|(_, call)| call)
        .collect();
    assert_eq!(
        ptrace.len(),
        2,
        "PTRACE_DETACH (17) is not reported: {ptrace:#?}"
    );
}

/// A packet socket (AF_PACKET, SOCK_RAW, htons(ETH_P_ALL)), a raw ICMP socket (AF_INET,
/// SOCK_RAW, IPPROTO_ICMP) and an ordinary TCP socket (AF_INET, SOCK_STREAM).
const SOCKETS: &str = r#"
    my @fds = map { syscall(41, @$_) } [17, 3, 768], [2, 3, 1], [2, 1, 0];
    grep({ $_ < 0 } @fds) and die "socket: $!";
    print "sockets $$\n";
"#;

#[test]
fn packet_and_raw_sockets_are_reported_and_a_tcp_socket_is_not() {
    const TEST: &str = "packet_and_raw_sockets_are_reported_and_a_tcp_socket_is_not";
    if !privileged(TEST) {
        return;
    }
    assert_x86_64(TEST);
    let mut collector = collector(&SensorsConfig::default());
    let cgroup = TestCgroup::for_test("sockets").unwrap();
    let run = run(
        &mut collector,
        &cgroup,
        r#""$PERL" -e "$SOCKETS""#,
        &[("PERL", PERL), ("SOCKETS", SOCKETS)],
    );
    let pid = run.printed("sockets")[0] as u32;
    let sockets: Vec<_> = run
        .syscalls()
        .filter(|(e, call)| call.op == SyscallOperation::Socket && e.process.pid == Some(pid))
        .map(|(_, call)| call)
        .collect();
    if sockets.len() != 2 {
        run.dump();
    }
    assert_eq!(
        sockets.len(),
        2,
        "the packet and the raw socket, not the TCP one: {sockets:#?}"
    );
    let of_family = |family: u32| {
        sockets
            .iter()
            .find(|call| call.family == Some(family))
            .unwrap_or_else(|| panic!("no socket of family {family}: {sockets:#?}"))
    };
    let (packet, raw) = (of_family(17), of_family(2));
    assert_eq!(packet.syscall, "socket");
    assert_eq!(packet.tags, ["packet", "raw"]);
    assert_eq!(
        (packet.family, packet.socket_type, packet.protocol),
        (Some(17), Some(3), Some(0x0300))
    );
    assert!(packet.result >= 0, "{packet:?}");
    assert_eq!(raw.syscall, "socket");
    assert_eq!(raw.tags, ["inet", "raw"]);
    assert_eq!(
        (raw.family, raw.socket_type, raw.protocol),
        (Some(2), Some(3), Some(1))
    );
    assert!(raw.result >= 0, "{raw:?}");
}

#[test]
fn unshare_mount_and_umount_in_a_private_namespace_are_reported() {
    const TEST: &str = "unshare_mount_and_umount_in_a_private_namespace_are_reported";
    if !privileged(TEST) {
        return;
    }
    assert_x86_64(TEST);
    /// The temporary directory, removed with whatever might be mounted below it.
    struct MountDir(TempDir);
    impl Drop for MountDir {
        fn drop(&mut self) {
            host::remove_with_mounts(self.0.path());
        }
    }
    let dir = MountDir(temp_dir("mount"));
    let point = dir.0.path().join("mnt");
    std::fs::create_dir(&point).unwrap();
    let point = text(&point);
    let mut collector = collector(&SensorsConfig::default());
    let cgroup = TestCgroup::for_test("mount").unwrap();
    // A mount namespace of its own: what is mounted there never shows on the host.
    let run = run(
        &mut collector,
        &cgroup,
        r#"unshare -m sh -c 'mount -t tmpfs none "$POINT" && umount "$POINT"'"#,
        &[("POINT", &point)],
    );
    let leaked = host::mounts(|at, _| at.starts_with(&text(dir.0.path())));
    assert!(leaked.is_empty(), "mounts on the host: {leaked:?}");

    let (_, unshare) = run.syscall("unshare", |_, call| call.op == SyscallOperation::Unshare);
    assert_eq!(unshare.syscall, "unshare");
    assert_eq!(unshare.tags, ["newns"]);
    assert_eq!((unshare.flags, unshare.result), (Some(0x0002_0000), 0));

    let (_, mount) = run.syscall("mount of the tmpfs", |_, call| {
        call.op == SyscallOperation::Mount && call.path.as_deref() == Some(point.as_str())
    });
    assert_eq!(mount.syscall, "mount");
    assert_eq!(mount.fstype.as_deref(), Some("tmpfs"));
    // No flag that has a tag (bind, remount, move, propagation...); mount(8) may pass others.
    assert_eq!(mount.tags, ["fstype:tmpfs"]);
    assert_eq!(mount.result, 0, "{mount:?}");

    // unshare(1) first makes every mount of its namespace private, as `mount --make-rprivate /`.
    let (_, private) = run.syscall("mount --make-rprivate /", |_, call| {
        call.op == SyscallOperation::Mount && call.path.as_deref() == Some("/")
    });
    assert_eq!(private.tags, ["rec", "private"]);
    assert_eq!((private.fstype.as_deref(), private.result), (None, 0));

    let (_, umount) = run.syscall("umount", |_, call| call.op == SyscallOperation::Umount);
    assert_eq!(umount.syscall, "umount2");
    assert_eq!(umount.path.as_deref(), Some(point.as_str()));
    assert!(umount.tags.is_empty(), "{umount:?}");
    assert_eq!((umount.flags, umount.result), (Some(0), 0));
}

/// A memfd (MFD_CLOEXEC) with /bin/true copied in, executed through /proc/self/fd.
const MEMFD_EXEC: &str = r#"
    my $name = "detector-test";
    my $fd = syscall(319, $name, 1);
    $fd >= 0 or die "memfd_create: $!";
    open(my $memfd, ">&=", $fd) or die "fdopen: $!";
    open(my $true, "<", "/bin/true") or die "/bin/true: $!";
    binmode $true;
    my $image = do { local $/; <$true> };
    syswrite($memfd, $image) == length($image) or die "write: $!";
    exec { "/proc/self/fd/$fd" } "memfd-true" or die "exec: $!";
"#;

/// A file opened, unlinked, then executed through /proc/self/fd.
const UNLINKED_EXEC: &str = r#"
    my $path = shift;
    open(my $copy, "<", $path) or die "$path: $!";
    unlink($path) or die "unlink: $!";
    my $fd = fileno($copy);
    exec { "/proc/self/fd/$fd" } "unlinked-true" or die "exec: $!";
"#;

#[test]
fn memfd_create_is_reported_and_execs_of_memfds_and_unlinked_files_are_flagged() {
    const TEST: &str =
        "memfd_create_is_reported_and_execs_of_memfds_and_unlinked_files_are_flagged";
    if !privileged(TEST) {
        return;
    }
    assert_x86_64(TEST);
    let dir = temp_dir("fileless");
    let copy = dir.path().join("true");
    std::fs::copy("/bin/true", &copy).unwrap();
    let mut collector = collector(&SensorsConfig::default());
    let cgroup = TestCgroup::for_test("fileless").unwrap();
    let run = run(
        &mut collector,
        &cgroup,
        r#""$PERL" -e "$MEMFD" && "$PERL" -e "$UNLINKED" "$COPY" && /bin/true"#,
        &[
            ("PERL", PERL),
            ("MEMFD", MEMFD_EXEC),
            ("UNLINKED", UNLINKED_EXEC),
            ("COPY", &text(&copy)),
        ],
    );
    assert!(!copy.exists(), "the copy was unlinked");

    let (created, memfd) = run.syscall("memfd_create", |_, call| {
        call.op == SyscallOperation::MemfdCreate
    });
    assert_eq!(memfd.syscall, "memfd_create");
    assert_eq!(memfd.name.as_deref(), Some("detector-test"));
    assert_eq!(memfd.flags, Some(1), "MFD_CLOEXEC");
    assert_eq!(memfd.tags, ["cloexec"]);
    assert!(memfd.result >= 0, "{memfd:?}");

    let argv0 = |exec: &Exec, name: &str| exec.argv.first().is_some_and(|a| a == name);
    let (event, from_memfd) = run.exec("the memfd", |_, exec| argv0(exec, "memfd-true"));
    assert_eq!(event.process.pid, created.process.pid, "the same process");
    assert_eq!(
        from_memfd.filename,
        format!("/proc/self/fd/{}", memfd.result)
    );
    // On the kernel's internal shmem mount: fileless, not a deleted file.
    assert!(from_memfd.fileless && !from_memfd.deleted, "{from_memfd:?}");
    let (_, unlinked) = run.exec("the unlinked copy", |_, exec| argv0(exec, "unlinked-true"));
    assert!(
        unlinked.filename.starts_with("/proc/self/fd/"),
        "{unlinked:?}"
    );
    // On a real filesystem, with no link left: deleted, not fileless.
    assert!(unlinked.deleted && !unlinked.fileless, "{unlinked:?}");
    let (_, ordinary) = run.exec("/bin/true", |_, exec| exec.filename == "/bin/true");
    assert!(!ordinary.fileless && !ordinary.deleted, "{ordinary:?}");
    let nameless: Vec<_> = run
        .execs()
        .filter(|(_, exec)| exec.fileless || exec.deleted)
        .collect();
    assert_eq!(
        nameless.len(),
        2,
        "only the memfd's and the unlinked copy's execs: {nameless:#?}"
    );
}

#[test]
fn a_chmod_setting_setuid_is_reported_anywhere_and_a_plain_one_is_not() {
    const TEST: &str = "a_chmod_setting_setuid_is_reported_anywhere_and_a_plain_one_is_not";
    if !privileged(TEST) {
        return;
    }
    let dir = temp_dir("setid");
    let (setuid, plain) = (dir.path().join("setuid"), dir.path().join("plain"));
    for file in [&setuid, &plain] {
        std::fs::write(file, "x").unwrap();
    }
    let (setuid, plain) = (text(&setuid), text(&plain));
    let mut collector = collector(&SensorsConfig::default());
    let cgroup = TestCgroup::for_test("setid").unwrap();
    let run = run(
        &mut collector,
        &cgroup,
        r#"chmod 4755 "$SETUID" && chmod 0644 "$PLAIN""#,
        &[("SETUID", &setuid), ("PLAIN", &plain)],
    );
    let (_, chmod) = run.file("chmod 4755", |f| {
        f.op == FileOperation::Chmod && f.path == setuid
    });
    assert_eq!((chmod.flags, chmod.result), (0o4755, Some(0)), "{chmod:?}");
    assert!(
        !chmod.sensitive && !chmod.read_sensitive && !chmod.log && !chmod.unresolved,
        "an ordinary path: {chmod:?}"
    );
    run.assert_no_file_event(&plain, "a chmod setting no set-id bit, of an ordinary path");
}

#[test]
fn truncating_or_removing_logs_and_histories_is_reported_and_removing_a_plain_file_is_not() {
    const TEST: &str =
        "truncating_or_removing_logs_and_histories_is_reported_and_removing_a_plain_file_is_not";
    if !privileged(TEST) {
        return;
    }
    let (logs, home) = (temp_dir("logs"), temp_dir("home"));
    let truncated = text(&logs.path().join("app.log"));
    let removed = text(&logs.path().join("old.log"));
    let history = text(&home.path().join(".bash_history"));
    let plain = text(&home.path().join("plain"));
    for file in [&truncated, &removed, &history, &plain] {
        std::fs::write(file, "line\n").unwrap();
    }
    let config = SensorsConfig {
        log_paths: vec![text(logs.path())],
        ..SensorsConfig::default()
    };
    let mut collector = collector(&config);
    let cgroup = TestCgroup::for_test("logs").unwrap();
    // perl's truncate with a name is truncate(2); coreutils' opens and calls ftruncate.
    let run = run(
        &mut collector,
        &cgroup,
        r#""$PERL" -e 'truncate(shift, 0) or die "truncate: $!"' "$TRUNCATED" &&
           rm "$REMOVED" "$HISTORY" "$PLAIN""#,
        &[
            ("PERL", PERL),
            ("TRUNCATED", &truncated),
            ("REMOVED", &removed),
            ("HISTORY", &history),
            ("PLAIN", &plain),
        ],
    );
    assert_eq!(std::fs::metadata(&truncated).unwrap().len(), 0, "truncated");
    let (_, truncate) = run.file("truncate of the log", |f| f.path == truncated);
    assert_eq!(truncate.op, FileOperation::Truncate);
    assert!(truncate.log && !truncate.sensitive, "{truncate:?}");
    assert_eq!(truncate.result, Some(0));
    for (what, path) in [("the log", &removed), ("the shell history", &history)] {
        let (_, unlink) = run.file(what, |f| &f.path == path);
        assert_eq!(unlink.op, FileOperation::Unlink, "{unlink:?}");
        assert!(unlink.log && !unlink.sensitive, "{unlink:?}");
        assert_eq!(unlink.result, Some(0));
    }
    run.assert_no_file_event(&plain, "an unlink of an ordinary file");
}

/// `init_module` with a null image, `finit_module` with descriptor -1 and `bpf(BPF_PROG_LOAD)`
/// with an all-zero attribute: each fails, nothing is loaded.
const LOADS: &str = r#"
    my ($none, $attr) = ("", "\0" x 128);
    my @results = (syscall(175, 0, 0, $none), syscall(313, -1, $none, 0),
        syscall(321, 5, $attr, 128));
    grep({ $_ >= 0 } @results) and die "a load succeeded: @results";
    print "loads $$\n";
"#;

#[test]
fn module_and_bpf_loads_are_reported_refused() {
    const TEST: &str = "module_and_bpf_loads_are_reported_refused";
    if !privileged(TEST) {
        return;
    }
    assert_x86_64(TEST);
    let mut collector = collector(&SensorsConfig::default());
    let cgroup = TestCgroup::for_test("loads").unwrap();
    let run = run(
        &mut collector,
        &cgroup,
        r#""$PERL" -e "$LOADS""#,
        &[("PERL", PERL), ("LOADS", LOADS)],
    );
    let pid = run.printed("loads")[0] as u32;
    let of = |op: SyscallOperation, name: &'static str| {
        run.syscall(name, move |e, call| {
            call.op == op && call.syscall == name && e.process.pid == Some(pid)
        })
        .1
    };
    let init = of(SyscallOperation::ModuleLoad, "init_module");
    assert_eq!(init.tags, ["init_module", "refused"]);
    assert_eq!((init.length, init.fd), (Some(0), None));
    assert!(init.result < 0, "{init:?}");
    let finit = of(SyscallOperation::ModuleLoad, "finit_module");
    assert_eq!(finit.tags, ["finit_module", "refused"]);
    assert_eq!((finit.fd, finit.flags), (Some(-1), Some(0)));
    assert!(finit.result < 0, "{finit:?}");
    let bpf = of(SyscallOperation::BpfProgLoad, "bpf");
    // Program type 0 (unspecified) has no name: its number is the tag.
    assert_eq!(bpf.tags, ["0", "refused"]);
    assert_eq!(bpf.prog_type, Some(0));
    assert!(bpf.result < 0, "{bpf:?}");
}

#[test]
fn setuid_to_root_from_a_non_root_process_is_reported_and_root_dropping_to_a_user_is_not() {
    const TEST: &str =
        "setuid_to_root_from_a_non_root_process_is_reported_and_root_dropping_to_a_user_is_not";
    if !privileged(TEST) {
        return;
    }
    assert_x86_64(TEST);
    let mut collector = collector(&SensorsConfig::default());
    let cgroup = TestCgroup::for_test("setuid").unwrap();
    let run = run(
        &mut collector,
        &cgroup,
        r#"setpriv --reuid=65534 --regid=65534 --clear-groups "$PERL" -e \
             'syscall(105, 0) < 0 or die "setuid(0) succeeded"; print "to_root $$\n"' &&
           "$PERL" -e 'syscall(105, 1000) == 0 or die "setuid(1000): $!"; print "to_user $$\n"'"#,
        &[("PERL", PERL)],
    );
    let (to_root, to_user) = (
        run.printed("to_root")[0] as u32,
        run.printed("to_user")[0] as u32,
    );
    // The kernel reports the call; whether the caller was root is the process table's to say.
    let (event, kernel) = run.syscall("setuid(0)", |e, call| {
        call.op == SyscallOperation::Setuid && e.process.pid == Some(to_root)
    });
    assert_eq!(
        kernel.tags,
        ["to_root", "refused"],
        "as the kernel reports it"
    );
    assert_eq!(event.process.uid, Some(65534));
    let (exec, _) = run.exec("perl as nobody", |e, exec| {
        e.process.pid == Some(to_root) && exec.filename == PERL
    });
    assert_eq!(exec.process.uid, Some(65534), "the exec carries the uid");

    let mut enricher = Enricher::new(
        Box::new(HashMap::<u64, String>::new()),
        PodIndex::shared(PodLimits::default()),
        &AttributionConfig::default(),
    );
    let enriched = enricher.process(run.events.clone(), Instant::now());
    let setuid: Vec<_> = enriched
        .iter()
        .filter(|e| matches!(&e.body, Body::Syscall(call) if call.op == SyscallOperation::Setuid))
        .collect();
    if setuid.len() != 1 {
        dump(&enriched.iter().collect::<Vec<_>>());
    }
    assert_eq!(setuid.len(), 1, "setuid(1000) by root is not reported");
    let Body::Syscall(call) = &setuid[0].body else {
        unreachable!()
    };
    assert_eq!(setuid[0].process.pid, Some(to_root));
    assert_ne!(setuid[0].process.pid, Some(to_user));
    assert_eq!(call.syscall, "setuid");
    assert_eq!(call.tags, ["to_root", "from_non_root", "refused"]);
    assert_eq!(
        (call.ruid, call.euid, call.suid),
        (Some(0), Some(0), Some(0))
    );
    assert_eq!(call.result, -1, "EPERM");
}

#[test]
fn a_tcp_socket_dup_ed_onto_stdout_is_reported_and_the_next_exec_has_it() {
    const TEST: &str = "a_tcp_socket_dup_ed_onto_stdout_is_reported_and_the_next_exec_has_it";
    if !privileged(TEST) {
        return;
    }
    assert_x86_64(TEST);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    listener.set_nonblocking(true).unwrap();
    // Accepts one connection and reads it to its end; gives up after a while, so that a
    // failed connect never leaves the test waiting.
    let receiver = std::thread::spawn(move || {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    let mut received = Vec::new();
                    return stream.read_to_end(&mut received).map(|_| received.len());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
        Err(std::io::ErrorKind::TimedOut.into())
    });
    let mut collector = collector(&SensorsConfig::default());
    let cgroup = TestCgroup::for_test("dup").unwrap();
    // A reverse shell's set-up (/dev/tcp is a bash feature), with /bin/true for the shell.
    let run = run(
        &mut collector,
        &cgroup,
        r#"/bin/bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$PORT"; exec 1>&3; exec /bin/true'"#,
        &[("PORT", &port)],
    );
    assert_eq!(receiver.join().unwrap().unwrap(), 0, "nothing written");
    let (bash, _) = run.exec("bash", |_, exec| exec.filename == "/bin/bash");
    let bash = bash.process.pid;
    let (_, dup) = run.syscall("dup onto stdout", |e, call| {
        call.op == SyscallOperation::DupSocket && e.process.pid == bash
    });
    assert_eq!(dup.syscall, "dup2");
    assert_eq!(dup.tags, ["stdout"]);
    assert_eq!(
        (dup.family, dup.old_fd, dup.new_fd, dup.result),
        (Some(2), Some(3), Some(1), 1)
    );
    let (_, exec) = run.exec("/bin/true", |e, exec| {
        exec.filename == "/bin/true" && e.process.pid == bash
    });
    assert!(exec.stdout_socket && !exec.stdin_socket, "{exec:?}");
    let on_sockets: Vec<_> = run
        .execs()
        .filter(|(_, exec)| exec.stdin_socket || exec.stdout_socket)
        .collect();
    assert_eq!(
        on_sockets.len(),
        1,
        "the shells' stdout is a pipe: {on_sockets:#?}"
    );
}

#[test]
fn io_uring_setup_is_reported() {
    const TEST: &str = "io_uring_setup_is_reported";
    if !privileged(TEST) {
        return;
    }
    assert_x86_64(TEST);
    let mut collector = collector(&SensorsConfig::default());
    let cgroup = TestCgroup::for_test("uring").unwrap();
    // Eight entries, a zeroed `struct io_uring_params` (120 bytes).
    let run = run(
        &mut collector,
        &cgroup,
        r#""$PERL" -e 'my $params = "\0" x 120; print "uring $$ ", syscall(425, 8, $params), "\n"'"#,
        &[("PERL", PERL)],
    );
    let [pid, fd] = run.printed("uring")[..] else {
        panic!("{:?}", run.stdout)
    };
    let (_, ring) = run.syscall("io_uring_setup", |e, call| {
        call.op == SyscallOperation::IoUringSetup && e.process.pid == Some(pid as u32)
    });
    assert_eq!(ring.syscall, "io_uring_setup");
    assert_eq!((ring.entries, ring.flags), (Some(8), Some(0)));
    // Rings may be allowed or refused (`kernel.io_uring_disabled`): reported either way.
    if fd >= 0 {
        assert_eq!((ring.result, ring.tags.len()), (fd, 0), "{ring:?}");
    } else {
        assert!(ring.result < 0, "{ring:?}");
        assert_eq!(ring.tags, ["refused"]);
    }
}

#[test]
fn opens_submitted_through_an_io_uring_ring_are_reported_like_openat() {
    const TEST: &str = "opens_submitted_through_an_io_uring_ring_are_reported_like_openat";
    if !privileged(TEST) {
        return;
    }
    let mut collector = collector(&SensorsConfig::default());
    let uring = collector
        .programs()
        .iter()
        .find(|p| p.name == "io_uring_complete")
        .expect("the io_uring program is in the set");
    assert_eq!(uring.missing, None, "this kernel (6.18) has the tracepoint");
    let written = format!("/etc/detector-uring-{}", std::process::id());
    let cgroup = TestCgroup::for_test("uring-open").unwrap();
    // No openat system call: the helper's opens go through the ring (IORING_OP_OPENAT).
    let run = run(
        &mut collector,
        &cgroup,
        r#"echo "write $("$HELPER" uring-open "$WRITTEN" write)"; echo "read $("$HELPER" uring-open /etc/shadow read)"; echo "plain $("$HELPER" uring-open /etc/hostname read)""#,
        &[
            ("HELPER", env!("CARGO_BIN_EXE_detector-test-helper")),
            ("WRITTEN", &written),
        ],
    );
    let _ = std::fs::remove_file(&written);
    let [fd] = run.printed("write")[..] else {
        panic!("{:?}", run.stdout)
    };
    let (_, write) = run.file("io_uring write-open", |f| f.path == written);
    assert!(
        write.io_uring && write.write && write.sensitive,
        "{write:?}"
    );
    assert_eq!(write.result, Some(fd as i32), "{write:?}");
    let (_, read) = run.file("io_uring read of /etc/shadow", |f| f.path == "/etc/shadow");
    assert!(
        read.io_uring && read.read_sensitive && !read.write,
        "{read:?}"
    );
    // A read-only open of a plain file is not reported, through a ring or not.
    assert!(
        run.files().all(|(_, f)| f.path != "/etc/hostname"),
        "{:?}",
        run.files().collect::<Vec<_>>()
    );
}

#[test]
fn mknod_of_a_character_device_is_reported_and_a_fifo_is_not() {
    const TEST: &str = "mknod_of_a_character_device_is_reported_and_a_fifo_is_not";
    if !privileged(TEST) {
        return;
    }
    assert_x86_64(TEST);
    let dir = temp_dir("mknod");
    let (device, fifo) = (
        text(&dir.path().join("null")),
        text(&dir.path().join("fifo")),
    );
    let mut collector = collector(&SensorsConfig::default());
    let cgroup = TestCgroup::for_test("mknod").unwrap();
    let run = run(
        &mut collector,
        &cgroup,
        r#"mknod "$DEVICE" c 1 3 && mkfifo "$FIFO""#,
        &[("DEVICE", &device), ("FIFO", &fifo)],
    );
    let (_, mknod) = run.syscall("mknod", |_, call| call.op == SyscallOperation::Mknod);
    assert_eq!(mknod.syscall, "mknodat");
    assert_eq!(mknod.tags, ["char"]);
    assert_eq!(mknod.path.as_deref(), Some(device.as_str()));
    assert_eq!(
        mknod.mode.map(|m| m & 0o170_000),
        Some(0o020_000),
        "{mknod:?}"
    );
    assert_eq!(
        (mknod.dev, mknod.result),
        (Some(0x0103), 0),
        "makedev(1, 3)"
    );
    let nodes: Vec<_> = run
        .syscalls()
        .filter(|(_, call)| call.op == SyscallOperation::Mknod)
        .map(|(_, call)| call)
        .collect();
    assert_eq!(nodes.len(), 1, "a FIFO is not reported: {nodes:#?}");
}

#[test]
fn reads_of_another_process_environ_are_reported_and_of_its_stat_are_not() {
    const TEST: &str = "reads_of_another_process_environ_are_reported_and_of_its_stat_are_not";
    if !privileged(TEST) {
        return;
    }
    let sleeper = Reaped(Command::new("/bin/sleep").arg("60").spawn().unwrap());
    let pid = sleeper.0.id();
    let (environ, task_environ, stat) = (
        format!("/proc/{pid}/environ"),
        format!("/proc/{pid}/task/{pid}/environ"),
        format!("/proc/{pid}/stat"),
    );
    let mut collector = collector(&SensorsConfig::default());
    let cgroup = TestCgroup::for_test("environ").unwrap();
    let run = run(
        &mut collector,
        &cgroup,
        r#"cat "$ENVIRON" > /dev/null && cat "$TASK_ENVIRON" > /dev/null && cat "$STAT" > /dev/null"#,
        &[
            ("ENVIRON", &environ),
            ("TASK_ENVIRON", &task_environ),
            ("STAT", &stat),
        ],
    );
    drop(sleeper);
    for path in [&environ, &task_environ] {
        let (event, read) = run.file(path, |f| &f.path == path);
        assert_eq!(read.op, FileOperation::Open);
        assert!(
            read.read_sensitive && !read.write && read.resolved,
            "{read:?}"
        );
        assert!(matches!(read.result, Some(fd) if fd >= 0), "{read:?}");
        // Not the reader's own entry.
        assert_eq!(read.self_path, None);
        assert_ne!(event.process.pid, Some(pid));
    }
    run.assert_no_file_event(&stat, "a read of another process's stat");
}

#[test]
fn operations_below_a_directory_too_deep_to_resolve_are_reported_unresolved() {
    const TEST: &str = "operations_below_a_directory_too_deep_to_resolve_are_reported_unresolved";
    if !privileged(TEST) {
        return;
    }
    // The kernel climbs 64 components at most: 70 directories below the temporary one.
    let base = temp_dir("deep");
    let mut collector = collector(&SensorsConfig::default());
    let cgroup = TestCgroup::for_test("deep").unwrap();
    let run = run(
        &mut collector,
        &cgroup,
        r#"cd "$BASE" && i=0 && while [ $i -lt 70 ]; do mkdir d && cd d || exit 1; i=$((i + 1)); done &&
           echo x > written && chmod 4755 written"#,
        &[("BASE", &text(base.path()))],
    );
    let (_, open) = run.file("write-open", |f| {
        f.op == FileOperation::Open && f.path == "written"
    });
    assert!(open.write && open.relative && !open.resolved, "{open:?}");
    assert!(open.unresolved && open.sensitive, "conservative: {open:?}");
    assert!(matches!(open.result, Some(fd) if fd >= 0), "{open:?}");
    let (_, chmod) = run.file("chmod", |f| {
        f.op == FileOperation::Chmod && f.path == "written"
    });
    assert!(chmod.relative && !chmod.joined, "{chmod:?}");
    assert!(
        chmod.unresolved && chmod.sensitive,
        "conservative: {chmod:?}"
    );
    assert_eq!((chmod.flags, chmod.result), (0o4755, Some(0)), "{chmod:?}");
}

#[test]
fn a_symlink_to_a_read_sensitive_file_is_reported_and_a_hard_link_of_plain_files_is_not() {
    const TEST: &str =
        "a_symlink_to_a_read_sensitive_file_is_reported_and_a_hard_link_of_plain_files_is_not";
    if !privileged(TEST) {
        return;
    }
    let dir = temp_dir("links");
    let (link, plain, linked) = (
        text(&dir.path().join("s")),
        text(&dir.path().join("a")),
        text(&dir.path().join("b")),
    );
    std::fs::write(&plain, "x").unwrap();
    let mut collector = collector(&SensorsConfig::default());
    let cgroup = TestCgroup::for_test("links").unwrap();
    let run = run(
        &mut collector,
        &cgroup,
        r#"ln -s /etc/shadow "$LINK" && ln "$PLAIN" "$LINKED""#,
        &[("LINK", &link), ("PLAIN", &plain), ("LINKED", &linked)],
    );
    let (_, symlink) = run.file("symlink", |f| f.op == FileOperation::Symlink);
    // `path` is what the link points to, `target` the link.
    assert_eq!(symlink.path, "/etc/shadow");
    assert_eq!(symlink.target.as_deref(), Some(link.as_str()));
    assert!(symlink.read_sensitive && symlink.sensitive, "{symlink:?}");
    assert_eq!(symlink.result, Some(0));
    run.assert_no_file_event(&plain, "a hard link of an ordinary file");
    run.assert_no_file_event(&linked, "a hard link of an ordinary file");
}

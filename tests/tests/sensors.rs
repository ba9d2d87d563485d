//! Privileged tests: the real eBPF programs, loaded and attached by the daemon's own code, and
//! triggered by real processes, files and sockets in a cgroup each test creates.
//!
//! Run as root (CI does). Without root they fail under `CI=true` and say why they skip
//! elsewhere.

use std::{
    io::Read as _,
    net::{IpAddr, Ipv4Addr, TcpListener},
    time::Duration,
};

use detector::{
    config::{ProgramVariant, SensorsConfig, Watch},
    event::{Body, Event, FileOperation},
    sensors::{ProgramSet, Sensors},
};
use tests::{Collector, TestCgroup, dump, is_exit_of, privileged};

const WAIT: Duration = Duration::from_secs(10);

fn collector(config: &SensorsConfig) -> Collector {
    Collector::start(config, Duration::from_millis(200)).expect("sensors load and attach")
}

#[test]
fn exec_of_a_shell_appears_with_argv_cgroup_and_exit_code() {
    if !privileged("exec_of_a_shell_appears_with_argv_cgroup_and_exit_code") {
        return;
    }
    let mut collector = collector(&SensorsConfig::default());
    assert_eq!(
        collector.attached(),
        [
            "sched_process_exec",
            "sched_process_exit",
            "sys_exit",
            "io_uring_complete",
            "connect4",
            "connect6",
            "egress",
            "ingress"
        ]
    );
    let cgroup = TestCgroup::for_test("exec").unwrap();
    let mut child = cgroup
        .command("/bin/sh")
        .unwrap()
        .args(["-c", "exit 3"])
        .spawn()
        .unwrap();
    let pid = child.id();
    assert_eq!(child.wait().unwrap().code(), Some(3));

    let found = collector.wait_until(WAIT, |seen| seen.iter().any(|e| is_exit_of(e, pid)));
    let events = collector.from_cgroup(cgroup.id());
    if !found {
        dump(&events);
    }
    assert!(found, "no exit event for pid {pid}");
    let exec = events
        .iter()
        .find_map(|e| match &e.body {
            Body::Exec(exec) if e.process.pid == Some(pid) => Some((e, exec)),
            _ => None,
        })
        .expect("exec event from the test cgroup");
    assert_eq!(exec.1.filename, "/bin/sh");
    assert_eq!(exec.1.argv, ["/bin/sh", "-c", "exit 3"]);
    assert_eq!(exec.0.process.ppid, Some(std::process::id()));
    assert_eq!(exec.0.process.comm.as_deref(), Some("sh"));
    let exit = events.iter().find(|e| is_exit_of(e, pid)).unwrap();
    let Body::Exit(exit) = &exit.body else {
        unreachable!()
    };
    assert_eq!(exit.exit_status, Some(3));
}

#[test]
fn the_build_asked_for_is_loaded_and_every_program_runs() {
    if !privileged("the_build_asked_for_is_loaded_and_every_program_runs") {
        return;
    }
    let collector = collector(&SensorsConfig::default());
    let expected = tests::test_program_variant()
        .unwrap()
        .unwrap_or(ProgramVariant::Typed);
    assert_eq!(collector.variant(), expected);
    let missing: Vec<_> = collector
        .programs()
        .iter()
        .filter(|p| p.missing.is_some())
        .collect();
    assert!(missing.is_empty(), "programs not running: {missing:?}");
    // Every hook and every tail-called program the build has.
    let names: Vec<_> = collector.programs().iter().map(|p| p.name).collect();
    for name in [
        "sys_exit",
        "sys_exit_path_op",
        "sys_exit_rename",
        "sys_exit_as_passed",
    ] {
        assert!(names.contains(&name), "{name} not among {names:?}");
    }
    assert_eq!(
        names.contains(&"sys_exit_open"),
        expected == ProgramVariant::ProbeRead,
        "the probe-read build resolves opens in a tail-called program: {names:?}"
    );
}

#[test]
fn detached_sensors_see_nothing_and_see_again_once_attached() {
    if !privileged("detached_sensors_see_nothing_and_see_again_once_attached") {
        return;
    }
    let mut sensors = Sensors::load(&SensorsConfig::default(), ProgramSet::Sensors).unwrap();
    let cgroup = TestCgroup::for_test("detach").unwrap();
    let exit_with = |code: i32| {
        let mut child = cgroup
            .command("/bin/sh")
            .unwrap()
            .args(["-c", &format!("exit {code}")])
            .spawn()
            .unwrap();
        assert_eq!(child.wait().unwrap().code(), Some(code));
        child.id()
    };
    sensors.detach().unwrap();
    let unseen = exit_with(4);
    sensors.attach().unwrap();
    // Attaching twice keeps one link per program.
    sensors.attach().unwrap();
    let seen = exit_with(5);

    let mut collector = Collector::with_sensors(sensors, Duration::from_millis(200)).unwrap();
    let found = collector.wait_until(WAIT, |seen_so_far| {
        seen_so_far.iter().any(|e| is_exit_of(e, seen))
    });
    // Whatever else was on its way is in by now.
    collector.collect_for(Duration::from_millis(300));
    let events = collector.from_cgroup(cgroup.id());
    if !found {
        dump(&events);
    }
    assert!(found, "no exit event for pid {seen} after attaching again");
    let of = |pid: u32| events.iter().filter(|e| e.process.pid == Some(pid)).count();
    assert_eq!(of(unseen), 0, "events of pid {unseen}, run while detached");
    // Its exec and exit, once each: no second link.
    assert_eq!(of(seen), 2, "exec and exit of pid {seen}");
}

#[test]
fn detach_returns_once_a_forked_process_holding_the_links_lets_go() {
    if !privileged("detach_returns_once_a_forked_process_holding_the_links_lets_go") {
        return;
    }
    // A process forked while the links are open holds their descriptors until it execs or
    // exits (any thread's spawn does, for a moment): the programs run on until then, and
    // `detach` returns only after.
    let mut sensors = Sensors::load(&SensorsConfig::default(), ProgramSet::Sensors).unwrap();
    let hold = Duration::from_millis(300);
    // SAFETY: the child only sleeps and exits, both async-signal-safe.
    let child = unsafe { libc::fork() };
    if child == 0 {
        let nap = libc::timespec {
            tv_sec: 0,
            tv_nsec: hold.as_nanos() as libc::c_long,
        };
        // SAFETY: as above.
        unsafe {
            libc::nanosleep(&nap, std::ptr::null_mut());
            libc::_exit(0);
        }
    }
    assert!(child > 0, "fork: {}", std::io::Error::last_os_error());
    let start = std::time::Instant::now();
    let detached = sensors.detach();
    let waited = start.elapsed();
    let mut status = 0;
    // SAFETY: our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    detached.unwrap();
    assert!(
        waited >= hold - Duration::from_millis(100),
        "detach returned after {waited:?}, while the forked process still held the links"
    );
}

#[test]
fn write_opens_are_reported_and_harmless_or_read_only_opens_are_not() {
    if !privileged("write_opens_are_reported_and_harmless_or_read_only_opens_are_not") {
        return;
    }
    let mut collector = collector(&SensorsConfig::default());
    let cgroup = TestCgroup::for_test("files").unwrap();
    let id = std::process::id();
    let shm = format!("/dev/shm/detector-test-{id}");
    let ordinary = std::env::temp_dir().join(format!("detector-test-ordinary-{id}"));
    std::fs::write(&ordinary, "data").unwrap();
    let script = format!(
        "echo x > {shm}; echo y > /dev/null; cat {} > /dev/null; rm -f {shm}",
        ordinary.display()
    );
    let pid = cgroup.run_shell(&script).unwrap();
    let done = collector.wait_for_exit(WAIT, pid);
    std::fs::remove_file(&ordinary).unwrap();
    let events = collector.from_cgroup(cgroup.id());
    assert!(done, "no exit event for pid {pid}");
    let files: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.body {
            Body::File(f) => Some(f),
            _ => None,
        })
        .collect();
    let write = files.iter().find(|f| f.path == shm);
    if write.is_none() {
        dump(&events);
    }
    let write = write.expect("write-open of the /dev/shm file");
    assert!(write.write && write.sensitive && !write.read_sensitive);
    assert!(
        files.iter().all(|f| f.path != "/dev/null"),
        "/dev/null is excluded in the kernel"
    );
    let ordinary = ordinary.display().to_string();
    assert!(
        files.iter().all(|f| f.path != ordinary),
        "a read-only open of an ordinary file is not reported"
    );
}

#[test]
fn write_opens_carry_the_path_the_kernel_opened() {
    if !privileged("write_opens_carry_the_path_the_kernel_opened") {
        return;
    }
    let mut collector = collector(&SensorsConfig::default());
    let cgroup = TestCgroup::for_test("resolve").unwrap();
    // Under /dev/shm, a mount of its own: the climb crosses from it into the root mount.
    let dir = format!("/dev/shm/detector-resolve-{}", std::process::id());
    std::fs::create_dir_all(format!("{dir}/sub")).unwrap();
    std::os::unix::fs::symlink(format!("{dir}/target"), format!("{dir}/link")).unwrap();
    // A relative path, a symlink, `..`, and opens that fail: absolute, relative, and with `..`.
    let script = format!(
        "cd {dir} && echo a > relative; echo b > link; echo c > sub/../dotdot; \
         (echo d > {dir}/missing/file) 2>/dev/null; (echo e > missing/relative) 2>/dev/null; \
         (cd sub && echo f > ../missing/dotted) 2>/dev/null; true"
    );
    let pid = cgroup.run_shell(&script).unwrap();
    let done = collector.wait_for_exit(WAIT, pid);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(done, "no exit event for pid {pid}");
    let events = collector.from_cgroup(cgroup.id());
    let files: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.body {
            Body::File(f) if f.write => Some(f),
            _ => None,
        })
        .collect();
    let find = |path: String| {
        let found = files.iter().find(|f| f.path == path).copied();
        if found.is_none() {
            dump(&events);
        }
        found.unwrap_or_else(|| panic!("no write-open of {path}"))
    };
    for path in [
        format!("{dir}/relative"),
        format!("{dir}/target"),
        format!("{dir}/dotdot"),
    ] {
        let open = find(path);
        assert!(
            open.resolved && !open.relative && !open.outside_root,
            "{open:?}"
        );
        assert!(matches!(open.result, Some(fd) if fd >= 0), "{open:?}");
    }
    // A failed open has no file: the path as passed, and the error.
    let failed = find(format!("{dir}/missing/file"));
    assert!(!failed.resolved, "{failed:?}");
    assert_eq!(failed.result, Some(-2), "ENOENT");
    // A relative one is joined to the working directory, resolved in the kernel.
    let relative = find(format!("{dir}/missing/relative"));
    assert!(
        relative.joined && relative.relative && !relative.resolved,
        "{relative:?}"
    );
    assert_eq!(relative.result, Some(-2), "ENOENT");
    // `..` is resolved by its text in user space; the kernel's path is kept.
    let dotted = find(format!("{dir}/missing/dotted"));
    assert_eq!(
        dotted.original_path,
        Some(format!("{dir}/sub/../missing/dotted")),
        "{dotted:?}"
    );
    assert!(dotted.joined && dotted.sensitive, "under /dev: {dotted:?}");
}

#[test]
fn reads_of_read_sensitive_paths_are_reported() {
    if !privileged("reads_of_read_sensitive_paths_are_reported") {
        return;
    }
    let secret_dir = std::env::temp_dir().join(format!("detector-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&secret_dir).unwrap();
    let secret = secret_dir.join("token");
    std::fs::write(&secret, "s3cr3t").unwrap();
    let mut config = SensorsConfig::default();
    config
        .read_sensitive_paths
        .push(secret_dir.display().to_string());
    let mut collector = collector(&config);
    let cgroup = TestCgroup::for_test("secrets").unwrap();
    let pid = cgroup
        .run_shell(&format!("cat {} /etc/shadow > /dev/null", secret.display()))
        .unwrap();
    let done = collector.wait_for_exit(WAIT, pid);
    std::fs::remove_dir_all(&secret_dir).unwrap();
    assert!(done, "no exit event for pid {pid}");
    let events = collector.from_cgroup(cgroup.id());
    let read = |path: &str| {
        events.iter().any(
            |e| matches!(&e.body, Body::File(f) if f.path == path && f.read_sensitive && !f.write),
        )
    };
    let secret = secret.display().to_string();
    if !read(&secret) || !read("/etc/shadow") {
        dump(&events);
    }
    assert!(read(&secret), "read of a configured read-sensitive path");
    assert!(read("/etc/shadow"), "read of a default read-sensitive path");
}

#[test]
fn unlink_chmod_and_rename_of_sensitive_paths_are_reported_relative_ones_joined() {
    if !privileged("unlink_chmod_and_rename_of_sensitive_paths_are_reported_relative_ones_joined") {
        return;
    }
    // Not under /dev, whose writes are all sensitive.
    let dir = std::env::temp_dir()
        .join(format!("detector-pathops-{}", std::process::id()))
        .display()
        .to_string();
    let guarded = format!("{dir}/guarded");
    std::fs::create_dir_all(format!("{guarded}/tree")).unwrap();
    std::fs::create_dir_all(format!("{dir}/plain")).unwrap();
    for file in [
        "tree/leaf",
        "mode",
        "old",
        "gone",
        "absolute",
        "dotted",
        "renamed",
    ] {
        std::fs::write(format!("{guarded}/{file}"), "x").unwrap();
    }
    for file in ["mode", "old", "gone", "moved", "dotplain"] {
        std::fs::write(format!("{dir}/plain/{file}"), "x").unwrap();
    }
    let mut config = SensorsConfig::default();
    config.sensitive_write_paths.push(guarded.clone());
    let mut collector = collector(&config);
    let cgroup = TestCgroup::for_test("pathops").unwrap();
    // Relative to the working directory (fchmodat, renameat2 and unlinkat with AT_FDCWD), to a
    // directory descriptor (rm -r removes a tree's entries with unlinkat on the directory's
    // descriptor), a rename whose target alone is sensitive, an absolute path, and the same
    // relative operations on paths that are not sensitive. Then paths with `.` and `..`,
    // which the kernel leaves to user space to resolve and classify: a sensitive one reached
    // from elsewhere, a rename out of the sensitive directory, and one that only passes
    // through it.
    let script = format!(
        "cd {guarded} && chmod 600 mode && mv old new && rm gone && rm -r tree && \
         chmod 600 {guarded}/absolute && \
         cd {dir}/plain && chmod 600 mode && mv old new && rm gone && \
         cd {dir} && mv plain/moved guarded/moved && \
         cd {dir}/plain && chmod 600 ../guarded/dotted && \
         cd {guarded} && mv ./renamed ../plain/renamed && \
         chmod 600 {guarded}/../plain/dotplain"
    );
    let pid = cgroup.run_shell(&script).unwrap();
    let done = collector.wait_for_exit(WAIT, pid);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(done, "no exit event for pid {pid}");
    let events = collector.from_cgroup(cgroup.id());
    let ops: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.body {
            Body::File(f) if f.op != FileOperation::Open => Some(f),
            _ => None,
        })
        .collect();
    let find = |op: FileOperation, path: String| {
        let found = ops.iter().find(|f| f.op == op && f.path == path).copied();
        if found.is_none() {
            dump(&events);
        }
        found.unwrap_or_else(|| panic!("no {op:?} of {path}"))
    };
    let chmod = find(FileOperation::Chmod, format!("{guarded}/mode"));
    assert!(
        chmod.joined && chmod.relative && chmod.sensitive,
        "{chmod:?}"
    );
    assert_eq!(
        (chmod.flags, chmod.dirfd, chmod.result),
        (0o600, Some(-100), Some(0))
    );
    let rename = find(FileOperation::Rename, format!("{guarded}/old"));
    assert_eq!(
        rename.target.as_deref(),
        Some(format!("{guarded}/new").as_str())
    );
    assert!(rename.joined && rename.sensitive, "{rename:?}");
    let unlink = find(FileOperation::Unlink, format!("{guarded}/gone"));
    assert!(unlink.joined && unlink.sensitive, "{unlink:?}");
    // rm -r: the leaf through the tree's descriptor, then the tree through its parent's.
    let leaf = find(FileOperation::Unlink, format!("{guarded}/tree/leaf"));
    assert!(
        leaf.joined && matches!(leaf.dirfd, Some(fd) if fd >= 0),
        "{leaf:?}"
    );
    find(FileOperation::Unlink, format!("{guarded}/tree"));
    let absolute = find(FileOperation::Chmod, format!("{guarded}/absolute"));
    assert!(!absolute.joined && !absolute.relative, "{absolute:?}");
    let into = find(FileOperation::Rename, format!("{dir}/plain/moved"));
    assert_eq!(
        into.target.as_deref(),
        Some(format!("{guarded}/moved").as_str())
    );
    let dotted = find(FileOperation::Chmod, format!("{guarded}/dotted"));
    assert_eq!(
        dotted.original_path,
        Some(format!("{dir}/plain/../guarded/dotted")),
        "{dotted:?}"
    );
    assert!(dotted.joined && dotted.sensitive, "{dotted:?}");
    let out = find(FileOperation::Rename, format!("{guarded}/renamed"));
    assert_eq!(out.target, Some(format!("{dir}/plain/renamed")), "{out:?}");
    assert_eq!(out.original_path, Some(format!("{guarded}/./renamed")));
    assert_eq!(
        out.original_target,
        Some(format!("{guarded}/../plain/renamed"))
    );
    let plain: Vec<_> = ops
        .iter()
        .filter(|f| {
            f.path.starts_with(&format!("{dir}/plain/")) && f.path != format!("{dir}/plain/moved")
        })
        .collect();
    assert!(
        plain.is_empty(),
        "operations on paths that are not sensitive: {plain:?}"
    );
    assert_eq!(ops.len(), 9, "{ops:#?}");
}

#[test]
fn tcp_connect_to_a_loopback_listener_appears_with_its_port() {
    if !privileged("tcp_connect_to_a_loopback_listener_appears_with_its_port") {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut collector = collector(&SensorsConfig::default());
    let cgroup = TestCgroup::for_test("connect").unwrap();
    let accept = std::thread::spawn(move || listener.accept().map(|_| ()));
    let pid = {
        let mut child = cgroup
            .command("/bin/bash")
            .unwrap()
            .args(["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}")])
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(child.wait().unwrap().success());
        pid
    };
    accept.join().unwrap().unwrap();
    let found = collector.wait_until(WAIT, |seen| {
        seen.iter().any(|e| {
            e.process.pid == Some(pid) && matches!(&e.body, Body::Connect(c) if c.dport == port)
        })
    });
    let events = collector.from_cgroup(cgroup.id());
    if !found {
        dump(&events);
    }
    assert!(found, "connect event with port {port}");
    let connect = events
        .iter()
        .find_map(|e| match &e.body {
            Body::Connect(c) if c.dport == port => Some(c),
            _ => None,
        })
        .expect("from the test cgroup");
    assert_eq!(connect.daddr, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(connect.protocol, "tcp");
    assert_eq!(connect.family, "ipv4");
}

#[test]
fn egress_bytes_of_a_sender_are_counted_for_its_cgroup() {
    if !privileged("egress_bytes_of_a_sender_are_counted_for_its_cgroup") {
        return;
    }
    const SENT: u64 = 8 << 20;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut collector = collector(&SensorsConfig::default());
    let cgroup = TestCgroup::for_test("egress").unwrap();
    let receiver = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut received = Vec::new();
        stream.read_to_end(&mut received).unwrap();
        received.len() as u64
    });
    // /dev/tcp is a bash feature (Debian's sh is dash).
    let mut sender = cgroup
        .command("/bin/bash")
        .unwrap()
        .args([
            "-c",
            &format!("head -c {SENT} /dev/zero > /dev/tcp/127.0.0.1/{port}"),
        ])
        .spawn()
        .unwrap();
    assert!(sender.wait().unwrap().success());
    assert_eq!(receiver.join().unwrap(), SENT);
    let total = |seen: &[Event]| {
        seen.iter()
            .filter(|e| e.cgroup_id == Some(cgroup.id()))
            .filter_map(|e| match &e.body {
                Body::Egress(egress) => Some(egress.total_bytes),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    };
    collector.wait_until(WAIT, |seen| total(seen) >= SENT);
    // Let a last sample in, in case the count was still growing.
    collector.collect_for(Duration::from_millis(500));
    let counted = total(collector.seen());
    let ratio = counted as f64 / SENT as f64;
    eprintln!(
        "egress: sent {SENT} bytes of payload, counted {counted} at the IP layer ({ratio:.4})"
    );
    assert!(
        (0.9..=1.1).contains(&ratio),
        "counted {counted} bytes for {SENT} sent"
    );
}

#[test]
fn the_daemons_own_activity_is_not_reported() {
    if !privileged("the_daemons_own_activity_is_not_reported") {
        return;
    }
    let mut collector = collector(&SensorsConfig::default());
    let me = std::process::id();
    let path = format!("/dev/shm/detector-own-{me}");
    // This process is the daemon here: its write-open, read of a sensitive file and connect
    // must not show up, while the same from a child does (a positive control).
    std::fs::write(&path, "own").unwrap();
    let _ = std::fs::read("/etc/shadow");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let _ = std::net::TcpStream::connect(listener.local_addr().unwrap());
    let cgroup = TestCgroup::for_test("own").unwrap();
    let pid = cgroup.run_shell(&format!("echo child > {path}")).unwrap();
    let done = collector.wait_until(WAIT, |seen| {
        seen.iter().any(|e| {
            e.process.pid == Some(pid) && matches!(&e.body, Body::File(f) if f.path == path)
        })
    });
    std::fs::remove_file(&path).unwrap();
    collector.collect_for(Duration::from_millis(300));
    assert!(done, "the child's write is reported (positive control)");
    let own: Vec<_> = collector
        .seen()
        .iter()
        .filter(|e| e.process.pid == Some(me))
        .collect();
    if !own.is_empty() {
        dump(&own);
    }
    assert!(
        own.is_empty(),
        "{} events from the daemon itself",
        own.len()
    );
}

#[test]
fn repeated_write_opens_are_suppressed_and_counted() {
    if !privileged("repeated_write_opens_are_suppressed_and_counted") {
        return;
    }
    let config = SensorsConfig {
        write_dedup_window_ms: 1_000,
        ..SensorsConfig::default()
    };
    let mut collector = collector(&config);
    let cgroup = TestCgroup::for_test("dedup").unwrap();
    let path = format!("/dev/shm/detector-dedup-{}", std::process::id());
    // Ten appends within the window, then one after it.
    let pid = cgroup
        .run_shell(&format!(
            "for i in 1 2 3 4 5 6 7 8 9 10; do echo $i >> {path}; done; sleep 1.5; echo 11 >> {path}"
        ))
        .unwrap();
    let done = collector.wait_for_exit(WAIT, pid);
    std::fs::remove_file(&path).unwrap();
    assert!(done);
    let events = collector.from_cgroup(cgroup.id());
    let suppressed: Vec<u32> = events
        .iter()
        .filter_map(|e| match &e.body {
            Body::File(f) if f.path == path => Some(f.suppressed),
            _ => None,
        })
        .collect();
    if suppressed.len() != 2 {
        dump(&events);
    }
    assert_eq!(
        suppressed,
        [0, 9],
        "the first append is reported, nine are counted, the one after the window carries the count"
    );
}

#[test]
fn with_watch_containers_only_container_cgroups_are_reported() {
    if !privileged("with_watch_containers_only_container_cgroups_are_reported") {
        return;
    }
    let id = std::process::id();
    // A Docker-style container scope (a container root of its own) and a plain cgroup, both
    // made before the sensors load so the first scan of container roots finds the scope.
    let container = TestCgroup::create(&format!("system.slice/docker-{:0>64x}.scope", id)).unwrap();
    let host = TestCgroup::for_test("host").unwrap();
    let config = watch_containers();
    let mut collector = collector(&config);
    let run = |cgroup: &TestCgroup, name: &str| {
        let file = format!("/dev/shm/detector-test-{name}-{id}");
        let pid = cgroup
            .run_shell(&format!(
                "cat /etc/shadow > /dev/null; echo x > {file}; rm -f {file}"
            ))
            .unwrap();
        (pid, file)
    };
    let (in_container, container_file) = run(&container, "container");
    let (on_host, _) = run(&host, "host");
    let done = collector.wait_until(WAIT, |seen| {
        seen.iter().any(|e| is_exit_of(e, in_container))
    });
    // What the host process would have produced had it been watched arrives as fast.
    collector.collect_for(Duration::from_millis(500));
    let watched = collector.from_cgroup(container.id());
    let unwatched = collector.from_cgroup(host.id());
    if !done {
        dump(&watched);
    }
    assert!(
        done,
        "no exit event for pid {in_container} in the container"
    );
    let file = |path: &str, read_sensitive: bool| {
        watched.iter().any(|e| {
            matches!(&e.body, Body::File(f) if f.path == path && f.read_sensitive == read_sensitive)
        })
    };
    assert!(
        file("/etc/shadow", true),
        "a read-sensitive read in a container"
    );
    assert!(file(&container_file, false), "a write-open in a container");
    assert!(
        unwatched.is_empty(),
        "nothing from a process outside containers (pid {on_host}): {unwatched:?}"
    );
}

/// Waits for the last reader's exit, then asserts that every one of `readers` (pids in
/// `cgroup`) had its read of `/etc/shadow` reported as read-sensitive.
fn assert_each_read_of_shadow_reported(
    collector: &mut Collector,
    cgroup: &TestCgroup,
    readers: &[u32],
) {
    let last = *readers.last().unwrap();
    let done = collector.wait_for_exit(WAIT, last);
    assert!(done, "no exit event for pid {last}");
    let watched = collector.from_cgroup(cgroup.id());
    let missed: Vec<u32> = readers
        .iter()
        .copied()
        .filter(|&pid| {
            !watched.iter().any(|e| {
                e.process.pid == Some(pid)
                    && matches!(&e.body, Body::File(f) if f.path == "/etc/shadow" && f.read_sensitive)
            })
        })
        .collect();
    if !missed.is_empty() {
        dump(&watched);
    }
    assert!(
        missed.is_empty(),
        "reads of /etc/shadow not reported for {} of {} processes: {missed:?}",
        missed.len(),
        readers.len()
    );
}

/// `watch: containers`, the DaemonSet's setting.
fn watch_containers() -> SensorsConfig {
    SensorsConfig {
        watch: Watch::Containers,
        ..SensorsConfig::default()
    }
}

/// Pins the calling thread (and the children it starts) to one CPU until dropped.
struct PinnedToOneCpu(libc::cpu_set_t);

impl PinnedToOneCpu {
    fn new(cpu: usize) -> Self {
        // SAFETY: plain calls on a zeroed `cpu_set_t` owned here; pid 0 is this thread.
        unsafe {
            let mut before: libc::cpu_set_t = std::mem::zeroed();
            assert_eq!(
                libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut before),
                0
            );
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut one);
            assert_eq!(
                libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &one),
                0,
                "pin to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
            Self(before)
        }
    }
}

impl Drop for PinnedToOneCpu {
    fn drop(&mut self) {
        // SAFETY: restores the mask read in `new`.
        unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &self.0) };
    }
}

#[test]
fn reads_right_after_another_process_exits_on_the_same_cpu_are_seen() {
    if !privileged("reads_right_after_another_process_exits_on_the_same_cpu_are_seen") {
        return;
    }
    // `sys_exit` keeps the last task seen on each CPU, known by its kernel stack. A process
    // that exits frees its stack, and the next one started on that CPU tends to get it: the
    // cache must not take the new process for the old one. Here the old one is outside any
    // container (not watched) and the new one is in a container reading a secret, one after
    // the other on one CPU, many times.
    let id = std::process::id();
    let container =
        TestCgroup::create(&format!("system.slice/docker-{:0>63x}1.scope", id)).unwrap();
    let host = TestCgroup::for_test("host-cpu").unwrap();
    let config = watch_containers();
    let mut collector = collector(&config);
    let cat = |cgroup: &TestCgroup, file: &str| {
        let mut child = cgroup
            .command("/bin/cat")
            .unwrap()
            .arg(file)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        assert!(child.wait().unwrap().success(), "cat {file}");
        child.id()
    };
    const ROUNDS: usize = 40;
    let readers: Vec<u32> = {
        let _pinned = PinnedToOneCpu::new(0);
        (0..ROUNDS)
            .map(|_| {
                cat(&host, "/etc/hostname");
                cat(&container, "/etc/shadow")
            })
            .collect()
    };
    assert_each_read_of_shadow_reported(&mut collector, &container, &readers);
    assert!(
        collector.from_cgroup(host.id()).is_empty(),
        "nothing from the processes outside containers"
    );
}

#[test]
fn no_task_is_taken_for_one_that_exited_while_the_sensors_were_detached() {
    if !privileged("no_task_is_taken_for_one_that_exited_while_the_sensors_were_detached") {
        return;
    }
    // While detached, exits are not counted: attaching again must forget the tasks cached
    // before. A process outside containers opens a file (cached), the sensors are detached, it
    // exits, they are attached again, and a process in a container on the same CPU (likely on
    // the freed stack) reads a secret.
    use std::io::{BufRead as _, BufReader};
    let id = std::process::id();
    let container =
        TestCgroup::create(&format!("system.slice/docker-{:0>63x}2.scope", id)).unwrap();
    let host = TestCgroup::for_test("host-detach").unwrap();
    let config = watch_containers();
    let mut sensors = Sensors::load(&config, ProgramSet::Sensors).unwrap();
    const ROUNDS: usize = 20;
    let readers: Vec<u32> = {
        let _pinned = PinnedToOneCpu::new(0);
        (0..ROUNDS)
            .map(|_| {
                let mut opener = host
                    .command("/bin/sh")
                    .unwrap()
                    .args(["-c", "read x < /etc/hostname; echo opened; read y"])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                let mut line = String::new();
                BufReader::new(opener.stdout.take().unwrap())
                    .read_line(&mut line)
                    .unwrap();
                assert_eq!(line.trim(), "opened");
                sensors.detach().unwrap();
                drop(opener.stdin.take());
                opener.wait().unwrap();
                sensors.attach().unwrap();
                let mut reader = container
                    .command("/bin/cat")
                    .unwrap()
                    .arg("/etc/shadow")
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap();
                assert!(reader.wait().unwrap().success());
                reader.id()
            })
            .collect()
    };
    let mut collector = Collector::with_sensors(sensors, Duration::from_millis(200)).unwrap();
    assert_each_read_of_shadow_reported(&mut collector, &container, &readers);
}

/// A run of the test helper's `chroot-writes` or `chroot-reads` in a cgroup of its own: it
/// opens a file outside `root` through a directory descriptor from before chrooting into it,
/// then a path inside.
struct ChrootOpens {
    command: String,
    cgroup: TestCgroup,
    pid: u32,
    status: std::process::ExitStatus,
    exit_seen: bool,
}

impl ChrootOpens {
    /// Runs `command` to its end and waits for its exit event. Nothing is asserted yet, so that
    /// the caller removes its files first.
    fn run(
        collector: &mut Collector,
        command: &str,
        root: &std::path::Path,
        outside: &std::path::Path,
        inside: &str,
    ) -> Self {
        let cgroup = TestCgroup::for_test(command).unwrap();
        let mut child = cgroup
            .command(env!("CARGO_BIN_EXE_detector-test-helper"))
            .unwrap()
            .arg(command)
            .arg(root)
            .arg(outside)
            .arg(inside)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let status = child.wait().unwrap();
        let exit_seen = collector.wait_for_exit(WAIT, pid);
        Self {
            command: command.to_owned(),
            cgroup,
            pid,
            status,
            exit_seen,
        }
    }

    /// The events of its cgroup, once it succeeded and its exit was seen.
    fn events<'a>(&self, collector: &'a Collector) -> Vec<&'a Event> {
        assert!(self.status.success(), "{}: {}", self.command, self.status);
        assert!(self.exit_seen, "no exit event for pid {}", self.pid);
        collector.from_cgroup(self.cgroup.id())
    }

    /// The process's open of `path` with write intent or without.
    fn opened<'a>(
        &self,
        events: &[&'a Event],
        write: bool,
        path: &str,
    ) -> Option<&'a detector::event::FileActivity> {
        events.iter().find_map(|e| match &e.body {
            Body::File(f)
                if e.process.pid == Some(self.pid) && f.write == write && f.path == path =>
            {
                Some(f)
            }
            _ => None,
        })
    }
}

#[test]
fn reads_in_a_chroot_are_classified_by_the_path_the_process_sees() {
    if !privileged("reads_in_a_chroot_are_classified_by_the_path_the_process_sees") {
        return;
    }
    // The process's root is a directory in the middle of its mount, as after chroot: a read of
    // its `/etc/shadow` is one of `/etc/shadow` (the prefilter's climb stops at the process's
    // root, not at the mount's). A read through a directory descriptor from before the chroot
    // climbs past the root to the filesystem's own: reported with the path in its namespace
    // when that is read-sensitive there.
    let base = std::env::temp_dir().join(format!("detector-chroot-reads-{}", std::process::id()));
    let root = base.join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/shadow"), "root:*:1::::::\n").unwrap();
    let secrets = base.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let outside = secrets.join("token");
    std::fs::write(&outside, "s3cr3t").unwrap();
    let mut config = SensorsConfig::default();
    config
        .read_sensitive_paths
        .push(secrets.display().to_string());
    let mut collector = collector(&config);
    let run = ChrootOpens::run(
        &mut collector,
        "chroot-reads",
        &root,
        &outside,
        "/etc/shadow",
    );
    std::fs::remove_dir_all(&base).unwrap();
    let events = run.events(&collector);
    let read = |path: &str| run.opened(&events, false, path);
    let outside = outside.display().to_string();
    if read("/etc/shadow").is_none() || read(&outside).is_none() {
        dump(&events);
    }
    let shadow = read("/etc/shadow").expect("the read of /etc/shadow in the new root");
    assert!(
        shadow.read_sensitive && shadow.resolved && !shadow.outside_root,
        "{shadow:?}"
    );
    let out = read(&outside).expect("the read outside the root, with its full path");
    assert!(
        out.read_sensitive && out.resolved && out.outside_root,
        "{out:?}"
    );
}

#[test]
fn a_write_outside_the_process_root_is_flagged_with_the_path_in_its_namespace() {
    if !privileged("a_write_outside_the_process_root_is_flagged_with_the_path_in_its_namespace") {
        return;
    }
    // A chrooted process writes through a directory fd opened before the chroot (outside its
    // root: the path as the namespace sees it, flagged) and to a path in its new root (the path
    // as the process sees it).
    let base = std::env::temp_dir().join(format!("detector-chroot-{}", std::process::id()));
    let root = base.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let outside = base.join("outside");
    let mut collector = collector(&SensorsConfig::default());
    let run = ChrootOpens::run(&mut collector, "chroot-writes", &root, &outside, "/inside");
    let on_disk = (outside.exists(), root.join("inside").exists());
    std::fs::remove_dir_all(&base).unwrap();
    let events = run.events(&collector);
    assert_eq!(on_disk, (true, true), "both files written");
    let written = |path: &str| run.opened(&events, true, path);
    let outside = outside.display().to_string();
    if written(&outside).is_none() || written("/inside").is_none() {
        dump(&events);
    }
    let out = written(&outside).expect("the write outside the root, with its full path");
    assert!(out.resolved && out.outside_root, "{out:?}");
    let inside = written("/inside").expect("the write in the new root, as the process sees it");
    assert!(inside.resolved && !inside.outside_root, "{inside:?}");
}

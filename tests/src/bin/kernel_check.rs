//! `detector-kernel-check`: loads the real sensors on the running kernel and checks each of
//! them, and the quarantine, with real processes in cgroups of its own. Run as root, in a
//! guest of the kernel matrix (`detector-kernels`) or directly on a machine.
//!
//! `detector-kernel-check [--timeout SECS]` (each check's limit, 10 s by default).
//!
//! Human lines go to standard error; standard output gets exactly one line,
//! `DETECTOR-KERNEL-CHECK {json}` (see `tests::kernels::report::CheckReport`): the kernel,
//! why the sensors did not load (the verifier's reason included) or each program attached,
//! and each check's result. When the sensors do not load, every check is reported "not run".
//! The exit status is 0 only when everything loaded and every check passed.
//!
//! Each check runs in a cgroup of its own (removed afterwards with whatever it left running),
//! waits for its events at most its limit, and a failure or a panic in one fails that check
//! alone. The checks, in order:
//!
//! - `exec`: `sh -c 'exit 3'`: its exec with the argv, its exit with status 3.
//! - `file-write`: a write-open creating a file under `/etc`: a file event with its path.
//! - `read-sensitive`: a read of `/etc/shadow`: a read-sensitive file event.
//! - `path-ops`: `chmod u+s` of a file under `/tmp`, an unlink and a rename under `/etc`.
//! - `syscall`: `unshare -u true`: an unshare event tagged `newuts`.
//! - `connect`: bash's `/dev/tcp` to a loopback listener of the checker: a connect event
//!   with its port.
//! - `egress`: bytes bash sends over loopback are counted for its cgroup.
//! - `quarantine`: the cgroup blocked: a connect fails at once with EPERM and is reported
//!   blocked; released: a connect works again.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, TcpListener},
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use detector::{
    config::SensorsConfig,
    event::{Body, Event, FileOperation, SyscallOperation},
};
use tests::{
    Collector, TestCgroup, is_exit_of,
    kernels::report::{CheckReport, CheckResult, ProgramStatus},
};

/// Each check's limit unless `--timeout` says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the egress counters are sampled into events.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(200);
/// Bytes the egress check sends.
const EGRESS_BYTES: u64 = 1 << 20;
/// `CLONE_NEWUTS`, what `unshare -u` asks for.
const CLONE_NEWUTS: u64 = 0x0400_0000;

/// One check: its name and what it runs. The detail says what was seen.
type Check = fn(&mut Context) -> anyhow::Result<String>;

/// The checks, in the order run.
const CHECKS: [(&str, Check); 9] = [
    ("exec", exec),
    ("file-write", file_write),
    ("read-sensitive", read_sensitive),
    ("path-ops", path_ops),
    ("io-uring", io_uring_open),
    ("syscall", syscall),
    ("connect", connect),
    ("egress", egress),
    ("quarantine", quarantine),
];

/// What every check works with.
struct Context {
    collector: Collector,
    /// When the running check must be done.
    deadline: Instant,
    /// This process's pid, in the names of what the checks create.
    pid: u32,
}

impl Context {
    /// Time left before the deadline.
    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Waits until an event of `cgroup` satisfies `matches`; the first that does. On failure
    /// the error names `what` and sums up what the cgroup produced.
    fn wait_for(
        &mut self,
        cgroup: &TestCgroup,
        what: &str,
        matches: impl Fn(&Event) -> bool,
    ) -> anyhow::Result<Event> {
        let id = cgroup.id();
        let left = self.left();
        self.collector.wait_until(left, |seen| {
            seen.iter().any(|e| e.cgroup_id == Some(id) && matches(e))
        });
        let events = self.collector.from_cgroup(id);
        if let Some(found) = events.iter().find(|e| matches(e)) {
            return Ok((*found).clone());
        }
        bail!(
            "no {what} within the limit; the cgroup's events: {}",
            summary(&events)
        )
    }
}

/// A short account of events, for a failed check's detail.
fn summary(events: &[&Event]) -> String {
    if events.is_empty() {
        return "none".to_owned();
    }
    let shown: Vec<String> = events
        .iter()
        .take(12)
        .map(|e| {
            let pid = e.process.pid.unwrap_or_default();
            match &e.body {
                Body::Exec(x) => format!("exec {} {:?} (pid {pid})", x.filename, x.argv),
                Body::Exit(x) => format!("exit {:?} (pid {pid})", x.exit_status),
                Body::File(f) => format!(
                    "file {} {}{} (write {}, sensitive {}, read-sensitive {})",
                    f.op.as_str(),
                    f.path,
                    f.target
                        .as_deref()
                        .map(|t| format!(" -> {t}"))
                        .unwrap_or_default(),
                    f.write,
                    f.sensitive,
                    f.read_sensitive
                ),
                Body::Connect(c) => {
                    format!("connect {}:{} blocked {}", c.daddr, c.dport, c.blocked)
                }
                Body::Syscall(s) => format!("syscall {} {:?} = {}", s.syscall, s.tags, s.result),
                Body::Egress(x) => format!("egress total {}", x.total_bytes),
                Body::Loss(x) => format!("loss {} {}", x.source, x.count),
            }
        })
        .collect();
    let more = events.len().saturating_sub(shown.len());
    let more = if more > 0 {
        format!("; {more} more")
    } else {
        String::new()
    };
    format!("{}{more}", shown.join("; "))
}

/// Runs `cmd` with its output captured, killing it once `limit` has passed; its pid and
/// output.
fn run_child(cmd: &mut Command, limit: Duration) -> anyhow::Result<(u32, Output)> {
    let program = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    for (n, pipe) in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .enumerate()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            let _ = tx.send((n, bytes));
        });
    }
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for a child")? {
            break status;
        }
        if started.elapsed() >= limit {
            // Our own child, not yet reaped.
            let _ = child.kill();
            let _ = child.wait();
            bail!("{program} was still running after {limit:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut output = Output {
        status,
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    // A grandchild holding a pipe open would keep a reader waiting: give up on it after a while.
    for _ in 0..2 {
        match rx.recv_timeout(Duration::from_secs(2)) {
            Ok((0, bytes)) => output.stdout = bytes,
            Ok((_, bytes)) => output.stderr = bytes,
            Err(_) => break,
        }
    }
    Ok((pid, output))
}

/// Runs `sh -c script` in `cgroup` within the check's limit; it must succeed. Its pid.
fn shell(ctx: &Context, cgroup: &TestCgroup, script: &str) -> anyhow::Result<u32> {
    let (pid, out) = run_child(cgroup.command("/bin/sh")?.args(["-c", script]), ctx.left())?;
    ensure!(
        out.status.success(),
        "`{script}` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(pid)
}

/// Files and directories a check made, removed on drop, failure or not.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(path)
            } else {
                std::fs::remove_file(path)
            };
        }
    }
}

fn cgroup(name: &str) -> anyhow::Result<TestCgroup> {
    TestCgroup::for_test(&format!("kernel-check-{name}"))
        .with_context(|| format!("cannot create the cgroup of the {name} check"))
}

fn exec(ctx: &mut Context) -> anyhow::Result<String> {
    let cgroup = cgroup("exec")?;
    let (pid, out) = run_child(
        cgroup.command("/bin/sh")?.args(["-c", "exit 3"]),
        ctx.left(),
    )?;
    ensure!(
        out.status.code() == Some(3),
        "sh -c 'exit 3' ended with {}",
        out.status
    );
    let exit = ctx.wait_for(&cgroup, "exit event of sh", |e| is_exit_of(e, pid))?;
    let Body::Exit(exit) = &exit.body else {
        bail!("not an exit: {exit:?}");
    };
    ensure!(
        exit.exit_status == Some(3),
        "exit status {:?}, not 3",
        exit.exit_status
    );
    let exec = ctx.wait_for(&cgroup, "exec event of sh", |e| {
        e.process.pid == Some(pid) && matches!(e.body, Body::Exec(_))
    })?;
    let Body::Exec(exec) = &exec.body else {
        bail!("not an exec: {exec:?}");
    };
    ensure!(
        exec.filename == "/bin/sh" && exec.argv == ["/bin/sh", "-c", "exit 3"],
        "exec of {} with {:?}, not /bin/sh with [\"/bin/sh\", \"-c\", \"exit 3\"]",
        exec.filename,
        exec.argv
    );
    Ok(format!(
        "exec {} {:?} and exit status 3 of pid {pid}",
        exec.filename, exec.argv
    ))
}

fn file_write(ctx: &mut Context) -> anyhow::Result<String> {
    let cgroup = cgroup("file-write")?;
    let path = format!("/etc/detector-kernel-check-{}", ctx.pid);
    let _cleanup = Cleanup(vec![PathBuf::from(&path)]);
    shell(ctx, &cgroup, &format!("echo x > {path}"))?;
    let event = ctx.wait_for(&cgroup, &format!("write-open of {path}"), |e| {
        matches!(&e.body, Body::File(f) if f.op == FileOperation::Open && f.path == path && f.write)
    })?;
    let Body::File(file) = &event.body else {
        bail!("not a file event: {event:?}");
    };
    ensure!(
        file.sensitive,
        "the write-open of {path} is not sensitive: {file:?}"
    );
    Ok(format!("write-open of {path}, sensitive"))
}

/// A write-open under `/etc` submitted through an io_uring ring (no `openat` call), by this
/// binary run again in the cgroup (`uring-open PATH`). On a kernel whose tracepoint the io_uring
/// program cannot use, it says so instead ("n/a").
fn io_uring_open(ctx: &mut Context) -> anyhow::Result<String> {
    if let Some(program) = ctx
        .collector
        .programs()
        .iter()
        .find(|p| p.name == "io_uring_complete" && p.unsupported)
    {
        return Ok(format!(
            "n/a: {}",
            program.missing.as_deref().unwrap_or("not on this kernel")
        ));
    }
    let cgroup = cgroup("io-uring")?;
    let path = format!("/etc/detector-kernel-check-uring-{}", ctx.pid);
    let _cleanup = Cleanup(vec![PathBuf::from(&path)]);
    let exe = std::env::current_exe().context("this checker's own path")?;
    let (_, out) = run_child(
        cgroup.command(&exe)?.args(["uring-open", &path]),
        ctx.left(),
    )?;
    ensure!(
        out.status.success(),
        "the ring's open of {path} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    ctx.wait_for(
        &cgroup,
        &format!("io_uring write-open of {path}"),
        |e| matches!(&e.body, Body::File(f) if f.path == path && f.write && f.io_uring),
    )?;
    Ok(format!("io_uring write-open of {path}"))
}

fn read_sensitive(ctx: &mut Context) -> anyhow::Result<String> {
    let cgroup = cgroup("read-sensitive")?;
    ensure!(
        Path::new("/etc/shadow").exists(),
        "no /etc/shadow on this system"
    );
    shell(ctx, &cgroup, "cat /etc/shadow > /dev/null")?;
    ctx.wait_for(&cgroup, "read-sensitive read of /etc/shadow", |e| {
        matches!(&e.body, Body::File(f) if f.path == "/etc/shadow" && f.read_sensitive && !f.write)
    })?;
    Ok("read of /etc/shadow, read-sensitive".to_owned())
}

fn path_ops(ctx: &mut Context) -> anyhow::Result<String> {
    let cgroup = cgroup("path-ops")?;
    let dir = std::env::temp_dir().join(format!("detector-kernel-check-{}", ctx.pid));
    let setuid = dir.join("setuid").display().to_string();
    let etc = format!("/etc/detector-kernel-check-{}", ctx.pid);
    let (gone, old, new) = (
        format!("{etc}-gone"),
        format!("{etc}-old"),
        format!("{etc}-new"),
    );
    let _cleanup = Cleanup(vec![
        dir.clone(),
        PathBuf::from(&gone),
        PathBuf::from(&old),
        PathBuf::from(&new),
    ]);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for file in [&setuid, &gone, &old] {
        std::fs::write(file, "x").with_context(|| format!("cannot write {file}"))?;
    }
    shell(
        ctx,
        &cgroup,
        &format!("chmod u+s {setuid} && rm {gone} && mv {old} {new}"),
    )?;
    ctx.wait_for(&cgroup, &format!("chmod u+s of {setuid}"), |e| {
        matches!(&e.body, Body::File(f)
            if f.op == FileOperation::Chmod && f.path == setuid && f.flags & 0o4000 != 0)
    })?;
    ctx.wait_for(
        &cgroup,
        &format!("unlink of {gone}"),
        |e| matches!(&e.body, Body::File(f) if f.op == FileOperation::Unlink && f.path == gone),
    )?;
    ctx.wait_for(&cgroup, &format!("rename of {old} to {new}"), |e| {
        matches!(&e.body, Body::File(f)
            if f.op == FileOperation::Rename && f.path == old && f.target.as_deref() == Some(new.as_str()))
    })?;
    Ok(format!(
        "chmod u+s of {setuid}, unlink of {gone}, rename of {old} to {new}"
    ))
}

fn syscall(ctx: &mut Context) -> anyhow::Result<String> {
    let cgroup = cgroup("syscall")?;
    // A namespace of its own for `true` alone: nothing changes outside it.
    shell(ctx, &cgroup, "unshare -u true")?;
    let event = ctx.wait_for(
        &cgroup,
        "unshare event",
        |e| matches!(&e.body, Body::Syscall(s) if s.op == SyscallOperation::Unshare),
    )?;
    let Body::Syscall(call) = &event.body else {
        bail!("not a syscall event: {event:?}");
    };
    ensure!(
        call.result == 0
            && call.flags.is_some_and(|f| f & CLONE_NEWUTS != 0)
            && call.tags.iter().any(|t| t == "newuts"),
        "unshare reported as {call:?}, not a successful CLONE_NEWUTS tagged newuts"
    );
    Ok(format!(
        "{} flags {:#x} tags {:?}",
        call.syscall,
        call.flags.unwrap_or_default(),
        call.tags
    ))
}

/// A listener on a free loopback port.
fn listener() -> anyhow::Result<(TcpListener, u16)> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot listen on 127.0.0.1")?;
    let port = listener.local_addr()?.port();
    Ok((listener, port))
}

/// bash's connect to `port` on loopback from `cgroup` (the connection waits in the
/// listener's backlog); its pid and output.
fn bash_connect(ctx: &Context, cgroup: &TestCgroup, port: u16) -> anyhow::Result<(u32, Output)> {
    run_child(
        cgroup
            .command("/bin/bash")?
            .args(["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}")]),
        ctx.left(),
    )
}

fn connect(ctx: &mut Context) -> anyhow::Result<String> {
    let (_listener, port) = listener()?;
    let cgroup = cgroup("connect")?;
    let (pid, out) = bash_connect(ctx, &cgroup, port)?;
    ensure!(
        out.status.success(),
        "bash could not connect to 127.0.0.1:{port}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let event = ctx.wait_for(&cgroup, &format!("connect event to port {port}"), |e| {
        e.process.pid == Some(pid) && matches!(&e.body, Body::Connect(c) if c.dport == port)
    })?;
    let Body::Connect(c) = &event.body else {
        bail!("not a connect event: {event:?}");
    };
    ensure!(
        c.daddr == IpAddr::V4(Ipv4Addr::LOCALHOST) && c.protocol == "tcp" && c.family == "ipv4",
        "connect reported as {c:?}"
    );
    Ok(format!(
        "{} {} {}:{}",
        c.family, c.protocol, c.daddr, c.dport
    ))
}

fn egress(ctx: &mut Context) -> anyhow::Result<String> {
    let (listener, port) = listener()?;
    listener.set_nonblocking(true)?;
    let cgroup = cgroup("egress")?;
    let left = ctx.left();
    let receiver = std::thread::spawn(move || -> anyhow::Result<u64> {
        let deadline = Instant::now() + left;
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    ensure!(Instant::now() < deadline, "no connection to receive from");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e).context("accept"),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(left))?;
        let mut received = Vec::new();
        stream
            .read_to_end(&mut received)
            .context("reading what was sent")?;
        Ok(received.len() as u64)
    });
    let (_, out) = run_child(
        cgroup.command("/bin/bash")?.args([
            "-c",
            &format!("head -c {EGRESS_BYTES} /dev/zero > /dev/tcp/127.0.0.1/{port}"),
        ]),
        ctx.left(),
    )?;
    let received = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the receiver panicked"))?;
    ensure!(
        out.status.success(),
        "bash could not send to 127.0.0.1:{port}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let received = received?;
    ensure!(
        received == EGRESS_BYTES,
        "received {received} of {EGRESS_BYTES} bytes"
    );
    let id = cgroup.id();
    let total = |seen: &[Event]| {
        seen.iter()
            .filter(|e| e.cgroup_id == Some(id))
            .filter_map(|e| match &e.body {
                Body::Egress(egress) => Some(egress.total_bytes),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    };
    let left = ctx.left();
    ctx.collector
        .wait_until(left, |seen| total(seen) >= EGRESS_BYTES);
    // A last sample, in case the count was still growing.
    ctx.collector.collect_for(SAMPLE_INTERVAL * 2);
    let counted = total(ctx.collector.seen());
    let ratio = counted as f64 / EGRESS_BYTES as f64;
    ensure!(
        (0.9..=1.1).contains(&ratio),
        "counted {counted} bytes at the IP layer for {EGRESS_BYTES} bytes sent ({ratio:.3})"
    );
    Ok(format!(
        "sent {EGRESS_BYTES} bytes, counted {counted} at the IP layer ({ratio:.3})"
    ))
}

fn quarantine(ctx: &mut Context) -> anyhow::Result<String> {
    let (_listener, port) = listener()?;
    let cgroup = cgroup("quarantine")?;
    let id = cgroup.id();
    ctx.collector
        .quarantine()
        .block(id)
        .context("cannot quarantine the check's cgroup")?;
    let blocked = blocked_connect(ctx, &cgroup, port);
    // Released whatever happened while it was blocked.
    let released = ctx.collector.quarantine().release(id);
    let blocked = blocked?;
    released.context("cannot release the check's cgroup")?;
    let (_, out) = bash_connect(ctx, &cgroup, port)?;
    ensure!(
        out.status.success(),
        "connect after the release failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(format!("{blocked}; released, connect works"))
}

/// The blocked half of the quarantine check: a connect refused at once with EPERM, and
/// reported blocked.
fn blocked_connect(ctx: &mut Context, cgroup: &TestCgroup, port: u16) -> anyhow::Result<String> {
    let started = Instant::now();
    let (pid, out) = bash_connect(ctx, cgroup, port)?;
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "connect from the quarantined cgroup succeeded"
    );
    ensure!(
        stderr.contains("Operation not permitted"),
        "connect from the quarantined cgroup failed otherwise than with EPERM: {}",
        stderr.trim()
    );
    ctx.wait_for(
        cgroup,
        &format!("blocked connect event to port {port}"),
        |e| {
            e.process.pid == Some(pid)
                && matches!(&e.body, Body::Connect(c) if c.dport == port && c.blocked)
        },
    )?;
    Ok(format!(
        "blocked: EPERM after {} ms, reported blocked",
        took.as_millis()
    ))
}

/// Runs one check within `limit`; a panic fails it alone.
fn run_check(ctx: &mut Context, name: &str, check: Check, limit: Duration) -> CheckResult {
    ctx.deadline = Instant::now() + limit;
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| check(ctx)));
    let (ok, detail) = match outcome {
        Ok(Ok(detail)) => (true, detail),
        Ok(Err(err)) => (false, format!("{err:#}")),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic".to_owned());
            (false, format!("panicked: {message}"))
        }
    };
    eprintln!(
        "check {name}: {} in {:.1} s: {detail}",
        if ok { "ok" } else { "FAIL" },
        started.elapsed().as_secs_f64()
    );
    CheckResult {
        name: name.to_owned(),
        ok,
        detail,
    }
}

/// `--timeout SECS`, or the default.
fn parse_args() -> anyhow::Result<Duration> {
    let mut timeout = DEFAULT_TIMEOUT;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--timeout" => {
                let value = args.next().context("--timeout needs a number of seconds")?;
                let secs: u64 = value
                    .parse()
                    .with_context(|| format!("--timeout {value}: not a number of seconds"))?;
                timeout = Duration::from_secs(secs);
            }
            other => {
                bail!("unknown argument {other} (usage: detector-kernel-check [--timeout SECS])")
            }
        }
    }
    Ok(timeout)
}

fn main() -> ExitCode {
    // The io-uring check's child: this binary again, in the check's cgroup.
    if let [_, command, path] = &std::env::args().collect::<Vec<_>>()[..]
        && command == "uring-open"
    {
        return match tests::uring::open(path, true) {
            Ok(fd) => {
                println!("{fd}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("uring-open {path}: {err}");
                ExitCode::FAILURE
            }
        };
    }
    let timeout = match parse_args() {
        Ok(timeout) => timeout,
        Err(err) => {
            eprintln!("detector-kernel-check: {err:#}");
            return ExitCode::from(2);
        }
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_owned())
        .unwrap_or_else(|err| format!("unknown ({err})"));
    eprintln!("detector-kernel-check on {kernel}: loading the sensors");
    let started = Instant::now();
    let report = match Collector::start(&SensorsConfig::default(), SAMPLE_INTERVAL) {
        Err(err) => {
            let error = format!("{err:#}");
            let mut lines = error.lines();
            eprintln!(
                "the sensors did not load after {:.1} s: {}",
                started.elapsed().as_secs_f64(),
                lines.next().unwrap_or_default()
            );
            let more = lines.count();
            if more > 0 {
                eprintln!("({more} more lines of it in the report)");
            }
            CheckReport {
                kernel,
                load_error: Some(error),
                variant: None,
                programs: Vec::new(),
                checks: CHECKS
                    .iter()
                    .map(|(name, _)| CheckResult {
                        name: (*name).to_owned(),
                        ok: false,
                        detail: "not run".to_owned(),
                    })
                    .collect(),
            }
        }
        Ok(collector) => {
            eprintln!(
                "sensors loaded and attached in {:.1} s: {:?}",
                started.elapsed().as_secs_f64(),
                collector.attached()
            );
            let variant = collector.variant().as_str().to_owned();
            // Every program, the tail-called ones too, running or why not.
            let programs = collector
                .programs()
                .iter()
                .map(|program| ProgramStatus {
                    name: program.name.to_owned(),
                    attached: program.missing.is_none(),
                    error: program.missing.clone(),
                    verified_instructions: program.verified_instructions,
                    unsupported: program.unsupported,
                })
                .collect();
            let mut ctx = Context {
                collector,
                deadline: Instant::now(),
                pid: std::process::id(),
            };
            let checks = CHECKS
                .iter()
                .map(|(name, check)| run_check(&mut ctx, name, *check, timeout))
                .collect();
            let Context { collector, .. } = ctx;
            collector.stop();
            CheckReport {
                kernel,
                load_error: None,
                variant: Some(variant),
                programs,
                checks,
            }
        }
    };
    let passed = report.passed();
    let mut stdout = std::io::stdout().lock();
    let written = writeln!(stdout, "{}", report.line()).and_then(|()| stdout.flush());
    if let Err(err) = written {
        eprintln!("detector-kernel-check: cannot write the report: {err}");
        return ExitCode::from(2);
    }
    eprintln!(
        "detector-kernel-check: {} in {:.1} s",
        if passed { "passed" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

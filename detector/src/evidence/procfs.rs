//! Volatile artifacts from `/proc`, read from the node for every process of a cgroup and its
//! descendants: nothing runs inside the container.
//!
//! The parsers are pure functions over the text of `/proc` files; [`collect`] does the reading.
//! Socket peers come from the network namespace's `net/{tcp,tcp6,udp,udp6,unix}` tables joined
//! with the processes' `socket:[inode]` descriptors. For unix sockets the tables give the bound
//! path, not the peer (which only `sock_diag` netlink reports).

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    io::{self, Read as _},
    net::{Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Instant,
};

use regex::Regex;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// What the value of a redacted environment variable is replaced with.
pub const REDACTED: &str = "<redacted>";
/// Deepest ancestry followed.
const MAX_ANCESTRY: usize = 64;

/// One process of the captured cgroup(s).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Process id (in the node's pid namespace).
    pub pid: u32,
    /// Parent process id.
    pub ppid: Option<u32>,
    /// Command name.
    pub name: Option<String>,
    /// `Uid:` line of status: real, effective, saved, filesystem.
    pub uids: Option<String>,
    /// cgroup directory it was found in, relative to the cgroup2 root.
    pub cgroup: String,
    /// Parent chain up to pid 1, nearest first (may leave the container).
    pub ancestry: Vec<Ancestor>,
    /// Arguments.
    pub cmdline: Vec<String>,
    /// Environment, `NAME=value`, values of matching names redacted.
    pub environ: Vec<String>,
    /// Executable path (`/proc/PID/exe`, as the node sees it; ` (deleted)` when unlinked).
    pub exe: Option<String>,
    /// SHA-256 of the executable, read through `/proc/PID/exe` (works for deleted files).
    pub exe_sha256: Option<String>,
    /// Set when the hash covers only the first bytes of the executable.
    pub exe_sha256_note: Option<String>,
    /// Working directory.
    pub cwd: Option<String>,
    /// Root directory (the container's root, seen from the node).
    pub root: Option<String>,
    /// Open file descriptors.
    pub fds: Vec<Fd>,
    /// Sockets among the descriptors, with addresses.
    pub sockets: Vec<Socket>,
    /// Entries of `/proc/PID/maps`.
    pub maps_lines: usize,
    /// What could not be read, one line each (a process may exit while it is read).
    pub errors: Vec<String>,
}

/// A process of the parent chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ancestor {
    /// Process id.
    pub pid: u32,
    /// Command name.
    pub name: String,
}

/// An open file descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fd {
    /// Number.
    pub fd: u32,
    /// What it points to (`/path`, `socket:[123]`, `pipe:[45]`, `anon_inode:...`).
    pub target: String,
}

/// A socket from the namespace's tables, joined to a descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Socket {
    /// Descriptor number in the process.
    pub fd: u32,
    /// Socket inode.
    pub inode: u64,
    /// `tcp`, `tcp6`, `udp`, `udp6`, `unix`.
    pub proto: String,
    /// Local address (`ip:port`, or the bound path for unix).
    pub local: String,
    /// Peer address (`ip:port`; empty for unix).
    pub remote: String,
    /// State (`ESTABLISHED`, `LISTEN`, ...).
    pub state: String,
}

/// A socket table entry before it is joined to a descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableEntry {
    /// Protocol.
    pub proto: &'static str,
    /// Local address.
    pub local: String,
    /// Peer address.
    pub remote: String,
    /// State.
    pub state: String,
}

/// Name, parent and uids from `/proc/PID/status`.
pub fn parse_status(text: &str) -> (Option<String>, Option<u32>, Option<String>) {
    let (mut name, mut ppid, mut uids) = (None, None, None);
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("Name:") {
            name = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("PPid:") {
            ppid = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("Uid:") {
            uids = Some(v.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    (name, ppid, uids)
}

/// NUL-separated strings (`cmdline`, `environ`), lossily decoded.
pub fn split_nul(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// Replaces the value of every variable whose name matches `secret` with [`REDACTED`].
pub fn redact_environ(entries: Vec<String>, secret: &Regex) -> Vec<String> {
    entries
        .into_iter()
        .map(|entry| match entry.split_once('=') {
            Some((name, _)) if secret.is_match(name) => format!("{name}={REDACTED}"),
            _ => entry,
        })
        .collect()
}

/// Redacts the environment wherever a runtime's JSON holds one: lists of `NAME=value` under
/// an `Env`/`env` key (Docker's `Config.Env`, an OCI spec's `process.env`) and lists of
/// `{"key", "value"}` under `envs` (a CRI container config).
pub fn redact_environ_json(value: &mut serde_json::Value, secret: &Regex) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                match (key.to_ascii_lowercase().as_str(), &mut *inner) {
                    ("env", Value::Array(list)) => {
                        for entry in list.iter_mut() {
                            if let Value::String(text) = entry
                                && let Some((name, _)) = text.split_once('=')
                                && secret.is_match(name)
                            {
                                *text = format!("{name}={REDACTED}");
                            }
                        }
                    }
                    ("envs", Value::Array(list)) => {
                        for entry in list.iter_mut() {
                            if entry["key"]
                                .as_str()
                                .is_some_and(|name| secret.is_match(name))
                                && entry.get("value").is_some()
                            {
                                entry["value"] = REDACTED.into();
                            }
                        }
                    }
                    _ => redact_environ_json(inner, secret),
                }
            }
        }
        Value::Array(list) => list.iter_mut().for_each(|v| redact_environ_json(v, secret)),
        _ => {}
    }
}

/// The inode of a `socket:[N]` descriptor target.
pub fn socket_inode(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn tcp_state(code: &str) -> &'static str {
    match code {
        "01" => "ESTABLISHED",
        "02" => "SYN_SENT",
        "03" => "SYN_RECV",
        "04" => "FIN_WAIT1",
        "05" => "FIN_WAIT2",
        "06" => "TIME_WAIT",
        "07" => "CLOSE",
        "08" => "CLOSE_WAIT",
        "09" => "LAST_ACK",
        "0A" => "LISTEN",
        "0B" => "CLOSING",
        "0C" => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

/// `0100007F:0050` (or the 32-digit IPv6 form) as `127.0.0.1:80`. The kernel prints each
/// 32-bit word of the address in host byte order.
fn parse_inet_addr(field: &str) -> Option<String> {
    let (addr, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| {
        addr.get(i * 8..i * 8 + 8)
            .and_then(|w| u32::from_str_radix(w, 16).ok())
            .map(u32::to_ne_bytes)
    };
    match addr.len() {
        8 => Some(format!("{}:{port}", Ipv4Addr::from(word(0)?))),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(format!("[{}]:{port}", Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

/// Entries of a `net/tcp`, `tcp6`, `udp` or `udp6` table, by socket inode.
pub fn parse_inet_table(text: &str, proto: &'static str) -> Vec<(u64, TableEntry)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let inode = f.get(9)?.parse().ok()?;
            Some((
                inode,
                TableEntry {
                    proto,
                    local: parse_inet_addr(f.get(1)?)?,
                    remote: parse_inet_addr(f.get(2)?)?,
                    state: tcp_state(f.get(3)?).to_owned(),
                },
            ))
        })
        .collect()
}

/// Entries of a `net/unix` table, by socket inode.
pub fn parse_unix_table(text: &str) -> Vec<(u64, TableEntry)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let inode = f.get(6)?.parse().ok()?;
            let kind = match *f.get(4)? {
                "0001" => "STREAM",
                "0002" => "DGRAM",
                "0005" => "SEQPACKET",
                _ => "OTHER",
            };
            let state = match *f.get(5)? {
                "01" => "UNCONNECTED",
                "02" => "CONNECTING",
                "03" => "CONNECTED",
                "04" => "DISCONNECTING",
                _ => "UNKNOWN",
            };
            Some((
                inode,
                TableEntry {
                    proto: "unix",
                    local: f.get(7).map(|p| (*p).to_owned()).unwrap_or_default(),
                    remote: String::new(),
                    state: format!("{kind} {state}"),
                },
            ))
        })
        .collect()
}

/// Every pid in `dir`'s `cgroup.procs` and in those of its descendants, with the directory
/// (relative to `root`) each was found in.
pub fn cgroup_pids(root: &Path, dir: &Path) -> io::Result<Vec<(u32, String)>> {
    let mut out = Vec::new();
    let rel = dir
        .strip_prefix(root)
        .map(|p| format!("/{}", p.display()))
        .unwrap_or_else(|_| dir.display().to_string());
    for line in fs::read_to_string(dir.join("cgroup.procs"))?.lines() {
        if let Ok(pid) = line.trim().parse() {
            out.push((pid, rel.clone()));
        }
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            out.extend(cgroup_pids(root, &entry.path())?);
        }
    }
    Ok(out)
}

/// Every cgroup2 directory id at and below `dir` (the keys of the recent-event ring).
pub fn cgroup_ids(dir: &Path) -> Vec<u64> {
    let mut ids = Vec::new();
    if let Ok(meta) = fs::metadata(dir) {
        ids.push(meta.ino());
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                ids.extend(cgroup_ids(&entry.path()));
            }
        }
    }
    ids
}

/// What [`collect`] read.
#[derive(Debug, Default)]
pub struct Collected {
    /// The processes, by pid.
    pub processes: Vec<ProcessInfo>,
    /// Raw `/proc/PID/maps` of each process.
    pub maps: Vec<(u32, Vec<u8>)>,
    /// Set when the deadline cut the collection short.
    pub cut_short: Option<String>,
}

/// Reads the volatile state of every process of `dir` and its descendant cgroups.
pub fn collect(
    root: &Path,
    dir: &Path,
    secret: &Regex,
    exe_hash_bytes: u64,
    deadline: Instant,
) -> io::Result<Collected> {
    collect_in(
        Path::new("/proc"),
        root,
        dir,
        secret,
        exe_hash_bytes,
        deadline,
    )
}

fn collect_in(
    proc: &Path,
    root: &Path,
    dir: &Path,
    secret: &Regex,
    exe_hash_bytes: u64,
    deadline: Instant,
) -> io::Result<Collected> {
    let mut pids = cgroup_pids(root, dir)?;
    pids.sort_unstable();
    pids.dedup_by_key(|(pid, _)| *pid);
    let mut out = Collected::default();
    let mut tables: HashMap<String, HashMap<u64, TableEntry>> = HashMap::new();
    let mut exe_hashes: HashMap<(u64, u64), (String, Option<String>)> = HashMap::new();
    for (pid, cgroup) in pids {
        if Instant::now() >= deadline {
            out.cut_short = Some(format!("time limit reached before pid {pid}"));
            break;
        }
        let base = proc.join(pid.to_string());
        let mut info = ProcessInfo {
            pid,
            cgroup,
            ..ProcessInfo::default()
        };
        let mut errors = Vec::new();
        let mut read = |name: &str| match fs::read(base.join(name)) {
            Ok(bytes) => Some(bytes),
            Err(err) => {
                errors.push(format!("{name}: {err}"));
                None
            }
        };
        if let Some(status) = read("status") {
            (info.name, info.ppid, info.uids) = parse_status(&String::from_utf8_lossy(&status));
        }
        info.cmdline = read("cmdline").map(|b| split_nul(&b)).unwrap_or_default();
        info.environ = read("environ")
            .map(|b| redact_environ(split_nul(&b), secret))
            .unwrap_or_default();
        if let Some(maps) = read("maps") {
            info.maps_lines = maps.iter().filter(|b| **b == b'\n').count();
            out.maps.push((pid, maps));
        }
        let mut link = |name: &str| match fs::read_link(base.join(name)) {
            Ok(target) => Some(target.to_string_lossy().into_owned()),
            Err(err) => {
                errors.push(format!("{name}: {err}"));
                None
            }
        };
        info.exe = link("exe");
        info.cwd = link("cwd");
        info.root = link("root");
        if info.exe.is_some() {
            match hash_exe(&base.join("exe"), exe_hash_bytes, &mut exe_hashes) {
                Ok((sha, note)) => {
                    info.exe_sha256 = Some(sha);
                    info.exe_sha256_note = note;
                }
                Err(err) => errors.push(format!("exe hash: {err}")),
            }
        }
        match fs::read_dir(base.join("fd")) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                        continue;
                    };
                    if let Ok(target) = fs::read_link(entry.path()) {
                        info.fds.push(Fd {
                            fd,
                            target: target.to_string_lossy().into_owned(),
                        });
                    }
                }
                info.fds.sort_by_key(|f| f.fd);
            }
            Err(err) => errors.push(format!("fd: {err}")),
        }
        if info.fds.iter().any(|f| socket_inode(&f.target).is_some()) {
            let table = net_tables(&base, &mut tables, &mut errors);
            for fd in &info.fds {
                if let Some(inode) = socket_inode(&fd.target) {
                    let entry = table.and_then(|t| t.get(&inode));
                    info.sockets.push(Socket {
                        fd: fd.fd,
                        inode,
                        proto: entry.map_or("unknown", |e| e.proto).to_owned(),
                        local: entry.map(|e| e.local.clone()).unwrap_or_default(),
                        remote: entry.map(|e| e.remote.clone()).unwrap_or_default(),
                        state: entry.map(|e| e.state.clone()).unwrap_or_default(),
                    });
                }
            }
        }
        info.ancestry = ancestry(proc, info.ppid);
        info.errors = errors;
        out.processes.push(info);
    }
    Ok(out)
}

/// The socket tables of the process's network namespace, read once per namespace.
fn net_tables<'a>(
    base: &Path,
    cache: &'a mut HashMap<String, HashMap<u64, TableEntry>>,
    errors: &mut Vec<String>,
) -> Option<&'a HashMap<u64, TableEntry>> {
    let ns = match fs::read_link(base.join("ns/net")) {
        Ok(ns) => ns.to_string_lossy().into_owned(),
        Err(err) => {
            errors.push(format!("ns/net: {err}"));
            return None;
        }
    };
    if !cache.contains_key(&ns) {
        let mut table = HashMap::new();
        for proto in ["tcp", "tcp6", "udp", "udp6", "unix"] {
            match fs::read_to_string(base.join("net").join(proto)) {
                Ok(text) if proto == "unix" => table.extend(parse_unix_table(&text)),
                Ok(text) => table.extend(parse_inet_table(&text, proto)),
                // A kernel without IPv6 has no tcp6/udp6 tables.
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => errors.push(format!("net/{proto}: {err}")),
            }
        }
        cache.insert(ns.clone(), table);
    }
    cache.get(&ns)
}

fn ancestry(proc: &Path, mut ppid: Option<u32>) -> Vec<Ancestor> {
    let mut chain = Vec::new();
    while let Some(pid) = ppid.filter(|p| *p != 0) {
        if chain.len() >= MAX_ANCESTRY {
            break;
        }
        let Ok(status) = fs::read_to_string(proc.join(pid.to_string()).join("status")) else {
            break;
        };
        let (name, parent, _) = parse_status(&status);
        chain.push(Ancestor {
            pid,
            name: name.unwrap_or_default(),
        });
        ppid = parent;
    }
    chain
}

/// SHA-256 of an executable through its `/proc/PID/exe` link, at most `max_bytes` of it;
/// cached by device and inode so that a hundred shells hash `/bin/sh` once.
fn hash_exe(
    exe: &Path,
    max_bytes: u64,
    cache: &mut HashMap<(u64, u64), (String, Option<String>)>,
) -> io::Result<(String, Option<String>)> {
    let file = fs::File::open(exe)?;
    let meta = file.metadata()?;
    let key = (meta.dev(), meta.ino());
    if let Some(hit) = cache.get(&key) {
        return Ok(hit.clone());
    }
    let mut hasher = Sha256::new();
    let mut reader = file.take(max_bytes);
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    let note = (meta.len() > total).then(|| {
        format!(
            "hash of the first {total} of {} bytes (exe_hash_bytes limit)",
            meta.len()
        )
    });
    let result = (format!("{:x}", hasher.finalize()), note);
    cache.insert(key, result.clone());
    Ok(result)
}

/// The cgroup2 directory of a process, from the `0::` line of `/proc/PID/cgroup`.
pub fn process_cgroup(cgroup2: &Path, pid: u32) -> io::Result<PathBuf> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let rel = parse_cgroup2_line(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no cgroup2 line in /proc/{pid}/cgroup"),
        )
    })?;
    Ok(cgroup2.join(rel.trim_start_matches('/')))
}

/// The path of the `0::` (cgroup2) line of a `/proc/PID/cgroup` file.
pub fn parse_cgroup2_line(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// Every process of a snapshot as `pid -> name`, for summaries.
pub fn names(processes: &[ProcessInfo]) -> BTreeMap<u32, String> {
    processes
        .iter()
        .map(|p| (p.pid, p.name.clone().unwrap_or_default()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_environ_and_redaction() {
        let status =
            "Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nPPid:\t42\nUid:\t0\t0\t0\t0\n";
        assert_eq!(
            parse_status(status),
            (Some("sleep".into()), Some(42), Some("0 0 0 0".into()))
        );
        let env = split_nul(b"PATH=/bin\0API_TOKEN=abc\0db_password=x\0HOME=/\0");
        let secret = Regex::new("(?i)(TOKEN|SECRET|PASSWORD|KEY)").unwrap();
        assert_eq!(
            redact_environ(env, &secret),
            [
                "PATH=/bin",
                "API_TOKEN=<redacted>",
                "db_password=<redacted>",
                "HOME=/"
            ]
        );
        // The runtimes' own records: Docker's Config.Env, an OCI spec's process.env, a CRI
        // config's envs.
        let mut record = serde_json::json!({
            "Config": {"Env": ["PATH=/bin", "API_TOKEN=abc"]},
            "containerd": {"container": {"spec": {"process": {"env": ["AWS_SECRET_KEY=x", "TERM=xterm"]}}}},
            "cri": {"info": {"config": {"envs": [{"key": "DB_PASSWORD", "value": "y"}, {"key": "LANG", "value": "C"}]}}},
        });
        redact_environ_json(&mut record, &secret);
        assert_eq!(
            record["Config"]["Env"],
            serde_json::json!(["PATH=/bin", "API_TOKEN=<redacted>"])
        );
        assert_eq!(
            record["containerd"]["container"]["spec"]["process"]["env"],
            serde_json::json!(["AWS_SECRET_KEY=<redacted>", "TERM=xterm"])
        );
        assert_eq!(
            record["cri"]["info"]["config"]["envs"],
            serde_json::json!([{"key": "DB_PASSWORD", "value": "<redacted>"}, {"key": "LANG", "value": "C"}])
        );
        assert_eq!(socket_inode("socket:[12345]"), Some(12345));
        assert_eq!(socket_inode("pipe:[1]"), None);
        assert_eq!(
            parse_cgroup2_line("1:cpu:/x\n0::/kubepods/pod1/abc\n"),
            Some("/kubepods/pod1/abc")
        );
    }

    #[test]
    fn socket_tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 31338 1\n";
        let entries = parse_inet_table(tcp, "tcp");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].0, 31337);
        assert_eq!(entries[0].1.local, "127.0.0.1:8080");
        assert_eq!(entries[0].1.state, "LISTEN");
        assert_eq!(entries[1].1.remote, "127.0.0.1:8080");
        assert_eq!(entries[1].1.state, "ESTABLISHED");

        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1\n";
        let entries = parse_inet_table(tcp6, "tcp6");
        assert_eq!(entries[0].1.local, "[::1]:22");

        let unix = "Num       RefCount Protocol Flags    Type St Inode Path\n0000000000000000: 00000002 00000000 00010000 0001 01 4242 /run/x.sock\n0000000000000000: 00000003 00000000 00000000 0001 03 4243\n";
        let entries = parse_unix_table(unix);
        assert_eq!(entries[0].0, 4242);
        assert_eq!(entries[0].1.local, "/run/x.sock");
        assert_eq!(entries[0].1.state, "STREAM UNCONNECTED");
        assert_eq!(entries[1].1.state, "STREAM CONNECTED");
    }

    #[test]
    fn collects_this_process_from_a_fake_cgroup() {
        // A directory with a cgroup.procs file stands in for a cgroup; /proc is the real one.
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        fs::write(dir.path().join("cgroup.procs"), format!("{me}\n")).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let secret = Regex::new("NOTHING_MATCHES_THIS").unwrap();
        let got = collect(
            dir.path(),
            dir.path(),
            &secret,
            1 << 30,
            Instant::now() + std::time::Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(got.processes.len(), 1);
        let me_info = &got.processes[0];
        assert_eq!(me_info.pid, me);
        assert_eq!(me_info.cgroup, "/");
        assert!(me_info.exe_sha256.as_deref().is_some_and(|h| h.len() == 64));
        assert!(!me_info.ancestry.is_empty());
        assert!(
            me_info.sockets.iter().any(|s| s.proto == "tcp"
                && s.local == format!("127.0.0.1:{port}")
                && s.state == "LISTEN"),
            "{:?}",
            me_info.sockets
        );
        assert_eq!(got.maps.len(), 1);
    }
}

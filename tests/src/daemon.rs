//! The real `detector run` binary for end-to-end tests, the demo and the corpora: started with a
//! configuration file and an output file, waited for until it says it is ready, stopped with
//! SIGTERM (on drop too), its log kept.

use std::{
    ffi::OsStr,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::host::PinScratch;

/// A running `detector run`.
pub struct Daemon {
    child: Child,
    log: Option<JoinHandle<Vec<String>>>,
    output: PathBuf,
    /// The quarantine's pin directory the harness gave it (none when the caller set one);
    /// dropped after the daemon stops.
    _pins: Option<PinScratch>,
}

/// The detector binary next to the running test binary's profile directory
/// (`target/<profile>/detector`), for callers outside the detector package (which have
/// `CARGO_BIN_EXE_detector`). `DETECTOR_BIN` overrides it.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("DETECTOR_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test>-<hash> or target/<profile>/<bin>.
    exe.ancestors()
        .skip(1)
        .map(|dir| dir.join("detector"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("detector"))
}

impl Daemon {
    /// Starts `binary run --config CONFIG --output OUTPUT` with `env`, and waits for it to say
    /// it is ready.
    pub fn start(
        binary: &Path,
        config: &Path,
        output: &Path,
        env: &[(&str, &OsStr)],
    ) -> anyhow::Result<Self> {
        let args = [
            OsStr::new("--config"),
            config.as_os_str(),
            OsStr::new("--output"),
            output.as_os_str(),
        ];
        Self::run(binary, &args, output, env)
    }

    /// Starts `binary run ARGS` with `env` (writing to `output`), and waits (60 s at most) for
    /// its `ready` log line. The guards' downward-API variables are not inherited. Unless `env`
    /// sets `DETECTOR_SENSORS__PIN_DIR`, the daemon pins its quarantine in a bpf filesystem of
    /// its own ([`PinScratch`]), never in the node's: daemons of parallel tests would adopt
    /// each other's.
    pub fn run(
        binary: &Path,
        args: &[&OsStr],
        output: &Path,
        env: &[(&str, &OsStr)],
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(binary);
        cmd.arg("run")
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("POD_UID")
            .env_remove("POD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            cmd.env(key, value);
        }
        let pins = if env
            .iter()
            .any(|(key, _)| *key == "DETECTOR_SENSORS__PIN_DIR")
        {
            None
        } else {
            let pins = PinScratch::new("daemon").context("a pin directory for the daemon")?;
            let (key, value) = pins.env();
            cmd.env(key, value);
            Some(pins)
        };
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stderr = child.stderr.take().context("daemon stderr")?;
        let (ready_tx, ready_rx) = mpsc::channel();
        let log = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains(" ready") {
                    let _ = ready_tx.send(());
                }
                lines.push(line);
            }
            lines
        });
        let mut daemon = Self {
            child,
            log: Some(log),
            output: output.to_owned(),
            _pins: pins,
        };
        if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let (status, log) = daemon.stop();
            bail!("daemon not ready ({status}):\n{}", log.join("\n"));
        }
        Ok(daemon)
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line written to the output so far, as JSON (a line that is not JSON panics: the
    /// output is JSON lines).
    pub fn lines(&self) -> Vec<Value> {
        read_lines(&self.output)
    }

    /// Waits up to `timeout` for a line that `want` accepts; every line read.
    pub fn wait_for(&self, timeout: Duration, want: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.lines();
            if lines.iter().any(&want) || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL, as the OOM killer or a forced rollout ends it: nothing of its own runs after.
    /// Its log.
    pub fn kill(&mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log
            .take()
            .map(|l| l.join().unwrap_or_default())
            .unwrap_or_default()
    }

    /// SIGTERM (SIGKILL after 20 s), then its exit status and log.
    pub fn stop(&mut self) -> (ExitStatus, Vec<String>) {
        let status =
            crate::host::stop_child(&mut self.child, "the daemon", Duration::from_secs(20))
                .expect("wait for the daemon");
        let log = self
            .log
            .take()
            .map(|l| l.join().unwrap_or_default())
            .unwrap_or_default();
        (status, log)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.log.is_some() {
            self.stop();
        }
    }
}

/// JSON lines of a file (none when it does not exist yet).
pub fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

//! A real S3-compatible server for a test: `moto_server` (PyPI `moto[server]`) on a free
//! loopback port, stopped on drop. Under `CI=true` a server that cannot be started is a
//! failure; elsewhere the test is skipped with the reason printed.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::docker::which;

/// A running moto server.
pub struct MotoServer {
    child: Child,
    port: u16,
}

impl MotoServer {
    /// Starts the server, or says why not (`None`: skipped; panics under `CI=true`).
    pub fn start(test: &str) -> Option<Self> {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        let fail = |why: String| {
            assert!(!ci, "{test}: {why}, and CI=true");
            eprintln!("skipped {test}: {why}");
            None
        };
        if which("moto_server").is_none() {
            return fail(
                "needs moto_server (pip install 'moto[server]'; `cargo xtask test` does it)".into(),
            );
        }
        match Self::try_start() {
            Ok(server) => Some(server),
            Err(err) => fail(format!("cannot start moto_server: {err:#}")),
        }
    }

    fn try_start() -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(which("moto_server").context("no moto_server")?)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = server.child.try_wait()? {
                bail!("moto_server exited: {status}");
            }
            if Instant::now() > deadline {
                bail!("moto_server did not listen within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Wait for it to answer HTTP, not only to accept.
        while server.request("GET", "/", &[]).is_err() {
            if Instant::now() > deadline {
                bail!("moto_server did not answer within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One plain HTTP/1.0 request (moto accepts unsigned ones); status and body.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\n\r\n",
            self.port,
            body.len()
        )?;
        stream.write_all(body)?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .context("no end of headers")?;
        let head = String::from_utf8_lossy(&response[..split]);
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status")?;
        Ok((status, response[split + 4..].to_vec()))
    }

    /// Creates a bucket.
    pub fn create_bucket(&self, name: &str) -> anyhow::Result<()> {
        let (status, body) = self.request("PUT", &format!("/{name}"), &[])?;
        if status != 200 {
            bail!("create bucket: {status} {}", String::from_utf8_lossy(&body));
        }
        Ok(())
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

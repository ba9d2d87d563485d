//! JSON lines on standard output, or in a file rotated by size (`path`, `path.1` ... `path.N`,
//! `path.1` the newest).

use std::{
    fs::{self, File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
};

use super::{Item, SinkError};
use crate::export::config::FileSink;

fn lines(batch: &[Item]) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch.len() * 512);
    for item in batch {
        // A `Value` always serializes.
        let _ = serde_json::to_writer(&mut out, &item.doc);
        out.push(b'\n');
    }
    out
}

/// JSON lines to standard output.
#[derive(Debug)]
pub struct Stdout;

impl Stdout {
    /// Writes the batch.
    pub async fn deliver(&mut self, batch: &[Item]) -> Result<(), SinkError> {
        let text = lines(batch);
        let mut out = std::io::stdout().lock();
        out.write_all(&text)
            .and_then(|()| out.flush())
            .map_err(|e| SinkError::transport("cannot write to standard output", e))
    }
}

/// JSON lines to a rotated file.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Option<(File, u64)>,
}

impl RotatingFile {
    /// A sink for the configuration; the file is opened on first use.
    pub fn new(config: &FileSink) -> Self {
        Self {
            path: config.path.clone(),
            max_bytes: config.max_bytes,
            keep: config.keep,
            file: None,
        }
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let _ = fs::remove_file(self.rotated(self.keep));
        for n in (1..self.keep).rev() {
            let from = self.rotated(n);
            if from.exists() {
                fs::rename(&from, self.rotated(n + 1))?;
            }
        }
        if self.path.exists() {
            fs::rename(&self.path, self.rotated(1))?;
        }
        Ok(())
    }

    fn open(path: &Path) -> std::io::Result<(File, u64)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok((file, len))
    }

    /// Writes the batch, rotating first when it would pass the size limit.
    pub async fn deliver(&mut self, batch: &[Item]) -> Result<(), SinkError> {
        let text = lines(batch);
        let result = (|| {
            if self.file.is_none() {
                self.file = Some(Self::open(&self.path)?);
            }
            if let Some((_, len)) = &self.file
                && *len > 0
                && len + text.len() as u64 > self.max_bytes
            {
                self.rotate()?;
                self.file = Some(Self::open(&self.path)?);
            }
            if let Some((file, len)) = &mut self.file {
                file.write_all(&text)?;
                *len += text.len() as u64;
            }
            Ok(())
        })();
        result.map_err(|e: std::io::Error| {
            self.file = None;
            SinkError::transport(format!("cannot write {}", self.path.display()), e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::schema::{Context, Schema, fixtures};

    #[tokio::test]
    async fn rotates_and_keeps_n() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/records.json");
        let mut sink = RotatingFile::new(&FileSink {
            path: path.clone(),
            max_bytes: 2000,
            keep: 2,
        });
        let ctx = Context::new("n");
        let batch: Vec<Item> = fixtures::all()
            .into_iter()
            .map(|envelope| Item {
                doc: Schema::Native.render(&envelope, &ctx),
                envelope,
            })
            .collect();
        for _ in 0..20 {
            sink.deliver(&batch[..3]).await.unwrap();
        }
        assert!(path.exists() && dir.path().join("out/records.json.1").exists());
        assert!(dir.path().join("out/records.json.2").exists());
        assert!(!dir.path().join("out/records.json.3").exists());
        let text = fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
    }
}

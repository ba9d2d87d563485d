//! JSON lines output: one event a line, to standard output or appended to a file.

use std::{
    fs::OpenOptions,
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

use serde::Serialize;

/// Failure to write events.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The output file could not be opened.
    #[error("cannot open output {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// Writing failed.
    #[error("cannot write events to {path}: {source}")]
    Write {
        /// The file, or `-`.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
}

/// Writes events as JSON lines.
pub struct JsonLines {
    path: PathBuf,
    out: BufWriter<Box<dyn Write + Send>>,
}

impl JsonLines {
    /// Opens `path` for appending, or standard output for `-`.
    pub fn open(path: &Path) -> Result<Self, OutputError> {
        let sink: Box<dyn Write + Send> = if path == Path::new("-") {
            Box::new(io::stdout())
        } else {
            Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| OutputError::Open {
                        path: path.to_owned(),
                        source,
                    })?,
            )
        };
        Ok(Self {
            path: path.to_owned(),
            out: BufWriter::with_capacity(1 << 16, sink),
        })
    }

    /// Writes a batch of events or records and flushes it, so a reader of the file sees whole
    /// lines.
    pub fn write_batch<T: Serialize>(&mut self, events: &[T]) -> Result<(), OutputError> {
        self.write_all(events).map_err(|source| OutputError::Write {
            path: self.path.clone(),
            source,
        })
    }

    fn write_all<T: Serialize>(&mut self, events: &[T]) -> io::Result<()> {
        for event in events {
            serde_json::to_writer(&mut self.out, event)?;
            self.out.write_all(b"\n")?;
        }
        self.out.flush()
    }
}

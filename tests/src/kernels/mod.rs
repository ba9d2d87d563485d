//! The kernel matrix: the sensors checked on a kernel by `detector-kernel-check`.
//!
//! - [`report`]: the checker's report line, the rows, the table and `matrix.json`.

pub mod report;

//! The export disk queue: any segment files and `ack` file open into a queue or an error, never
//! a panic. Draining it ends (each read moves forward) and leaves it empty; a record pushed
//! then comes out alone, a protected record pushed onto a queue without an `ack` file is
//! delivered, and once everything is acknowledged the queue reopens empty.
//!
//! The input: a flags byte (bits 0-1: the number of segments, bit 2: an `ack` file, bit 3:
//! push before draining, bit 4: `drop_oldest`, bit 5: a bound small enough to make room),
//! then, with bit 2, the `ack` file's length (one byte) and bytes, then per segment its id
//! (one byte), its length (two bytes, little-endian) and bytes.
#![no_main]

use std::{fs, path::PathBuf, sync::LazyLock};

use detector::export::queue::{DiskQueue, Fsync, QueueOptions, WhenFull};
use libfuzzer_sys::fuzz_target;

/// This process's queue directory, emptied for each input.
static DIR: LazyLock<PathBuf> = LazyLock::new(|| {
    std::env::temp_dir().join(format!("detector-fuzz-queue-{}", std::process::id()))
});

const PROTECTED: &[u8] = b"verdict";

fuzz_target!(|data: &[u8]| {
    let dir = &*DIR;
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).expect("create the scratch directory");
    let mut input = Input(data);
    let flags = input.byte();
    let segments = flags & 3;
    let has_ack = flags & 4 != 0;
    if has_ack {
        let len = input.byte();
        fs::write(dir.join("ack"), input.bytes(usize::from(len))).expect("write ack");
    }
    for _ in 0..segments {
        let id = input.byte();
        let len = u16::from_le_bytes([input.byte(), input.byte()]);
        fs::write(
            dir.join(format!("{id:020}.seg")),
            input.bytes(usize::from(len)),
        )
        .expect("write a segment");
    }
    let opts = QueueOptions {
        max_bytes: if flags & 32 != 0 { 64 } else { 1 << 20 },
        segment_bytes: 256,
        fsync: Fsync::Never,
        when_full: if flags & 16 != 0 {
            WhenFull::DropOldest
        } else {
            WhenFull::Block
        },
    };
    let Ok(mut queue) = DiskQueue::open(dir, opts) else {
        return;
    };
    let mut taken = 0;
    if flags & 8 != 0 {
        let Ok(n) = queue.push(&[(true, PROTECTED), (false, b"event")]) else {
            return;
        };
        taken = n;
    }
    let Some(records) = drain(&mut queue, data.len() + 2 * 9) else {
        return;
    };
    if taken > 0 && !has_ack {
        assert!(
            records.iter().any(|r| r == PROTECTED),
            "the protected record pushed was not delivered: {records:?}"
        );
    }
    assert!(queue.is_empty(), "{queue:?} drained but not empty");
    let Ok(after) = queue.push(&[(false, b"after")]) else {
        return;
    };
    assert_eq!(after, 1, "an empty queue refused a record");
    let Ok(batch) = queue.peek(10, 1 << 20) else {
        return;
    };
    assert_eq!(
        batch.records,
        [b"after"],
        "{queue:?} gave back other records"
    );
    let Ok(()) = queue.ack(&batch) else {
        return;
    };
    drop(queue);
    let Ok(mut queue) = DiskQueue::open(dir, opts) else {
        return;
    };
    assert!(
        queue.is_empty(),
        "{queue:?} reopened with acknowledged records"
    );
    if let Some(again) = drain(&mut queue, 0) {
        assert!(
            again.is_empty(),
            "acknowledged records delivered again: {again:?}"
        );
    }
});

/// Reads and acknowledges batches until one is empty; `None` on an I/O error. Every read but
/// the last takes at least one frame (9 bytes or more) of what was written, so more reads than
/// that mean a loop.
fn drain(queue: &mut DiskQueue, written: usize) -> Option<Vec<Vec<u8>>> {
    let mut records = Vec::new();
    for _ in 0..=written / 9 + 4 {
        let batch = queue.peek(7, 1 << 16).ok()?;
        queue.ack(&batch).ok()?;
        if batch.is_empty() {
            return Some(records);
        }
        records.extend(batch.records);
    }
    panic!(
        "{queue:?} still gives records after {} reads",
        written / 9 + 5
    );
}

/// The input, read from the front; bytes past its end read as zeros.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        let (&first, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        first
    }

    fn bytes(&mut self, len: usize) -> &'a [u8] {
        let (taken, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        taken
    }
}

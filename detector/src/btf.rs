//! Kernel structure layouts read from the kernel's BTF.
//!
//! Rust eBPF programs have no CO-RE relocations for `task_struct` and friends, so user space
//! reads the member offsets of the running kernel from `/sys/kernel/btf/vmlinux` and passes them
//! to the programs as the `OFFSETS` global; likewise the BTF ids of the structures they cast
//! addresses to (`KERNEL_TYPES`) and of the kernel function that casts (`bpf_rdonly_cast`),
//! which [`crate::sensors`] writes into the programs' calls.

use std::path::{Path, PathBuf};

use btf_rs::{Btf, BtfType, Type};
use detector_common::{IoUringLayout, KernelOffsets, KernelTypes};

/// Failure to read offsets from BTF.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The BTF file could not be read or parsed.
    #[error("cannot read kernel BTF from {path}: {source}")]
    Read {
        /// The BTF file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: btf_rs::Error,
    },
    /// A structure is absent from the kernel's BTF.
    #[error("kernel BTF has no struct {0}")]
    NoStruct(&'static str),
    /// A structure lacks an expected member.
    #[error("kernel BTF struct {structure} has no member {member}")]
    NoMember {
        /// The structure.
        structure: &'static str,
        /// The member.
        member: &'static str,
    },
    /// No structure starts with a `struct file *` member.
    #[error("kernel BTF has none of {0:?} starting with a struct file pointer")]
    NoFileSlot(&'static [&'static str]),
}

/// What the programs need of the kernel's layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelLayout {
    /// Member offsets.
    pub offsets: KernelOffsets,
    /// Ids of the structures cast to.
    pub types: KernelTypes,
    /// Id of the kernel function `bpf_rdonly_cast`; `None` before Linux 6.2, where only the
    /// `probe-read` build of the programs runs.
    pub rdonly_cast: Option<u32>,
    /// Where the io_uring program finds a completed request, or why this kernel has no
    /// tracepoint it can use.
    pub io_uring: Result<IoUringLayout, String>,
}

/// Structures whose first member has long been a `struct file *`: a descriptor-table slot cast
/// to one of them reads as a typed file pointer.
const FILE_SLOT_CANDIDATES: &[&str] = &["kiocb", "fown_struct", "epoll_filefd", "poll_table_entry"];

/// Reads offsets, cast targets and the cast function from the BTF file at `path`.
pub fn kernel_layout(path: &Path) -> Result<KernelLayout, BtfError> {
    let btf = read(path)?;
    Ok(KernelLayout {
        offsets: offsets(&btf)?,
        types: KernelTypes {
            file_slot: file_slot(&btf)?,
            mount: struct_id(&btf, "mount")?,
            vfsmount: struct_id(&btf, "vfsmount")?,
            dentry: struct_id(&btf, "dentry")?,
            task: struct_id(&btf, "task_struct")?,
        },
        rdonly_cast: function_id(&btf, "bpf_rdonly_cast"),
        io_uring: io_uring_layout(&btf),
    })
}

/// The `io_uring_complete` tracepoint's layout on this kernel: from 5.19 it passes the request
/// (`ctx, req, user_data, res, ...`), from 6.4 the completion entry (`ctx, req, cqe`); before,
/// only the submitter's `user_data`, which does not say what the operation was.
fn io_uring_layout(btf: &Btf) -> Result<IoUringLayout, String> {
    const TRACEPOINT: &str = "btf_trace_io_uring_complete";
    let prototype = btf
        .resolve_types_by_name(TRACEPOINT)
        .ok()
        .and_then(|types| {
            types.into_iter().find_map(|ty| {
                let Type::Typedef(typedef) = ty else {
                    return None;
                };
                let Ok(Type::Ptr(ptr)) = btf.resolve_chained_type(&typedef) else {
                    return None;
                };
                match btf.resolve_chained_type(&ptr) {
                    Ok(Type::FuncProto(proto)) => Some(proto),
                    _ => None,
                }
            })
        })
        .ok_or_else(|| format!("the kernel has no io_uring_complete tracepoint ({TRACEPOINT})"))?;
    // The first parameter is the tracepoint's own `void *__data`.
    let kinds: Vec<Option<Type>> = prototype
        .parameters
        .iter()
        .skip(1)
        .map(|p| resolve(btf, p).ok())
        .collect();
    let pointee = |ty: &Option<Type>| match ty {
        Some(Type::Ptr(ptr)) => Some(
            btf.resolve_chained_type(ptr)
                .ok()
                .and_then(|t| match t {
                    Type::Struct(s) => btf.resolve_name(&s).ok(),
                    _ => None,
                })
                .unwrap_or_default(),
        ),
        _ => None,
    };
    let req_is_pointer = kinds.get(1).is_some_and(|k| pointee(k).is_some());
    let (res_arg, res_in_cqe) = match (req_is_pointer, kinds.get(2).map(pointee)) {
        (true, Some(Some(name))) if name == "io_uring_cqe" => (2, 1),
        (true, Some(None)) if kinds.len() >= 4 => (3, 0),
        _ => {
            return Err(
                "io_uring_complete does not pass the request on this kernel (before Linux 5.19): io_uring opens are not seen"
                    .to_owned(),
            );
        }
    };
    let offset =
        |structure, member| member_offset(btf, structure, member).map_err(|e| e.to_string());
    Ok(IoUringLayout {
        res_arg,
        res_in_cqe,
        cqe_res: offset("io_uring_cqe", "res")?,
        req_opcode: offset("io_kiocb", "opcode")?,
        req_cmd: offset("io_kiocb", "cmd")?,
        open_dfd: offset("io_open", "dfd")?,
        open_file_slot: offset("io_open", "file_slot")?,
        open_flags: offset("io_open", "how")? + offset("open_how", "flags")?,
    })
}

fn read(path: &Path) -> Result<Btf, BtfError> {
    Btf::from_file(path).map_err(|source| BtfError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The id of the structure definition (not a forward declaration) named `name`.
fn struct_id(btf: &Btf, name: &'static str) -> Result<u32, BtfError> {
    btf.resolve_ids_by_name(name)
        .unwrap_or_default()
        .into_iter()
        .find(|&id| matches!(btf.resolve_type_by_id(id), Ok(Type::Struct(s)) if !s.members.is_empty()))
        .ok_or(BtfError::NoStruct(name))
}

/// `sizeof(struct name)`.
fn struct_size(btf: &Btf, name: &'static str) -> Result<u32, BtfError> {
    match btf.resolve_type_by_id(struct_id(btf, name)?) {
        Ok(Type::Struct(st)) => Ok(st.size() as u32),
        _ => Err(BtfError::NoStruct(name)),
    }
}

fn function_id(btf: &Btf, name: &'static str) -> Option<u32> {
    btf.resolve_ids_by_name(name)
        .unwrap_or_default()
        .into_iter()
        .find(|&id| matches!(btf.resolve_type_by_id(id), Ok(Type::Func(_))))
}

/// The first of [`FILE_SLOT_CANDIDATES`] whose member at offset 0 is a `struct file *`.
fn file_slot(btf: &Btf) -> Result<u32, BtfError> {
    for &name in FILE_SLOT_CANDIDATES {
        let Ok(id) = struct_id(btf, name) else {
            continue;
        };
        let Ok(Type::Struct(st)) = btf.resolve_type_by_id(id) else {
            continue;
        };
        let Some(first) = st.members.first() else {
            continue;
        };
        if first.bit_offset() != 0 {
            continue;
        }
        if let Ok(Type::Ptr(ptr)) = resolve(btf, first)
            && let Ok(Type::Struct(pointee)) = btf.resolve_chained_type(&ptr)
            && btf.resolve_name(&pointee).is_ok_and(|n| n == "file")
        {
            return Ok(id);
        }
    }
    Err(BtfError::NoFileSlot(FILE_SLOT_CANDIDATES))
}

/// Every offset the programs need.
fn offsets(btf: &Btf) -> Result<KernelOffsets, BtfError> {
    let offset = |structure, member| member_offset(btf, structure, member);
    Ok(KernelOffsets {
        task_real_parent: offset("task_struct", "real_parent")?,
        task_tgid: offset("task_struct", "tgid")?,
        task_mm: offset("task_struct", "mm")?,
        task_exit_code: offset("task_struct", "exit_code")?,
        mm_arg_start: offset("mm_struct", "arg_start")?,
        mm_arg_end: offset("mm_struct", "arg_end")?,
        bprm_filename: offset("linux_binprm", "filename")?,
        task_files: offset("task_struct", "files")?,
        task_fs: offset("task_struct", "fs")?,
        task_cgroups: offset("task_struct", "cgroups")?,
        css_set_dfl_cgrp: offset("css_set", "dfl_cgrp")?,
        cgroup_kn: offset("cgroup", "kn")?,
        kernfs_node_id: offset("kernfs_node", "id")?,
        files_fdt: offset("files_struct", "fdt")?,
        fdtable_max_fds: offset("fdtable", "max_fds")?,
        fdtable_fd: offset("fdtable", "fd")?,
        file_path: offset("file", "f_path")?,
        fs_root: offset("fs_struct", "root")?,
        fs_pwd: offset("fs_struct", "pwd")?,
        path_mnt: offset("path", "mnt")?,
        path_dentry: offset("path", "dentry")?,
        dentry_parent: offset("dentry", "d_parent")?,
        dentry_name: offset("dentry", "d_name")?,
        // Renamed from `d_iname` in Linux 6.14.
        dentry_inline_name: offset("dentry", "d_shortname")
            .or_else(|_| offset("dentry", "d_iname"))?,
        qstr_len: offset("qstr", "len")?,
        qstr_name: offset("qstr", "name")?,
        vfsmount_root: offset("vfsmount", "mnt_root")?,
        vfsmount_flags: offset("vfsmount", "mnt_flags")?,
        mount_mnt: offset("mount", "mnt")?,
        mount_parent: offset("mount", "mnt_parent")?,
        mount_mountpoint: offset("mount", "mnt_mountpoint")?,
        task_group_leader: offset("task_struct", "group_leader")?,
        task_thread_pid: offset("task_struct", "thread_pid")?,
        pid_level: offset("pid", "level")?,
        pid_numbers: offset("pid", "numbers")?,
        upid_size: struct_size(btf, "upid")?,
        upid_nr: offset("upid", "nr")?,
        task_signal: offset("task_struct", "signal")?,
        signal_tty: offset("signal_struct", "tty")?,
        bprm_file: offset("linux_binprm", "file")?,
        file_inode: offset("file", "f_inode")?,
        inode_mode: offset("inode", "i_mode")?,
        inode_nlink: offset("inode", "i_nlink")?,
        file_private_data: offset("file", "private_data")?,
        socket_sk: offset("socket", "sk")?,
        sock_family: offset("sock_common", "skc_family")?,
        dentry_inline_len: member_size(btf, "dentry", "d_shortname")
            .or_else(|_| member_size(btf, "dentry", "d_iname"))?,
    })
}

/// `sizeof` of `member`, a direct member of `structure`: an array, a union or a structure.
fn member_size(btf: &Btf, structure: &'static str, member: &'static str) -> Result<u32, BtfError> {
    let no_member = || BtfError::NoMember { structure, member };
    let Ok(Type::Struct(definition)) = btf.resolve_type_by_id(struct_id(btf, structure)?) else {
        return Err(BtfError::NoStruct(structure));
    };
    let found = definition
        .members
        .iter()
        .find(|m| btf.resolve_name(*m).is_ok_and(|name| name == member))
        .ok_or_else(no_member)?;
    let size = match resolve(btf, found) {
        Ok(Type::Union(inner) | Type::Struct(inner)) => inner.size(),
        Ok(Type::Array(array)) => match btf.resolve_chained_type(&array) {
            Ok(Type::Int(element)) => array.len() * element.size(),
            _ => 0,
        },
        _ => 0,
    };
    if size == 0 {
        return Err(no_member());
    }
    Ok(size as u32)
}

/// Byte offset of `member` in `structure`, looking through anonymous structs and unions.
fn member_offset(
    btf: &Btf,
    structure: &'static str,
    member: &'static str,
) -> Result<u32, BtfError> {
    let types = btf
        .resolve_types_by_name(structure)
        .map_err(|_| BtfError::NoStruct(structure))?;
    // A name can also denote a forward declaration; take the definition with members.
    let definition = types
        .iter()
        .find_map(|ty| match ty {
            Type::Struct(s) if !s.members.is_empty() => Some(s),
            _ => None,
        })
        .ok_or(BtfError::NoStruct(structure))?;
    find_member(btf, definition, member)
        .map(|bits| bits / 8)
        .ok_or(BtfError::NoMember { structure, member })
}

/// Bit offset of `name` in `st`, descending into anonymous members.
fn find_member(btf: &Btf, st: &btf_rs::Struct, name: &str) -> Option<u32> {
    for member in &st.members {
        let member_name = btf.resolve_name(member).unwrap_or_default();
        if member_name == name {
            return Some(member.bit_offset());
        }
        if member_name.is_empty()
            && let Ok(Type::Struct(inner) | Type::Union(inner)) = resolve(btf, member)
            && let Some(bits) = find_member(btf, &inner, name)
        {
            return Some(member.bit_offset() + bits);
        }
    }
    None
}

/// Resolves a member's type through typedefs and qualifiers.
fn resolve(btf: &Btf, member: &dyn BtfType) -> Result<Type, btf_rs::Error> {
    let mut ty = btf.resolve_chained_type(member)?;
    loop {
        ty = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t)?,
            Type::Const(t) => btf.resolve_chained_type(t)?,
            Type::Volatile(t) => btf.resolve_chained_type(t)?,
            _ => return Ok(ty),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs wherever the kernel exposes BTF (every node the daemon supports); says why otherwise.
    #[test]
    fn offsets_of_the_running_kernel_are_plausible() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI needs /sys/kernel/btf/vmlinux"
            );
            eprintln!("skipped: no /sys/kernel/btf/vmlinux on this machine");
            return;
        }
        let layout = kernel_layout(path).expect("layout");
        // This kernel (6.18) passes the completion entry.
        let uring = layout.io_uring.clone().expect("io_uring_complete layout");
        assert_eq!((uring.res_arg, uring.res_in_cqe, uring.cqe_res), (2, 1, 8));
        assert!(uring.req_opcode > 0 && uring.open_flags > uring.open_dfd);
        let offsets = layout.offsets;
        assert!(
            layout.rdonly_cast.is_some_and(|id| id > 0)
                && layout.types.mount > 0
                && layout.types.file_slot > 0
        );
        assert!(layout.types.task > 0 && layout.types.task != layout.types.mount);
        assert!(offsets.task_real_parent > 0 && offsets.task_tgid > 0);
        assert!(offsets.mm_arg_end == offsets.mm_arg_start + 8);
        assert_ne!(offsets.task_mm, offsets.task_tgid);
        // Layouts the kernel side leans on: a path is two pointers, a qstr's length sits in
        // its first word, `vfsmount` starts with its root.
        assert_eq!(offsets.path_dentry, offsets.path_mnt + 8);
        assert_eq!((offsets.qstr_len, offsets.qstr_name), (4, 8));
        assert_eq!(offsets.vfsmount_root, 0);
        assert!(offsets.mount_mnt > offsets.mount_mountpoint);
        assert!(offsets.dentry_inline_name > offsets.dentry_name);
        // 40 since Linux 6.14 on 64-bit machines, 32 before.
        assert!([32, 40].contains(&offsets.dentry_inline_len));
    }
}

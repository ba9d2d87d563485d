//! Kernel structure offsets read from the kernel's BTF.
//!
//! Rust eBPF programs have no CO-RE relocations for `task_struct` and friends, so user space
//! reads the member offsets of the running kernel from `/sys/kernel/btf/vmlinux` and passes them
//! to the programs as the `OFFSETS` global.

use std::path::{Path, PathBuf};

use btf_rs::{Btf, BtfType, Type};
use detector_common::KernelOffsets;

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
}

/// Reads every offset the programs need from the BTF file at `path`.
pub fn kernel_offsets(path: &Path) -> Result<KernelOffsets, BtfError> {
    let btf = Btf::from_file(path).map_err(|source| BtfError::Read {
        path: path.to_owned(),
        source,
    })?;
    let offset = |structure, member| member_offset(&btf, structure, member);
    Ok(KernelOffsets {
        task_real_parent: offset("task_struct", "real_parent")?,
        task_tgid: offset("task_struct", "tgid")?,
        task_mm: offset("task_struct", "mm")?,
        task_exit_code: offset("task_struct", "exit_code")?,
        mm_arg_start: offset("mm_struct", "arg_start")?,
        mm_arg_end: offset("mm_struct", "arg_end")?,
        bprm_filename: offset("linux_binprm", "filename")?,
        _pad: 0,
    })
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
        let offsets = kernel_offsets(path).expect("offsets");
        assert!(offsets.task_real_parent > 0 && offsets.task_tgid > 0);
        assert!(offsets.mm_arg_end == offsets.mm_arg_start + 8);
        assert_ne!(offsets.task_mm, offsets.task_tgid);
    }
}

//! The one kernel-function call of the programs (`bpf_rdonly_cast`), put in place in the
//! object before it is loaded: Rust has no syntax for such a call.

use detector_common::KFUNC_RDONLY_CAST_MARKER;

use super::SensorError;

/// The eBPF object with its kernel-function calls in place, 8-byte aligned for the ELF parser.
pub(super) struct PatchedObject {
    words: Vec<u64>,
    len: usize,
}

impl PatchedObject {
    pub(super) fn bytes(&self) -> &[u8] {
        // SAFETY: `words` owns at least `len` initialized bytes; `u8` has no alignment needs.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }
}

/// A copy of `object` where every placeholder helper call to [`KFUNC_RDONLY_CAST_MARKER`] in a
/// code section is a call of the kernel function with BTF id `rdonly_cast` (source register
/// `BPF_PSEUDO_KFUNC_CALL`, in the kernel's own BTF). Rust has no syntax for such a call; the
/// programs emit the placeholder with inline assembly (`detector-ebpf/src/kernel.rs`).
pub(super) fn with_kfunc_calls(
    object: &[u8],
    rdonly_cast: u32,
) -> Result<PatchedObject, SensorError> {
    use object::read::{Object as _, ObjectSection as _, SectionKind};

    const BPF_JMP_CALL: u8 = 0x85;
    const BPF_PSEUDO_KFUNC_CALL: u8 = 2;
    let marker = {
        let mut insn = [BPF_JMP_CALL, 0, 0, 0, 0, 0, 0, 0];
        insn[4..].copy_from_slice(&KFUNC_RDONLY_CAST_MARKER.to_le_bytes());
        insn
    };
    let elf = object::File::parse(object).map_err(SensorError::ObjectFormat)?;
    let mut words = vec![0u64; object.len().div_ceil(8)];
    // SAFETY: the buffer holds `words.len() * 8 >= object.len()` bytes.
    let bytes =
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), object.len()) };
    bytes.copy_from_slice(object);
    for section in elf.sections().filter(|s| s.kind() == SectionKind::Text) {
        let Some((start, size)) = section.file_range() else {
            continue;
        };
        let code = &mut bytes[start as usize..(start + size) as usize];
        for insn in code.chunks_exact_mut(8).filter(|insn| **insn == marker) {
            // Destination register 0 in the low nibble, source register in the high one.
            insn[1] = BPF_PSEUDO_KFUNC_CALL << 4;
            insn[4..].copy_from_slice(&rdonly_cast.to_le_bytes());
        }
    }
    Ok(PatchedObject {
        words,
        len: object.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::{super::EBPF_OBJECT, *};

    #[test]
    fn kernel_function_calls_are_placed_in_code_and_nowhere_else() {
        let marker = {
            let mut insn = [0x85u8, 0, 0, 0, 0, 0, 0, 0];
            insn[4..].copy_from_slice(&KFUNC_RDONLY_CAST_MARKER.to_le_bytes());
            insn
        };
        let count =
            |bytes: &[u8], pattern: &[u8]| bytes.windows(8).filter(|w| *w == pattern).count();
        assert!(
            count(EBPF_OBJECT, &marker) > 0,
            "the programs emit the placeholder"
        );
        let patched = with_kfunc_calls(EBPF_OBJECT, 0x0102_0304).unwrap();
        let bytes = patched.bytes();
        assert_eq!(bytes.len(), EBPF_OBJECT.len());
        assert_eq!(bytes.as_ptr() as usize % 8, 0);
        assert_eq!(count(bytes, &marker), 0);
        let call = [0x85u8, 0x20, 0, 0, 4, 3, 2, 1];
        assert_eq!(count(bytes, &call), count(EBPF_OBJECT, &marker));
        let changed = bytes
            .iter()
            .zip(EBPF_OBJECT)
            .filter(|(a, b)| a != b)
            .count();
        assert!(changed <= 5 * count(EBPF_OBJECT, &marker));
        assert!(matches!(
            with_kfunc_calls(b"not an object", 1),
            Err(SensorError::ObjectFormat(_))
        ));
    }
}

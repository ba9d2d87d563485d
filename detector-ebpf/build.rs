//! Rebuild when bpf-linker changes: it is the linker of this crate, chosen by aya-build.
use which::which;

fn main() {
    // A missing linker is reported by cargo itself with a clearer message when it tries to link;
    // here we only tie the rebuild to the linker binary when it exists.
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}

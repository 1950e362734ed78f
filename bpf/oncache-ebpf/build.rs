//! bpf-linker: emit BTF (from the debug info the release profile keeps), so the kernel gets
//! function and line info for the programs (verifier logs, `bpftool prog dump ... linum`).
fn main() {
    println!("cargo:rustc-link-arg=--btf");
}

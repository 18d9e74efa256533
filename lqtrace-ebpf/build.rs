use which::which;

/// Rebuild when the bpf-linker binary changes: the crate has an undeclared dependency on it
/// (the same arrangement as aya-template).
fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => {
            println!("cargo:warning=bpf-linker not found in PATH: run `cargo xtask` to install it")
        }
    }
}

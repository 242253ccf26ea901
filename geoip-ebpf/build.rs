//! Rebuild the kernel program when the `bpf-linker` that links it changes.
//! (Building it needs that linker on PATH; `cargo xtask setup` installs it.)

fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => {
            println!("cargo:warning=bpf-linker not found on PATH ({err}); run `cargo xtask setup`");
        }
    }
}

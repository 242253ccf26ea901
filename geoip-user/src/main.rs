//! The `geoip-exporter` binary; everything is in the library.
#![expect(
    unused_crate_dependencies,
    reason = "the binary is a thin wrapper; the library uses the dependencies"
)]

fn main() -> std::process::ExitCode {
    geoip_user::main()
}

//! Builds `tracer-ebpf` for the bpf target with the nightly toolchain and `bpf-linker`, so that
//! a plain `cargo build` of this crate embeds a working object (`include_bytes_aligned!`).
fn main() -> anyhow::Result<()> {
    let ebpf = aya_build::Package {
        name: "tracer-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../tracer-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::default())
}

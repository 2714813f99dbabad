//! Builds `tracer-ebpf` for the bpf target with its pinned nightly and `bpf-linker`, so that a
//! plain `cargo build` of this crate embeds a working object (`include_bytes_aligned!`).
use anyhow::Context as _;

const EBPF_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tracer-ebpf");

fn main() -> anyhow::Result<()> {
    let file = format!("{EBPF_DIR}/rust-toolchain.toml");
    println!("cargo:rerun-if-changed={file}");
    let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {file}"))?;
    let channel = text
        .parse::<toml::Table>()
        .ok()
        .and_then(|t| {
            t.get("toolchain")?
                .get("channel")?
                .as_str()
                .map(str::to_owned)
        })
        .with_context(|| format!("{file} names no toolchain.channel"))?;
    let ebpf = aya_build::Package {
        name: "tracer-ebpf",
        root_dir: EBPF_DIR,
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Custom(&channel))
}

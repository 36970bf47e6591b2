//! `--device` selection shared by every subcommand.

use burn::tensor::Device;

/// Compute device named on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceKind {
    /// Pure-Rust CPU backend (Burn `flex`).
    #[default]
    Cpu,
    /// NVIDIA GPU (build with `--features cuda`).
    Cuda,
}

/// Resolves a [`DeviceKind`] to a Burn device, failing clearly when the build lacks it.
pub fn resolve(kind: DeviceKind) -> anyhow::Result<Device> {
    match kind {
        DeviceKind::Cpu => Ok(Device::flex()),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => Ok(Device::cuda(0)),
        #[cfg(not(feature = "cuda"))]
        DeviceKind::Cuda => anyhow::bail!(
            "this lmflow was built without CUDA support; rebuild with `--features cuda`"
        ),
    }
}

/// Prints the devices this build supports.
pub fn print_devices() -> anyhow::Result<()> {
    println!("cpu");
    if cfg!(feature = "cuda") {
        println!("cuda");
    }
    Ok(())
}

//! `image-builder`: builds Ferry appliance images.
//!
//! `image-builder build [--out DIR]` builds every appliance for bare metal and writes
//! `DIR/<appliance>.img` (default DIR: `build/images` in the workspace).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use image_builder::appliances::{self, BuildOptions, DEFAULT_TOOLCHAIN};

#[derive(Debug, Parser)]
#[command(version, about = "Builds Ferry appliance images")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build every appliance and write one raw arm64 Image per appliance
    Build {
        /// Directory for the images [default: build/images in the workspace]
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// rustup toolchain of the bare-metal build
        #[arg(long, value_name = "NAME", default_value = DEFAULT_TOOLCHAIN)]
        toolchain: String,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("image-builder: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Build { out, toolchain } => build(out, toolchain),
    }
}

fn build(out: Option<PathBuf>, toolchain: String) -> Result<()> {
    let workspace_root = appliances::find_workspace_root()?;
    let out_dir = out.unwrap_or_else(|| workspace_root.join("build").join("images"));
    let options = BuildOptions {
        workspace_root,
        out_dir,
        toolchain,
    };
    let images = appliances::build_all(&options, &mut |line| eprintln!("image-builder: {line}"))?;
    let width = images
        .iter()
        .map(|image| image.name.len())
        .max()
        .unwrap_or(0);
    for image in &images {
        println!(
            "{:width$}  {:>8} bytes  (image_size {:#x})  {}",
            image.name,
            image.bytes,
            image.image_size,
            image.path.display()
        );
    }
    Ok(())
}

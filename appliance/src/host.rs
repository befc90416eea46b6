//! What an appliance binary does when it is built for the host: refuse to run.
//!
//! Appliances are built for the host only so that the workspace builds, tests and lints there.

use std::eprintln;
use std::process::ExitCode;

/// Tells the user that appliance `name` only runs as a Xen domain, and returns exit code 1.
pub fn refuse_to_run(name: &str) -> ExitCode {
    eprintln!(
        "{name}: this is a Ferry appliance; it only runs as a Xen domain on arm64. \
         Build its image with `image-builder build`."
    );
    ExitCode::FAILURE
}

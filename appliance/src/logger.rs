//! The `log` crate's backend: log records as lines on the Xen console.
//!
//! This module owns the logger and the `loglevel=` boot argument (`off`, `error`, `warn`,
//! `info`, `debug`, `trace`; default `info`). Each record becomes one line starting with
//! `ferry: `; every level but info also names itself: `ferry: [warn] ...`. It must never
//! allocate (it runs before and outside the heap's users) and never be used before the MMU is
//! on (`log::set_logger` needs exclusive accesses).

use log::LevelFilter;

use crate::platform::boot_arg;

/// The level when bootargs say nothing.
pub const DEFAULT_LEVEL: LevelFilter = LevelFilter::Info;

/// The level `loglevel=` in `bootargs` asks for; `Err(value)` for a value that is not a level.
pub fn level_from_bootargs(bootargs: &str) -> Result<LevelFilter, &str> {
    let Some(value) = boot_arg(bootargs, "loglevel") else {
        return Ok(DEFAULT_LEVEL);
    };
    match value {
        "off" => Ok(LevelFilter::Off),
        "error" => Ok(LevelFilter::Error),
        "warn" => Ok(LevelFilter::Warn),
        "info" => Ok(LevelFilter::Info),
        "debug" => Ok(LevelFilter::Debug),
        "trace" => Ok(LevelFilter::Trace),
        other => Err(other),
    }
}

/// The tag printed after `ferry: ` for a level (`""` for info).
pub const fn level_tag(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "[error] ",
        log::Level::Warn => "[warn] ",
        log::Level::Info => "",
        log::Level::Debug => "[debug] ",
        log::Level::Trace => "[trace] ",
    }
}

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod console {
    use log::{Log, Metadata, Record};

    use super::level_tag;

    /// Writes log records to the Xen console.
    pub(super) struct ConsoleLogger;

    impl Log for ConsoleLogger {
        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            metadata.level() <= log::max_level()
        }

        fn log(&self, record: &Record<'_>) {
            if self.enabled(record.metadata()) {
                crate::println!("ferry: {}{}", level_tag(record.level()), record.args());
            }
        }

        fn flush(&self) {}
    }

    pub(super) static LOGGER: ConsoleLogger = ConsoleLogger;
}

/// Installs the console logger with the level from `bootargs`; an unknown level is reported
/// (as a warning) and the default is used.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub(crate) fn init(bootargs: &str) {
    let level = level_from_bootargs(bootargs);
    // Only fails if a logger is already set, which only this function does, once.
    let _ = log::set_logger(&console::LOGGER);
    log::set_max_level(level.unwrap_or(DEFAULT_LEVEL));
    if let Err(value) = level {
        log::warn!("unknown loglevel={value} (off|error|warn|info|debug|trace); using info");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_comes_from_bootargs() {
        assert_eq!(level_from_bootargs(""), Ok(LevelFilter::Info));
        assert_eq!(
            level_from_bootargs("a=b loglevel=debug"),
            Ok(LevelFilter::Debug)
        );
        assert_eq!(
            level_from_bootargs("loglevel=error"),
            Ok(LevelFilter::Error)
        );
        assert_eq!(
            level_from_bootargs("loglevel=trace x"),
            Ok(LevelFilter::Trace)
        );
        assert_eq!(level_from_bootargs("loglevel=off"), Ok(LevelFilter::Off));
        assert_eq!(level_from_bootargs("loglevel=loud"), Err("loud"));
    }

    #[test]
    fn only_info_goes_untagged() {
        assert_eq!(level_tag(log::Level::Warn), "[warn] ");
        assert_eq!(level_tag(log::Level::Error), "[error] ");
        assert_eq!(level_tag(log::Level::Info), "");
        assert_eq!(level_tag(log::Level::Debug), "[debug] ");
    }
}

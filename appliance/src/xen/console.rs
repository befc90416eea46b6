//! Text output through the Xen console hypercall, and the `println!` of appliances.

use core::fmt;

use super::hypercall;

/// The Xen console, as a [`fmt::Write`] sink.
///
/// Lines should end with `'\n'`: Xen holds a domain's output until the newline (or ~128
/// characters) and then prints it as one line of its own log.
#[derive(Clone, Copy, Debug, Default)]
pub struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        if hypercall::console_write(text.as_bytes()) < 0 {
            return Err(fmt::Error);
        }
        Ok(())
    }
}

#[doc(hidden)]
pub fn print_args(args: fmt::Arguments<'_>) {
    // Nothing useful can be done when Xen refuses console output.
    let _ = fmt::Write::write_fmt(&mut Console, args);
}

/// Prints a formatted line to the Xen console (`format!` syntax).
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::xen::console::print_args(format_args!("{}\n", format_args!($($arg)*)))
    };
}

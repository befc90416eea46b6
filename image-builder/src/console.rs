//! Reading Xen's console: whose line it is, and what it says about the run's verdict.
//!
//! Xen 4.17 prints (sources: `xen/drivers/char/console.c`, `xen/arch/arm/vpl011.c`,
//! `xen/common/domain.c`):
//!
//! - its own lines as `(XEN) text` (with `console_timestamps`, `(XEN) [  1.234] text`);
//! - a domU's `CONSOLEIO_write` output as `(d<id>) text`;
//! - a domU's vpl011 output, one line at a time, as `(XEN) DOM<id>: text`;
//! - `Domain <id> (vcpu#<n>) crashed on cpu#<m>:` or `Domain <id> reported crashed by domain
//!   <n> ...` when it crashes a domain;
//! - `Panic on CPU <n>:` followed by the reason, when Xen itself gives up.
//!
//! The appliance runtime prints `ferry: shutdown: poweroff|reboot|crash` before it asks Xen to
//! shut its domain down, `ferry: panic: ...` when it panics, and the selftest prints
//! `ferry: ready <name> ticks=<N> freq=<HZ>` once it is ready.
//!
//! [`Monitor`] turns lines into a verdict: the run is over when every domain powered off
//! (success), at the first crash, or at the first fatal Xen message. It is a pure state
//! machine; the QEMU runner feeds it lines and enforces the timeout.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

/// How many lines of each domain (and of Xen) are kept for reports.
pub const HISTORY_LINES: usize = 20;

/// Xen messages that fail a run wherever they appear (substrings of Xen's own lines).
pub const FATAL_XEN_MESSAGES: &[&str] = &[
    "Panic on CPU",
    "DomU passthrough config has not page aligned",
    "Unable to",
];

/// Lines of a Linux guest that mean it crashed (substrings of the text after its printk
/// timestamp): a panic (`Kernel panic - not syncing: ...`, after which Linux never powers off),
/// an oops (`Internal error: Oops: ...`, `Unable to handle kernel ...`), a `BUG()`, and `/init`
/// exiting or failing to power off.
pub const LINUX_CRASH_MESSAGES: &[&str] = &[
    "Kernel panic - not syncing",
    "Internal error: Oops",
    "Unable to handle kernel ",
    "kernel BUG at ",
    "ferry-linux: poweroff failed",
];

/// Who printed a console line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// Xen itself, or anything that is not a domain's line (early boot output).
    Xen,
    /// The domain with this id.
    Domain(u32),
}

/// What a line says about the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `ferry: ready <name> ticks=<N> freq=<HZ>`.
    Ready {
        /// The domain.
        domid: u32,
        /// Counter ticks since the domain started.
        ticks: u64,
        /// Counter frequency in Hz.
        frequency: u64,
    },
    /// `ferry: up <name> ticks=<N> freq=<HZ>`: the runtime is up and able to serve (the
    /// selftest prints it before its workload; `ready` comes after).
    Up {
        /// The domain.
        domid: u32,
        /// Counter ticks since the domain started.
        ticks: u64,
        /// Counter frequency in Hz.
        frequency: u64,
    },
    /// `ferry: serve: <device> ready for d<frontend> at <base> irq <intid>`: a device model is
    /// serving. `ticks=`/`freq=` words, when present, give its boot-to-ready figure.
    Serving {
        /// The domain.
        domid: u32,
        /// Counter ticks since the domain started, if the line has `ticks=` and `freq=`.
        ready: Option<Ready>,
    },
    /// `ferry: shutdown: poweroff`.
    PoweredOff(u32),
    /// The domain crashed, panicked, or shut down for another reason than poweroff.
    Crashed {
        /// The domain.
        domid: u32,
        /// The line that says so.
        reason: String,
    },
    /// Xen itself failed.
    Fatal(String),
}

/// Splits a console line into its source and its text (without Xen's prefix).
pub fn classify(line: &str) -> (Source, &str) {
    let line = line.trim_end_matches(['\r', '\n']);
    if let Some(rest) = line.strip_prefix("(XEN) ") {
        let rest = strip_timestamp(rest);
        if let Some(after) = rest.strip_prefix("DOM") {
            if let Some((id, text)) = after.split_once(": ") {
                if let Ok(domid) = id.parse() {
                    return (Source::Domain(domid), text);
                }
            }
        }
        return (Source::Xen, rest);
    }
    if line == "(XEN)" {
        return (Source::Xen, "");
    }
    if let Some(after) = line.strip_prefix("(d") {
        if let Some((id, text)) = after.split_once(") ") {
            if let Ok(domid) = id.parse() {
                return (Source::Domain(domid), text);
            }
        }
        if let Some(id) = after.strip_suffix(')') {
            if let Ok(domid) = id.parse() {
                return (Source::Domain(domid), "");
            }
        }
    }
    (Source::Xen, line)
}

/// `[    1.234] text` -> `text`.
fn strip_timestamp(text: &str) -> &str {
    if let Some(rest) = text.strip_prefix('[') {
        if let Some((stamp, after)) = rest.split_once("] ") {
            if stamp.trim().chars().all(|c| c.is_ascii_digit() || c == '.') {
                return after;
            }
        }
    }
    text
}

/// What a classified line means for the verdict, if anything.
pub fn event(source: Source, text: &str) -> Option<Event> {
    match source {
        Source::Domain(domid) => domain_event(domid, text),
        Source::Xen => xen_event(text),
    }
}

fn domain_event(domid: u32, text: &str) -> Option<Event> {
    let text = text.trim();
    if let Some(reason) = text.strip_prefix("ferry: shutdown: ") {
        return Some(if reason.trim() == "poweroff" {
            Event::PoweredOff(domid)
        } else {
            Event::Crashed {
                domid,
                reason: text.to_owned(),
            }
        });
    }
    if text.starts_with("ferry: panic:") {
        return Some(Event::Crashed {
            domid,
            reason: text.to_owned(),
        });
    }
    let kernel_text = strip_timestamp(text);
    if LINUX_CRASH_MESSAGES
        .iter()
        .any(|message| kernel_text.starts_with(message))
    {
        return Some(Event::Crashed {
            domid,
            reason: format!("Linux: {kernel_text}"),
        });
    }
    if let Some(rest) = text.strip_prefix("ferry: up ") {
        if let Some(Ready { ticks, frequency }) = ticks_and_frequency(rest) {
            return Some(Event::Up {
                domid,
                ticks,
                frequency,
            });
        }
    }
    if let Some(rest) = text.strip_prefix("ferry: ready ") {
        if let Some(Ready { ticks, frequency }) = ticks_and_frequency(rest) {
            return Some(Event::Ready {
                domid,
                ticks,
                frequency,
            });
        }
    }
    if let Some(rest) = text.strip_prefix("ferry: serve: ") {
        // `<device> ready for d<frontend> ...`: the second word is `ready`.
        if rest.split_whitespace().nth(1) == Some("ready") {
            return Some(Event::Serving {
                domid,
                ready: ticks_and_frequency(rest),
            });
        }
    }
    None
}

/// The `ticks=<N>` and `freq=<HZ>` words of a line, when both are there.
fn ticks_and_frequency(text: &str) -> Option<Ready> {
    let mut ticks = None;
    let mut frequency = None;
    for word in text.split_whitespace() {
        if let Some(value) = word.strip_prefix("ticks=") {
            ticks = value.parse().ok();
        } else if let Some(value) = word.strip_prefix("freq=") {
            frequency = value.parse().ok();
        }
    }
    Some(Ready {
        ticks: ticks?,
        frequency: frequency?,
    })
}

fn xen_event(text: &str) -> Option<Event> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix("Domain ") {
        if let Some((id, after)) = rest.split_once(' ') {
            if let Ok(domid) = id.parse() {
                if after.contains("crashed") {
                    return Some(Event::Crashed {
                        domid,
                        reason: format!("Xen: {text}"),
                    });
                }
            }
        }
    }
    FATAL_XEN_MESSAGES
        .iter()
        .any(|message| text.contains(message))
        .then(|| Event::Fatal(text.to_owned()))
}

/// How a domain ended, so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainState {
    /// No verdict yet.
    Running,
    /// Printed `ferry: shutdown: poweroff`.
    PoweredOff,
    /// Crashed; the line that says so.
    Crashed(String),
}

/// The end of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every domain that is not a service powered off, and every service is serving.
    AllPoweredOff,
    /// This domain crashed first.
    Crashed {
        /// Its id.
        domid: u32,
        /// The line that says so.
        reason: String,
    },
    /// Xen failed.
    Fatal(String),
}

impl Outcome {
    /// Whether the run passed.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::AllPoweredOff)
    }
}

/// A domain's boot-to-ready figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ready {
    /// Counter ticks.
    pub ticks: u64,
    /// Counter frequency in Hz.
    pub frequency: u64,
}

impl Ready {
    /// Ticks converted to microseconds.
    pub fn microseconds(&self) -> f64 {
        if self.frequency == 0 {
            return f64::NAN;
        }
        self.ticks as f64 * 1e6 / self.frequency as f64
    }
}

/// A line after [`Monitor::feed`]: who said it, for printing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labelled {
    /// `xen`, a domain's name, or `d<id>` for a domain that is not in the system.
    pub label: String,
    /// The text without Xen's prefix.
    pub text: String,
}

/// Follows a run's console and decides its verdict.
#[derive(Debug)]
pub struct Monitor {
    names: BTreeMap<u32, String>,
    states: BTreeMap<u32, DomainState>,
    history: BTreeMap<Source, VecDeque<String>>,
    ready: BTreeMap<u32, Ready>,
    up: BTreeMap<u32, Ready>,
    /// Device-model domains: they pass by serving, not by powering off.
    services: BTreeSet<u32>,
    /// Services that printed `ferry: serve: ... ready`, with their figure if the line had one.
    serving: BTreeMap<u32, Option<Ready>>,
    outcome: Option<Outcome>,
    /// The outcome is Xen's `Panic on CPU n:`, whose reason is on the next line.
    panic_reason_pending: bool,
}

impl Monitor {
    /// A monitor for these (domain id, name) pairs.
    pub fn new(domains: impl IntoIterator<Item = (u32, String)>) -> Self {
        let names: BTreeMap<u32, String> = domains.into_iter().collect();
        let states = names
            .keys()
            .map(|&domid| (domid, DomainState::Running))
            .collect();
        Self {
            names,
            states,
            history: BTreeMap::new(),
            ready: BTreeMap::new(),
            up: BTreeMap::new(),
            services: BTreeSet::new(),
            serving: BTreeMap::new(),
            outcome: None,
            panic_reason_pending: false,
        }
    }

    /// Marks these domains as services (device models): the run passes when every other
    /// domain powered off and every service printed `ferry: serve: ... ready`, without waiting
    /// for the services to power off; a service that crashes still fails the run.
    pub fn with_services(mut self, services: impl IntoIterator<Item = u32>) -> Self {
        self.services = services.into_iter().collect();
        self
    }

    /// Whether the run is over and passed: every non-service powered off, every service is
    /// serving, nobody crashed.
    fn passed(&self) -> bool {
        self.states.iter().all(|(domid, state)| {
            if self.services.contains(domid) {
                !matches!(state, DomainState::Crashed(_)) && self.serving.contains_key(domid)
            } else {
                *state == DomainState::PoweredOff
            }
        })
    }

    /// The label of a source.
    pub fn label(&self, source: Source) -> String {
        match source {
            Source::Xen => "xen".to_owned(),
            Source::Domain(domid) => self
                .names
                .get(&domid)
                .cloned()
                .unwrap_or_else(|| format!("d{domid}")),
        }
    }

    /// Takes one console line. The first outcome sticks; later lines only add to the history.
    pub fn feed(&mut self, line: &str) -> Labelled {
        let (source, text) = classify(line);
        let history = self.history.entry(source).or_default();
        if history.len() == HISTORY_LINES {
            history.pop_front();
        }
        history.push_back(text.to_owned());
        let labelled = Labelled {
            label: self.label(source),
            text: text.to_owned(),
        };
        if self.panic_reason_pending && source == Source::Xen {
            let reason = text.trim();
            if !reason.is_empty() && !reason.starts_with("****") {
                self.panic_reason_pending = false;
                if let Some(Outcome::Fatal(message)) = &mut self.outcome {
                    message.push(' ');
                    message.push_str(reason);
                }
            }
            return labelled;
        }
        let Some(event) = event(source, text) else {
            return labelled;
        };
        match event {
            Event::Ready {
                domid,
                ticks,
                frequency,
            } => {
                self.ready
                    .entry(domid)
                    .or_insert(Ready { ticks, frequency });
            }
            Event::Up {
                domid,
                ticks,
                frequency,
            } => {
                self.up.entry(domid).or_insert(Ready { ticks, frequency });
            }
            Event::PoweredOff(domid) => {
                if let Some(state) = self.states.get_mut(&domid) {
                    if *state == DomainState::Running {
                        *state = DomainState::PoweredOff;
                    }
                }
                if self.outcome.is_none() && self.passed() {
                    self.outcome = Some(Outcome::AllPoweredOff);
                }
            }
            Event::Serving { domid, ready } => {
                self.serving.entry(domid).or_insert(ready);
                if self.outcome.is_none() && self.passed() {
                    self.outcome = Some(Outcome::AllPoweredOff);
                }
            }
            Event::Crashed { domid, reason } => {
                let state = self.states.entry(domid).or_insert(DomainState::Running);
                if !matches!(state, DomainState::Crashed(_)) {
                    *state = DomainState::Crashed(reason.clone());
                }
                if self.outcome.is_none() {
                    self.outcome = Some(Outcome::Crashed { domid, reason });
                }
            }
            Event::Fatal(message) => {
                if self.outcome.is_none() {
                    self.panic_reason_pending = message.starts_with("Panic on CPU");
                    self.outcome = Some(Outcome::Fatal(message));
                }
            }
        }
        labelled
    }

    /// The verdict, once there is one.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// Each domain's state, by id.
    pub fn states(&self) -> &BTreeMap<u32, DomainState> {
        &self.states
    }

    /// The `ferry: ready` figures, by domain id.
    pub fn ready(&self) -> &BTreeMap<u32, Ready> {
        &self.ready
    }

    /// Boot-to-up figures (`ferry: up` lines) by domid.
    pub fn up(&self) -> &BTreeMap<u32, Ready> {
        &self.up
    }

    /// The last [`HISTORY_LINES`] lines of a source.
    pub fn history(&self, source: Source) -> Vec<String> {
        self.history
            .get(&source)
            .map(|lines| lines.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The services that printed `ferry: serve: ... ready`, by domain id, with the line's
    /// `ticks=`/`freq=` figure when it had one.
    pub fn serving(&self) -> &BTreeMap<u32, Option<Ready>> {
        &self.serving
    }

    /// The service domains.
    pub fn services(&self) -> &BTreeSet<u32> {
        &self.services
    }

    /// Names of the domains without a verdict (services: not serving yet).
    pub fn unfinished(&self) -> Vec<(u32, String)> {
        self.states
            .iter()
            .filter(|(domid, state)| {
                **state == DomainState::Running && !self.serving.contains_key(domid)
            })
            .map(|(&domid, _)| (domid, self.label(Source::Domain(domid))))
            .collect()
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::AllPoweredOff => f.write_str("every domain powered off or is serving"),
            Outcome::Crashed { domid, reason } => write!(f, "domain {domid} crashed: {reason}"),
            Outcome::Fatal(message) => write!(f, "Xen failed: {message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_lines_are_mapped_and_its_crashes_fail_the_run() {
        // vpl011 lines of a Linux guest: tty ONLCR + Xen's own line end.
        let (source, text) = classify("(XEN) DOM1: ferry-linux: init\r\r\n");
        assert_eq!((source, text), (Source::Domain(1), "ferry-linux: init"));
        assert_eq!(
            event(Source::Domain(1), "ferry: shutdown: poweroff"),
            Some(Event::PoweredOff(1))
        );
        for line in [
            "[    0.195980] Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b",
            "[    0.174424] Internal error: Oops - BUG: 00000000f2000800 [#1] SMP",
            "[    1.5] Unable to handle kernel paging request at virtual address 0000000000000008",
        ] {
            assert!(
                matches!(event(Source::Domain(1), line), Some(Event::Crashed { domid: 1, .. })),
                "{line}"
            );
        }
        assert_eq!(
            event(
                Source::Domain(1),
                "[    0.350131] virtio_blk virtio0: [vda] 131072 512-byte logical blocks"
            ),
            None
        );
        let mut monitor = Monitor::new([(1, "linux".to_owned())]);
        monitor.feed("(XEN) DOM1: [    0.2] Kernel panic - not syncing: System is deadlocked on memory\r\r\n");
        assert_eq!(
            monitor.outcome(),
            Some(&Outcome::Crashed {
                domid: 1,
                reason: "Linux: Kernel panic - not syncing: System is deadlocked on memory"
                    .to_owned()
            })
        );
    }

    #[test]
    fn sample_lines_are_classified() {
        use Source::{Domain, Xen};
        let table: &[(&str, Source, &str, Option<Event>)] = &[
            ("(XEN) Xen version 4.17.5", Xen, "Xen version 4.17.5", None),
            (
                "(XEN) [    0.123456] Xen dom0less mode detected",
                Xen,
                "Xen dom0less mode detected",
                None,
            ),
            (
                "(d1) ferry: selftest: loaded at 0x40000000\r",
                Domain(1),
                "ferry: selftest: loaded at 0x40000000",
                None,
            ),
            (
                "(XEN) DOM2: hello from the vpl011",
                Domain(2),
                "hello from the vpl011",
                None,
            ),
            (
                "(d2) ferry: shutdown: poweroff",
                Domain(2),
                "ferry: shutdown: poweroff",
                Some(Event::PoweredOff(2)),
            ),
            (
                "(XEN) DOM1: ferry: shutdown: poweroff",
                Domain(1),
                "ferry: shutdown: poweroff",
                Some(Event::PoweredOff(1)),
            ),
            (
                "(d1) ferry: shutdown: crash",
                Domain(1),
                "ferry: shutdown: crash",
                Some(Event::Crashed {
                    domid: 1,
                    reason: "ferry: shutdown: crash".into(),
                }),
            ),
            (
                "(d1) ferry: shutdown: reboot",
                Domain(1),
                "ferry: shutdown: reboot",
                Some(Event::Crashed {
                    domid: 1,
                    reason: "ferry: shutdown: reboot".into(),
                }),
            ),
            (
                "(d2) ferry: panic: selftest.panic=1 at appliance/src/bin/selftest.rs:9:5",
                Domain(2),
                "ferry: panic: selftest.panic=1 at appliance/src/bin/selftest.rs:9:5",
                Some(Event::Crashed {
                    domid: 2,
                    reason: "ferry: panic: selftest.panic=1 at appliance/src/bin/selftest.rs:9:5"
                        .into(),
                }),
            ),
            (
                "(d1) ferry: ready ping ticks=1250 freq=62500000",
                Domain(1),
                "ferry: ready ping ticks=1250 freq=62500000",
                Some(Event::Ready {
                    domid: 1,
                    ticks: 1250,
                    frequency: 62_500_000,
                }),
            ),
            (
                "(d2) ferry: up pong ticks=625 freq=62500000",
                Domain(2),
                "ferry: up pong ticks=625 freq=62500000",
                Some(Event::Up {
                    domid: 2,
                    ticks: 625,
                    frequency: 62_500_000,
                }),
            ),
            (
                "(d1) ferry: ready ping ticks=x",
                Domain(1),
                "ferry: ready ping ticks=x",
                None,
            ),
            (
                "(XEN) Domain 1 (vcpu#0) crashed on cpu#1:",
                Xen,
                "Domain 1 (vcpu#0) crashed on cpu#1:",
                Some(Event::Crashed {
                    domid: 1,
                    reason: "Xen: Domain 1 (vcpu#0) crashed on cpu#1:".into(),
                }),
            ),
            (
                "(XEN) Domain 2 reported crashed by domain 32767 on cpu#0:",
                Xen,
                "Domain 2 reported crashed by domain 32767 on cpu#0:",
                Some(Event::Crashed {
                    domid: 2,
                    reason: "Xen: Domain 2 reported crashed by domain 32767 on cpu#0:".into(),
                }),
            ),
            (
                "(XEN) Panic on CPU 0:",
                Xen,
                "Panic on CPU 0:",
                Some(Event::Fatal("Panic on CPU 0:".into())),
            ),
            (
                "(XEN) DomU passthrough config has not page aligned addresses/sizes",
                Xen,
                "DomU passthrough config has not page aligned addresses/sizes",
                Some(Event::Fatal(
                    "DomU passthrough config has not page aligned addresses/sizes".into(),
                )),
            ),
            (
                "(XEN) Unable to copy the DTB to d1 memory (left = 1 bytes)",
                Xen,
                "Unable to copy the DTB to d1 memory (left = 1 bytes)",
                Some(Event::Fatal(
                    "Unable to copy the DTB to d1 memory (left = 1 bytes)".into(),
                )),
            ),
            // A guest that says "Unable to" is not Xen failing.
            (
                "(d1) Unable to frobnicate",
                Domain(1),
                "Unable to frobnicate",
                None,
            ),
            ("(XEN)", Xen, "", None),
            ("Xen 4.17 early output", Xen, "Xen 4.17 early output", None),
            ("(dx) not a domain", Xen, "(dx) not a domain", None),
            ("(XEN) DOMx: not a domain", Xen, "DOMx: not a domain", None),
        ];
        for (line, source, text, expected) in table {
            let (got_source, got_text) = classify(line);
            assert_eq!((got_source, got_text), (*source, *text), "{line}");
            assert_eq!(event(got_source, got_text), *expected, "{line}");
        }
    }

    fn monitor() -> Monitor {
        Monitor::new([(1, "ping".to_owned()), (2, "pong".to_owned())])
    }

    #[test]
    fn all_powered_off_is_success() {
        let mut monitor = monitor();
        assert_eq!(
            monitor.feed("(d1) ferry: ready ping ticks=625 freq=62500000"),
            Labelled {
                label: "ping".into(),
                text: "ferry: ready ping ticks=625 freq=62500000".into()
            }
        );
        assert_eq!(monitor.feed("(XEN) DOM1: x").label, "ping");
        assert_eq!(monitor.feed("(XEN) hello").label, "xen");
        assert_eq!(monitor.feed("(d7) who").label, "d7");
        monitor.feed("(d1) ferry: shutdown: poweroff");
        assert_eq!(monitor.outcome(), None);
        assert_eq!(monitor.unfinished(), [(2, "pong".to_owned())]);
        monitor.feed("(d2) ferry: shutdown: poweroff");
        assert_eq!(monitor.outcome(), Some(&Outcome::AllPoweredOff));
        assert!(monitor.outcome().unwrap().is_success());
        assert!(monitor.unfinished().is_empty());
        let ready = monitor.ready()[&1];
        assert_eq!(ready.microseconds(), 10.0);
    }

    #[test]
    fn first_crash_decides_and_sticks() {
        let mut monitor = monitor();
        monitor.feed("(d1) ferry: shutdown: poweroff");
        monitor.feed("(d2) working");
        monitor.feed("(d2) ferry: panic: boom");
        monitor.feed("(d2) ferry: shutdown: crash");
        monitor.feed("(XEN) Panic on CPU 0:");
        assert_eq!(
            monitor.outcome(),
            Some(&Outcome::Crashed {
                domid: 2,
                reason: "ferry: panic: boom".into()
            })
        );
        assert_eq!(
            monitor.history(Source::Domain(2)),
            ["working", "ferry: panic: boom", "ferry: shutdown: crash"]
        );
        assert_eq!(
            monitor.states()[&2],
            DomainState::Crashed("ferry: panic: boom".into())
        );
    }

    #[test]
    fn xen_failures_end_the_run() {
        let mut monitor = monitor();
        monitor.feed("(XEN) ****************************************");
        monitor.feed("(XEN) Panic on CPU 0:");
        monitor.feed("(XEN) Error creating domain domU1 (rc = -12)");
        monitor.feed("(XEN) ****************************************");
        assert_eq!(
            monitor.outcome(),
            Some(&Outcome::Fatal(
                "Panic on CPU 0: Error creating domain domU1 (rc = -12)".into()
            ))
        );
        assert_eq!(
            monitor.history(Source::Xen).len(),
            4,
            "lines after the verdict are kept"
        );
        let mut monitor = monitor_with_one();
        monitor.feed("(XEN) Domain 1 (vcpu#0) crashed on cpu#0:");
        assert!(matches!(
            monitor.outcome(),
            Some(Outcome::Crashed { domid: 1, .. })
        ));
    }

    fn monitor_with_one() -> Monitor {
        Monitor::new([(1, "only".to_owned())])
    }

    #[test]
    fn history_keeps_the_last_lines() {
        let mut monitor = monitor();
        for index in 0..50 {
            monitor.feed(&format!("(d1) line {index}"));
        }
        let history = monitor.history(Source::Domain(1));
        assert_eq!(history.len(), HISTORY_LINES);
        assert_eq!(history[0], "line 30");
        assert_eq!(history[19], "line 49");
    }

    #[test]
    fn services_pass_by_serving() {
        let line = "(d2) ferry: serve: blk ready for d1 at 0x2000000 irq 33";
        let (source, text) = classify(line);
        assert_eq!(
            event(source, text),
            Some(Event::Serving {
                domid: 2,
                ready: None
            })
        );
        let (source, text) = classify(
            "(d2) ferry: serve: blk ready for d1 at 0x2000000 irq 33 ticks=625 freq=62500000",
        );
        assert_eq!(
            event(source, text),
            Some(Event::Serving {
                domid: 2,
                ready: Some(Ready {
                    ticks: 625,
                    frequency: 62_500_000
                })
            })
        );
        let (source, text) = classify("(d2) ferry: serve: stats requests=5 faults=0");
        assert_eq!(event(source, text), None);

        // The frontend powers off first: not over until the service serves.
        let mut monitor =
            Monitor::new([(1, "probe".to_owned()), (2, "blk".to_owned())]).with_services([2]);
        monitor.feed("(d1) ferry: shutdown: poweroff");
        assert_eq!(monitor.outcome(), None);
        assert_eq!(monitor.unfinished(), [(2, "blk".to_owned())]);
        monitor.feed(line);
        assert_eq!(monitor.outcome(), Some(&Outcome::AllPoweredOff));
        assert_eq!(monitor.serving()[&2], None);

        // The usual order: serving, then the frontend's poweroff.
        let mut monitor =
            Monitor::new([(1, "probe".to_owned()), (2, "blk".to_owned())]).with_services([2]);
        monitor.feed(line);
        assert_eq!(monitor.outcome(), None);
        assert_eq!(monitor.unfinished(), [(1, "probe".to_owned())]);
        monitor.feed("(d1) ferry: shutdown: poweroff");
        assert!(monitor.outcome().unwrap().is_success());

        // A service that crashes fails the run, even after it was serving.
        let mut monitor =
            Monitor::new([(1, "probe".to_owned()), (2, "blk".to_owned())]).with_services([2]);
        monitor.feed(line);
        monitor.feed("(d2) ferry: panic: boom");
        monitor.feed("(d1) ferry: shutdown: poweroff");
        assert!(matches!(
            monitor.outcome(),
            Some(Outcome::Crashed { domid: 2, .. })
        ));

        // A service that never serves keeps the run open (the timeout names it).
        let mut monitor =
            Monitor::new([(1, "probe".to_owned()), (2, "blk".to_owned())]).with_services([2]);
        monitor.feed("(d1) ferry: shutdown: poweroff");
        monitor.feed("(d2) ferry: serve: starting");
        assert_eq!(monitor.outcome(), None);
    }
}

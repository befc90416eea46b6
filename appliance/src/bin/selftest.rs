//! `selftest`: two instances prove the Xen interface between two domUs.
//!
//! Bootargs: `selftest.role=ping|pong selftest.port=<local port of the static event channel>
//! selftest.peer=<peer domid> selftest.gref=<grant ref> selftest.rounds=<n>` and optionally
//! `selftest.panic=1` (panic right after boot, to test that a panic fails the run).
//!
//! 1. Both check an event channel made at run time (alloc_unbound + bind_interdomain to
//!    ourselves, send, status).
//! 2. Pong drops the event Xen left on its end of the static channel when binding it (pong's
//!    domain node must come after ping's, see `xen::evtchn`) and tells ping it is ready.
//! 3. `rounds` events go back and forth, each side waiting for the upcall interrupt.
//! 4. Ping grants pong a page (read-only, at `gref`) filled with a pattern from a seed; pong
//!    copies it with one GNTTABOP_copy and checks every byte; ping ends the grant.
//! 5. Both print `ferry: ready <role> ticks=<since entry> freq=<counter frequency>`.
//!
//! Before step 3 each prints `ferry: up <role> ticks=.. freq=..`: boot to able-to-serve.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
extern crate alloc;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
ferry_appliance::entry!(selftest);

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
fn selftest(boot: &ferry_appliance::BootInfo) -> ferry_appliance::Exit {
    match app::run(boot) {
        Ok(role) => {
            let ticks = boot.ticks_since_entry();
            ferry_appliance::println!(
                "ferry: ready {role} ticks={ticks} freq={}",
                boot.counter_frequency
            );
            ferry_appliance::Exit::Success
        }
        Err(what) => {
            ferry_appliance::println!("ferry: selftest failed: {what}");
            ferry_appliance::Exit::Failure
        }
    }
}

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod app {
    use alloc::boxed::Box;
    use alloc::format;
    use alloc::string::{String, ToString};
    use core::fmt::Display;

    use ferry_appliance::xen::abi::DOMID_SELF;
    use ferry_appliance::xen::evtchn::{self, Channel, PortStatus};
    use ferry_appliance::xen::grant::{Access, CopyBatch, Gfn, GrantRef, GrantTable, Page};
    use ferry_appliance::{irq, xen, BootInfo};

    /// Prefixes an error with what was being done.
    fn context<E: Display>(what: &'static str) -> impl FnOnce(E) -> String {
        move |error| format!("{what}: {error}")
    }

    /// A numeric boot argument `selftest.<key>`.
    fn number<T: core::str::FromStr>(boot: &BootInfo, key: &str) -> Result<T, String> {
        let value = boot
            .arg(key)
            .ok_or_else(|| format!("missing bootarg {key}"))?;
        value
            .parse()
            .map_err(|_| format!("bootarg {key}={value} is not a number"))
    }

    /// The page pong must receive: xorshift32 bytes from a seed both sides know (the ref).
    fn pattern(gref: u32, page: &mut [u8]) {
        let mut state = 0x9e37_79b9 ^ gref;
        for byte in page {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            *byte = state as u8;
        }
    }

    pub fn run(boot: &BootInfo) -> Result<&'static str, String> {
        if boot.arg("selftest.panic") == Some("1") {
            panic!("selftest.panic=1: panicking on purpose");
        }
        let role = match boot.arg("selftest.role") {
            Some("ping") => "ping",
            Some("pong") => "pong",
            other => return Err(format!("selftest.role must be ping or pong, not {other:?}")),
        };
        let port: u32 = number(boot, "selftest.port")?;
        let peer: u16 = number(boot, "selftest.peer")?;
        let gref: u32 = number(boot, "selftest.gref")?;
        let rounds: u32 = number(boot, "selftest.rounds")?;

        let xen = xen::init(boot.platform.hypervisor.as_ref()).map_err(context("xen"))?;
        loopback().map_err(context("loopback channel"))?;
        let channel = Channel::open_static(port, Some(peer)).map_err(context("static channel"))?;
        let local = channel.local;
        if role == "pong" {
            local.clear_pending(); // the event of Xen's bind_interdomain, not ping's
        }
        local.unmask().map_err(context("unmask"))?;
        irq::enable_cpu_interrupts();
        // Runtime, Xen interface and channel are up: the time an appliance needs before it can
        // serve (the ping-pong and grant checks below come on top).
        ferry_appliance::println!(
            "ferry: up {role} ticks={} freq={}",
            boot.ticks_since_entry(),
            boot.counter_frequency
        );

        if role == "pong" {
            channel.notify().map_err(context("ready"))?;
            for _ in 0..rounds {
                local.wait();
                channel.notify().map_err(context("pong"))?;
            }
            local.wait(); // the grant is there
            let mut page = Page::zeroed();
            let mut batch: CopyBatch<'_, 1> = CopyBatch::new();
            batch
                .from_grant(peer, gref, 0, &mut page.0)
                .map_err(context("copy"))?;
            batch.execute().map_err(context("copy"))?;
            let mut expected = Page::zeroed();
            pattern(gref, &mut expected.0);
            if let Some(at) = (0..page.0.len()).find(|&i| page.0[i] != expected.0[i]) {
                return Err(format!("copied page differs at byte {at}"));
            }
            channel.notify().map_err(context("copied"))?;
        } else {
            local.wait(); // pong is ready
            for _ in 0..rounds {
                channel.notify().map_err(context("ping"))?;
                local.wait();
            }
            let mut grants = GrantTable::map(xen.grant_table_base, xen.grant_table_size)
                .map_err(context("grant table"))?;
            let mut page = Box::new(Page::zeroed());
            pattern(gref, &mut page.0);
            let reference = grants
                .grant_at(GrantRef(gref), peer, Gfn::of(&page), Access::ReadOnly)
                .map_err(context("grant"))?;
            channel.notify().map_err(context("granted"))?;
            local.wait(); // pong has copied it
            if let Err(error) = grants.end_access(reference) {
                Box::leak(page); // still granted: the page must never be reused
                return Err(format!("end grant: {error}"));
            }
        }
        ferry_appliance::println!(
            "ferry: selftest: {role}: {rounds} round trips, one {}-byte grant copy, {} upcalls",
            ferry_appliance::xen::abi::PAGE_SIZE,
            evtchn::upcalls()
        );
        Ok(role)
    }

    /// An interdomain channel to ourselves: allocate, bind, send, check the status, close.
    fn loopback() -> Result<(), String> {
        let unbound = evtchn::alloc_unbound(DOMID_SELF).map_err(|e| e.to_string())?;
        let bound =
            evtchn::bind_interdomain(DOMID_SELF, unbound.number()).map_err(|e| e.to_string())?;
        bound.local.clear_pending(); // binding marks the new port pending
        unbound.send().map_err(|e| e.to_string())?;
        if !bound.local.is_pending() {
            return Err(format!("no event on {} after a send", bound.local));
        }
        match unbound.status().map_err(|e| e.to_string())? {
            PortStatus::Interdomain { remote_port, .. } if remote_port == bound.local.number() => {}
            other => return Err(format!("{unbound} is {other:?}")),
        }
        bound.local.close().map_err(|e| e.to_string())?;
        unbound.close().map_err(|e| e.to_string())
    }
}

#[cfg(not(target_os = "none"))]
fn main() -> std::process::ExitCode {
    ferry_appliance::host::refuse_to_run("selftest")
}

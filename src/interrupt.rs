//! SIGINT/SIGTERM seen by this process. Installing the watcher replaces the default "die at
//! once", so nuwax decides what a signal means: the archive writer stops through [`Cancel`],
//! the flows at their next [`Interrupt::check`], and a scope that stopped services still
//! starts them again. Children nuwax runs (the compose CLI) live in their own process group,
//! so a terminal's Ctrl-C reaches nuwax alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::archive::Cancel;

#[derive(Clone)]
pub struct Interrupt {
    signal: Arc<AtomicU8>,
    /// The first signal ever seen, kept across [`Interrupt::reset`]: it decides the exit code.
    seen: Arc<AtomicU8>,
    cancel: Cancel,
}

const NONE: u8 = 0;
const SIGINT: u8 = 2;
const SIGTERM: u8 = 15;

impl Interrupt {
    /// Starts listening. Must be called inside the tokio runtime.
    pub fn install() -> std::io::Result<Interrupt> {
        use tokio::signal::unix::{SignalKind, signal};
        let me = Interrupt::none();
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let m = me.clone();
        tokio::spawn(async move {
            loop {
                let sig = tokio::select! {
                    _ = int.recv() => SIGINT,
                    _ = term.recv() => SIGTERM,
                };
                let _ = m.seen.compare_exchange(NONE, sig, Ordering::SeqCst, Ordering::SeqCst);
                let first = m.signal.compare_exchange(NONE, sig, Ordering::SeqCst, Ordering::SeqCst).is_ok();
                m.cancel.cancel();
                if first {
                    eprintln!(
                        "nuwax: {} received: stopping at the next safe point; services will be started again",
                        name(sig)
                    );
                } else {
                    eprintln!("nuwax: still finishing up (starting services again); please wait");
                }
            }
        });
        Ok(me)
    }

    /// An interrupt that never fires (tests, library use).
    pub fn none() -> Interrupt {
        Interrupt {
            signal: Arc::new(AtomicU8::new(NONE)),
            seen: Arc::new(AtomicU8::new(NONE)),
            cancel: Cancel::default(),
        }
    }

    pub fn cancel(&self) -> &Cancel {
        &self.cancel
    }

    /// Takes back a signal that was acted on, so that what must follow it (the rollback of an
    /// interrupted upgrade) runs; a further signal interrupts that in turn.
    pub fn reset(&self) {
        self.signal.store(NONE, Ordering::SeqCst);
        self.cancel.reset();
    }

    /// `Err(Interrupted)` once a signal arrived (and was not [`Interrupt::reset`]).
    pub fn check(&self) -> Result<(), crate::Error> {
        match self.signal.load(Ordering::SeqCst) {
            NONE => Ok(()),
            sig => Err(crate::Error::Interrupted { signal: name(sig) }),
        }
    }

    /// The first signal this process received, even one since reset: `SIGINT` or `SIGTERM`.
    pub fn received(&self) -> Option<&'static str> {
        match self.seen.load(Ordering::SeqCst) {
            NONE => None,
            sig => Some(name(sig)),
        }
    }
}

fn name(sig: u8) -> &'static str {
    if sig == SIGTERM { "SIGTERM" } else { "SIGINT" }
}

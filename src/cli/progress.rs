//! The archive progress bar (bytes, rate, ETA) on stderr, only when stderr is a terminal.

use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::archive::Progress;

pub struct Bar(Option<ProgressBar>);

/// A bar when stderr is a terminal and output is not suppressed; a no-op otherwise.
pub fn bar(silent: bool) -> Arc<Bar> {
    if silent || !std::io::stderr().is_terminal() {
        return Arc::new(Bar(None));
    }
    let pb = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    Arc::new(Bar(Some(pb)))
}

impl Bar {
    pub fn done(&self) {
        if let Some(pb) = &self.0 {
            pb.finish_and_clear();
        }
    }
}

impl Progress for Bar {
    fn set_total(&self, bytes: u64) {
        if let Some(pb) = &self.0 {
            // A new phase (download, then archive): count from zero again.
            pb.set_length(bytes);
            pb.set_position(0);
        }
    }

    fn inc(&self, bytes: u64) {
        if let Some(pb) = &self.0 {
            pb.inc(bytes);
        }
    }
}

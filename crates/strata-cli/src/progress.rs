//! Progress bars on stderr for long work, drawn only when stderr is a
//! terminal: one bar per item the operation reports (a blob being fetched,
//! a layer being unpacked), fed by the operation context's events.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use strata_leases::{OpCtx, ProgressEvent};

/// Bars of one command.
#[derive(Clone, Debug)]
pub struct Bars {
    multi: MultiProgress,
    bars: Arc<Mutex<HashMap<String, ProgressBar>>>,
}

impl Bars {
    /// Bars on stderr when it is a terminal; `None` otherwise.
    pub fn on_terminal() -> Option<Bars> {
        std::io::stderr().is_terminal().then(|| Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: Arc::default(),
        })
    }

    fn show(&self, e: &ProgressEvent) {
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        let bar = bars.entry(e.item.clone()).or_insert_with(|| {
            let style = if e.unit == "bytes" {
                "{prefix:>20} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}"
            } else {
                "{prefix:>20} [{bar:30}] {pos}/{len}"
            };
            let bar = self.multi.add(ProgressBar::new(e.total));
            bar.set_style(
                ProgressStyle::with_template(style)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            let short: String = e
                .item
                .rsplit(':')
                .next()
                .unwrap_or(&e.item)
                .chars()
                .take(12)
                .collect();
            bar.set_prefix(short);
            bar
        });
        if e.total > 0 {
            bar.set_length(e.total);
        }
        bar.set_position(e.current);
        if e.total > 0 && e.current >= e.total {
            bar.finish();
        }
    }

    /// `ctx` with its events drawn.
    pub fn attach(&self, ctx: &OpCtx) -> OpCtx {
        let me = self.clone();
        ctx.with_events(move |e| me.show(e))
    }

    /// Clears every bar.
    pub fn clear(&self) {
        let _ = self.multi.clear();
    }
}

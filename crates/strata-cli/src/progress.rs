//! Progress bars on stderr for long work, drawn only when stderr is a
//! terminal: one bar per item the operation reports (a blob being fetched,
//! a layer being unpacked, the collector sweeping, prune measuring), fed by
//! the operation context's events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use strata_leases::{OpCtx, ProgressEvent};

use crate::output::Output;

/// `ctx` with its events drawn as bars on the command's standard error
/// when it is a terminal (as is otherwise); the bars are cleared when the
/// returned guard drops.
pub fn drawn(ctx: &OpCtx, out: &Output) -> (OpCtx, Drawn) {
    let Some(target) = out.progress_target() else {
        return (ctx.clone(), Drawn(None));
    };
    let bars = Bars {
        multi: MultiProgress::with_draw_target(target),
        bars: Arc::default(),
    };
    let me = bars.clone();
    (ctx.with_events(move |e| me.show(e)), Drawn(Some(bars)))
}

/// Clears its bars when dropped.
#[derive(Debug)]
pub struct Drawn(Option<Bars>);

impl Drop for Drawn {
    fn drop(&mut self) {
        if let Some(b) = &self.0 {
            let _ = b.multi.clear();
        }
    }
}

/// Bars of one command.
#[derive(Clone, Debug)]
struct Bars {
    multi: MultiProgress,
    bars: Arc<Mutex<HashMap<String, ProgressBar>>>,
}

impl Bars {
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
}

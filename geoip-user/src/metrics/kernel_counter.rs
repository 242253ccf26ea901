//! Counters kept in the kernel (the program's lost events, the kernel's
//! skipped runs), read at each scrape.

use prometheus::{
    IntCounter,
    core::{Collector, Desc},
    proto::MetricFamily,
};

/// Where a count kept in the kernel comes from (read at each scrape).
pub(crate) type KernelCount = Box<dyn Fn() -> Option<u64> + Send + Sync>;

/// A counter kept in the kernel, read at collection time.
pub(super) struct FromKernel {
    pub(super) counter: IntCounter,
    pub(super) source: KernelCount,
}

impl Collector for FromKernel {
    fn desc(&self) -> Vec<&Desc> {
        self.counter.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if let Some(total) = (self.source)() {
            let seen = self.counter.get();
            if total > seen {
                self.counter.inc_by(total - seen);
            }
        }
        self.counter.collect()
    }
}

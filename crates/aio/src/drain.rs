//! Counting in-flight work on one thread, and waiting for it to drain.
//!
//! `InFlight` is `!Send` on purpose: it counts the work of one thread's queue.

use std::cell::Cell;
use std::rc::Rc;

use tokio::sync::Notify;

#[derive(Default)]
struct Inner {
    count: Cell<usize>,
    zero: Notify,
}

/// A thread-confined in-flight counter.
#[derive(Clone, Default)]
pub struct InFlight {
    inner: Rc<Inner>,
}

/// Decrements the counter when dropped.
pub struct InFlightGuard {
    inner: Rc<Inner>,
}

impl InFlight {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn enter(&self) -> InFlightGuard {
        self.inner.count.set(self.inner.count.get() + 1);
        InFlightGuard { inner: self.inner.clone() }
    }

    pub fn count(&self) -> usize {
        self.inner.count.get()
    }

    /// Resolves once the count is zero (immediately if it already is).
    pub async fn drained(&self) {
        loop {
            if self.inner.count.get() == 0 {
                return;
            }
            let notified = self.inner.zero.notified();
            if self.inner.count.get() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let n = self.inner.count.get() - 1;
        self.inner.count.set(n);
        if n == 0 {
            self.inner.zero.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drained_waits_for_every_guard() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let f = InFlight::new();
            f.drained().await;
            let g1 = f.enter();
            let g2 = f.enter();
            assert_eq!(f.count(), 2);
            let done = Rc::new(Cell::new(false));
            let (f2, d2) = (f.clone(), done.clone());
            let waiter = tokio::task::spawn_local(async move {
                f2.drained().await;
                d2.set(true);
            });
            tokio::task::yield_now().await;
            drop(g1);
            tokio::task::yield_now().await;
            assert!(!done.get());
            drop(g2);
            waiter.await.unwrap();
            assert!(done.get());
        });
    }
}

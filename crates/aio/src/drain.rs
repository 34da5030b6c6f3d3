//! Counting in-flight work on one thread, and waiting for it to drain.
//!
//! `InFlight` is `!Send` on purpose: it counts the work of one thread's queue.
//! Being confined to one thread, it needs no lock and no atomic: the count
//! is a `Cell` and the tasks waiting for zero are wakers in a `RefCell`, so
//! the common path (a guard dropped, nobody waiting) is a decrement and an
//! emptiness check. (It used `tokio::sync::Notify`, whose `notify_waiters`
//! takes a mutex each time the count reached zero: every command at QD1.)

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

#[derive(Default)]
struct Inner {
    count: Cell<usize>,
    /// Tasks in [`InFlight::drained`], woken when the count reaches zero.
    waiters: RefCell<Vec<Waker>>,
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
        poll_fn(|cx| {
            if self.inner.count.get() == 0 {
                return Poll::Ready(());
            }
            let mut waiters = self.inner.waiters.borrow_mut();
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let n = self.inner.count.get() - 1;
        self.inner.count.set(n);
        if n == 0 {
            // Woken tasks run later on this thread's loop; one that finds
            // the count above zero again waits again.
            let waiters = std::mem::take(&mut *self.inner.waiters.borrow_mut());
            for w in waiters {
                w.wake();
            }
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

    #[test]
    fn every_waiter_wakes_and_a_refilled_count_keeps_them_waiting() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let f = InFlight::new();
            let g = f.enter();
            let woken = Rc::new(Cell::new(0));
            let waiters: Vec<_> = (0..3)
                .map(|_| {
                    let (f, woken) = (f.clone(), woken.clone());
                    tokio::task::spawn_local(async move {
                        f.drained().await;
                        woken.set(woken.get() + 1);
                    })
                })
                .collect();
            tokio::task::yield_now().await;
            // Zero, then busy again before the waiters run: they wait on.
            drop(g);
            let g = f.enter();
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
            assert_eq!(woken.get(), 0);
            assert!(f.inner.waiters.borrow().len() <= 3, "a waiter registers once");
            drop(g);
            for w in waiters {
                w.await.unwrap();
            }
            assert_eq!(woken.get(), 3);
            assert!(f.inner.waiters.borrow().is_empty());
        });
    }
}

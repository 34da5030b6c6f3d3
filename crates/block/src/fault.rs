//! A wrapper backend for tests: injects an errno on reads or writes, a
//! delay on every operation, and can hold write-type operations until
//! released; switchable at run time from any thread. A change of the delay
//! applies to the operations already waiting too (a slow store that
//! recovers: each waits until its arrival plus the delay in force).

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::{Backend, BlockError, Bytes, Result};

pub struct FaultBackend {
    inner: Backend,
    read_errno: AtomicI32,
    write_errno: AtomicI32,
    delay_us: AtomicU64,
    /// Woken when the delay changes.
    delay_changed: Notify,
    /// Write-type operations arriving now are held.
    hold_writes: AtomicBool,
    /// Held operations wait until this passes the value it had when they arrived.
    release_epoch: AtomicU64,
    released: Notify,
    /// Write-type operations held now.
    held: AtomicU64,
    /// Write-type operations that reached the inner backend.
    writes: AtomicU64,
}

impl FaultBackend {
    pub fn new(inner: Backend) -> Self {
        FaultBackend {
            inner,
            read_errno: AtomicI32::new(0),
            write_errno: AtomicI32::new(0),
            delay_us: AtomicU64::new(0),
            delay_changed: Notify::new(),
            hold_writes: AtomicBool::new(false),
            release_epoch: AtomicU64::new(0),
            released: Notify::new(),
            held: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        }
    }

    pub fn inner(&self) -> &Backend {
        &self.inner
    }

    /// Fail every read with `errno` (0 clears).
    pub fn fail_reads(&self, errno: i32) {
        self.read_errno.store(errno, Ordering::SeqCst);
    }

    /// Fail every write-type operation with `errno` (0 clears).
    pub fn fail_writes(&self, errno: i32) {
        self.write_errno.store(errno, Ordering::SeqCst);
    }

    /// Delay every operation by this long before it reaches the inner
    /// backend; operations waiting now wait until their arrival plus this.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_us.store(u64::try_from(delay.as_micros()).unwrap_or(u64::MAX), Ordering::SeqCst);
        self.delay_changed.notify_waiters();
    }

    /// The delay in force.
    pub fn delay(&self) -> Duration {
        Duration::from_micros(self.delay_us.load(Ordering::SeqCst))
    }

    /// The errno reads fail with (0: none).
    pub fn read_errno(&self) -> i32 {
        self.read_errno.load(Ordering::SeqCst)
    }

    /// The errno write-type operations fail with (0: none).
    pub fn write_errno(&self) -> i32 {
        self.write_errno.load(Ordering::SeqCst)
    }

    /// Holds every write-type operation (write, flush, discard, write
    /// zeroes) before it reaches the inner backend, until called with
    /// `false`, which releases the held ones too.
    pub fn hold_writes(&self, hold: bool) {
        self.hold_new_writes(hold);
        if !hold {
            self.release_held();
        }
    }

    /// Holds the write-type operations that arrive from now on (`true`),
    /// or lets them through (`false`); those already held stay held.
    pub fn hold_new_writes(&self, hold: bool) {
        self.hold_writes.store(hold, Ordering::SeqCst);
    }

    /// Releases the write-type operations held now.
    pub fn release_held(&self) {
        self.release_epoch.fetch_add(1, Ordering::SeqCst);
        self.released.notify_waiters();
    }

    /// Number of write-type operations held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::SeqCst)
    }

    /// Number of write-type operations that reached the inner backend.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    async fn write_gate(&self, op: &'static str, offset: u64, len: u64) -> Result<()> {
        // The epoch first: a release that clears the hold then moves the
        // epoch cannot leave this operation waiting for the next one.
        let epoch = self.release_epoch.load(Ordering::SeqCst);
        if self.hold_writes.load(Ordering::SeqCst) {
            self.held.fetch_add(1, Ordering::SeqCst);
            loop {
                let released = self.released.notified();
                tokio::pin!(released);
                released.as_mut().enable();
                if self.release_epoch.load(Ordering::SeqCst) != epoch {
                    break;
                }
                released.await;
            }
            self.held.fetch_sub(1, Ordering::SeqCst);
        }
        self.gate(&self.write_errno, op, offset, len).await?;
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn gate(&self, errno: &AtomicI32, op: &'static str, offset: u64, len: u64) -> Result<()> {
        let arrival = tokio::time::Instant::now();
        loop {
            // Registered before the delay is read: a change in between wakes it.
            let changed = self.delay_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let us = self.delay_us.load(Ordering::SeqCst);
            let Some(until) = arrival.checked_add(Duration::from_micros(us)) else { break };
            if until <= tokio::time::Instant::now() {
                break;
            }
            // Woken by a change: look at the delay again.
            let _ = tokio::time::timeout_at(until, changed).await;
        }
        match errno.load(Ordering::SeqCst) {
            0 => Ok(()),
            e => Err(BlockError::from_errno(e, op, offset, len)),
        }
    }

    pub async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.gate(&self.read_errno, "read", offset, len as u64).await?;
        self.inner.read(offset, len).await
    }

    pub async fn read_into(&self, offset: u64, dest: &crate::SgBuf, len: usize) -> Result<()> {
        self.gate(&self.read_errno, "read", offset, len as u64).await?;
        self.inner.read_into(offset, dest, len).await
    }

    pub async fn write(&self, offset: u64, data: impl Into<Bytes>, fua: bool) -> Result<()> {
        let data: Bytes = data.into();
        self.write_gate("write", offset, data.len() as u64).await?;
        self.inner.write(offset, data, fua).await
    }

    pub async fn flush(&self) -> Result<()> {
        self.write_gate("flush", 0, 0).await?;
        self.inner.flush().await
    }

    pub async fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.write_gate("discard", offset, len).await?;
        self.inner.discard(offset, len).await
    }

    pub async fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.write_gate("write-zeroes", offset, len).await?;
        self.inner.write_zeroes(offset, len).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap()
    }

    #[test]
    fn a_delay_applies_and_its_removal_frees_the_waiting_operations() {
        let rt = rt();
        let f = Arc::new(FaultBackend::new(Backend::mem(1 << 20)));
        f.set_delay(Duration::from_millis(100));
        let t = std::time::Instant::now();
        rt.block_on(f.write(0, vec![1; 512], false)).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(100), "{:?}", t.elapsed());
        assert_eq!(f.delay(), Duration::from_millis(100));

        // An operation waiting out a long delay ends soon after the delay is removed.
        f.set_delay(Duration::from_secs(60));
        let g = f.clone();
        let remover = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            g.set_delay(Duration::ZERO);
        });
        let t = std::time::Instant::now();
        rt.block_on(f.write(512, vec![2; 512], false)).unwrap();
        remover.join().unwrap();
        assert!(t.elapsed() < Duration::from_secs(10), "still waited {:?}", t.elapsed());
        assert_eq!(rt.block_on(f.read(512, 512)).unwrap(), vec![2; 512]);

        // A shorter delay set meanwhile counts from the operation's arrival.
        f.set_delay(Duration::from_secs(60));
        let g = f.clone();
        let shorter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            g.set_delay(Duration::from_millis(300));
        });
        let t = std::time::Instant::now();
        rt.block_on(f.read(0, 512)).unwrap();
        shorter.join().unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(300) && t.elapsed() < Duration::from_secs(10),
            "{:?}",
            t.elapsed()
        );
        assert_eq!((f.read_errno(), f.write_errno()), (0, 0));
    }
}

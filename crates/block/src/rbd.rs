//! `rbd`: a Ceph RBD image through librbd's asynchronous C API.
//!
//! Built only where librbd and librados are installed (see `build.rs`, cfg
//! `lunar_rbd`); elsewhere [`RbdBackend::open`] fails with
//! [`RbdError::NotBuilt`] and nothing else changes.
//!
//! # Completions and buffers
//!
//! librbd can signal finished requests on an eventfd
//! (`rbd_set_image_notification`); `rbd_poll_io_events` then hands them out.
//! Each image has one such eventfd (librbd allows one per image). Every
//! Lunar I/O thread that submits to the image runs a *reaper* task for it
//! (spawned with `spawn_local` on first use, as the `file` backend's io_uring
//! reaper is) that waits for the eventfd with tokio's `AsyncFd`, drains the
//! finished completions and completes their futures through a `oneshot`
//! channel (lock-free). When one image is served by several I/O threads,
//! every one of them is woken by the eventfd and whichever drains first
//! completes the others' futures too (a cross-thread wake-up of the waiting
//! task). Nothing on this path takes a lock of Lunar's; librbd takes its own.
//!
//! A request's buffer (the data of a write, the destination of a read) is
//! moved into a heap cell that librbd's completion points to; the cell is
//! freed by the reaper only after librbd reported the completion. A future
//! dropped before that (a cancelled command) only drops its receiving end:
//! librbd never writes into freed memory. Closing the image (dropping the
//! last reference) first waits for every request in flight.
//!
//! # Timeouts
//!
//! Opening (control plane, blocking) gives up after [`CONNECT_TIMEOUT_SECS`]
//! when the cluster does not answer: `client_mount_timeout`,
//! `rados_mon_op_timeout` and `rados_osd_op_timeout` are set to it while
//! connecting and opening. Once open, `rados_osd_op_timeout` is the
//! configuration's value when it is above 0, else [`IO_TIMEOUT_SECS`]:
//! a request that an OSD (or the whole cluster) does not answer within it
//! fails with ETIMEDOUT, [`ErrorKind::TimedOut`](crate::ErrorKind::TimedOut),
//! and the LUN's error policy acts on it (`werror=stop` parks it, and `cont`
//! re-issues it once the cluster is back). The bound is per RADOS operation:
//! a librbd request that needs two in a row (an object-map update, then the
//! write) can take up to twice as long to fail. Requests never wait for
//! ever, unlike the kernel's RBD client with its default of 0.

#[cfg(lunar_rbd)]
mod ffi;
#[cfg(lunar_rbd)]
mod image;
#[cfg(lunar_rbd)]
mod rados_ffi;
pub mod shared_object;

use std::path::PathBuf;

use thiserror::Error;

use crate::Result;

/// The COMPARE AND WRITE librbd 16 (Pacific) does atomically: this many
/// bytes, inside one aligned unit of this size (larger ones came in Quincy).
pub const ATOMIC_COMPARE_AND_WRITE_BYTES: u64 = 512;

/// Nanoseconds since the first call, on the monotonic clock (never 0).
#[cfg(lunar_rbd)]
fn clock_ns() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let e = *EPOCH.get_or_init(std::time::Instant::now);
    u64::try_from(e.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1)
}

/// Seconds `RbdBackend::open` waits for an unreachable cluster.
pub const CONNECT_TIMEOUT_SECS: u64 = 10;

/// Seconds a request waits for the cluster once the image is open, unless
/// the configuration sets `rados_osd_op_timeout` (below the 30 s command
/// timeout of Linux initiators, so the LUN's error policy answers first).
pub const IO_TIMEOUT_SECS: u64 = 20;

/// Where an RBD image is and how to reach its cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RbdOptions {
    pub pool: String,
    pub image: String,
    /// RADOS namespace inside the pool.
    pub namespace: Option<String>,
    /// ceph.conf; default: librados' search (`$CEPH_CONF`, `/etc/ceph/ceph.conf`, ...).
    pub conf: Option<PathBuf>,
    /// Client name without `client.`; default `admin`.
    pub id: Option<String>,
    /// Keyring file; default: the configuration's.
    pub keyring: Option<PathBuf>,
    /// Refuse writes (the image is still opened read-write by librbd).
    pub readonly: bool,
    /// Take the image's exclusive lock when opening and keep it
    /// (`rbd_lock_acquire`: librbd then refuses to hand it to another
    /// client, whose writes fail until this one closes or is fenced).
    /// With it, this client is the image's only writer, so COMPARE AND
    /// WRITE of any size is made atomic by the target core alone (see
    /// [`RbdBackend::check_sole_writer`]). Needs the image's
    /// `exclusive-lock` feature (the default for new images).
    pub exclusive: bool,
    /// Several clients write the image at once (gateways with
    /// `alua=all-active`): librbd's cache is off, so that every read goes
    /// to the OSDs and sees the other clients' writes, and the exclusive
    /// lock moves to whichever client writes (librbd hands it over: the
    /// holder finishes its writes in flight and releases it). Not with
    /// `exclusive`.
    pub multi_writer: bool,
}

impl RbdOptions {
    /// `pool/image` or `pool/namespace/image`.
    pub fn spec(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{}/{}", self.pool, ns, self.image),
            None => format!("{}/{}", self.pool, self.image),
        }
    }
}

/// Opening an RBD image failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RbdError {
    #[error(
        "backend=rbd is not available: this build has no librbd (install librbd-dev and librados-dev, then rebuild)"
    )]
    NotBuilt,
    #[error("rbd image {spec}: {what}: {reason}")]
    Invalid { spec: String, what: &'static str, reason: String },
    #[error("rbd image {spec}: cannot reach the cluster ({conf}) within {secs} s: {step} failed with errno {errno}")]
    Unreachable { spec: String, conf: String, secs: u64, step: &'static str, errno: i32 },
    #[error("rbd image {spec}: {step} failed: {reason} (errno {errno})")]
    Open { spec: String, step: &'static str, reason: String, errno: i32 },
}

/// `true` when this build can open RBD images.
pub fn available() -> bool {
    cfg!(lunar_rbd)
}

/// An open RBD image. `Send + Sync`: share it through an `Arc`; each I/O
/// thread that submits runs its own reaper (see the module documentation).
/// Its futures must be polled inside a `tokio::task::LocalSet` on a runtime
/// with I/O enabled.
pub struct RbdBackend {
    /// The open image; replaced whole by [`RbdBackend::reopen`] (requests
    /// in flight keep the one they were submitted to).
    #[cfg(lunar_rbd)]
    inner: arc_swap::ArcSwap<image::Image>,
    /// The exclusive lock is taken and given up at run time by whoever
    /// decides which gateway owns the image (ALUA), not held for good.
    #[cfg(lunar_rbd)]
    managed: std::sync::atomic::AtomicBool,
    /// With [`RbdOptions::multi_writer`]: when the oldest write still
    /// waiting began, and when a write last completed (nanoseconds of
    /// [`clock_ns`]; plain stores, no read-modify-write): writes that wait
    /// long while none completes wait for a lock holder that does not
    /// answer ([`RbdBackend::write_stalled_for`]).
    #[cfg(lunar_rbd)]
    pending_since: std::sync::atomic::AtomicU64,
    #[cfg(lunar_rbd)]
    last_done: std::sync::atomic::AtomicU64,
    #[cfg(not(lunar_rbd))]
    never: std::convert::Infallible,
    options: RbdOptions,
}

impl std::fmt::Debug for RbdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RbdBackend").field("image", &self.options.spec()).finish()
    }
}

#[cfg(lunar_rbd)]
impl RbdBackend {
    /// Connects to the cluster and opens the image (blocking: control plane).
    pub fn open(options: &RbdOptions) -> std::result::Result<RbdBackend, RbdError> {
        let inner = image::Image::open(options)?;
        Ok(RbdBackend {
            inner: arc_swap::ArcSwap::from_pointee(inner),
            managed: std::sync::atomic::AtomicBool::new(false),
            pending_since: std::sync::atomic::AtomicU64::new(0),
            last_done: std::sync::atomic::AtomicU64::new(0),
            options: options.clone(),
        })
    }

    /// How long writes have been waiting without any completing (zero when
    /// none waits, or without [`RbdOptions::multi_writer`]). Several
    /// writers hand the image's lock over in milliseconds; seconds mean
    /// the holder does not answer (dead, its watch not yet timed out).
    pub fn write_stalled_for(&self) -> std::time::Duration {
        use std::sync::atomic::Ordering::Relaxed;
        let (since, done) = (self.pending_since.load(Relaxed), self.last_done.load(Relaxed));
        if since <= done {
            return std::time::Duration::ZERO;
        }
        std::time::Duration::from_nanos(clock_ns().saturating_sub(since))
    }

    /// Breaks the image's lock of every other holder, which librbd
    /// blocklists first (nothing it still sends lands afterwards); this
    /// client's waiting writes then get the lock. Blocking (control
    /// plane). Returns the holders fenced.
    pub fn fence_lock_holders(&self) -> Result<Vec<String>> {
        let img = self.inner.load();
        if img.owns_lock() {
            return Ok(Vec::new());
        }
        let owners = img.lock_owners()?;
        for owner in &owners {
            img.break_lock(owner)?;
        }
        Ok(owners)
    }

    /// Opens the image again as a new client of the cluster (blocking:
    /// control plane) and sends later requests there: what brings back a
    /// LUN whose client was blocklisted (a fenced client stays fenced; a
    /// new one is not). The old client is closed once its requests in
    /// flight are done; call it with none in flight (the core drains the
    /// LUN first). On failure the old client stays.
    pub fn reopen(&self) -> std::result::Result<(), RbdError> {
        let fresh = image::Image::open(&self.options)?;
        let old = self.inner.swap(std::sync::Arc::new(fresh));
        drop(old);
        Ok(())
    }

    pub fn size(&self) -> u64 {
        self.inner.load().size()
    }

    /// Whether this client is the image's only writer whenever it writes:
    /// it holds the exclusive lock for good ([`RbdOptions::exclusive`]), or
    /// the lock is managed ([`RbdBackend::set_lock_managed`]) and media
    /// access is allowed only while this client holds it.
    pub fn is_exclusive(&self) -> bool {
        self.options.exclusive || self.managed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Several gateways serve the image and their owner holds the lock:
    /// this one takes and gives it up through [`RbdBackend::try_take_lock`],
    /// [`RbdBackend::take_over_lock`] and [`RbdBackend::release_lock`].
    pub fn set_lock_managed(&self, on: bool) {
        self.managed.store(on, std::sync::atomic::Ordering::Release);
    }

    /// Takes the exclusive lock for good unless another client holds it
    /// that way (blocking: control plane). `Ok(true)`: this client owns the
    /// image now (librbd refuses to hand the lock over).
    pub fn try_take_lock(&self) -> Result<bool> {
        self.inner.load().acquire_lock()
    }

    /// Takes the lock from whoever holds it: each other owner is
    /// blocklisted (fenced: nothing it sends lands any more) and its lock
    /// broken, then this client takes it (blocking: control plane; a few
    /// cluster round trips). Returns the owners fenced.
    pub fn take_over_lock(&self) -> Result<Vec<String>> {
        let img = self.inner.load();
        let mut fenced = Vec::new();
        for _ in 0..4 {
            if img.owns_lock() {
                return Ok(fenced);
            }
            fenced.extend(self.fence_lock_holders()?);
            if img.acquire_lock()? {
                return Ok(fenced);
            }
        }
        Err(crate::BlockError::new(crate::ErrorKind::Io, libc::EBUSY, "lock-take-over", 0, 0))
    }

    /// Gives the exclusive lock up (blocking: control plane); its requests
    /// in flight are done first (librbd flushes before releasing).
    pub fn release_lock(&self) -> Result<()> {
        self.inner.load().release_lock()
    }

    /// Whether this client holds the exclusive lock (librbd's own state, no
    /// cluster round trip).
    pub fn owns_lock(&self) -> bool {
        self.inner.load().owns_lock()
    }

    /// The clients holding the exclusive lock (a cluster round trip).
    pub fn lock_owners(&self) -> Result<Vec<String>> {
        self.inner.load().lock_owners()
    }

    /// The addresses of the client that reads and writes the image, as a
    /// blocklist takes them: what fencing this gateway's data path cuts
    /// (it changes when the image is reopened).
    pub fn client_addrs(&self) -> Result<String> {
        self.inner.load().client_addrs()
    }

    /// An image metadata value (blocking: a cluster round trip).
    pub fn metadata(&self, key: &str) -> Result<Option<String>> {
        self.inner.load().metadata_get(key)
    }

    /// Sets an image metadata value (blocking: a cluster round trip).
    pub fn set_metadata(&self, key: &str, value: &str) -> Result<()> {
        self.inner.load().metadata_set(key, value)
    }

    /// For a COMPARE AND WRITE emulated by reading, comparing and writing:
    /// `Ok` while this client is the image's only writer (it holds the
    /// exclusive lock it took at open), else an `ErrorKind::Offline` error
    /// (ENOLCK): the lock was lost, and another client may write between
    /// the read and the write. A local check, no cluster round trip.
    pub fn check_sole_writer(&self, offset: u64, len: u64) -> Result<()> {
        let img = self.inner.load();
        if self.is_exclusive() && img.owns_lock() {
            return Ok(());
        }
        Err(crate::BlockError::new(crate::ErrorKind::Offline, libc::ENOLCK, "compare-and-write", offset, len))
    }

    /// Seconds a request waits for the cluster before it fails as
    /// [`ErrorKind::TimedOut`](crate::ErrorKind::TimedOut) (see the module documentation).
    pub fn io_timeout_secs(&self) -> u64 {
        self.inner.load().io_timeout()
    }

    /// `rbd_resize` (blocking: control plane); when the image already has
    /// that size in the cluster (another client resized it), only this
    /// backend's size follows.
    pub fn resize(&self, new_size: u64) -> Result<()> {
        self.inner.load().resize(new_size)
    }

    /// How many times librbd's update watch saw the image's header change
    /// (a resize by any client among them). Cheap: an atomic load.
    pub fn header_changes(&self) -> u64 {
        self.inner.load().generation()
    }

    /// The image's size in the cluster now (blocking: control plane); it
    /// differs from [`RbdBackend::size`] after a resize by another client,
    /// until the LUN is resized to it.
    pub fn cluster_size(&self) -> Result<u64> {
        self.inner.load().cluster_size()
    }

    pub async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        image::Image::read(&self.inner.load_full(), offset, len).await
    }

    /// Reads into memory a front-end lent ([`crate::Backend::read_into`]).
    pub async fn read_into(&self, offset: u64, dest: &crate::SgBuf, len: usize) -> Result<()> {
        image::Image::read_into(&self.inner.load_full(), offset, dest, len).await
    }

    /// A write, followed by a flush when `fua`.
    /// Writes `data` (librbd keeps a buffer of its own until it completes:
    /// the shared bytes become one, copied only if the caller still holds
    /// them, as the core does for a write it may retry).
    pub async fn write(&self, offset: u64, data: impl Into<crate::Bytes>, fua: bool) -> Result<()> {
        if !self.options.multi_writer {
            return image::Image::write(&self.inner.load_full(), offset, data.into(), fua).await;
        }
        use std::sync::atomic::Ordering::Relaxed;
        // (Racy by design: a heuristic of the control plane, not a count.)
        if self.pending_since.load(Relaxed) <= self.last_done.load(Relaxed) {
            self.pending_since.store(clock_ns(), Relaxed);
        }
        let r = image::Image::write(&self.inner.load_full(), offset, data.into(), fua).await;
        self.last_done.store(clock_ns(), Relaxed);
        r
    }

    pub async fn flush(&self) -> Result<()> {
        image::Image::flush(&self.inner.load_full()).await
    }

    /// Atomic compare-and-write of at most [`ATOMIC_COMPARE_AND_WRITE_BYTES`]
    /// inside one such aligned unit; `Ok(Some(at))` on a miscompare at byte
    /// `at` (nothing written).
    pub async fn compare_and_write(&self, offset: u64, cmp: Vec<u8>, data: Vec<u8>) -> Result<Option<u64>> {
        image::Image::compare_and_write(&self.inner.load_full(), offset, cmp, data).await
    }

    pub async fn discard(&self, offset: u64, len: u64) -> Result<()> {
        image::Image::discard(&self.inner.load_full(), offset, len).await
    }

    pub async fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        image::Image::write_zeroes(&self.inner.load_full(), offset, len).await
    }

    /// The mapped and deallocated extents (`rbd_diff_iterate2` from the
    /// image's creation), computed on tokio's blocking pool.
    pub async fn allocation(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64, bool)>> {
        image::Image::allocation(&self.inner.load_full(), offset, len).await
    }

    /// The same, blocking the calling thread (tests and the control plane).
    pub fn allocation_blocking(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64, bool)>> {
        self.inner.load().allocation_blocking(offset, len)
    }
}

#[cfg(not(lunar_rbd))]
impl RbdBackend {
    /// Always [`RbdError::NotBuilt`] in this build.
    pub fn open(_options: &RbdOptions) -> std::result::Result<RbdBackend, RbdError> {
        Err(RbdError::NotBuilt)
    }

    pub fn size(&self) -> u64 {
        match self.never {}
    }

    pub fn io_timeout_secs(&self) -> u64 {
        match self.never {}
    }

    pub fn write_stalled_for(&self) -> std::time::Duration {
        match self.never {}
    }

    pub fn fence_lock_holders(&self) -> Result<Vec<String>> {
        match self.never {}
    }

    pub fn is_exclusive(&self) -> bool {
        match self.never {}
    }

    pub fn set_lock_managed(&self, _on: bool) {
        match self.never {}
    }

    pub fn try_take_lock(&self) -> Result<bool> {
        match self.never {}
    }

    pub fn take_over_lock(&self) -> Result<Vec<String>> {
        match self.never {}
    }

    pub fn release_lock(&self) -> Result<()> {
        match self.never {}
    }

    pub fn owns_lock(&self) -> bool {
        match self.never {}
    }

    pub fn lock_owners(&self) -> Result<Vec<String>> {
        match self.never {}
    }

    pub fn metadata(&self, _key: &str) -> Result<Option<String>> {
        match self.never {}
    }

    pub fn client_addrs(&self) -> Result<String> {
        match self.never {}
    }

    pub fn set_metadata(&self, _key: &str, _value: &str) -> Result<()> {
        match self.never {}
    }

    pub fn check_sole_writer(&self, _offset: u64, _len: u64) -> Result<()> {
        match self.never {}
    }

    pub fn reopen(&self) -> std::result::Result<(), RbdError> {
        match self.never {}
    }

    pub fn resize(&self, _new_size: u64) -> Result<()> {
        match self.never {}
    }

    pub fn header_changes(&self) -> u64 {
        match self.never {}
    }

    pub fn cluster_size(&self) -> Result<u64> {
        match self.never {}
    }

    pub async fn read(&self, _offset: u64, _len: usize) -> Result<Vec<u8>> {
        match self.never {}
    }

    pub async fn read_into(&self, _offset: u64, _dest: &crate::SgBuf, _len: usize) -> Result<()> {
        match self.never {}
    }

    pub async fn write(&self, _offset: u64, _data: impl Into<crate::Bytes>, _fua: bool) -> Result<()> {
        match self.never {}
    }

    pub async fn flush(&self) -> Result<()> {
        match self.never {}
    }

    pub async fn compare_and_write(&self, _offset: u64, _cmp: Vec<u8>, _data: Vec<u8>) -> Result<Option<u64>> {
        match self.never {}
    }

    pub async fn discard(&self, _offset: u64, _len: u64) -> Result<()> {
        match self.never {}
    }

    pub async fn write_zeroes(&self, _offset: u64, _len: u64) -> Result<()> {
        match self.never {}
    }

    pub async fn allocation(&self, _offset: u64, _len: u64) -> Result<Vec<(u64, u64, bool)>> {
        match self.never {}
    }

    pub fn allocation_blocking(&self, _offset: u64, _len: u64) -> Result<Vec<(u64, u64, bool)>> {
        match self.never {}
    }
}

impl RbdBackend {
    /// Where the image is (`pool/image`, `pool/namespace/image`).
    pub fn options(&self) -> &RbdOptions {
        &self.options
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_names_pool_namespace_and_image() {
        let mut o = RbdOptions { pool: "rbd".into(), image: "disk0".into(), ..Default::default() };
        assert_eq!(o.spec(), "rbd/disk0");
        o.namespace = Some("tenant".into());
        assert_eq!(o.spec(), "rbd/tenant/disk0");
    }

    #[cfg(not(lunar_rbd))]
    #[test]
    fn open_without_librbd_is_a_clear_error() {
        let e = RbdBackend::open(&RbdOptions::default()).unwrap_err();
        assert_eq!(e, RbdError::NotBuilt);
        assert!(e.to_string().contains("librbd"));
        assert!(!available());
    }
}

//! The librbd side of the `rbd` backend: connection, image handle, request
//! submission and the per-thread reapers (see the parent module).

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int, c_void};
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::oneshot;

use super::{ffi, RbdError, RbdOptions, CONNECT_TIMEOUT_SECS, IO_TIMEOUT_SECS};
use crate::{BlockError, Result};

/// Requests after which a flush has something to make durable.
const WRITE_LIKE: &[&str] = &["write", "discard", "write-zeroes", "compare-and-write"];

/// Completions taken per `rbd_poll_io_events` call.
const POLL_BATCH: usize = 64;
/// How long closing an image waits for requests still in flight before it
/// gives up on them (their buffers are then leaked, never freed under librbd).
const CLOSE_DRAIN: Duration = Duration::from_secs(60);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One request between submission and its completion: owned by librbd's
/// completion (as its argument) from submission until the reaper takes it back.
struct Pending {
    tx: Option<oneshot::Sender<Done>>,
    /// The data librbd reads from or writes into.
    buf: Vec<u8>,
    /// COMPARE AND WRITE: the data to compare with.
    cmp: Vec<u8>,
    /// COMPARE AND WRITE: where librbd stores the first mismatch.
    mismatch: u64,
    /// The image's counters.
    shared: Arc<Counters>,
    /// A write, discard, write-zeroes or compare-and-write.
    write_like: bool,
    /// Memory librbd reads from or writes into that is not `buf`: held
    /// here (mapped, unchanged) until librbd is done with it.
    #[allow(dead_code)] // held, never read: dropped once librbd is done
    held: Held,
}

/// What a request holds for librbd besides its own buffers.
enum Held {
    None,
    /// A write's data as the caller shares it (no copy).
    Bytes(#[allow(dead_code)] crate::Bytes),
    /// Memory a front-end lent a read, and the `iovec`s librbd writes through.
    Lent(#[allow(dead_code)] crate::SgBuf, #[allow(dead_code)] crate::sg::Iovecs),
}

/// What requests tell their image when they finish.
#[derive(Default)]
struct Counters {
    /// Requests submitted whose completion was not taken back yet.
    in_flight: AtomicUsize,
    /// A write-like request finished since the last flush was issued: a
    /// flush without one (and without requests in flight) has nothing to
    /// make durable and is not sent (with the exclusive-lock feature librbd
    /// would wait for the lock, which a crashed previous owner holds until
    /// its watch times out).
    dirty: std::sync::atomic::AtomicBool,
}

impl Pending {
    /// The request is finished and librbd is done with its memory: complete
    /// the future (if it still waits) and free the cell.
    fn finish(self, ret: isize) {
        let Pending { tx, buf, mismatch, shared, write_like, .. } = self;
        if write_like && !shared.dirty.load(Ordering::Acquire) {
            // Also when it failed or its future is gone: some of it may have landed.
            shared.dirty.store(true, Ordering::Release);
        }
        shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Some(tx) = tx {
            // The receiver may be gone (cancelled): the buffer is freed here.
            let _ = tx.send(Done { ret, buf, mismatch });
        }
    }
}

struct Done {
    ret: isize,
    buf: Vec<u8>,
    mismatch: u64,
}

/// Bumped by librbd's update watch (header changes: resize, features, locks).
struct WatchState {
    generation: AtomicU64,
}

pub(super) struct Image {
    id: u64,
    cluster: ffi::rados_t,
    ioctx: ffi::rados_ioctx_t,
    image: ffi::rbd_image_t,
    /// The image's notification eventfd (librbd writes it; reapers read dups of it).
    eventfd: OwnedFd,
    size: AtomicU64,
    /// Bytes per RADOS object (`1 << order`).
    object_size: u64,
    /// Requests in flight, and whether a flush has anything to do.
    shared: Arc<Counters>,
    readonly: bool,
    spec: String,
    watch: Option<(u64, *mut WatchState)>,
    /// Seconds a request waits for the cluster (`rados_osd_op_timeout`).
    io_timeout: u64,
}

// SAFETY: librados cluster and ioctx handles and librbd image handles may be
// used from several threads at once (librbd serializes internally; the
// asynchronous calls and `rbd_poll_io_events` take the image's own locks);
// the watch state is only read through atomics.
unsafe impl Send for Image {}
// SAFETY: as above; `&Image` only reaches the handles through librbd calls.
unsafe impl Sync for Image {}

fn cstring(spec: &str, what: &'static str, s: &str) -> std::result::Result<CString, RbdError> {
    CString::new(s).map_err(|_| RbdError::Invalid {
        spec: spec.to_string(),
        what,
        reason: "contains a NUL byte".into(),
    })
}

fn strerror(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}

/// The cluster handle while opening: shut down unless handed over.
struct Cluster(ffi::rados_t);

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: a handle from `rados_create` that nothing else uses any more.
        unsafe { ffi::rados_shutdown(self.0) };
    }
}

struct Ioctx(ffi::rados_ioctx_t);

impl Drop for Ioctx {
    fn drop(&mut self) {
        // SAFETY: a handle from `rados_ioctx_create` that nothing else uses any more.
        unsafe { ffi::rados_ioctx_destroy(self.0) };
    }
}

impl Image {
    pub(super) fn open(o: &RbdOptions) -> std::result::Result<Image, RbdError> {
        let spec = o.spec();
        let conf_text = o.conf.as_ref().map_or_else(|| "default ceph.conf".to_string(), |p| p.display().to_string());
        let fail = |step: &'static str, errno: i32| RbdError::Open {
            spec: spec.clone(),
            step,
            reason: strerror(errno),
            errno,
        };
        for (what, v) in [("pool", &o.pool), ("image", &o.image)] {
            if v.is_empty() {
                return Err(RbdError::Invalid { spec: spec.clone(), what, reason: "empty".into() });
            }
        }
        let pool = cstring(&spec, "pool", &o.pool)?;
        let name = cstring(&spec, "image", &o.image)?;
        let ns = o.namespace.as_deref().map(|n| cstring(&spec, "namespace", n)).transpose()?;
        let id = o.id.as_deref().map(|n| cstring(&spec, "id", n)).transpose()?;
        let path_c = |what, p: &std::path::Path| {
            use std::os::unix::ffi::OsStrExt;
            CString::new(p.as_os_str().as_bytes()).map_err(|_| RbdError::Invalid {
                spec: spec.clone(),
                what,
                reason: "contains a NUL byte".into(),
            })
        };
        let conf = o.conf.as_deref().map(|p| path_c("conf", p)).transpose()?;
        let keyring = o.keyring.as_deref().map(|p| path_c("keyring", p)).transpose()?;

        let mut raw: ffi::rados_t = ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; `id` is NUL-terminated or NULL ("admin").
        let r = unsafe { ffi::rados_create(&mut raw, id.as_ref().map_or(ptr::null(), |c| c.as_ptr())) };
        if r < 0 {
            return Err(fail("rados_create", -r));
        }
        let cluster = Cluster(raw);
        // SAFETY: a live cluster handle; the path is NUL-terminated or NULL (search the defaults).
        let r = unsafe { ffi::rados_conf_read_file(cluster.0, conf.as_ref().map_or(ptr::null(), |c| c.as_ptr())) };
        if r < 0 {
            return Err(RbdError::Open {
                spec: spec.clone(),
                step: "reading the configuration",
                reason: format!("{conf_text}: {}", strerror(-r)),
                errno: -r,
            });
        }
        let handle_for_set = cluster.0;
        let set = |k: &str, v: &str| -> std::result::Result<(), RbdError> {
            let (kc, vc) = (CString::new(k).unwrap_or_default(), CString::new(v).unwrap_or_default());
            // SAFETY: a live cluster handle and two NUL-terminated strings.
            let r = unsafe { ffi::rados_conf_set(handle_for_set, kc.as_ptr(), vc.as_ptr()) };
            if r < 0 {
                return Err(RbdError::Open {
                    spec: spec.clone(),
                    step: "setting the configuration",
                    reason: format!("{k}={v}: {}", strerror(-r)),
                    errno: -r,
                });
            }
            Ok(())
        };
        if let Some(k) = &keyring {
            set("keyring", k.to_str().unwrap_or_default())?;
        }
        if o.multi_writer {
            if o.exclusive {
                return Err(RbdError::Invalid {
                    spec: spec.clone(),
                    what: "options",
                    reason: "several writers and an exclusive lock held for good exclude each other".into(),
                });
            }
            // Another client's writes must be seen by the next read here.
            set("rbd_cache", "false")?;
        }
        // The bound on a request once open: the configuration's
        // `rados_osd_op_timeout` when set, else IO_TIMEOUT_SECS (never 0,
        // which would let a request wait for ever while the cluster is away).
        let io_timeout = io_timeout_secs(get_conf(cluster.0, "rados_osd_op_timeout").as_deref());
        let secs = CONNECT_TIMEOUT_SECS.to_string();
        set("client_mount_timeout", &secs)?;
        set("rados_mon_op_timeout", &secs)?;
        set("rados_osd_op_timeout", &secs)?;
        // A discard smaller than an object must still read back as zeros
        // (the SCSI layer reports LBPRZ for thin LUNs).
        set("rbd_skip_partial_discard", "false")?;
        let unreachable = |step: &'static str, errno: i32| RbdError::Unreachable {
            spec: spec.clone(),
            conf: conf_text.clone(),
            secs: CONNECT_TIMEOUT_SECS,
            step,
            errno,
        };
        // SAFETY: a live, configured cluster handle.
        let r = unsafe { ffi::rados_connect(cluster.0) };
        if r < 0 {
            return Err(if r == -libc::ETIMEDOUT {
                unreachable("rados_connect", -r)
            } else {
                fail("rados_connect", -r)
            });
        }
        let mut io: ffi::rados_ioctx_t = ptr::null_mut();
        // SAFETY: a connected cluster handle, a NUL-terminated pool name and a valid out-pointer.
        let r = unsafe { ffi::rados_ioctx_create(cluster.0, pool.as_ptr(), &mut io) };
        if r < 0 {
            return Err(match -r {
                libc::ENOENT => RbdError::Open {
                    spec: spec.clone(),
                    step: "opening the pool",
                    reason: format!("no pool named {}", o.pool),
                    errno: -r,
                },
                libc::ETIMEDOUT => unreachable("opening the pool", -r),
                e => fail("opening the pool", e),
            });
        }
        let ioctx = Ioctx(io);
        // A full pool (its quota, or full OSDs) fails writes with ENOSPC or
        // EDQUOT (ErrorKind::NoSpace, for the `enospc` policy) instead of
        // holding them until there is room; librbd's I/O context copies the flag.
        // SAFETY: a live ioctx; the call only sets a flag in it.
        unsafe { ffi::rados_set_pool_full_try(ioctx.0) };
        if let Some(ns) = &ns {
            // SAFETY: a live ioctx and a NUL-terminated namespace (copied by librados).
            unsafe { ffi::rados_ioctx_set_namespace(ioctx.0, ns.as_ptr()) };
        }
        let mut image: ffi::rbd_image_t = ptr::null_mut();
        // SAFETY: a live ioctx, a NUL-terminated image name, a valid out-pointer, no snapshot.
        let r = unsafe { ffi::rbd_open(ioctx.0, name.as_ptr(), &mut image, ptr::null()) };
        if r < 0 {
            return Err(match -r {
                libc::ENOENT => RbdError::Open {
                    spec: spec.clone(),
                    step: "opening the image",
                    reason: "no such image".into(),
                    errno: -r,
                },
                libc::ETIMEDOUT => unreachable("opening the image", -r),
                e => fail("opening the image", e),
            });
        }
        // From here on `Image`'s Drop closes everything.
        // SAFETY: plain system call; no memory is passed.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        let eventfd_errno = (fd < 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO));
        let eventfd = if fd >= 0 {
            // SAFETY: a freshly created descriptor nobody else owns.
            unsafe { OwnedFd::from_raw_fd(fd) }
        } else {
            // SAFETY: `image` was opened above and is not used after this.
            unsafe { ffi::rbd_close(image) };
            return Err(fail("eventfd", eventfd_errno.unwrap_or(libc::EIO)));
        };
        let cluster = std::mem::ManuallyDrop::new(cluster);
        let ioctx = std::mem::ManuallyDrop::new(ioctx);
        let mut img = Image {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            cluster: cluster.0,
            ioctx: ioctx.0,
            image,
            eventfd,
            size: AtomicU64::new(0),
            object_size: 4 << 20,
            shared: Arc::new(Counters::default()),
            readonly: o.readonly,
            spec: spec.clone(),
            watch: None,
            io_timeout: 0,
        };
        let mut size = 0u64;
        // SAFETY: a live image handle and a valid out-pointer.
        let r = unsafe { ffi::rbd_get_size(img.image, &mut size) };
        if r < 0 {
            return Err(fail("rbd_get_size", -r));
        }
        img.size.store(size, Ordering::Release);
        // SAFETY: all-zero is a valid `rbd_image_info_t` (integers and byte arrays).
        let mut info: ffi::rbd_image_info_t = unsafe { std::mem::zeroed() };
        // SAFETY: a live image and an out-struct of the size given.
        let r = unsafe { ffi::rbd_stat(img.image, &mut info, std::mem::size_of::<ffi::rbd_image_info_t>()) };
        if r < 0 {
            return Err(fail("rbd_stat", -r));
        }
        img.object_size = info.obj_size.max(1);
        // SAFETY: a live image and our eventfd, which lives as long as the image is open.
        let r = unsafe { ffi::rbd_set_image_notification(img.image, img.eventfd.as_raw_fd(), ffi::EVENT_TYPE_EVENTFD) };
        if r < 0 {
            return Err(fail("rbd_set_image_notification", -r));
        }
        let state = Box::into_raw(Box::new(WatchState { generation: AtomicU64::new(0) }));
        let mut handle = 0u64;
        // SAFETY: `state` stays allocated until after `rbd_update_unwatch` in Drop;
        // `on_update` only touches its atomics.
        let r = unsafe { ffi::rbd_update_watch(img.image, &mut handle, Some(on_update), state.cast()) };
        if r < 0 {
            // SAFETY: never registered: ours to free.
            drop(unsafe { Box::from_raw(state) });
            return Err(fail("rbd_update_watch", -r));
        }
        img.watch = Some((handle, state));
        if o.exclusive {
            // SAFETY: a live image handle.
            let r = unsafe { ffi::rbd_lock_acquire(img.image, ffi::LOCK_MODE_EXCLUSIVE) };
            if r < 0 {
                return Err(RbdError::Open {
                    spec: spec.clone(),
                    step: "taking the image's exclusive lock (exclusive=on)",
                    reason: match -r {
                        libc::EINVAL | libc::EOPNOTSUPP => {
                            "the image lacks the exclusive-lock feature (`rbd feature enable POOL/IMAGE exclusive-lock`)"
                                .into()
                        }
                        libc::EROFS => "another client holds it and does not release it".into(),
                        e => strerror(e),
                    },
                    errno: -r,
                });
            }
        }
        // From here on a request the cluster does not answer within
        // `io_timeout` fails with ETIMEDOUT (ErrorKind::TimedOut), for the
        // LUN's error policy to act on. The Objecter follows the change.
        set("rados_osd_op_timeout", &io_timeout.to_string())?;
        img.io_timeout = io_timeout;
        tracing::info!(image = %spec, size, io_timeout_secs = io_timeout, "rbd image opened");
        Ok(img)
    }

    /// This client's addresses as the blocklist takes them (`rados_getaddrs`).
    pub(super) fn client_addrs(&self) -> Result<String> {
        let mut out: *mut c_char = ptr::null_mut();
        // SAFETY: a connected cluster handle and a valid out-pointer.
        let r = unsafe { ffi::rados_getaddrs(self.cluster, &mut out) };
        if r < 0 || out.is_null() {
            return Err(BlockError::from_errno(if r < 0 { -r } else { libc::EIO }, "client-address", 0, 0));
        }
        // SAFETY: a NUL-terminated string librados allocated for us.
        let s = unsafe { CStr::from_ptr(out) }.to_string_lossy().into_owned();
        // SAFETY: allocated by librados, released once.
        unsafe { ffi::rados_buffer_free(out) };
        Ok(s)
    }

    /// Whether this client holds the image's exclusive lock now (librbd's
    /// own state: no cluster round trip).
    pub(super) fn owns_lock(&self) -> bool {
        let mut owner: c_int = 0;
        // SAFETY: a live image handle and a valid out-pointer.
        let r = unsafe { ffi::rbd_is_exclusive_lock_owner(self.image, &mut owner) };
        r == 0 && owner != 0
    }

    /// Takes the image's exclusive lock for good (blocking: control plane):
    /// `Ok(true)` once this client holds it, `Ok(false)` when another client
    /// holds it and refuses to hand it over (it took it the same way).
    pub(super) fn acquire_lock(&self) -> Result<bool> {
        // SAFETY: a live image handle.
        let r = unsafe { ffi::rbd_lock_acquire(self.image, ffi::LOCK_MODE_EXCLUSIVE) };
        match -r {
            0 => Ok(true),
            libc::EROFS | libc::EBUSY => Ok(false),
            e => Err(BlockError::from_errno(e, "lock-acquire", 0, 0)),
        }
    }

    /// Gives the exclusive lock up (blocking: control plane).
    pub(super) fn release_lock(&self) -> Result<()> {
        // SAFETY: a live image handle.
        let r = unsafe { ffi::rbd_lock_release(self.image) };
        match -r {
            // Not held (never taken, or already released): nothing to give up.
            0 | libc::EINVAL => Ok(()),
            e => Err(BlockError::from_errno(e, "lock-release", 0, 0)),
        }
    }

    /// The clients holding the exclusive lock now (a cluster round trip).
    pub(super) fn lock_owners(&self) -> Result<Vec<String>> {
        const MAX: usize = 8;
        let mut owners: [*mut c_char; MAX] = [ptr::null_mut(); MAX];
        let mut n = MAX;
        let mut mode: c_int = 0;
        // SAFETY: a live image; `owners` has room for `n` pointers, which
        // librbd fills with strings it allocates (freed by the cleanup call).
        let r = unsafe { ffi::rbd_lock_get_owners(self.image, &mut mode, owners.as_mut_ptr(), &mut n) };
        if r == -libc::ENOENT {
            return Ok(Vec::new());
        }
        if r < 0 {
            return Err(BlockError::from_errno(-r, "lock-owners", 0, 0));
        }
        let n = n.min(MAX);
        let names = owners[..n]
            .iter()
            .filter(|p| !p.is_null())
            // SAFETY: NUL-terminated strings librbd just returned, alive until the cleanup below.
            .map(|&p| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
            .collect();
        // SAFETY: the `n` strings librbd allocated above, released once.
        unsafe { ffi::rbd_lock_get_owners_cleanup(owners.as_mut_ptr(), n) };
        Ok(names)
    }

    /// Breaks the lock of `owner` (librbd blocklists that client first, with
    /// its default `rbd_blocklist_on_break_lock`, and waits for the OSDs to
    /// know: nothing it still sends can land afterwards).
    pub(super) fn break_lock(&self, owner: &str) -> Result<()> {
        let c = CString::new(owner).map_err(|_| BlockError::from_errno(libc::EINVAL, "lock-break", 0, 0))?;
        // SAFETY: a live image and a NUL-terminated owner name.
        let r = unsafe { ffi::rbd_lock_break(self.image, ffi::LOCK_MODE_EXCLUSIVE, c.as_ptr()) };
        match -r {
            // Gone meanwhile (released, or broken by someone else).
            0 | libc::ENOENT => Ok(()),
            e => Err(BlockError::from_errno(e, "lock-break", 0, 0)),
        }
    }

    /// An image metadata value (`rbd image-meta get`), `None` when unset.
    pub(super) fn metadata_get(&self, key: &str) -> Result<Option<String>> {
        let k = CString::new(key).map_err(|_| BlockError::from_errno(libc::EINVAL, "metadata-get", 0, 0))?;
        let mut buf = vec![0u8; 256];
        let mut len = buf.len();
        // SAFETY: a live image, a NUL-terminated key, a buffer of `len` bytes.
        let mut r = unsafe { ffi::rbd_metadata_get(self.image, k.as_ptr(), buf.as_mut_ptr().cast(), &mut len) };
        if r == -libc::ERANGE {
            buf = vec![0u8; len];
            // SAFETY: as above, with the size librbd asked for.
            r = unsafe { ffi::rbd_metadata_get(self.image, k.as_ptr(), buf.as_mut_ptr().cast(), &mut len) };
        }
        match -r {
            0 => {
                buf.truncate(len.min(buf.len()));
                while buf.last() == Some(&0) {
                    buf.pop();
                }
                Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
            }
            libc::ENOENT => Ok(None),
            e => Err(BlockError::from_errno(e, "metadata-get", 0, 0)),
        }
    }

    /// Sets an image metadata value (a cluster round trip).
    pub(super) fn metadata_set(&self, key: &str, value: &str) -> Result<()> {
        let bad = |_| BlockError::from_errno(libc::EINVAL, "metadata-set", 0, 0);
        let (k, v) = (CString::new(key).map_err(bad)?, CString::new(value).map_err(bad)?);
        // SAFETY: a live image and two NUL-terminated strings.
        let r = unsafe { ffi::rbd_metadata_set(self.image, k.as_ptr(), v.as_ptr()) };
        if r < 0 {
            return Err(BlockError::from_errno(-r, "metadata-set", 0, 0));
        }
        Ok(())
    }

    pub(super) fn io_timeout(&self) -> u64 {
        self.io_timeout
    }

    pub(super) fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// The image's size as the cluster has it now (blocking: control plane).
    pub(super) fn cluster_size(&self) -> Result<u64> {
        let mut size = 0u64;
        // SAFETY: a live image handle and a valid out-pointer.
        let r = unsafe { ffi::rbd_get_size(self.image, &mut size) };
        if r < 0 {
            return Err(BlockError::from_errno(-r, "size", 0, 0));
        }
        Ok(size)
    }

    /// Header changes seen by the update watch so far.
    pub(super) fn generation(&self) -> u64 {
        // SAFETY: the watch state lives as long as `self`.
        self.watch.map_or(0, |(_, s)| unsafe { &*s }.generation.load(Ordering::Acquire))
    }

    pub(super) fn resize(&self, new_size: u64) -> Result<()> {
        if self.readonly {
            return Err(BlockError::from_errno(libc::EROFS, "resize", new_size, 0));
        }
        // Already that size in the cluster (resized by another client):
        // only this backend's size follows.
        if self.cluster_size()? != new_size {
            // SAFETY: a live image handle.
            let r = unsafe { ffi::rbd_resize(self.image, new_size) };
            if r < 0 {
                return Err(BlockError::from_errno(-r, "resize", new_size, 0));
            }
        }
        self.size.store(new_size, Ordering::Release);
        tracing::info!(image = %self.spec, new_size, "rbd image resized");
        Ok(())
    }

    fn check(&self, op: &'static str, offset: u64, len: u64, write: bool) -> Result<()> {
        if write && self.readonly {
            return Err(BlockError::from_errno(libc::EROFS, op, offset, len));
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(BlockError::out_of_range(op, offset, len)),
        }
    }

    /// Hands `buf` and a new completion to `submit` (which calls an
    /// `rbd_aio_*` function with them) and waits for the completion.
    async fn run(
        this: &Arc<Image>,
        op: &'static str,
        offset: u64,
        len: u64,
        buf: Vec<u8>,
        submit: impl FnOnce(ffi::rbd_image_t, ffi::rbd_completion_t, &mut Pending) -> c_int,
    ) -> Result<Done> {
        Image::run_with(this, op, offset, len, (buf, Vec::new()), Delivery::EventFd, Held::None, submit).await
    }

    /// [`Image::run`] with a second buffer (`bufs`: the data, and COMPARE
    /// AND WRITE's compare data), a choice of delivery, and memory to hold
    /// for librbd (`held`).
    #[allow(clippy::too_many_arguments)]
    async fn run_with(
        this: &Arc<Image>,
        op: &'static str,
        offset: u64,
        len: u64,
        (buf, cmp): (Vec<u8>, Vec<u8>),
        delivery: Delivery,
        held: Held,
        submit: impl FnOnce(ffi::rbd_image_t, ffi::rbd_completion_t, &mut Pending) -> c_int,
    ) -> Result<Done> {
        let err = |errno: i32| BlockError::from_errno(errno, op, offset, len);
        ensure_reaper(this).map_err(err)?;
        let (tx, rx) = oneshot::channel();
        let pending = Box::into_raw(Box::new(Pending {
            tx: Some(tx),
            buf,
            cmp,
            mismatch: 0,
            shared: this.shared.clone(),
            write_like: WRITE_LIKE.contains(&op),
            held,
        }));
        let mut c: ffi::rbd_completion_t = ptr::null_mut();
        let callback: ffi::rbd_callback_t = match delivery {
            Delivery::EventFd => None,
            Delivery::Callback => Some(on_complete),
        };
        // SAFETY: `pending` is a live heap cell that librbd only hands back
        // (via `rbd_aio_get_arg`, or to `on_complete`); with `Delivery::EventFd`
        // no callback (the completion goes to the eventfd).
        let r = unsafe { ffi::rbd_aio_create_completion(pending.cast(), callback, &mut c) };
        if r < 0 {
            // SAFETY: librbd did not take it: still ours.
            drop(unsafe { Box::from_raw(pending) });
            return Err(err(-r));
        }
        this.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        // SAFETY: nobody else touches the cell until librbd completes the
        // request, which it cannot before `submit` hands it over.
        let r = submit(this.image, c, unsafe { &mut *pending });
        if r < 0 {
            // Refused up front. Should librbd still complete it later, the
            // reaper frees the cell then; otherwise it is leaked, never freed
            // while librbd might use it.
            this.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(err(-r));
        }
        let done = rx.await.map_err(|_| err(libc::EIO))?;
        if done.ret == -(libc::EILSEQ as isize) && op == "compare-and-write" {
            return Ok(done);
        }
        if done.ret < 0 {
            return Err(err(i32::try_from(-done.ret).unwrap_or(libc::EIO)));
        }
        Ok(done)
    }

    pub(super) async fn read(this: &Arc<Image>, offset: u64, len: usize) -> Result<Vec<u8>> {
        this.check("read", offset, len as u64, false)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let done = Image::run(this, "read", offset, len as u64, vec![0u8; len], |img, c, p| {
            // SAFETY: `p.buf` (len bytes) stays allocated and untouched until the completion is reaped.
            unsafe { ffi::rbd_aio_read(img, offset, p.buf.len(), p.buf.as_mut_ptr().cast(), c) }
        })
        .await?;
        if usize::try_from(done.ret).ok() != Some(len) {
            return Err(BlockError::from_errno(libc::EIO, "read", offset, len as u64));
        }
        Ok(done.buf)
    }

    /// Reads into memory a front-end lent (`rbd_aio_readv`: no buffer of
    /// its own, no copy); the request holds the memory until librbd is done.
    pub(super) async fn read_into(this: &Arc<Image>, offset: u64, dest: &crate::SgBuf, len: usize) -> Result<()> {
        this.check("read", offset, len as u64, false)?;
        if len == 0 {
            return Ok(());
        }
        let iov = dest.iovecs_boxed(0, len);
        let (ptr, count) = (iov.0.as_ptr(), iov.0.len());
        let count =
            c_int::try_from(count).map_err(|_| BlockError::from_errno(libc::EINVAL, "read", offset, len as u64))?;
        let held = Held::Lent(dest.clone(), iov);
        let done = Image::run_with(
            this,
            "read",
            offset,
            len as u64,
            (Vec::new(), Vec::new()),
            Delivery::EventFd,
            held,
            |img, c, _| {
                // SAFETY: the iovecs (boxed, so `ptr` stays valid) and the lent
                // memory they describe are held by the request until librbd
                // completes it (`Held::Lent`).
                unsafe { ffi::rbd_aio_readv(img, ptr, count, offset, c) }
            },
        )
        .await?;
        if usize::try_from(done.ret).ok() != Some(len) {
            return Err(BlockError::from_errno(libc::EIO, "read", offset, len as u64));
        }
        Ok(())
    }

    /// Writes `data` as the caller shares it: librbd reads it in place (the
    /// request holds a reference until librbd is done), no copy.
    pub(super) async fn write(this: &Arc<Image>, offset: u64, data: crate::Bytes, fua: bool) -> Result<()> {
        let len = data.len() as u64;
        this.check("write", offset, len, true)?;
        if !data.is_empty() {
            let (ptr, n) = (data.as_ptr(), data.len());
            let held = Held::Bytes(data);
            Image::run_with(
                this,
                "write",
                offset,
                len,
                (Vec::new(), Vec::new()),
                Delivery::EventFd,
                held,
                |img, c, _| {
                    // SAFETY: the bytes are held, unchanged (`Bytes` is
                    // immutable), by the request until librbd completes it.
                    unsafe { ffi::rbd_aio_write(img, offset, n, ptr.cast(), c) }
                },
            )
            .await?;
        }
        if fua {
            Image::flush(this).await.map_err(|e| BlockError { op: "write", offset, len, ..e })?;
        }
        Ok(())
    }

    /// `rbd_aio_compare_and_write`: atomic in the cluster (the OSD compares
    /// and writes the object in one operation), against every client of the
    /// image. Librbd 16 takes only [`super::ATOMIC_COMPARE_AND_WRITE_BYTES`]
    /// bytes inside one such aligned unit. `Ok(Some(at))`: a miscompare at
    /// byte `at` of the range; nothing was written.
    pub(super) async fn compare_and_write(
        this: &Arc<Image>,
        offset: u64,
        cmp: Vec<u8>,
        data: Vec<u8>,
    ) -> Result<Option<u64>> {
        let len = data.len() as u64;
        this.check("compare-and-write", offset, len, true)?;
        let unit = super::ATOMIC_COMPARE_AND_WRITE_BYTES;
        if cmp.len() != data.len() || len == 0 || len > unit || offset / unit != (offset + len - 1) / unit {
            return Err(BlockError::new(crate::ErrorKind::Unsupported, libc::EINVAL, "compare-and-write", offset, len));
        }
        // librbd 16 completes a compare-and-write only through the
        // completion's callback, never through the image's event socket
        // (`librbd16_delivers_compare_and_write_to_the_callback_only` below).
        let done = Image::run_with(
            this,
            "compare-and-write",
            offset,
            len,
            (data, cmp),
            Delivery::Callback,
            Held::None,
            |img, c, p| {
                // SAFETY: both buffers and the mismatch cell live in the heap cell
                // `p`, allocated and unchanged until the completion is reaped.
                let r = unsafe {
                    ffi::rbd_aio_compare_and_write(
                        img,
                        offset,
                        p.buf.len(),
                        p.cmp.as_ptr().cast(),
                        p.buf.as_ptr().cast(),
                        c,
                        &mut p.mismatch,
                        0,
                    )
                };
                c_int::try_from(r).unwrap_or(-libc::EINVAL)
            },
        )
        .await?;
        if done.ret == -(libc::EILSEQ as isize) {
            // librbd 16 reports the image offset of the object's start plus
            // the mismatch's offset in the request (measured here); an
            // image-relative offset (the documented meaning) is accepted too.
            let m = done.mismatch;
            let object_start = offset - offset % this.object_size;
            let at = if (offset..offset + len).contains(&m) { m - offset } else { m.saturating_sub(object_start) };
            return Ok(Some(at.min(len - 1)));
        }
        Ok(None)
    }

    pub(super) async fn flush(this: &Arc<Image>) -> Result<()> {
        // A write that ends after this swap sets the flag again, so the
        // next flush covers it; requests in flight (maybe writes whose
        // future is gone) are waited for by librbd's flush.
        let dirty = this.shared.dirty.swap(false, Ordering::AcqRel);
        if !dirty && this.shared.in_flight.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let r = Image::run(this, "flush", 0, 0, Vec::new(), |img, c, _| {
            // SAFETY: a live image and a fresh completion.
            unsafe { ffi::rbd_aio_flush(img, c) }
        })
        .await
        .map(drop);
        if r.is_err() {
            this.shared.dirty.store(true, Ordering::Release);
        }
        r
    }

    pub(super) async fn discard(this: &Arc<Image>, offset: u64, len: u64) -> Result<()> {
        this.check("discard", offset, len, true)?;
        if len == 0 {
            return Ok(());
        }
        Image::run(this, "discard", offset, len, Vec::new(), |img, c, _| {
            // SAFETY: a live image and a fresh completion; no memory is passed.
            unsafe { ffi::rbd_aio_discard(img, offset, len, c) }
        })
        .await
        .map(drop)
    }

    pub(super) async fn write_zeroes(this: &Arc<Image>, offset: u64, len: u64) -> Result<()> {
        this.check("write-zeroes", offset, len, true)?;
        if len == 0 {
            return Ok(());
        }
        let n = usize::try_from(len).map_err(|_| BlockError::out_of_range("write-zeroes", offset, len))?;
        Image::run(this, "write-zeroes", offset, len, Vec::new(), |img, c, _| {
            // SAFETY: a live image and a fresh completion; no memory is passed.
            unsafe { ffi::rbd_aio_write_zeroes(img, offset, n, c, 0, 0) }
        })
        .await
        .map(drop)
    }

    pub(super) async fn allocation(this: &Arc<Image>, offset: u64, len: u64) -> Result<Vec<(u64, u64, bool)>> {
        this.check("get-lba-status", offset, len, false)?;
        let img = this.clone();
        tokio::task::spawn_blocking(move || img.allocation_blocking(offset, len))
            .await
            .map_err(|_| BlockError::from_errno(libc::EIO, "get-lba-status", offset, len))?
    }

    /// `rbd_diff_iterate2` from the beginning of the image's history (with
    /// its parent's data): extents that hold data are mapped.
    pub(super) fn allocation_blocking(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64, bool)>> {
        self.check("get-lba-status", offset, len, false)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let mut data: Vec<(u64, u64)> = Vec::new();
        // SAFETY: `data` outlives the call; `diff_extent` only pushes to it.
        let r = unsafe {
            ffi::rbd_diff_iterate2(
                self.image,
                ptr::null(),
                offset,
                len,
                1,
                0,
                Some(diff_extent),
                (&mut data as *mut Vec<(u64, u64)>).cast(),
            )
        };
        if r < 0 {
            return Err(BlockError::from_errno(-r, "get-lba-status", offset, len));
        }
        Ok(cover(offset, len, data))
    }

    /// Completes every request librbd has finished.
    fn reap(&self) {
        let mut comps: [ffi::rbd_completion_t; POLL_BATCH] = [ptr::null_mut(); POLL_BATCH];
        loop {
            // SAFETY: a live image; `comps` has room for POLL_BATCH completions.
            let n = unsafe { ffi::rbd_poll_io_events(self.image, comps.as_mut_ptr(), POLL_BATCH as c_int) };
            if n <= 0 {
                if n < 0 {
                    tracing::warn!(image = %self.spec, errno = -n, "rbd_poll_io_events failed");
                }
                return;
            }
            let n = n as usize;
            for &c in &comps[..n] {
                // SAFETY: `c` is a finished completion librbd just handed out
                // (one created with `Delivery::EventFd`: those with a callback
                // never reach the event socket); its argument is the `Pending`
                // cell `run_with` leaked into it, which nobody else references
                // any more; `c` is released once, here.
                let (ret, pending) = unsafe {
                    let ret = ffi::rbd_aio_get_return_value(c);
                    let arg = ffi::rbd_aio_get_arg(c);
                    ffi::rbd_aio_release(c);
                    (ret, Box::from_raw(arg.cast::<Pending>()))
                };
                (*pending).finish(ret);
            }
            if n < POLL_BATCH {
                return;
            }
        }
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        // librbd may still write into the buffers of requests in flight:
        // wait for their completions before closing.
        let deadline = Instant::now() + CLOSE_DRAIN;
        loop {
            self.reap();
            let left = self.shared.in_flight.load(Ordering::Acquire);
            if left == 0 {
                break;
            }
            if Instant::now() >= deadline {
                tracing::error!(image = %self.spec, left, "rbd close: requests still in flight, leaking their buffers");
                break;
            }
            let mut pfd = libc::pollfd { fd: self.eventfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd; bounded wait.
            unsafe { libc::poll(&mut pfd, 1, 100) };
        }
        if let Some((handle, state)) = self.watch.take() {
            // SAFETY: a live image and the handle it gave; unwatching waits
            // for a callback in progress, so `state` is unused afterwards.
            unsafe {
                ffi::rbd_update_unwatch(self.image, handle);
                drop(Box::from_raw(state));
            }
        }
        // SAFETY: the handles were opened in `open` and are used by nobody
        // else now (every reference to `self` is gone).
        unsafe {
            ffi::rbd_close(self.image);
            ffi::rados_ioctx_destroy(self.ioctx);
            ffi::rados_shutdown(self.cluster);
        }
        // Wake the reapers of other threads so that they notice and end.
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd (non-blocking).
        let _ = unsafe { libc::write(self.eventfd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        tracing::info!(image = %self.spec, "rbd image closed");
    }
}

/// How a request's completion comes back.
#[derive(Clone, Copy)]
enum Delivery {
    /// Through the image's eventfd and `rbd_poll_io_events` (the reapers).
    EventFd,
    /// Through [`on_complete`], on a librbd thread (for the calls librbd
    /// does not deliver to the event socket).
    Callback,
}

/// Completion callback (a librbd thread) of `Delivery::Callback` requests:
/// the request is done; hand the result to its future and free the cell.
unsafe extern "C" fn on_complete(c: ffi::rbd_completion_t, arg: *mut c_void) {
    // SAFETY: `c` is the finished completion this callback was registered
    // with, released once here (librbd keeps its own reference while it runs
    // the callback); `arg` is its `Pending` cell, referenced by nobody else.
    let (ret, pending) = unsafe {
        let ret = ffi::rbd_aio_get_return_value(c);
        ffi::rbd_aio_release(c);
        (ret, Box::from_raw(arg.cast::<Pending>()))
    };
    (*pending).finish(ret);
}

/// `rbd_update_watch` callback (a librbd thread): counts header changes.
unsafe extern "C" fn on_update(arg: *mut c_void) {
    // SAFETY: `arg` is the `WatchState` registered with the watch; it is freed
    // only after `rbd_update_unwatch`.
    let state = unsafe { &*arg.cast::<WatchState>() };
    state.generation.fetch_add(1, Ordering::AcqRel);
}

/// `rbd_diff_iterate2` callback: records extents that hold data.
unsafe extern "C" fn diff_extent(offset: u64, len: usize, exists: c_int, arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Vec` passed by `allocation_blocking`, alive and not
    // otherwise borrowed during the (synchronous) iteration.
    let data = unsafe { &mut *arg.cast::<Vec<(u64, u64)>>() };
    if exists != 0 {
        data.push((offset, len as u64));
    }
    0
}

/// Mapped extents (any order, maybe overlapping or past the range) to an
/// ordered cover of `[offset, offset + len)`.
fn cover(offset: u64, len: u64, mut data: Vec<(u64, u64)>) -> Vec<(u64, u64, bool)> {
    let end = offset + len;
    data.sort_unstable();
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    let mut pos = offset;
    let push = |out: &mut Vec<(u64, u64, bool)>, from: u64, to: u64, mapped: bool| {
        if to <= from {
            return;
        }
        match out.last_mut() {
            Some(last) if last.2 == mapped && last.0 + last.1 == from => last.1 += to - from,
            _ => out.push((from, to - from, mapped)),
        }
    };
    for (o, l) in data {
        let (s, e) = (o.max(pos), (o + l).min(end));
        if e <= s {
            continue;
        }
        push(&mut out, pos, s, false);
        push(&mut out, s, e, true);
        pos = e;
    }
    push(&mut out, pos, end, false);
    out
}

/// The I/O timeout from the configuration's `rados_osd_op_timeout` (seconds,
/// possibly fractional, rounded up): [`IO_TIMEOUT_SECS`] when unset or 0.
fn io_timeout_secs(configured: Option<&str>) -> u64 {
    match configured.and_then(|v| v.trim().parse::<f64>().ok()) {
        Some(v) if v.is_finite() && v > 0.0 => (v.ceil() as u64).max(1),
        _ => IO_TIMEOUT_SECS,
    }
}

/// The current value of a configuration option.
fn get_conf(cluster: ffi::rados_t, key: &str) -> Option<String> {
    let key = CString::new(key).ok()?;
    let mut buf = [0u8; 64];
    // SAFETY: a live cluster handle, a NUL-terminated key and a buffer of the given length.
    let r = unsafe { ffi::rados_conf_get(cluster, key.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return None;
    }
    CStr::from_bytes_until_nul(&buf).ok().and_then(|s| s.to_str().ok()).map(str::to_string)
}

thread_local! {
    /// Images whose reaper runs on this thread.
    static REAPERS: RefCell<HashSet<u64>> = RefCell::new(HashSet::new());
}

/// Starts this thread's reaper for `img` unless one runs. Returns an errno.
fn ensure_reaper(img: &Arc<Image>) -> std::result::Result<(), i32> {
    if REAPERS.with(|r| r.borrow().contains(&img.id)) {
        return Ok(());
    }
    let fd = img.eventfd.try_clone().map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    // SAFETY: `fd` is an open descriptor owned by the `OwnedFd` that the
    // `AsyncFd` takes ownership of; it stays open and refers to the same
    // eventfd until the `AsyncFd` is dropped.
    let afd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
        .map_err(|e| e.into_parts().1.raw_os_error().unwrap_or(libc::EIO))?;
    REAPERS.with(|r| r.borrow_mut().insert(img.id));
    // The registration is moved into the task, so it is undone even if the
    // task is dropped (its LocalSet goes away) before it first runs.
    tokio::task::spawn_local(reaper(Arc::downgrade(img), afd, Registered(img.id)));
    Ok(())
}

struct Registered(u64);

impl Drop for Registered {
    fn drop(&mut self) {
        let _ = REAPERS.try_with(|r| r.borrow_mut().remove(&self.0));
    }
}

async fn reaper(img: Weak<Image>, afd: AsyncFd<OwnedFd>, _registered: Registered) {
    loop {
        match img.upgrade() {
            Some(i) => i.reap(),
            None => return,
        }
        let mut guard = match afd.readable().await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(error = %e, "rbd reaper: waiting for the eventfd failed");
                return;
            }
        };
        guard.clear_ready();
        let mut counter = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live 8-byte buffer; the eventfd
        // is non-blocking.
        let _ = unsafe { libc::read(afd.get_ref().as_raw_fd(), counter.as_mut_ptr().cast(), counter.len()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The backend relies on this: in librbd 16 a compare-and-write is
    /// completed through its callback only, never queued on the image's
    /// event socket (were it both, the cell would be freed twice). Needs a
    /// cluster (`LUNAR_CEPH_CONF`), skipped without one.
    #[test]
    fn librbd16_delivers_compare_and_write_to_the_callback_only() {
        let Some(conf) = std::env::var_os("LUNAR_CEPH_CONF").filter(|c| !c.is_empty()) else {
            eprintln!("skipped: no Ceph cluster (LUNAR_CEPH_CONF)");
            return;
        };
        let name = format!("caw-delivery-{}", std::process::id());
        let rbd = |args: &[&str]| std::process::Command::new("rbd").arg("-c").arg(&conf).args(args).output().unwrap();
        assert!(rbd(&["create", "--size", "4M", &format!("rbd/{name}")]).status.success());
        let o = RbdOptions {
            pool: "rbd".into(),
            image: name.clone(),
            conf: Some(conf.clone().into()),
            ..Default::default()
        };
        let img = Image::open(&o).unwrap();
        static CALLED: AtomicUsize = AtomicUsize::new(0);
        unsafe extern "C" fn called(_c: ffi::rbd_completion_t, _arg: *mut c_void) {
            CALLED.fetch_add(1, Ordering::SeqCst);
        }
        let (cmp, data, mut mismatch) = (vec![0u8; 512], vec![1u8; 512], 0u64);
        let mut c: ffi::rbd_completion_t = ptr::null_mut();
        // SAFETY: buffers and `mismatch` outlive the request (waited for below).
        unsafe {
            assert_eq!(ffi::rbd_aio_create_completion(ptr::null_mut(), Some(called), &mut c), 0);
            let r = ffi::rbd_aio_compare_and_write(
                img.image,
                0,
                512,
                cmp.as_ptr().cast(),
                data.as_ptr().cast(),
                c,
                &mut mismatch,
                0,
            );
            assert_eq!(r, 0);
            assert_eq!(ffi::rbd_aio_wait_for_complete(c), 0);
            assert_eq!(ffi::rbd_aio_get_return_value(c), 0);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while CALLED.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(CALLED.load(Ordering::SeqCst), 1, "the callback ran");
        std::thread::sleep(Duration::from_millis(200));
        let mut comps = [ptr::null_mut(); 4];
        // SAFETY: a live image; room for 4 completions.
        let n = unsafe { ffi::rbd_poll_io_events(img.image, comps.as_mut_ptr(), 4) };
        assert_eq!(n, 0, "a compare-and-write completion reached the event socket too");
        // SAFETY: a finished completion, released once.
        unsafe { ffi::rbd_aio_release(c) };
        drop(img);
        let _ = rbd(&["rm", "--no-progress", &format!("rbd/{name}")]);
    }

    #[test]
    fn the_io_timeout_is_never_zero() {
        assert_eq!(io_timeout_secs(None), IO_TIMEOUT_SECS);
        assert_eq!(io_timeout_secs(Some("0")), IO_TIMEOUT_SECS);
        assert_eq!(io_timeout_secs(Some("0.000000")), IO_TIMEOUT_SECS);
        assert_eq!(io_timeout_secs(Some("junk")), IO_TIMEOUT_SECS);
        assert_eq!(io_timeout_secs(Some("-3")), IO_TIMEOUT_SECS);
        assert_eq!(io_timeout_secs(Some("4")), 4);
        assert_eq!(io_timeout_secs(Some("2.5")), 3);
    }

    #[test]
    fn cover_fills_gaps_and_clips() {
        assert_eq!(cover(0, 100, vec![]), vec![(0, 100, false)]);
        assert_eq!(
            cover(0, 100, vec![(10, 10), (0, 5)]),
            vec![(0, 5, true), (5, 5, false), (10, 10, true), (20, 80, false)]
        );
        assert_eq!(cover(50, 100, vec![(0, 60), (140, 100)]), vec![(50, 10, true), (60, 80, false), (140, 10, true)]);
        assert_eq!(cover(0, 10, vec![(0, 4), (4, 6)]), vec![(0, 10, true)]);
        assert_eq!(cover(0, 10, vec![(0, 8), (2, 4)]), vec![(0, 8, true), (8, 2, false)]);
    }
}

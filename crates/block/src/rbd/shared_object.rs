//! A small RADOS object that several gateways share and change only by
//! compare-and-set: the home of cluster-wide state such as the persistent
//! reservations of an image (see `lunar-core`'s `cluster_reservations`).
//!
//! - [`SharedObject::read`] returns the object's content and its RADOS
//!   version (the OSD bumps it on every change of the object);
//! - [`SharedObject::compare_and_set`] replaces the whole content in one
//!   write operation that asserts the version read
//!   (`rados_write_op_assert_version` + `rados_write_op_write_full`, or an
//!   exclusive create when there was no object): the OSD applies it only if
//!   nobody changed the object meanwhile, so two writers never lose an update;
//! - [`SharedObject::watch`] / [`SharedObject::notify`] /
//!   [`SharedObject::ack`]: RADOS watch/notify on the object, to tell the
//!   other gateways of a change and wait until they have seen it;
//! - [`SharedObject::blocklist`]: fence a client that did not answer.
//!
//! Each `SharedObject` is a client of the cluster of its own (its own
//! `rados_t`), opened with the image's options. Every call blocks (control
//! plane or tokio's blocking pool; never an I/O thread).

use thiserror::Error;

use super::{RbdError, RbdOptions};

/// Largest object content read (bytes).
pub const MAX_OBJECT_BYTES: usize = 1 << 20;

/// A shared-object operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SharedObjectError {
    #[error(transparent)]
    Open(#[from] RbdError),
    #[error("rados object {object}: {op} failed: {reason} (errno {errno})")]
    Rados { object: String, op: &'static str, errno: i32, reason: String },
    #[error("rados object {object}: larger than {max} bytes")]
    TooLarge { object: String, max: usize },
}

impl SharedObjectError {
    /// The errno of a failed RADOS call.
    pub fn errno(&self) -> Option<i32> {
        match self {
            SharedObjectError::Rados { errno, .. } => Some(*errno),
            SharedObjectError::Open(RbdError::Open { errno, .. } | RbdError::Unreachable { errno, .. }) => Some(*errno),
            _ => None,
        }
    }

    /// This client was blocklisted (fenced): ESHUTDOWN, Ceph's EBLOCKLISTED.
    pub fn is_blocklisted(&self) -> bool {
        self.errno() == Some(libc::ESHUTDOWN)
    }
}

/// What the watch of a [`SharedObject`] reports (on a librados thread).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A notify: answer it with [`SharedObject::ack`] and this id.
    Notify { notify_id: u64, notifier_id: u64, payload: Vec<u8> },
    /// The watch broke (the connection to the OSD was lost long enough, or
    /// this client was blocklisted): notifies may have been missed. The
    /// watch must be made again ([`SharedObject::rewatch`]).
    Error { errno: i32 },
}

/// A watcher that answered a notify, or did not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watcher {
    /// The client's global id (`client.<gid>`).
    pub gid: u64,
    /// Its watch's cookie.
    pub cookie: u64,
}

/// How a notify went: who acknowledged it (with their payloads) and who
/// did not within the timeout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifyOutcome {
    pub acked: Vec<(Watcher, Vec<u8>)>,
    pub timed_out: Vec<Watcher>,
}

/// Decodes the reply buffer of `rados_notify2` (librados.h documents it):
/// le32 acks, per ack le64 gid, le64 cookie, le32 length and that many
/// bytes; le32 timeouts, per timeout le64 gid, le64 cookie. `None` if it
/// does not parse.
pub fn decode_notify_reply(b: &[u8]) -> Option<NotifyOutcome> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Some(h)
    }
    fn le32(b: &mut &[u8]) -> Option<u32> {
        take(b, 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn le64(b: &mut &[u8]) -> Option<u64> {
        let s = take(b, 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Some(u64::from_le_bytes(a))
    }
    let mut b = b;
    let mut out = NotifyOutcome::default();
    for _ in 0..le32(&mut b)? {
        let w = Watcher { gid: le64(&mut b)?, cookie: le64(&mut b)? };
        let n = usize::try_from(le32(&mut b)?).ok()?;
        out.acked.push((w, take(&mut b, n)?.to_vec()));
    }
    for _ in 0..le32(&mut b)? {
        out.timed_out.push(Watcher { gid: le64(&mut b)?, cookie: le64(&mut b)? });
    }
    Some(out)
}

/// The callback of a watch: runs on a librados thread; must not block long
/// (hand the work to a thread of your own).
pub type WatchCallback = Box<dyn Fn(WatchEvent) + Send + Sync>;

#[cfg(lunar_rbd)]
pub use imp::SharedObject;

#[cfg(lunar_rbd)]
mod imp {
    use std::ffi::{CStr, CString};
    use std::os::raw::{c_char, c_int, c_void};
    use std::ptr;
    use std::sync::Mutex;

    use super::super::{ffi, rados_ffi as rf, CONNECT_TIMEOUT_SECS, IO_TIMEOUT_SECS};
    use super::*;

    /// One RADOS object of an image's pool and namespace, through a client
    /// of its own. `Send + Sync`.
    pub struct SharedObject {
        cluster: ffi::rados_t,
        ioctx: ffi::rados_ioctx_t,
        oid: CString,
        name: String,
        /// Serializes an operation with the `rados_get_last_version` that
        /// follows it (the version is per I/O context, not per call).
        op: Mutex<()>,
        /// The watch: its cookie and the callback's cell (freed after
        /// `rados_unwatch2` and `rados_watch_flush`).
        watch: Mutex<Option<(u64, *mut WatchCallback)>>,
        /// Seconds the OSD keeps the watch of a client it lost.
        watch_timeout: u32,
    }

    // SAFETY: librados cluster and I/O context handles may be used from
    // several threads at once; the version read after an operation is
    // serialized by `op`, the watch cell is reached only under `watch`.
    unsafe impl Send for SharedObject {}
    // SAFETY: as above.
    unsafe impl Sync for SharedObject {}

    fn strerror(errno: i32) -> String {
        std::io::Error::from_raw_os_error(errno).to_string()
    }

    unsafe extern "C" fn on_notify(
        arg: *mut c_void,
        notify_id: u64,
        _cookie: u64,
        notifier_id: u64,
        data: *mut c_void,
        len: usize,
    ) {
        // SAFETY: `arg` is the watch's callback cell, alive until after
        // `rados_unwatch2` and `rados_watch_flush` (see `unwatch`); `data`
        // holds `len` bytes for the duration of this call (or is NULL).
        let cb = unsafe { &*(arg as *const WatchCallback) };
        let payload = if data.is_null() || len == 0 {
            Vec::new()
        } else {
            // SAFETY: as above.
            unsafe { std::slice::from_raw_parts(data as *const u8, len) }.to_vec()
        };
        cb(WatchEvent::Notify { notify_id, notifier_id, payload });
    }

    unsafe extern "C" fn on_watch_error(arg: *mut c_void, _cookie: u64, err: c_int) {
        // SAFETY: as in `on_notify`.
        let cb = unsafe { &*(arg as *const WatchCallback) };
        cb(WatchEvent::Error { errno: err.abs() });
    }

    impl SharedObject {
        /// Connects to the cluster of `o` (its `conf`, `id`, `keyring`) and
        /// opens object `name` in the image's pool and namespace (it need
        /// not exist). Blocking.
        pub fn open(o: &RbdOptions, name: &str) -> Result<SharedObject, SharedObjectError> {
            let spec = format!("{}/{}", o.spec(), name);
            let invalid = |what: &'static str| RbdError::Invalid {
                spec: spec.clone(),
                what,
                reason: "empty or contains a NUL byte".into(),
            };
            let cs = |s: &str, what| CString::new(s).ok().filter(|_| !s.is_empty()).ok_or_else(|| invalid(what));
            let path = |p: &std::path::PathBuf, what| {
                use std::os::unix::ffi::OsStrExt;
                CString::new(p.as_os_str().as_bytes()).map_err(|_| invalid(what))
            };
            let pool = cs(&o.pool, "pool")?;
            let oid = cs(name, "object")?;
            let ns = o.namespace.as_deref().map(|n| cs(n, "namespace")).transpose()?;
            let id = o.id.as_deref().map(|n| cs(n, "id")).transpose()?;
            let conf = o.conf.as_ref().map(|p| path(p, "conf")).transpose()?;
            let keyring = o.keyring.as_ref().map(|p| path(p, "keyring")).transpose()?;
            let fail = |step: &'static str, errno: i32| RbdError::Open {
                spec: spec.clone(),
                step,
                reason: strerror(errno),
                errno,
            };

            let mut cluster: ffi::rados_t = ptr::null_mut();
            // SAFETY: a valid out-pointer; `id` is NUL-terminated or NULL ("admin").
            let r = unsafe { ffi::rados_create(&mut cluster, id.as_ref().map_or(ptr::null(), |c| c.as_ptr())) };
            if r < 0 {
                return Err(fail("rados_create", -r).into());
            }
            // From here the handles are closed by `Drop` on any failure.
            let mut obj = SharedObject {
                cluster,
                ioctx: ptr::null_mut(),
                oid,
                name: spec.clone(),
                op: Mutex::new(()),
                watch: Mutex::new(None),
                watch_timeout: 30,
            };
            // SAFETY: a live cluster handle; the path is NUL-terminated or NULL (the defaults).
            let r = unsafe { ffi::rados_conf_read_file(cluster, conf.as_ref().map_or(ptr::null(), |c| c.as_ptr())) };
            if r < 0 {
                return Err(fail("reading the configuration", -r).into());
            }
            let connect = CONNECT_TIMEOUT_SECS.to_string();
            let mut settings = vec![
                ("client_mount_timeout", connect.clone()),
                ("rados_mon_op_timeout", connect),
                ("rados_osd_op_timeout", IO_TIMEOUT_SECS.to_string()),
                // The watch is confirmed (pinged) every tick: once a second,
                // so that a watcher's lease can be short (cluster_reservations).
                ("objecter_tick_interval", "1".to_string()),
            ];
            if let Some(k) = &keyring {
                settings.push(("keyring", k.to_string_lossy().into_owned()));
            }
            for (k, v) in settings {
                let (k, v) = (CString::new(k).unwrap_or_default(), CString::new(v).unwrap_or_default());
                // SAFETY: a live cluster handle and two NUL-terminated strings.
                let r = unsafe { ffi::rados_conf_set(cluster, k.as_ptr(), v.as_ptr()) };
                if r < 0 {
                    return Err(fail("rados_conf_set", -r).into());
                }
            }
            // SAFETY: a configured cluster handle.
            let r = unsafe { ffi::rados_connect(cluster) };
            if r < 0 {
                return Err(fail("rados_connect", -r).into());
            }
            let mut io: ffi::rados_ioctx_t = ptr::null_mut();
            // SAFETY: a connected cluster, a NUL-terminated pool name, a valid out-pointer.
            let r = unsafe { ffi::rados_ioctx_create(cluster, pool.as_ptr(), &mut io) };
            if r < 0 {
                return Err(fail("rados_ioctx_create", -r).into());
            }
            obj.ioctx = io;
            if let Some(ns) = &ns {
                // SAFETY: a live I/O context; librados copies the string.
                unsafe { ffi::rados_ioctx_set_namespace(io, ns.as_ptr()) };
            }
            Ok(obj)
        }

        /// `pool/[namespace/]image/object`, for messages.
        pub fn name(&self) -> &str {
            &self.name
        }

        fn err(&self, op: &'static str, errno: i32) -> SharedObjectError {
            SharedObjectError::Rados { object: self.name.clone(), op, errno, reason: strerror(errno) }
        }

        /// This client's global id (`client.<gid>`; what notify replies name).
        pub fn instance_id(&self) -> u64 {
            // SAFETY: a connected cluster handle.
            unsafe { rf::rados_get_instance_id(self.cluster) }
        }

        /// This client's addresses as the blocklist takes them.
        pub fn addrs(&self) -> Result<String, SharedObjectError> {
            let mut out: *mut c_char = ptr::null_mut();
            // SAFETY: a connected cluster handle and a valid out-pointer.
            let r = unsafe { rf::rados_getaddrs(self.cluster, &mut out) };
            if r < 0 || out.is_null() {
                return Err(self.err("rados_getaddrs", -r));
            }
            // SAFETY: librados returned a NUL-terminated string it allocated.
            let s = unsafe { CStr::from_ptr(out) }.to_string_lossy().into_owned();
            // SAFETY: allocated by librados, released once.
            unsafe { rf::rados_buffer_free(out) };
            Ok(s)
        }

        /// The content and RADOS version of the object; `None` when it does
        /// not exist.
        pub fn read(&self) -> Result<Option<(u64, Vec<u8>)>, SharedObjectError> {
            let mut cap = 64 << 10;
            loop {
                let mut buf = vec![0u8; cap];
                let (mut got, mut prval) = (0usize, 0 as c_int);
                let _op = self.op.lock().unwrap_or_else(|e| e.into_inner());
                // SAFETY: a fresh operation, released below; `buf`, `got` and
                // `prval` outlive the synchronous `rados_read_op_operate`.
                let (r, version) = unsafe {
                    let op = rf::rados_create_read_op();
                    rf::rados_read_op_read(op, 0, buf.len(), buf.as_mut_ptr().cast(), &mut got, &mut prval);
                    let r = rf::rados_read_op_operate(op, self.ioctx, self.oid.as_ptr(), rf::LIBRADOS_OPERATION_NOFLAG);
                    rf::rados_release_read_op(op);
                    (r, rf::rados_get_last_version(self.ioctx))
                };
                if r == -libc::ENOENT {
                    return Ok(None);
                }
                if r < 0 {
                    return Err(self.err("read", -r));
                }
                if prval < 0 {
                    return Err(self.err("read", -prval));
                }
                if got < cap {
                    buf.truncate(got);
                    return Ok(Some((version, buf)));
                }
                if cap >= MAX_OBJECT_BYTES {
                    return Err(SharedObjectError::TooLarge { object: self.name.clone(), max: MAX_OBJECT_BYTES });
                }
                cap = MAX_OBJECT_BYTES;
            }
        }

        /// Replaces the whole content with `bytes` if the object is still at
        /// `expected` (`None`: does not exist yet). `Ok(Some(version))`: done,
        /// the object's new version; `Ok(None)`: someone changed it first
        /// (read again and retry).
        pub fn compare_and_set(&self, expected: Option<u64>, bytes: &[u8]) -> Result<Option<u64>, SharedObjectError> {
            let _op = self.op.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: a fresh operation, released below; `bytes` outlives the
            // synchronous `rados_write_op_operate` (librados copies it when
            // the operation is built, and is done with it when it returns).
            let (r, version) = unsafe {
                let op = rf::rados_create_write_op();
                match expected {
                    Some(v) => rf::rados_write_op_assert_version(op, v),
                    None => rf::rados_write_op_create(op, rf::LIBRADOS_CREATE_EXCLUSIVE, ptr::null()),
                }
                rf::rados_write_op_write_full(op, bytes.as_ptr().cast(), bytes.len());
                let r = rf::rados_write_op_operate(
                    op,
                    self.ioctx,
                    self.oid.as_ptr(),
                    ptr::null_mut(),
                    rf::LIBRADOS_OPERATION_NOFLAG,
                );
                rf::rados_release_write_op(op);
                (r, rf::rados_get_last_version(self.ioctx))
            };
            match -r {
                0 => Ok(Some(version)),
                // Newer (ERANGE), older (EOVERFLOW: recreated), created by
                // another (EEXIST), removed meanwhile (ENOENT).
                libc::ERANGE | libc::EOVERFLOW | libc::EEXIST | libc::ENOENT => Ok(None),
                e => Err(self.err("compare-and-set", e)),
            }
        }

        /// Sets an extended attribute of the object (creates an empty
        /// object if there is none; changes its version).
        pub fn set_xattr(&self, name: &str, value: &[u8]) -> Result<(), SharedObjectError> {
            let n = CString::new(name).map_err(|_| self.err("setxattr", libc::EINVAL))?;
            // SAFETY: live handles, NUL-terminated names, `value` valid for its length.
            let r = unsafe {
                rf::rados_setxattr(self.ioctx, self.oid.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len())
            };
            if r < 0 {
                return Err(self.err("setxattr", -r));
            }
            Ok(())
        }

        /// Removes an extended attribute (absent: not an error).
        pub fn remove_xattr(&self, name: &str) -> Result<(), SharedObjectError> {
            let n = CString::new(name).map_err(|_| self.err("rmxattr", libc::EINVAL))?;
            // SAFETY: live handles, NUL-terminated names.
            let r = unsafe { rf::rados_rmxattr(self.ioctx, self.oid.as_ptr(), n.as_ptr()) };
            if r < 0 && r != -libc::ENODATA && r != -libc::ENOENT {
                return Err(self.err("rmxattr", -r));
            }
            Ok(())
        }

        /// Every extended attribute of the object (none if it does not exist).
        pub fn xattrs(&self) -> Result<Vec<(String, Vec<u8>)>, SharedObjectError> {
            let mut it: rf::rados_xattrs_iter_t = ptr::null_mut();
            // SAFETY: live handles and a valid out-pointer.
            let r = unsafe { rf::rados_getxattrs(self.ioctx, self.oid.as_ptr(), &mut it) };
            if r == -libc::ENOENT {
                return Ok(Vec::new());
            }
            if r < 0 {
                return Err(self.err("getxattrs", -r));
            }
            let mut out = Vec::new();
            loop {
                let (mut name, mut val, mut len): (*const c_char, *const c_char, usize) = (ptr::null(), ptr::null(), 0);
                // SAFETY: a live iterator from `rados_getxattrs`, valid out-pointers.
                let r = unsafe { rf::rados_getxattrs_next(it, &mut name, &mut val, &mut len) };
                if r < 0 || name.is_null() {
                    break;
                }
                // SAFETY: librados hands a NUL-terminated name and `len` bytes
                // of value, valid until the next call on the iterator.
                let (n, v) = unsafe {
                    let v = if val.is_null() {
                        Vec::new()
                    } else {
                        std::slice::from_raw_parts(val.cast::<u8>(), len).to_vec()
                    };
                    (CStr::from_ptr(name).to_string_lossy().into_owned(), v)
                };
                out.push((n, v));
            }
            // SAFETY: the iterator is released once, after its last use.
            unsafe { rf::rados_getxattrs_end(it) };
            Ok(out)
        }

        /// Watches the object: `callback` gets its notifies and errors, on a
        /// librados thread. Replaces an earlier watch. Returns the cookie.
        pub fn watch(&self, callback: WatchCallback) -> Result<u64, SharedObjectError> {
            self.unwatch();
            let cell: *mut WatchCallback = Box::into_raw(Box::new(callback));
            let mut cookie = 0u64;
            // SAFETY: live handles; `cell` stays allocated until `unwatch`
            // has unregistered the watch and flushed its callbacks.
            let r = unsafe {
                rf::rados_watch3(
                    self.ioctx,
                    self.oid.as_ptr(),
                    &mut cookie,
                    Some(on_notify),
                    Some(on_watch_error),
                    self.watch_timeout,
                    cell.cast(),
                )
            };
            if r < 0 {
                // SAFETY: the watch was not registered: nothing else has the cell.
                drop(unsafe { Box::from_raw(cell) });
                return Err(self.err("watch", -r));
            }
            *self.watch.lock().unwrap_or_else(|e| e.into_inner()) = Some((cookie, cell));
            Ok(cookie)
        }

        /// Ends the watch, if any, once its callbacks in progress are done.
        pub fn unwatch(&self) {
            let Some((cookie, cell)) = self.watch.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
            // SAFETY: live handles; after unwatch and flush librados calls
            // the callback no more, so the cell can be freed.
            unsafe {
                rf::rados_unwatch2(self.ioctx, cookie);
                rf::rados_watch_flush(self.cluster);
                drop(Box::from_raw(cell));
            }
        }

        /// The watch's cookie, if watching.
        pub fn watch_cookie(&self) -> Option<u64> {
            self.watch.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|(c, _)| *c)
        }

        /// Milliseconds since the OSD last confirmed the watch, or the error
        /// that broke it (the watch must then be made again).
        pub fn watch_check(&self) -> Result<u64, SharedObjectError> {
            let Some(cookie) = self.watch_cookie() else { return Err(self.err("watch-check", libc::ENOTCONN)) };
            // SAFETY: live handles.
            let r = unsafe { rf::rados_watch_check(self.ioctx, cookie) };
            if r < 0 {
                return Err(self.err("watch-check", -r));
            }
            Ok(r as u64)
        }

        /// Acknowledges a notify received by the watch, with a payload.
        pub fn ack(&self, notify_id: u64, payload: &[u8]) -> Result<(), SharedObjectError> {
            let Some(cookie) = self.watch_cookie() else { return Err(self.err("notify-ack", libc::ENOTCONN)) };
            let len = c_int::try_from(payload.len()).map_err(|_| self.err("notify-ack", libc::EINVAL))?;
            // SAFETY: live handles; `payload` valid for `len` bytes during the call.
            let r = unsafe {
                rf::rados_notify_ack(self.ioctx, self.oid.as_ptr(), notify_id, cookie, payload.as_ptr().cast(), len)
            };
            if r < 0 {
                return Err(self.err("notify-ack", -r));
            }
            Ok(())
        }

        /// Notifies every watcher of the object (this client's own watch
        /// included) and waits until each has acknowledged or `timeout` has
        /// passed; says who did which.
        pub fn notify(&self, payload: &[u8], timeout: std::time::Duration) -> Result<NotifyOutcome, SharedObjectError> {
            let len = c_int::try_from(payload.len()).map_err(|_| self.err("notify", libc::EINVAL))?;
            let (mut reply, mut reply_len): (*mut c_char, usize) = (ptr::null_mut(), 0);
            let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX).max(1);
            // SAFETY: live handles; `payload` valid during the call; the reply
            // buffer is librados' and released below.
            let r = unsafe {
                rf::rados_notify2(
                    self.ioctx,
                    self.oid.as_ptr(),
                    payload.as_ptr().cast(),
                    len,
                    ms,
                    &mut reply,
                    &mut reply_len,
                )
            };
            let outcome = if reply.is_null() {
                None
            } else {
                // SAFETY: librados filled `reply_len` bytes at `reply`.
                let o = decode_notify_reply(unsafe { std::slice::from_raw_parts(reply.cast::<u8>(), reply_len) });
                // SAFETY: allocated by librados, released once.
                unsafe { rf::rados_buffer_free(reply) };
                o
            };
            match (r, outcome) {
                (0, Some(o)) => Ok(o),
                (r, Some(o)) if r == -libc::ETIMEDOUT => Ok(o),
                (0, None) => Ok(NotifyOutcome::default()),
                (r, _) => Err(self.err("notify", -r)),
            }
        }

        /// Blocklists a client by address (as [`SharedObject::addrs`] gives
        /// it) for `expire_secs` (0: the cluster's default, one hour).
        pub fn blocklist(&self, addr: &str, expire_secs: u32) -> Result<(), SharedObjectError> {
            let a = CString::new(addr).map_err(|_| self.err("blocklist", libc::EINVAL))?;
            // SAFETY: a connected cluster handle; librados reads the string only.
            let r = unsafe { rf::rados_blocklist_add(self.cluster, a.as_ptr().cast_mut(), expire_secs) };
            if r < 0 {
                return Err(self.err("blocklist", -r));
            }
            Ok(())
        }
    }

    impl Drop for SharedObject {
        fn drop(&mut self) {
            self.unwatch();
            // SAFETY: the handles are ours, used by nothing else any more.
            unsafe {
                if !self.ioctx.is_null() {
                    ffi::rados_ioctx_destroy(self.ioctx);
                }
                ffi::rados_shutdown(self.cluster);
            }
        }
    }
}

/// Without librbd/librados: [`SharedObject::open`] fails with
/// [`RbdError::NotBuilt`]; nothing else can be reached.
#[cfg(not(lunar_rbd))]
pub struct SharedObject {
    never: std::convert::Infallible,
}

#[cfg(not(lunar_rbd))]
#[allow(clippy::missing_errors_doc)]
impl SharedObject {
    pub fn open(_o: &RbdOptions, _name: &str) -> Result<SharedObject, SharedObjectError> {
        Err(RbdError::NotBuilt.into())
    }
    pub fn name(&self) -> &str {
        match self.never {}
    }
    pub fn instance_id(&self) -> u64 {
        match self.never {}
    }
    pub fn addrs(&self) -> Result<String, SharedObjectError> {
        match self.never {}
    }
    pub fn read(&self) -> Result<Option<(u64, Vec<u8>)>, SharedObjectError> {
        match self.never {}
    }
    pub fn compare_and_set(&self, _e: Option<u64>, _b: &[u8]) -> Result<Option<u64>, SharedObjectError> {
        match self.never {}
    }
    pub fn set_xattr(&self, _n: &str, _v: &[u8]) -> Result<(), SharedObjectError> {
        match self.never {}
    }
    pub fn remove_xattr(&self, _n: &str) -> Result<(), SharedObjectError> {
        match self.never {}
    }
    pub fn xattrs(&self) -> Result<Vec<(String, Vec<u8>)>, SharedObjectError> {
        match self.never {}
    }
    pub fn watch(&self, _cb: WatchCallback) -> Result<u64, SharedObjectError> {
        match self.never {}
    }
    pub fn unwatch(&self) {
        match self.never {}
    }
    pub fn watch_cookie(&self) -> Option<u64> {
        match self.never {}
    }
    pub fn watch_check(&self) -> Result<u64, SharedObjectError> {
        match self.never {}
    }
    pub fn ack(&self, _id: u64, _p: &[u8]) -> Result<(), SharedObjectError> {
        match self.never {}
    }
    pub fn notify(&self, _p: &[u8], _t: std::time::Duration) -> Result<NotifyOutcome, SharedObjectError> {
        match self.never {}
    }
    pub fn blocklist(&self, _a: &str, _s: u32) -> Result<(), SharedObjectError> {
        match self.never {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_replies_decode_and_garbage_does_not() {
        let mut b = Vec::new();
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&4107u64.to_le_bytes());
        b.extend_from_slice(&99u64.to_le_bytes());
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(b"ok");
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&4200u64.to_le_bytes());
        b.extend_from_slice(&7u64.to_le_bytes());
        let o = decode_notify_reply(&b).unwrap();
        assert_eq!(o.acked, vec![(Watcher { gid: 4107, cookie: 99 }, b"ok".to_vec())]);
        assert_eq!(o.timed_out, vec![Watcher { gid: 4200, cookie: 7 }]);
        for cut in 0..b.len() {
            assert_eq!(decode_notify_reply(&b[..cut]), None, "cut at {cut}");
        }
        assert_eq!(decode_notify_reply(&[0xff; 12]), None);
    }
}

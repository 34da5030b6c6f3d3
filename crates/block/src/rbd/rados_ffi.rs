//! The part of librados' C API (Ceph 16, Pacific) that [`super::shared_object`]
//! uses beyond what `ffi.rs` declares for the image: compound read and
//! write operations (compare-and-set on the object version), watch/notify,
//! xattrs and the blocklist. Declared by hand from `rados/librados.h`;
//! linked by `build.rs` with the rest.

#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_int, c_void};

pub use super::ffi::{rados_ioctx_t, rados_t};

pub type rados_write_op_t = *mut c_void;
pub type rados_read_op_t = *mut c_void;
pub type rados_xattrs_iter_t = *mut c_void;

/// `rados_watchcb2_t`: `(arg, notify_id, cookie, notifier_id, data, data_len)`.
pub type rados_watchcb2_t = Option<unsafe extern "C" fn(*mut c_void, u64, u64, u64, *mut c_void, usize)>;
/// `rados_watcherrcb_t`: `(arg, cookie, err)`.
pub type rados_watcherrcb_t = Option<unsafe extern "C" fn(*mut c_void, u64, c_int)>;

/// `rados_write_op_create` mode: fail with EEXIST when the object exists.
pub const LIBRADOS_CREATE_EXCLUSIVE: c_int = 1;
/// `LIBRADOS_OPERATION_NOFLAG`.
pub const LIBRADOS_OPERATION_NOFLAG: c_int = 0;

extern "C" {
    pub fn rados_get_instance_id(cluster: rados_t) -> u64;
    pub fn rados_getaddrs(cluster: rados_t, addrs: *mut *mut c_char) -> c_int;
    pub fn rados_buffer_free(buf: *mut c_char);
    pub fn rados_blocklist_add(cluster: rados_t, client_address: *mut c_char, expire_seconds: u32) -> c_int;
    pub fn rados_get_last_version(io: rados_ioctx_t) -> u64;

    pub fn rados_create_read_op() -> rados_read_op_t;
    pub fn rados_release_read_op(op: rados_read_op_t);
    pub fn rados_read_op_read(
        op: rados_read_op_t,
        offset: u64,
        len: usize,
        buffer: *mut c_char,
        bytes_read: *mut usize,
        prval: *mut c_int,
    );
    pub fn rados_read_op_operate(op: rados_read_op_t, io: rados_ioctx_t, oid: *const c_char, flags: c_int) -> c_int;

    pub fn rados_create_write_op() -> rados_write_op_t;
    pub fn rados_release_write_op(op: rados_write_op_t);
    pub fn rados_write_op_assert_version(op: rados_write_op_t, ver: u64);
    pub fn rados_write_op_create(op: rados_write_op_t, exclusive: c_int, category: *const c_char);
    pub fn rados_write_op_write_full(op: rados_write_op_t, buffer: *const c_char, len: usize);
    pub fn rados_write_op_operate(
        op: rados_write_op_t,
        io: rados_ioctx_t,
        oid: *const c_char,
        mtime: *mut libc::time_t,
        flags: c_int,
    ) -> c_int;

    pub fn rados_setxattr(
        io: rados_ioctx_t,
        o: *const c_char,
        name: *const c_char,
        buf: *const c_char,
        len: usize,
    ) -> c_int;
    pub fn rados_rmxattr(io: rados_ioctx_t, o: *const c_char, name: *const c_char) -> c_int;
    pub fn rados_getxattrs(io: rados_ioctx_t, oid: *const c_char, iter: *mut rados_xattrs_iter_t) -> c_int;
    pub fn rados_getxattrs_next(
        iter: rados_xattrs_iter_t,
        name: *mut *const c_char,
        val: *mut *const c_char,
        len: *mut usize,
    ) -> c_int;
    pub fn rados_getxattrs_end(iter: rados_xattrs_iter_t);

    pub fn rados_watch3(
        io: rados_ioctx_t,
        o: *const c_char,
        cookie: *mut u64,
        watchcb: rados_watchcb2_t,
        watcherrcb: rados_watcherrcb_t,
        timeout: u32,
        arg: *mut c_void,
    ) -> c_int;
    pub fn rados_watch_check(io: rados_ioctx_t, cookie: u64) -> c_int;
    pub fn rados_unwatch2(io: rados_ioctx_t, cookie: u64) -> c_int;
    pub fn rados_watch_flush(cluster: rados_t) -> c_int;
    pub fn rados_notify2(
        io: rados_ioctx_t,
        o: *const c_char,
        buf: *const c_char,
        buf_len: c_int,
        timeout_ms: u64,
        reply_buffer: *mut *mut c_char,
        reply_buffer_len: *mut usize,
    ) -> c_int;
    pub fn rados_notify_ack(
        io: rados_ioctx_t,
        o: *const c_char,
        notify_id: u64,
        cookie: u64,
        buf: *const c_char,
        buf_len: c_int,
    ) -> c_int;
}

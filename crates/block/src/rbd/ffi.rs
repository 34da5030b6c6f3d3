//! The part of librados' and librbd's C API (Ceph 16, Pacific: librados 2,
//! librbd 1.16) that the `rbd` backend uses, declared by hand from
//! `rados/librados.h` and `rbd/librbd.h`. Linked by `build.rs`.
//!
//! Every handle is an opaque pointer. librados and librbd handles are safe
//! to use from several threads at once (the asynchronous calls take their
//! own locks inside the library).

#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_int, c_void};

pub type rados_t = *mut c_void;
pub type rados_ioctx_t = *mut c_void;
pub type rbd_image_t = *mut c_void;
pub type rbd_completion_t = *mut c_void;

/// `void (*)(rbd_completion_t, void *)`; may be NULL.
pub type rbd_callback_t = Option<unsafe extern "C" fn(rbd_completion_t, *mut c_void)>;
/// `void (*)(void *)`, the callback of `rbd_update_watch`.
pub type rbd_update_callback_t = Option<unsafe extern "C" fn(*mut c_void)>;
/// The callback of `rbd_diff_iterate2`: `(offset, length, exists, arg)`.
pub type rbd_diff_callback_t = Option<unsafe extern "C" fn(u64, usize, c_int, *mut c_void) -> c_int>;

/// `rbd_image_info_t` (the deprecated fields kept for the layout).
#[repr(C)]
pub struct rbd_image_info_t {
    pub size: u64,
    pub obj_size: u64,
    pub num_objs: u64,
    pub order: c_int,
    pub block_name_prefix: [c_char; 24],
    pub parent_pool: i64,
    pub parent_name: [c_char; 96],
}

/// `rbd_set_image_notification` type: an eventfd (`EVENT_TYPE_EVENTFD`).
pub const EVENT_TYPE_EVENTFD: c_int = 2;
/// `RBD_LOCK_MODE_EXCLUSIVE` (librbd.h `rbd_lock_mode_t`).
pub const LOCK_MODE_EXCLUSIVE: c_int = 0;

extern "C" {
    pub fn rados_create(cluster: *mut rados_t, id: *const c_char) -> c_int;
    pub fn rados_conf_read_file(cluster: rados_t, path: *const c_char) -> c_int;
    pub fn rados_conf_set(cluster: rados_t, option: *const c_char, value: *const c_char) -> c_int;
    pub fn rados_conf_get(cluster: rados_t, option: *const c_char, buf: *mut c_char, len: usize) -> c_int;
    pub fn rados_connect(cluster: rados_t) -> c_int;
    pub fn rados_shutdown(cluster: rados_t);
    pub fn rados_getaddrs(cluster: rados_t, addrs: *mut *mut c_char) -> c_int;
    pub fn rados_buffer_free(buf: *mut c_char);
    pub fn rados_ioctx_create(cluster: rados_t, pool_name: *const c_char, ioctx: *mut rados_ioctx_t) -> c_int;
    pub fn rados_ioctx_destroy(io: rados_ioctx_t);
    pub fn rados_ioctx_set_namespace(io: rados_ioctx_t, nspace: *const c_char);
    /// Writes to a full pool (quota or full OSDs) fail with ENOSPC/EDQUOT
    /// instead of waiting for room.
    pub fn rados_set_pool_full_try(io: rados_ioctx_t);

    pub fn rbd_open(io: rados_ioctx_t, name: *const c_char, image: *mut rbd_image_t, snap_name: *const c_char)
        -> c_int;
    pub fn rbd_close(image: rbd_image_t) -> c_int;
    pub fn rbd_get_size(image: rbd_image_t, size: *mut u64) -> c_int;
    pub fn rbd_stat(image: rbd_image_t, info: *mut rbd_image_info_t, infosize: usize) -> c_int;
    pub fn rbd_resize(image: rbd_image_t, size: u64) -> c_int;
    pub fn rbd_lock_acquire(image: rbd_image_t, lock_mode: c_int) -> c_int;
    pub fn rbd_lock_release(image: rbd_image_t) -> c_int;
    pub fn rbd_lock_get_owners(
        image: rbd_image_t,
        lock_mode: *mut c_int,
        lock_owners: *mut *mut c_char,
        max_lock_owners: *mut usize,
    ) -> c_int;
    pub fn rbd_lock_get_owners_cleanup(lock_owners: *mut *mut c_char, lock_owner_count: usize);
    pub fn rbd_lock_break(image: rbd_image_t, lock_mode: c_int, lock_owner: *const c_char) -> c_int;
    pub fn rbd_metadata_get(image: rbd_image_t, key: *const c_char, value: *mut c_char, val_len: *mut usize) -> c_int;
    pub fn rbd_metadata_set(image: rbd_image_t, key: *const c_char, value: *const c_char) -> c_int;
    pub fn rbd_is_exclusive_lock_owner(image: rbd_image_t, is_owner: *mut c_int) -> c_int;
    pub fn rbd_set_image_notification(image: rbd_image_t, fd: c_int, kind: c_int) -> c_int;
    pub fn rbd_poll_io_events(image: rbd_image_t, comps: *mut rbd_completion_t, numcomp: c_int) -> c_int;
    pub fn rbd_update_watch(
        image: rbd_image_t,
        handle: *mut u64,
        watch_cb: rbd_update_callback_t,
        arg: *mut c_void,
    ) -> c_int;
    pub fn rbd_update_unwatch(image: rbd_image_t, handle: u64) -> c_int;
    pub fn rbd_diff_iterate2(
        image: rbd_image_t,
        fromsnapname: *const c_char,
        ofs: u64,
        len: u64,
        include_parent: u8,
        whole_object: u8,
        cb: rbd_diff_callback_t,
        arg: *mut c_void,
    ) -> c_int;

    pub fn rbd_aio_create_completion(
        cb_arg: *mut c_void,
        complete_cb: rbd_callback_t,
        c: *mut rbd_completion_t,
    ) -> c_int;
    pub fn rbd_aio_get_return_value(c: rbd_completion_t) -> isize;
    pub fn rbd_aio_get_arg(c: rbd_completion_t) -> *mut c_void;
    #[cfg(test)]
    pub fn rbd_aio_wait_for_complete(c: rbd_completion_t) -> c_int;
    pub fn rbd_aio_release(c: rbd_completion_t);
    pub fn rbd_aio_read(image: rbd_image_t, off: u64, len: usize, buf: *mut c_char, c: rbd_completion_t) -> c_int;
    pub fn rbd_aio_write(image: rbd_image_t, off: u64, len: usize, buf: *const c_char, c: rbd_completion_t) -> c_int;
    pub fn rbd_aio_readv(
        image: rbd_image_t,
        iov: *const libc::iovec,
        iovcnt: c_int,
        off: u64,
        c: rbd_completion_t,
    ) -> c_int;
    pub fn rbd_aio_flush(image: rbd_image_t, c: rbd_completion_t) -> c_int;
    pub fn rbd_aio_discard(image: rbd_image_t, off: u64, len: u64, c: rbd_completion_t) -> c_int;
    pub fn rbd_aio_write_zeroes(
        image: rbd_image_t,
        off: u64,
        len: usize,
        c: rbd_completion_t,
        zero_flags: c_int,
        op_flags: c_int,
    ) -> c_int;
    pub fn rbd_aio_compare_and_write(
        image: rbd_image_t,
        off: u64,
        len: usize,
        cmp_buf: *const c_char,
        buf: *const c_char,
        c: rbd_completion_t,
        mismatch_off: *mut u64,
        op_flags: c_int,
    ) -> isize;
}

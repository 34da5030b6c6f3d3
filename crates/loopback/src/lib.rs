//! Lunar layer 5: an in-process initiator.
//!
//! A front-end with no transport: it opens one queue per LUN on a chosen I/O
//! thread and submits CDBs from any thread, like a connection would. Used by
//! tests and benchmarks to drive the target core and check status, sense
//! and data.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lunar_core::{request, Queue, Response, Target, TargetError};
use lunar_scsi::{Sense, SenseKey, Status};
use tokio::sync::oneshot;

/// One I_T nexus to a target, with a queue per LUN.
pub struct Initiator {
    target: Arc<Target>,
    queues: HashMap<u64, Arc<Queue>>,
    next_tag: AtomicU64,
}

/// A response not received: the request was dropped (it never is, by design;
/// tests assert on this).
#[derive(Debug)]
pub struct Lost;

impl Initiator {
    /// Opens a queue on I/O thread `io_thread` for each of `luns`.
    pub async fn connect(target: &Arc<Target>, luns: &[u64], io_thread: usize) -> Result<Initiator, TargetError> {
        let mut queues = HashMap::new();
        for &lun in luns {
            queues.insert(lun, target.open_queue(lun, io_thread).await?);
        }
        Ok(Initiator { target: target.clone(), queues, next_tag: AtomicU64::new(1) })
    }

    pub fn target(&self) -> &Arc<Target> {
        &self.target
    }

    pub fn queue(&self, lun: u64) -> Option<&Arc<Queue>> {
        self.queues.get(&lun)
    }

    /// Submits a command; resolves to its response.
    pub fn submit(&self, lun: u64, cdb: &[u8], data_out: Vec<u8>) -> oneshot::Receiver<Response> {
        let (tx, rx) = oneshot::channel();
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let req = request(tag, lun, cdb, data_out, move |r| {
            let _ = tx.send(r);
        });
        match self.queues.get(&lun) {
            Some(q) => q.submit(req),
            None => {
                // Not connected to that LUN: as a transport would, answer LUN NOT SUPPORTED.
                let mut req = req;
                req.complete(Response::check_condition(lunar_scsi::sense::LUN_NOT_SUPPORTED.sense().fixed()));
            }
        }
        rx
    }

    pub async fn command(&self, lun: u64, cdb: &[u8], data_out: Vec<u8>) -> Result<Response, Lost> {
        self.submit(lun, cdb, data_out).await.map_err(|_| Lost)
    }

    pub fn command_blocking(&self, lun: u64, cdb: &[u8], data_out: Vec<u8>) -> Result<Response, Lost> {
        self.submit(lun, cdb, data_out).blocking_recv().map_err(|_| Lost)
    }

    /// Closes every queue.
    pub async fn disconnect(self) {
        for (_, q) in self.queues {
            let _ = self.target.close_queue(q).await;
        }
    }
}

/// CDB builders for the commands tests use most.
pub mod cdb {
    pub fn test_unit_ready() -> [u8; 6] {
        [0; 6]
    }

    pub fn inquiry(evpd: bool, page: u8, alloc: u16) -> [u8; 6] {
        let a = alloc.to_be_bytes();
        [0x12, evpd as u8, page, a[0], a[1], 0]
    }

    pub fn read_capacity16() -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = 0x9e;
        c[1] = 0x10;
        c[13] = 32;
        c
    }

    pub fn read16(lba: u64, blocks: u32) -> [u8; 16] {
        rw16(0x88, lba, blocks, false)
    }

    pub fn write16(lba: u64, blocks: u32, fua: bool) -> [u8; 16] {
        rw16(0x8a, lba, blocks, fua)
    }

    fn rw16(op: u8, lba: u64, blocks: u32, fua: bool) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = op;
        if fua {
            c[1] = 0x08;
        }
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    pub fn read10(lba: u32, blocks: u16) -> [u8; 10] {
        rw10(0x28, lba, blocks)
    }

    pub fn write10(lba: u32, blocks: u16) -> [u8; 10] {
        rw10(0x2a, lba, blocks)
    }

    fn rw10(op: u8, lba: u32, blocks: u16) -> [u8; 10] {
        let mut c = [0u8; 10];
        c[0] = op;
        c[2..6].copy_from_slice(&lba.to_be_bytes());
        c[7..9].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    pub fn synchronize_cache10() -> [u8; 10] {
        let mut c = [0u8; 10];
        c[0] = 0x35;
        c
    }

    pub fn request_sense(alloc: u8) -> [u8; 6] {
        [0x03, 0, 0, 0, alloc, 0]
    }

    pub fn report_luns(alloc: u32) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[0] = 0xa0;
        c[6..10].copy_from_slice(&alloc.to_be_bytes());
        c
    }
}

/// Checks on responses, with messages that say what was expected.
pub trait ResponseExt {
    fn sense_data(&self) -> Option<Sense>;
    fn is_good(&self) -> bool;
    /// CHECK CONDITION with this key/ASC/ASCQ.
    fn is_sense(&self, key: SenseKey, asc: u8, ascq: u8) -> bool;
}

impl ResponseExt for Response {
    fn sense_data(&self) -> Option<Sense> {
        Sense::decode(&self.sense)
    }

    fn is_good(&self) -> bool {
        self.status == Status::Good
    }

    fn is_sense(&self, key: SenseKey, asc: u8, ascq: u8) -> bool {
        self.status == Status::CheckCondition
            && self.sense_data().is_some_and(|s| s.key == key && s.asc == asc && s.ascq == ascq)
    }
}

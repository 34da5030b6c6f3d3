//! The control queue: task management functions and asynchronous
//! notification queries. Requests are taken off the ring on the kick
//! thread; task management runs on the main loop and is answered only once
//! every command it aborts has completed.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use lunar_core::{Queue, TaskManagement};
use vhost_user_backend::VringT;
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;

use crate::device::ScsiBackend;
use crate::limits::HitCounters;
use crate::pending::Pending;
use crate::request_queue::used;
use crate::virtio::*;
use crate::{Mem, Vring};

/// The longest control queue request (a TMF: type, subtype, LUN, tag).
const CTRL_REQ_MAX: usize = 24;

impl ScsiBackend {
    pub(crate) fn process_control(&self, vring: &Vring) {
        let Some(mem) = self.ctrl_mem.lock().unwrap_or_else(|e| e.into_inner()).clone() else { return };
        loop {
            let _ = vring.disable_notification();
            loop {
                if !vring.get_ref().get_queue().ready() {
                    return;
                }
                let chain = vring.get_mut().get_queue_mut().pop_descriptor_chain(mem.memory());
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                let max = self.shared.limits.max_chain_descriptors;
                match Buffers::collect(chain.map(|d| (d.addr().0, d.len(), d.is_write_only())), max) {
                    Ok(b) => self.control(vring, &mem, head, b),
                    Err(bad) => {
                        self.shared.refused(&bad.error);
                        used(vring, head, 0);
                    }
                }
            }
            match vring.enable_notification() {
                Ok(true) => continue,
                _ => break,
            }
        }
    }

    fn control(&self, vring: &Vring, mem: &Mem, head: u16, b: Buffers) {
        // The longest control request is a TMF's 24 bytes: nothing past
        // them is read (a guest's huge buffer claims no memory here).
        let len = b.readable_len().min(CTRL_REQ_MAX as u64) as usize;
        let bytes = match b.read_at(&*mem.memory(), 0, len) {
            Ok(x) => x,
            Err(e) => {
                self.shared.refused(&e);
                return used(vring, head, 0);
            }
        };
        let u32_at = |o: usize| bytes.get(o..o + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]));
        let reply = |data: &[u8]| {
            let n = b.write_at(&*mem.memory(), 0, data).unwrap_or(0);
            used(vring, head, n as u32);
        };
        match u32_at(0) {
            Some(T_TMF) if bytes.len() >= 24 && b.writable_len() >= 1 => {
                let subtype = u32_at(4).unwrap_or(u32::MAX);
                let mut lun = [0u8; 8];
                lun.copy_from_slice(&bytes[8..16]);
                let mut tag = [0u8; 8];
                tag.copy_from_slice(&bytes[16..24]);
                let tag = u64::from_le_bytes(tag);
                let lun = match decode_lun(&lun) {
                    Some((0, l)) if self.vqs.first().is_some_and(|v| v.queues().contains_key(&l)) => l,
                    _ => return reply(&[S_BAD_TARGET]),
                };
                self.tmf(vring, mem, head, b, subtype, lun, tag);
            }
            Some(T_AN_QUERY) | Some(T_AN_SUBSCRIBE) if bytes.len() >= 16 && b.writable_len() >= 5 => {
                // No asynchronous events supported: event_actual = 0.
                reply(&[0, 0, 0, 0, S_OK]);
            }
            _ => {
                HitCounters::bump(&self.shared.hits.bad_chain);
                self.shared.log.warn(&"bad control request");
                if b.writable_len() >= 1 && b.writable_len() < 5 {
                    reply(&[S_FAILURE]);
                } else {
                    used(vring, head, 0);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn tmf(&self, vring: &Vring, mem: &Mem, head: u16, b: Buffers, subtype: u32, lun: u64, tag: u64) {
        let reply = move |vring: &Vring, mem: &Mem, code: u8| {
            let n = b.write_at(&*mem.memory(), 0, &[code]).unwrap_or(0);
            used(vring, head, n as u32);
        };
        let all_luns = subtype == TMF_I_T_NEXUS_RESET;
        let matches = move |p: &Pending| (all_luns || p.lun == lun) && (subtype != TMF_ABORT_TASK || p.tag == tag);
        match subtype {
            TMF_QUERY_TASK | TMF_QUERY_TASK_SET => {
                let found = self.vqs.iter().any(|v| v.inflight.snapshot().any(|p| matches(&p)));
                reply(vring, mem, if found { S_FUNCTION_SUCCEEDED } else { S_FUNCTION_COMPLETE })
            }
            TMF_ABORT_TASK | TMF_ABORT_TASK_SET | TMF_CLEAR_TASK_SET | TMF_I_T_NEXUS_RESET | TMF_LOGICAL_UNIT_RESET => {
                let tmf = match subtype {
                    TMF_ABORT_TASK => TaskManagement::AbortTask { tag },
                    TMF_ABORT_TASK_SET => TaskManagement::AbortTaskSet,
                    TMF_CLEAR_TASK_SET => TaskManagement::ClearTaskSet,
                    TMF_I_T_NEXUS_RESET => TaskManagement::ITNexusReset,
                    _ => TaskManagement::LogicalUnitReset,
                };
                // Commands a reset cancels are answered VIRTIO_SCSI_S_RESET
                // (Linux retries them), not S_ABORTED.
                if matches!(subtype, TMF_I_T_NEXUS_RESET | TMF_LOGICAL_UNIT_RESET) {
                    for v in &self.vqs {
                        v.mark_reset(matches);
                    }
                }
                // The controller's I_T nexus: its core queues of the LU (of
                // every LU for I_T NEXUS RESET) on every request virtqueue.
                let queues: Vec<Arc<Queue>> = self
                    .vqs
                    .iter()
                    .flat_map(|v| {
                        v.queues()
                            .iter()
                            .filter(|(l, _)| all_luns || **l == lun)
                            .map(|(_, q)| q.clone())
                            .collect::<Vec<_>>()
                    })
                    .collect();
                let target = self.shared.target.clone();
                let (vring, mem, pending) = (vring.clone(), mem.clone(), self.ctrl_pending.clone());
                pending.fetch_add(1, Ordering::AcqRel);
                // Answered once every command it aborted has completed (the
                // core's task management resolves only then) and its unit
                // attentions are in place.
                let run = move || async move {
                    match target.task_management(tmf, lun, &queues).await {
                        Ok(done) => {
                            tracing::info!(
                                lun,
                                tmf = tmf.name(),
                                aborted = done.aborted,
                                "vhost-user-scsi: task management done"
                            )
                        }
                        Err(e) => tracing::warn!(lun, tmf = tmf.name(), "vhost-user-scsi: task management: {e}"),
                    }
                    reply(&vring, &mem, S_FUNCTION_COMPLETE);
                    pending.fetch_sub(1, Ordering::AcqRel);
                };
                if self.shared.target.contexts().main_loop().spawn(run).is_err() {
                    self.ctrl_pending.fetch_sub(1, Ordering::AcqRel);
                }
            }
            _ => reply(vring, mem, S_FUNCTION_REJECTED),
        }
    }
}

//! SCSI commands decoded and executed against a RAM disk, as the target
//! core runs them.
//!
//! Input: one configuration byte (bit 0: 4096-byte blocks, bit 1: read
//! only, bit 2: thin provisioning, bit 3: removable medium), then commands
//! back to back, each:
//!
//! ```text
//! ctl:u8  cdb_len:u8  cdb[cdb_len]  data_len:u16le  data[data_len]
//! ```
//!
//! `ctl` bit 0 picks one of two I_T nexuses (reservations), bit 1 asks for
//! descriptor sense, bit 2 calls `Disk::validate` alone first (as a core
//! does before receiving data-out). The data-out is exactly what the input
//! holds, shorter or longer than the CDB asks for, as an initiator may send.
//! SANITIZE runs through `Disk::start_sanitize` to its end, as the core
//! runs it. All commands of one input run against one disk, so state
//! (mode pages, reservations, written blocks, a failed sanitize) carries
//! from command to command.
//!
//! Checked: no panic; data-in no larger than MAX_TRANSFER_BYTES; a
//! reservation state the disk asks to save restores into a fresh disk
//! (whole with APTPL, as just its generation without);
//! sense of every error encodes in both formats and decodes back. No single
//! allocation beyond `-malloc_limit_mb` (scripts/fuzz.sh: 64).
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use lunar_block::Backend;
use lunar_scsi::{Command, Disk, DiskConfig, ExecContext, Nexus, Sense, SideEffect, MAX_TRANSFER_BYTES};

/// The disk's size in bytes: small, so that whole-disk commands stay fast.
const DISK_BYTES: u64 = 256 * 1024;

thread_local! {
    static RT: RefCell<tokio::runtime::Runtime> =
        RefCell::new(tokio::runtime::Builder::new_current_thread().build().expect("runtime"));
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    RT.with(|rt| rt.borrow().block_on(f))
}

fn config(bits: u8) -> DiskConfig {
    DiskConfig {
        block_size: if bits & 1 != 0 { 4096 } else { 512 },
        readonly: bits & 2 != 0,
        thin: bits & 4 != 0,
        removable: bits & 8 != 0,
        serial: "FUZZ0001".into(),
        target_name: "iqn.2024-01.org.lunar:fuzz".into(),
        naa_id: 0x1234_5678,
        ..DiskConfig::default()
    }
}

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

fn check_sense(s: &Sense) {
    for descriptor in [false, true] {
        let bytes = s.encode(descriptor);
        let back = Sense::decode(&bytes).expect("sense we encode decodes");
        assert_eq!(back.key, s.key, "{s:?} -> {bytes:02x?}");
        assert_eq!((back.asc, back.ascq), (s.asc, s.ascq));
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let Some(bits) = input.byte() else { return };
    let cfg = config(bits);
    let disk = Disk::new(cfg.clone(), Backend::mem(DISK_BYTES));
    let block_size = disk.block_size();
    let nexuses = [
        Nexus::new("iqn.1994-05.com.example:a,i,0x23d000000001", 1),
        Nexus::new("iqn.1994-05.com.example:b,i,0x23d000000002", 1),
    ];
    while let Some(ctl) = input.byte() {
        let cdb_len = input.byte().unwrap_or(0) as usize;
        let cdb = input.bytes(cdb_len);
        let dlen = input.bytes(2);
        let dlen = match dlen {
            [a, b] => u16::from_le_bytes([*a, *b]) as usize,
            _ => 0,
        };
        let data_out = input.bytes(dlen).to_vec();
        let ctx = ExecContext {
            descriptor_sense: ctl & 2 != 0,
            luns: vec![0, 1, 7],
            nexus: Some(nexuses[(ctl & 1) as usize].clone()),
            ..ExecContext::default()
        };
        let cmd = match Command::decode(cdb) {
            Ok(c) => c,
            Err(e) => {
                let _ = e.status();
                check_sense(&e.sense());
                continue;
            }
        };
        let _ = (cmd.name(), cmd.opcode(), cmd.service_action(), cmd.direction(), cmd.data_out_len(block_size));
        let _ = (cmd.is_write(), cmd.is_medium_access(), cmd.is_unit_attention_exempt());
        if ctl & 4 != 0 {
            if let Err(e) = disk.validate(&cmd) {
                check_sense(&e.sense());
                continue;
            }
        }
        let result = if let Command::Sanitize(s) = &cmd {
            match disk.start_sanitize(s, data_out, &ctx) {
                Ok(Some(op)) => block_on(op.run()).map(|()| Vec::new()),
                Ok(None) => Ok(Vec::new()),
                Err(e) => Err(e),
            }
        } else {
            let done = block_on(disk.execute_with_effects(&cmd, data_out, &ctx));
            for effect in &done.effects {
                match effect {
                    SideEffect::SaveReservations => {
                        let saved = disk.reservation_state_bytes();
                        let now = disk.reservation_state();
                        let fresh = Disk::new(cfg.clone(), Backend::mem(DISK_BYTES));
                        fresh.restore_reservations(&saved).expect("a saved reservation state restores");
                        let back = fresh.reservation_state();
                        if now.aptpl {
                            // Persist through power loss: everything comes back.
                            assert_eq!(fresh.reservation_state_bytes(), saved);
                        } else {
                            // APTPL cleared (SPC-5 5.13.5): only the generation persists.
                            assert!(back.registrations.is_empty() && back.reservation.is_none(), "{back:?}");
                            assert_eq!(back.generation, now.generation);
                        }
                    }
                    SideEffect::UnitAttention { sense, .. } | SideEffect::UnitAttentionOthers { sense, .. } => {
                        check_sense(sense)
                    }
                    SideEffect::AbortTasks { .. } => {}
                }
            }
            done.result
        };
        match result {
            Ok(data_in) => assert!(data_in.len() as u64 <= MAX_TRANSFER_BYTES, "{} bytes of data-in", data_in.len()),
            Err(e) => {
                let _ = e.status();
                check_sense(&e.sense());
            }
        }
    }
});

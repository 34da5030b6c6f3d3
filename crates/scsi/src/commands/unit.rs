//! TEST UNIT READY (SPC-5 6.47), REQUEST SENSE (SPC-5 6.39), START STOP
//! UNIT (SBC-4 5.25) and PREVENT ALLOW MEDIUM REMOVAL (SBC-4 5.13).

use std::sync::atomic::Ordering;

use crate::cdb::reader::Cdb;
use crate::cdb::Command;
use crate::disk::{truncate, Disk, ExecContext};
use crate::error::ScsiError;
use crate::sense;

/// START STOP UNIT fields (SBC-4 5.25).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartStopUnit {
    pub immed: bool,
    pub power_condition_modifier: u8,
    pub power_condition: u8,
    pub no_flush: bool,
    pub loej: bool,
    pub start: bool,
}

pub(crate) fn decode_test_unit_ready(_: Cdb<'_>) -> Result<Command, ScsiError> {
    Ok(Command::TestUnitReady)
}

pub(crate) fn decode_request_sense(c: Cdb<'_>) -> Result<Command, ScsiError> {
    Ok(Command::RequestSense { desc: c.bit(1, 0), alloc_len: c.u8(4) })
}

pub(crate) fn decode_start_stop(c: Cdb<'_>) -> Result<Command, ScsiError> {
    // SBC-4 table 116 defines 0h-3h, 7h, Ah and Bh; every power condition
    // other than START_VALID is a no-op power state change here, and the
    // reserved ones are taken as such too (libiscsi StartStopUnit.PwrCnd
    // sends all of 1h-Fh to a removable unit and expects GOOD, medium kept).
    let power_condition = c.bits(4, 4, 4);
    Ok(Command::StartStopUnit(StartStopUnit {
        immed: c.bit(1, 0),
        power_condition_modifier: c.bits(3, 0, 4),
        power_condition,
        no_flush: c.bit(4, 2),
        loej: c.bit(4, 1),
        start: c.bit(4, 0),
    }))
}

pub(crate) fn decode_prevent_allow(c: Cdb<'_>) -> Result<Command, ScsiError> {
    match c.bits(4, 0, 2) {
        0 => Ok(Command::PreventAllowMediumRemoval { prevent: false }),
        1 => Ok(Command::PreventAllowMediumRemoval { prevent: true }),
        // 10b and 11b are obsolete (SBC-4 table 74).
        _ => Err(ScsiError::field(4, 1)),
    }
}

impl Disk {
    /// REQUEST SENSE: the sense the core holds for this nexus, or NO SENSE,
    /// in the format DESC asks for.
    pub(crate) fn request_sense(&self, desc: bool, alloc_len: u8, ctx: &ExecContext) -> Vec<u8> {
        // SPC-5 6.39: a pending unit attention first, then a sanitize in progress.
        let s = ctx.pending_sense.clone().unwrap_or_else(|| match self.sanitize_in_progress() {
            Some(progress) => sense::SANITIZE_IN_PROGRESS.sense().with_progress(progress),
            // SPC-5 6.39: what a command refused by this target port's
            // asymmetric access state would report.
            None => self.alua().and_then(|a| a.local_state().refusal()).unwrap_or(sense::NO_SENSE.sense()),
        });
        truncate(s.encode(desc), usize::from(alloc_len))
    }

    /// START STOP UNIT. A power condition other than START_VALID only
    /// changes the (virtual) power state, and START and LOEJ are then
    /// ignored (SBC-4 5.25). A stop flushes the cache unless NO_FLUSH. LOEJ
    /// loads or ejects a removable medium (refused on a fixed disk); while
    /// removal is prevented the medium is locked in or out: loading is
    /// refused as ejecting is (as MMC-6 6.44 has it; libiscsi
    /// PreventAllow.Eject expects it of a disk too).
    pub(crate) async fn start_stop(&self, s: &StartStopUnit) -> Result<Vec<u8>, ScsiError> {
        if s.power_condition != 0 {
            return Ok(Vec::new());
        }
        if !s.start && !s.no_flush {
            self.backend().flush().await?;
        }
        if s.loej {
            if !self.config().removable {
                // No medium to load or eject (libiscsi StartStopUnit.Simple expects a failure).
                return Err(ScsiError::field(4, 1));
            }
            if self.state.prevent.load(Ordering::Relaxed) {
                return Err(ScsiError::MediumRemovalPrevented);
            }
            self.state.medium_present.store(s.start, Ordering::Relaxed);
        }
        Ok(Vec::new())
    }

    /// PREVENT ALLOW MEDIUM REMOVAL: records the PREVENT state.
    pub(crate) fn prevent_allow(&self, prevent: bool) -> Vec<u8> {
        self.state.prevent.store(prevent, Ordering::Relaxed);
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use crate::test_util::*;
    use crate::*;

    #[test]
    fn test_unit_ready() {
        let d = disk(100);
        assert_eq!(run(&d, &[0, 0, 0, 0, 0, 0]), Ok(vec![]));
        assert_eq!(Command::decode(&[0, 1, 0, 0, 0, 0]), Err(ScsiError::field(1, 0)));
        assert_eq!(Command::decode(&[0, 0, 0, 0, 0, 4]), Err(ScsiError::field(5, 2)), "NACA");
        assert_eq!(Command::decode(&[0, 0, 0, 0, 0, 0x20]), Err(ScsiError::field(5, 5)));
        assert!(matches!(Command::decode(&[0, 0, 0]), Err(ScsiError::CdbTooShort { .. })));
    }

    #[test]
    fn request_sense_formats() {
        let d = disk(100);
        let fixed = run(&d, &[0x03, 0, 0, 0, 252, 0]).unwrap();
        assert_eq!(fixed.len(), 18);
        assert_eq!((fixed[0], fixed[2], fixed[12]), (0x70, 0, 0));
        let desc = run(&d, &[0x03, 1, 0, 0, 252, 0]).unwrap();
        assert_eq!(desc, vec![0x72, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(run(&d, &[0x03, 0, 0, 0, 4, 0]).unwrap().len(), 4);
        let ctx = ExecContext { pending_sense: Some(sense::POWER_ON_RESET.sense()), ..Default::default() };
        let ua = run_ctx(&d, &[0x03, 0, 0, 0, 252, 0], vec![], &ctx).unwrap();
        assert_eq!((ua[2], ua[12], ua[13]), (6, 0x29, 0));
        assert_eq!(Command::decode(&[0x03, 2, 0, 0, 0, 0]), Err(ScsiError::field(1, 1)));
    }

    #[test]
    fn start_stop_and_eject() {
        let d = disk(100);
        assert_eq!(run(&d, &[0x1B, 0, 0, 0, 0, 0]), Ok(vec![]), "stop");
        assert_eq!(run(&d, &[0x1B, 0, 0, 0, 1, 0]), Ok(vec![]), "start");
        assert_eq!(run(&d, &[0x1B, 1, 0, 0, 2, 0]), Err(ScsiError::field(4, 1)), "eject of a fixed disk");
        assert_eq!(run(&d, &[0x1B, 0, 0, 0, 3, 0]), Err(ScsiError::field(4, 1)), "load of a fixed disk");
        assert_eq!(run(&d, &[0x08, 0, 0, 0, 1, 0]).map(|v| v.len()), Ok(512));
        assert_eq!(run(&d, &[0x1B, 0, 0, 0, 0x30, 0]), Ok(vec![]), "STANDBY");
        assert_eq!(run(&d, &[0x1B, 0, 0, 0, 0x40, 0]), Ok(vec![]), "reserved power condition: no-op");
        assert_eq!(run(&d, &[0x1B, 0, 0, 0, 0xF2, 0]), Ok(vec![]), "no eject with a power condition");

        let r = Disk::new(DiskConfig { removable: true, ..Default::default() }, Backend::mem(512 * 100));
        assert_eq!(run(&r, &[0x1E, 0, 0, 0, 1, 0]), Ok(vec![]), "prevent");
        assert_eq!(run(&r, &[0x1B, 0, 0, 0, 2, 0]), Err(ScsiError::MediumRemovalPrevented));
        assert_eq!(run(&r, &[0x1E, 0, 0, 0, 0, 0]), Ok(vec![]), "allow");
        assert_eq!(run(&r, &[0x1B, 0, 0, 0, 2, 0]), Ok(vec![]), "eject");
        assert_eq!(run(&r, &[0, 0, 0, 0, 0, 0]), Err(ScsiError::MediumNotPresent));
        assert_eq!(run(&r, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]), Err(ScsiError::MediumNotPresent));
        assert!(run(&r, &[0x12, 0, 0, 0, 36, 0]).is_ok(), "INQUIRY needs no medium");
        assert_eq!(run(&r, &[0x1E, 0, 0, 0, 1, 0]), Ok(vec![]), "prevent");
        assert_eq!(run(&r, &[0x1B, 0, 0, 0, 3, 0]), Err(ScsiError::MediumRemovalPrevented), "load while prevented");
        assert_eq!(run(&r, &[0x1E, 0, 0, 0, 0, 0]), Ok(vec![]), "allow");
        assert_eq!(run(&r, &[0x1B, 0, 0, 0, 3, 0]), Ok(vec![]), "load");
        assert_eq!(run(&r, &[0, 0, 0, 0, 0, 0]), Ok(vec![]));
        for pc in 1..16u8 {
            assert_eq!(run(&r, &[0x1B, 0, 0, 0, (pc << 4) | 2, 0]), Ok(vec![]), "power condition {pc:#x}");
            assert_eq!(run(&r, &[0, 0, 0, 0, 0, 0]), Ok(vec![]), "medium kept");
        }
        assert_eq!(ScsiError::MediumNotPresent.sense().code(), sense::MEDIUM_NOT_PRESENT);
    }

    #[test]
    fn prevent_allow_fields() {
        assert_eq!(Command::decode(&[0x1E, 0, 0, 0, 2, 0]), Err(ScsiError::field(4, 1)));
        assert_eq!(Command::decode(&[0x1E, 0, 0, 0, 4, 0]), Err(ScsiError::field(4, 2)));
        let r = Disk::new(DiskConfig { removable: true, ..Default::default() }, Backend::mem(512 * 100));
        run(&r, &[0x1E, 0, 0, 0, 1, 0]).unwrap();
        r.reset_prevent();
        assert_eq!(run(&r, &[0x1B, 0, 0, 0, 2, 0]), Ok(vec![]));
    }
}

//! RESERVE(6)/(10) and RELEASE(6)/(10) (SPC-2 7.21, 7.22, 7.17, 7.18):
//! the obsolete, non-persistent reservation of the whole logical unit by one
//! I_T nexus. Third-party and element reservations are not supported (their
//! CDB bits are refused by the opcode table). How they meet persistent
//! reservations follows SPC-5 5.13.3: while any I_T nexus is registered,
//! RESERVE and RELEASE conflict.

use crate::cdb::reader::Cdb;
use crate::cdb::Command;
use crate::disk::{Disk, ExecContext};
use crate::error::ScsiError;
use crate::reservation::{nexus_of, SideEffect};

pub(crate) fn decode_reserve6(_: Cdb<'_>) -> Result<Command, ScsiError> {
    Ok(Command::Reserve { cdb_len: 6 })
}

pub(crate) fn decode_reserve10(_: Cdb<'_>) -> Result<Command, ScsiError> {
    Ok(Command::Reserve { cdb_len: 10 })
}

pub(crate) fn decode_release6(_: Cdb<'_>) -> Result<Command, ScsiError> {
    Ok(Command::Release { cdb_len: 6 })
}

pub(crate) fn decode_release10(_: Cdb<'_>) -> Result<Command, ScsiError> {
    Ok(Command::Release { cdb_len: 10 })
}

impl Disk {
    /// A logical unit whose reservations are shared by several gateways
    /// ([`Disk::set_reservation_store`]) refuses RESERVE and RELEASE with
    /// INVALID COMMAND OPERATION CODE: an SPC-2 reservation is not shared
    /// (it would hold on one gateway only); persistent reservations are.
    fn refuse_when_shared(&self) -> Result<(), ScsiError> {
        if self.has_reservation_store() {
            return Err(ScsiError::Sense(crate::sense::INVALID_OPCODE.sense()));
        }
        Ok(())
    }

    /// RESERVE: the nexus reserves the logical unit; reserving again is not
    /// an error. Conflicts with another nexus's reservation (also checked,
    /// without the lock, by the access class) and with any registration.
    pub(crate) fn reserve_unit(&self, ctx: &ExecContext, fx: &mut Vec<SideEffect>) -> Result<Vec<u8>, ScsiError> {
        let nexus = nexus_of(ctx);
        self.refuse_when_shared()?;
        self.reservations.update(fx, |s, _| {
            if !s.registrations.is_empty() || s.spc2_holder.as_ref().is_some_and(|h| !h.covers(nexus)) {
                return Err(ScsiError::ReservationConflict);
            }
            s.spc2_holder = Some(nexus.clone());
            Ok(Vec::new())
        })
    }

    /// RELEASE: releases the nexus's own reservation; releasing one that
    /// another nexus holds, or none, is GOOD and changes nothing.
    pub(crate) fn release_unit(&self, ctx: &ExecContext, fx: &mut Vec<SideEffect>) -> Result<Vec<u8>, ScsiError> {
        let nexus = nexus_of(ctx);
        self.refuse_when_shared()?;
        self.reservations.update(fx, |s, _| {
            if !s.registrations.is_empty() {
                return Err(ScsiError::ReservationConflict);
            }
            if s.spc2_holder.as_ref().is_some_and(|h| h.covers(nexus)) {
                s.spc2_holder = None;
            }
            Ok(Vec::new())
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::reservation::Nexus;
    use crate::test_util::*;
    use crate::*;

    fn ctx(name: &str) -> ExecContext {
        ExecContext { nexus: Some(Nexus::new(format!("{name},i,0x23d000000001"), 1)), ..Default::default() }
    }

    const RESERVE6: [u8; 6] = [0x16, 0, 0, 0, 0, 0];
    const RELEASE6: [u8; 6] = [0x17, 0, 0, 0, 0, 0];
    const RESERVE10: [u8; 10] = [0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    const RELEASE10: [u8; 10] = [0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    const MODE_SENSE6: [u8; 6] = [0x1A, 0, 0x3F, 0, 255, 0];

    #[test]
    fn two_initiators() {
        let d = disk(16);
        let (a, b) = (ctx("iqn.a"), ctx("iqn.b"));
        assert_eq!(run_ctx(&d, &RESERVE6, vec![], &a), Ok(vec![]));
        assert_eq!(run_ctx(&d, &RESERVE6, vec![], &a), Ok(vec![]), "re-reserve by the holder");
        assert_eq!(run_ctx(&d, &RESERVE6, vec![], &b), Err(ScsiError::ReservationConflict));
        assert_eq!(run_ctx(&d, &RESERVE10, vec![], &b), Err(ScsiError::ReservationConflict));
        assert_eq!(run_ctx(&d, &RELEASE6, vec![], &b), Ok(vec![]), "release by another nexus is a no-op");
        assert!(run_ctx(&d, &MODE_SENSE6, vec![], &a).is_ok());
        assert_eq!(run_ctx(&d, &MODE_SENSE6, vec![], &b), Err(ScsiError::ReservationConflict));
        assert_eq!(run_ctx(&d, &[0, 0, 0, 0, 0, 0], vec![], &b), Err(ScsiError::ReservationConflict), "TUR");
        assert_eq!(run_ctx(&d, &cdb10(0x28, 0, 0, 1), vec![], &b), Err(ScsiError::ReservationConflict));
        // SPC-2 5.5.1: these go through.
        assert!(run_ctx(&d, &[0x12, 0, 0, 0, 36, 0], vec![], &b).is_ok(), "INQUIRY");
        assert!(run_ctx(&d, &[0x03, 0, 0, 0, 18, 0], vec![], &b).is_ok(), "REQUEST SENSE");
        assert!(run_ctx(&d, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0], vec![], &b).is_ok(), "REPORT LUNS");
        assert!(run_ctx(&d, &[0x1E, 0, 0, 0, 0, 0], vec![], &b).is_ok(), "ALLOW");
        assert_eq!(run_ctx(&d, &[0x1E, 0, 0, 0, 1, 0], vec![], &b), Err(ScsiError::ReservationConflict), "PREVENT");
        let prin = [0x5E, 0, 0, 0, 0, 0, 0, 0, 64, 0];
        assert_eq!(run_ctx(&d, &prin, vec![], &b), Err(ScsiError::ReservationConflict), "PR IN");
        assert!(run_ctx(&d, &prin, vec![], &a).is_ok());
        assert_eq!(run_ctx(&d, &RELEASE10, vec![], &a), Ok(vec![]));
        assert_eq!(run_ctx(&d, &RESERVE10, vec![], &b), Ok(vec![]));
        assert_eq!(d.reservation_state().spc2_holder, ctx("iqn.b").nexus);
        assert_eq!(run_ctx(&d, &RELEASE6, vec![], &b), Ok(vec![]));
        assert!(run_ctx(&d, &MODE_SENSE6, vec![], &a).is_ok());
    }

    #[test]
    fn released_by_reset_and_nexus_loss() {
        let d = disk(16);
        let (a, b) = (ctx("iqn.a"), ctx("iqn.b"));
        run_ctx(&d, &RESERVE6, vec![], &a).unwrap();
        d.nexus_lost(b.nexus.as_ref().unwrap());
        assert_eq!(run_ctx(&d, &RESERVE6, vec![], &b), Err(ScsiError::ReservationConflict), "other nexus lost");
        d.nexus_lost(a.nexus.as_ref().unwrap());
        assert_eq!(run_ctx(&d, &RESERVE6, vec![], &b), Ok(vec![]));
        d.reset_reservations();
        assert_eq!(d.reservation_state().spc2_holder, None);
        assert_eq!(run_ctx(&d, &RESERVE6, vec![], &a), Ok(vec![]));
    }

    #[test]
    fn anonymous_nexus_and_fields() {
        let d = disk(16);
        assert_eq!(run(&d, &RESERVE6), Ok(vec![]));
        assert!(run(&d, &cdb10(0x28, 0, 0, 1)).is_ok(), "the holder reads");
        assert_eq!(run_ctx(&d, &cdb10(0x28, 0, 0, 1), vec![], &ctx("iqn.b")), Err(ScsiError::ReservationConflict));
        assert_eq!(run(&d, &RELEASE6), Ok(vec![]));
        assert_eq!(Command::decode(&[0x16, 0x10, 0, 0, 0, 0]), Err(ScsiError::field(1, 4)), "3RDPTY");
        assert_eq!(Command::decode(&[0x16, 0x01, 0, 0, 0, 0]), Err(ScsiError::field(1, 0)), "EXTENT");
        assert_eq!(Command::decode(&[0x56, 0x02, 0, 0, 0, 0, 0, 0, 0, 0]), Err(ScsiError::field(1, 1)), "LONGID");
        assert_eq!(Command::decode(&RESERVE10).map(|c| c.name()), Ok("RESERVE(10)"));
        assert_eq!(Command::decode(&RELEASE6).map(|c| c.name()), Ok("RELEASE(6)"));
    }

    #[test]
    fn conflicts_with_registrations() {
        let d = disk(16);
        let a = ctx("iqn.a");
        let mut reg = vec![0u8; 24];
        reg[8..16].copy_from_slice(&7u64.to_be_bytes());
        let prout = [0x5F, 0x06, 0, 0, 0, 0, 0, 0, 24, 0];
        run_ctx(&d, &prout, reg, &a).unwrap();
        assert_eq!(run_ctx(&d, &RESERVE6, vec![], &a), Err(ScsiError::ReservationConflict));
        assert_eq!(run_ctx(&d, &RELEASE6, vec![], &ctx("iqn.b")), Err(ScsiError::ReservationConflict));
    }
}

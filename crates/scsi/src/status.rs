//! SCSI status codes (SAM-5 5.3, table 43).

/// The status byte a command completes with.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Good = 0x00,
    CheckCondition = 0x02,
    ConditionMet = 0x04,
    Busy = 0x08,
    ReservationConflict = 0x18,
    TaskSetFull = 0x28,
    AcaActive = 0x30,
    TaskAborted = 0x40,
}

impl Status {
    /// The status byte on the wire.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Decodes a status byte; `None` for obsolete or reserved codes.
    pub fn from_code(code: u8) -> Option<Status> {
        Some(match code {
            0x00 => Status::Good,
            0x02 => Status::CheckCondition,
            0x04 => Status::ConditionMet,
            0x08 => Status::Busy,
            0x18 => Status::ReservationConflict,
            0x28 => Status::TaskSetFull,
            0x30 => Status::AcaActive,
            0x40 => Status::TaskAborted,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for code in 0..=255u8 {
            if let Some(s) = Status::from_code(code) {
                assert_eq!(s.code(), code);
            }
        }
        assert_eq!(Status::from_code(0x02), Some(Status::CheckCondition));
        assert_eq!(Status::from_code(0x10), None);
    }
}

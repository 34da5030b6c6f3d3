//! READ DEFECT DATA(10)/(12) (SBC-4 5.22, 5.23): a virtual disk has no
//! defects; the lists are empty, in the format asked for.

use crate::cdb::reader::Cdb;
use crate::cdb::Command;
use crate::disk::truncate;
use crate::error::ScsiError;

pub(crate) fn decode10(c: Cdb<'_>) -> Result<Command, ScsiError> {
    Ok(Command::ReadDefectData {
        plist: c.bit(2, 4),
        glist: c.bit(2, 3),
        format: c.bits(2, 0, 3),
        index: 0,
        alloc_len: u32::from(c.be16(7)),
        cdb_len: 10,
    })
}

pub(crate) fn decode12(c: Cdb<'_>) -> Result<Command, ScsiError> {
    Ok(Command::ReadDefectData {
        plist: c.bit(1, 4),
        glist: c.bit(1, 3),
        format: c.bits(1, 0, 3),
        index: c.be32(2),
        alloc_len: c.be32(6),
        cdb_len: 12,
    })
}

/// The defect data header with a defect list length of zero.
pub(crate) fn read_defect_data(plist: bool, glist: bool, format: u8, alloc_len: u32, cdb_len: u8) -> Vec<u8> {
    let flags = (u8::from(plist) << 4) | (u8::from(glist) << 3) | (format & 7);
    let d = if cdb_len == 10 { vec![0, flags, 0, 0] } else { vec![0, flags, 0, 0, 0, 0, 0, 0] };
    truncate(d, usize::try_from(alloc_len).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use crate::test_util::*;
    use crate::*;

    #[test]
    fn empty_lists() {
        let d = disk(10);
        assert_eq!(run(&d, &[0x37, 0, 0x1D, 0, 0, 0, 0, 0, 255, 0]), Ok(vec![0, 0x1D, 0, 0]));
        assert_eq!(run(&d, &[0xB7, 0x0C, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]), Ok(vec![0, 0x0C, 0, 0, 0, 0, 0, 0]));
        assert_eq!(run(&d, &[0x37, 0, 0x18, 0, 0, 0, 0, 0, 2, 0]), Ok(vec![0, 0x18]));
        assert_eq!(Command::decode(&[0x37, 0, 0x20, 0, 0, 0, 0, 0, 2, 0]), Err(ScsiError::field(2, 5)));
    }
}

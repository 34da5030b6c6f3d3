//! LUN addressing (SAM-5 4.7) and the REPORT LUNS parameter data (SPC-5 6.33).
//!
//! LUNs below 256 use the peripheral device addressing method (4.7.7.2),
//! below 16384 the flat space method (4.7.7.4), below 2^24 the extended
//! flat space method (4.7.7.6.2, 4-byte form). A larger value is taken to be
//! an 8-byte SAM LUN already and is written as is (big endian).

/// Encodes a LUN in SAM-5 single level addressing.
pub fn encode_lun(lun: u64) -> [u8; 8] {
    let mut b = [0u8; 8];
    if lun < 256 {
        b[1] = lun as u8;
    } else if lun < 0x4000 {
        b[0] = 0x40 | (lun >> 8) as u8;
        b[1] = lun as u8;
    } else if lun < 0x100_0000 {
        // Extended logical unit addressing, length 01b (4 bytes), extended
        // address method 2h (extended flat space).
        b[0] = 0xD2;
        b[1..4].copy_from_slice(&(lun as u32).to_be_bytes()[1..]);
    } else {
        b = lun.to_be_bytes();
    }
    b
}

/// Decodes a single level LUN in one of the forms [`encode_lun`] writes.
/// `None` for other addressing methods, multi-level LUNs, or a nonzero bus
/// identifier.
pub fn decode_lun(bytes: [u8; 8]) -> Option<u64> {
    let rest_zero = |from: usize| bytes[from..].iter().all(|&b| b == 0);
    match bytes[0] >> 6 {
        0b00 if bytes[0] == 0 && rest_zero(2) => Some(u64::from(bytes[1])),
        0b01 if rest_zero(2) => Some((u64::from(bytes[0] & 0x3F) << 8) | u64::from(bytes[1])),
        0b11 if bytes[0] == 0xD2 && rest_zero(4) => {
            Some(u64::from(u32::from_be_bytes([0, bytes[1], bytes[2], bytes[3]])))
        }
        _ => None,
    }
}

/// REPORT LUNS parameter data (SPC-5 6.33.2): LUN LIST LENGTH, 4 reserved
/// bytes, then one 8-byte LUN each; truncated to `alloc_len`.
pub fn report_luns_data(luns: &[u64], alloc_len: u32) -> Vec<u8> {
    let list_len = u32::try_from(luns.len().saturating_mul(8)).unwrap_or(u32::MAX);
    let mut data = Vec::with_capacity(8 + luns.len() * 8);
    data.extend_from_slice(&list_len.to_be_bytes());
    data.extend_from_slice(&[0; 4]);
    for &lun in luns {
        data.extend_from_slice(&encode_lun(lun));
    }
    data.truncate(usize::try_from(alloc_len).unwrap_or(usize::MAX));
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn forms() {
        assert_eq!(encode_lun(0), [0; 8]);
        assert_eq!(encode_lun(5), [0, 5, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_lun(256), [0x41, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_lun(0x3FFF), [0x7F, 0xFF, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_lun(0x4000), [0xD2, 0, 0x40, 0, 0, 0, 0, 0]);
        assert_eq!(decode_lun([0x01, 5, 0, 0, 0, 0, 0, 0]), None, "bus 1");
        assert_eq!(decode_lun([0, 5, 0, 1, 0, 0, 0, 0]), None, "second level");
        assert_eq!(decode_lun([0x80, 5, 0, 0, 0, 0, 0, 0]), None, "logical unit addressing");
        assert_eq!(decode_lun([0x40, 5, 0, 0, 0, 0, 0, 0]), Some(5), "flat form of a small LUN");
    }

    #[test]
    fn report_luns() {
        let d = report_luns_data(&[0, 1, 300], 1024);
        assert_eq!(d.len(), 32);
        assert_eq!(&d[..4], &[0, 0, 0, 24]);
        assert_eq!(&d[16..18], &[0, 1]);
        assert_eq!(&d[24..26], &[0x41, 0x2C]);
        let d = report_luns_data(&[0, 1, 300], 12);
        assert_eq!(d.len(), 12);
        assert_eq!(&d[..4], &[0, 0, 0, 24], "the length is of the whole list");
        assert_eq!(report_luns_data(&[], 100), vec![0; 8]);
    }

    proptest! {
        #[test]
        fn round_trip(lun in 0u64..0x100_0000) {
            prop_assert_eq!(decode_lun(encode_lun(lun)), Some(lun));
        }

        #[test]
        fn decode_never_panics(bytes: [u8; 8]) {
            if let Some(lun) = decode_lun(bytes) {
                prop_assert_eq!(decode_lun(encode_lun(lun)), Some(lun));
            }
        }
    }
}

/// The answer to a command addressed to a LUN that does not exist (SPC-5
/// 4.6.4, 6.7.2): INQUIRY gets data with peripheral qualifier 011b ("not
/// capable of supporting a device on this LUN"), REPORT LUNS lists `luns`
/// (the LUNs that do exist), anything else is LOGICAL UNIT NOT SUPPORTED.
/// `Ok` is the data-in, already cut to the allocation length.
pub fn answer_without_lun(cdb: &[u8], luns: &[u64]) -> Result<Vec<u8>, crate::Sense> {
    match cdb.first().copied() {
        Some(0x12) => {
            let evpd = cdb.get(1).is_some_and(|b| b & 1 == 1);
            let alloc = cdb.get(3..5).map_or(0, |b| u16::from_be_bytes([b[0], b[1]])) as usize;
            let mut data = if evpd {
                vec![0x7f, cdb.get(2).copied().unwrap_or(0), 0, 0]
            } else {
                let mut d = vec![0u8; 36];
                d[0] = 0x7f; // qualifier 011b, device type 1Fh
                d[2] = 0x06; // SPC-4
                d[3] = 0x02; // response data format
                d[4] = 31; // additional length
                d
            };
            data.truncate(alloc);
            Ok(data)
        }
        Some(0xa0) => {
            let alloc = cdb.get(6..10).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
            Ok(report_luns_data(luns, alloc))
        }
        _ => Err(crate::sense::LUN_NOT_SUPPORTED.sense()),
    }
}

#[cfg(test)]
mod answer_without_lun_tests {
    use super::*;

    #[test]
    fn inquiry_report_luns_and_the_rest() {
        let std = answer_without_lun(&[0x12, 0, 0, 0, 36, 0], &[0]).unwrap();
        assert_eq!((std.len(), std[0], std[4]), (36, 0x7f, 31));
        assert_eq!(answer_without_lun(&[0x12, 1, 0x80, 0, 255, 0], &[0]).unwrap(), vec![0x7f, 0x80, 0, 0]);
        assert_eq!(answer_without_lun(&[0x12, 0, 0, 0, 5, 0], &[0]).unwrap().len(), 5, "cut to the allocation");
        let luns = answer_without_lun(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[0, 3]).unwrap();
        assert_eq!(&luns[..4], &16u32.to_be_bytes());
        assert_eq!(answer_without_lun(&[0x00; 6], &[0]).unwrap_err(), crate::sense::LUN_NOT_SUPPORTED.sense());
    }
}

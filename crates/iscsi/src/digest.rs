//! CRC32C header and data digests (RFC 7143 §11.2.4, §13.1).
//!
//! The digest is the CRC-32C (Castagnoli, generator 0x11edc6f41) of the
//! covered bytes. On the wire it is sent least significant byte first, as
//! the examples of RFC 3720 Appendix B.4 show (32 zero bytes give CRC
//! 0x8a9136aa, sent as `aa 36 91 8a`). The header digest covers the BHS and
//! the AHS; the data digest covers the data segment and its padding.

use crate::pdu::{PduError, DIGEST_LEN};

/// CRC-32C of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// CRC-32C of several consecutive slices, as if they were one.
pub fn crc32c_parts(parts: &[&[u8]]) -> u32 {
    parts.iter().fold(0, |crc, part| crc32c::crc32c_append(crc, part))
}

/// The 4 digest bytes as sent on the wire.
pub fn to_wire(crc: u32) -> [u8; DIGEST_LEN] {
    crc.to_le_bytes()
}

/// The digest value of 4 received bytes; `None` if `bytes` is not 4 long.
pub fn from_wire(bytes: &[u8]) -> Option<u32> {
    <[u8; DIGEST_LEN]>::try_from(bytes).ok().map(u32::from_le_bytes)
}

/// Checks a received header digest over BHS and AHS (RFC 7143 §11.2.4).
/// A mismatch means the header cannot be trusted: at ErrorRecoveryLevel 0
/// the connection is dropped (§7.8.1).
pub fn verify_header_digest(bhs_and_ahs: &[u8], received: &[u8]) -> Result<(), PduError> {
    verify(bhs_and_ahs, received, true)
}

/// Checks a received data digest over the padded data segment (RFC 7143
/// §11.2.4). A mismatch is answered with a Reject, reason "Data (payload)
/// digest error", and the PDU is discarded (§7.8.1).
pub fn verify_data_digest(padded_data: &[u8], received: &[u8]) -> Result<(), PduError> {
    verify(padded_data, received, false)
}

pub(crate) fn verify(covered: &[u8], received: &[u8], header: bool) -> Result<(), PduError> {
    let computed = crc32c(covered);
    // A short digest field is treated as a mismatch with the bytes present.
    let received_value = from_wire(received).unwrap_or(!computed);
    if received_value == computed {
        Ok(())
    } else if header {
        Err(PduError::HeaderDigest { received: received_value, computed })
    } else {
        Err(PduError::DataDigest { received: received_value, computed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 3720 Appendix B.4 test vectors.
    #[test]
    fn rfc3720_b4_vectors() {
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(to_wire(crc32c(&[0u8; 32])), [0xaa, 0x36, 0x91, 0x8a]);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46dd_794e);
        let descending: Vec<u8> = (0..32).rev().collect();
        assert_eq!(crc32c(&descending), 0x113f_db5c);
        // An iSCSI SCSI Read (10) command PDU.
        let read_cmd: [u8; 48] = [
            0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x18, 0x28, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        assert_eq!(crc32c(&read_cmd), 0xd996_3a56);
    }

    #[test]
    fn parts_equal_whole() {
        let whole: Vec<u8> = (0..100).collect();
        assert_eq!(crc32c_parts(&[&whole[..10], &whole[10..77], &whole[77..]]), crc32c(&whole));
    }

    #[test]
    fn verify_reports_kind() {
        let data = [1u8, 2, 3, 4];
        let good = to_wire(crc32c(&data));
        assert!(verify_data_digest(&data, &good).is_ok());
        assert!(matches!(verify_data_digest(&data, &[0, 0, 0, 0]), Err(PduError::DataDigest { .. })));
        assert!(matches!(verify_header_digest(&data, &[0, 0]), Err(PduError::HeaderDigest { .. })));
    }
}

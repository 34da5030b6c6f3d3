//! A bounds-checked view of CDB bytes. Decoders read typed fields through it;
//! a read past the end yields zeros instead of a panic (the opcode table has
//! already checked the length, so this is a second line of defence).

#[derive(Clone, Copy, Debug)]
pub(crate) struct Cdb<'a> {
    bytes: &'a [u8],
}

impl<'a> Cdb<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Cdb<'a> {
        Cdb { bytes }
    }

    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn u8(&self, i: usize) -> u8 {
        self.bytes.get(i).copied().unwrap_or(0)
    }

    pub(crate) fn bit(&self, i: usize, bit: u8) -> bool {
        self.u8(i) & (1 << bit) != 0
    }

    /// `width` bits of byte `i` starting at bit `shift`.
    pub(crate) fn bits(&self, i: usize, shift: u8, width: u8) -> u8 {
        (self.u8(i) >> shift) & ((1u16 << width) - 1) as u8
    }

    fn be<const N: usize>(&self, i: usize) -> u64 {
        (0..N).fold(0u64, |acc, k| (acc << 8) | u64::from(self.u8(i + k)))
    }

    pub(crate) fn be16(&self, i: usize) -> u16 {
        self.be::<2>(i) as u16
    }

    pub(crate) fn be24(&self, i: usize) -> u32 {
        self.be::<3>(i) as u32
    }

    pub(crate) fn be32(&self, i: usize) -> u32 {
        self.be::<4>(i) as u32
    }

    pub(crate) fn be64(&self, i: usize) -> u64 {
        self.be::<8>(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_and_never_panics() {
        let c = Cdb::new(&[0x28, 0b1010_0000, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(c.len(), 10);
        assert_eq!(c.bits(1, 5, 3), 0b101);
        assert!(c.bit(1, 7));
        assert_eq!(c.be16(2), 0x0102);
        assert_eq!(c.be24(2), 0x010203);
        assert_eq!(c.be32(2), 0x01020304);
        assert_eq!(c.be64(2), 0x0102030405060708);
        assert_eq!(c.be64(8), 0x0708_0000_0000_0000);
        assert_eq!(c.u8(100), 0);
    }
}

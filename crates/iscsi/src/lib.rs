//! Lunar layer 5: iSCSI.

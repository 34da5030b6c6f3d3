//! A small iSCSI initiator over a real TCP connection, used only by Lunar's
//! tests and benchmarks (work in progress).

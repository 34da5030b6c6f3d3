//! Lunar layer 4: target core.

//! The CPU emulator backend (being written).

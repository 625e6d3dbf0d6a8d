//! The Worker actor: owns one worker process. (being written)
pub mod process;
pub mod transport;

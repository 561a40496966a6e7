//! The harness of the real-kernel tests (`tests/kernel.rs`).

pub mod netns;
pub mod proxy;

//! dspex: run DSPy programs from Rust over a supervised pool of Python workers.

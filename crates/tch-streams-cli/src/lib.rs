//! Internals of the `tch-streams` command line, shared by the binary and its tests: the benchmark
//! harness ([`bench`]), argument parsing ([`parse`], the engine flags in [`engine_args`]), request inputs ([`inputs`]) and the
//! Open Inference Protocol server ([`serve`]). Not a public API: apps depend on the
//! `tch-streams` library crate, which carries none of this.

pub mod bench;
pub mod engine_args;
pub mod inputs;
pub mod parse;
pub mod serve;

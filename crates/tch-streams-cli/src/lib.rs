//! Internals of the `tch-streams` command line, shared by the binary and its tests: the benchmark
//! harness ([`bench`]), argument parsing ([`parse`]) and request inputs ([`inputs`]). Not a public API: apps depend on the
//! `tch-streams` library crate, which carries none of this.

pub mod bench;
pub mod inputs;
pub mod parse;

//! Internals of the `tch-streams` command line, shared by the binary and its tests: the benchmark
//! harness ([`bench`]) and argument parsing ([`parse`]). Not a public API: apps depend on the
//! `tch-streams` library crate, which carries none of this.

pub mod bench;
pub mod parse;

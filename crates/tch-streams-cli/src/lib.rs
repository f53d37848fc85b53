//! Internals of the `tch-streams` command line, shared by the binary and its tests: the benchmark
//! harness ([`bench`](mod@bench)), argument parsing ([`parse`], the engine flags in [`engine_args`]), request inputs ([`inputs`]), the
//! Open Inference Protocol server ([`serve`]) and the threads its HTTP/2 connections run on
//! ([`conn_threads`]). Not a public API: apps depend on the
//! `tch-streams` library crate, which carries none of this.

pub mod bench;
pub mod conn_threads;
pub mod engine_args;
pub mod inputs;
pub mod parse;
pub mod serve;

// The one line every app that depends on tch-streams adds (see the README, "Use it from your
// crate"): put the libtorch the library linked on this binary's rpath, so that it starts
// without LD_LIBRARY_PATH. Cargo hands it to us as DEP_TCH_STREAMS_LIBTORCH_LIB.
fn main() {
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", std::env::var("DEP_TCH_STREAMS_LIBTORCH_LIB").unwrap());
}

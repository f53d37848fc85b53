//! The binary depends on the `tch-streams` library exactly as an app does, so it needs the one
//! line the library's README asks of every app: put the libtorch it linked on the rpath.
fn main() {
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", std::env::var("DEP_TCH_STREAMS_LIBTORCH_LIB").unwrap());
}

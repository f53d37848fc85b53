//! The binary depends on the `tch-streams` library exactly as an app does, so it needs the one
//! line the library's README asks of every app: put the libtorch it linked on the rpath.
//!
//! It also generates the gRPC server of `tch-streams serve` from `proto/inference.proto`, with
//! a pure-Rust protobuf compiler (protox), so building needs no `protoc`.
fn main() {
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", std::env::var("DEP_TCH_STREAMS_LIBTORCH_LIB").unwrap());
    println!("cargo:rerun-if-changed=proto/inference.proto");
    let descriptors = protox::compile(["proto/inference.proto"], ["proto"]).expect("proto/inference.proto compiles");
    tonic_build::configure()
        .build_client(false)
        .build_server(true)
        // Tensor bytes as `bytes::Bytes`: decoded without a copy per tensor.
        .bytes([".inference.ModelInferRequest.raw_input_contents", ".inference.ModelInferResponse.raw_output_contents"])
        .compile_fds(descriptors)
        .expect("gRPC code generated from proto/inference.proto");
}

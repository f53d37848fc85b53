//! Build script: compiles the C++ shim over libtorch's c10 headers, generates its bindings, links
//! libtorch so that every backend registers, and records *what* it linked against so the
//! runtime verifier can later prove the process loaded that same library.
//!
//! Inputs: `DEP_TCH_LIBTORCH_LIB` (set by torch-sys, a direct dependency) names libtorch's lib dir.
//! Outputs (compile-time env for `src/runtime/build_record.rs`):
//!   TCH_STREAMS_BUILT_LIB_DIR, TCH_STREAMS_BUILT_TORCH_VERSION, TCH_STREAMS_BUILT_CPU_SHA256,
//!   TCH_STREAMS_BUILT_CUDA_SHA256 (empty without libtorch_cuda), TCH_STREAMS_BUILT_PATCH_ID
//!   (empty for a stock libtorch), and `$OUT_DIR/built_libs.rs`: the name and SHA-256 of every
//!   libtorch library in the lib dir (libc10*, libtorch*, libcaffe2*, libshm*).
//! For dependents (`links = "tch_streams"`): `DEP_TCH_STREAMS_LIBTORCH_LIB`, the lib dir, which an
//! app's build script puts on its rpath (link args never reach a dependent's binary).
//!
//! With the `doc-only` feature (docs.rs: no libtorch, no network) nothing is compiled, generated
//! or hashed: see `doc_only` below.
//!
//! Everything this script reads lies inside the crate (`src/shim`, `src/runtime/library_names.rs`)
//! or in the libtorch it links, so it works from the published crate too.
//!
//! libtorch_cuda is deliberately *not* force-linked here: no link flag of ours reaches an app's
//! binary, so the library loads it at run time instead (`runtime::load_backends`), and the crate's
//! own tests go through that same path.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// File written next to `lib/` by scripts/build-libtorch.sh in a patched libtorch prefix.
const PATCH_STAMP: &str = "tch-streams-patch-id";

fn main() {
    println!("cargo:rustc-check-cfg=cfg(tss_cuda_graphs)");
    if std::env::var_os("CARGO_FEATURE_DOC_ONLY").is_some() {
        doc_only();
        return;
    }
    let lib_dir = match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(d) => PathBuf::from(d),
        Err(_) => panic!(
            "torch-sys did not report a libtorch lib dir (DEP_TCH_LIBTORCH_LIB). Run \
             `eval \"$(scripts/setup.sh --print-env)\"` first, or set LIBTORCH to a libtorch 2.11, 2.12 or 2.13 prefix (the one your tch version expects)."
        ),
    };
    let lib_dir = lib_dir.canonicalize().unwrap_or(lib_dir);
    let prefix = lib_dir.parent().map(Path::to_path_buf).unwrap_or_else(|| lib_dir.clone());
    let includes = [prefix.join("include"), prefix.join("include/torch/csrc/api/include")];
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();

    compile_shim(&includes);
    generate_bindings();
    cuda_graphs(&includes, &lib_dir);

    // Libraries: the dylib suffix depends on the target.
    let so = if target_os == "macos" { "dylib" } else { "so" };
    let cpu_lib = lib_dir.join(format!("libtorch_cpu.{so}"));
    let cuda_lib = lib_dir.join(format!("libtorch_cuda.{so}"));
    println!("cargo:rerun-if-changed={}", cpu_lib.display());
    println!("cargo:rerun-if-changed={}", cuda_lib.display());
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");

    // rpath for this package's own tests and benches: the same line every app's build script
    // carries (see the README), since this link arg reaches no dependent.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());

    // The build record.
    let version = read_torch_version(&includes).unwrap_or_else(|| "unknown".into());
    let libs = torch_libraries(&lib_dir);
    let sha_of = |path: &Path| libs.iter().find(|(p, _)| p == path).map(|(_, h)| h.clone());
    let cpu_sha = sha_of(&cpu_lib).unwrap_or_else(|| panic!("{} not found: is this a libtorch lib dir?", cpu_lib.display()));
    let cuda_sha = sha_of(&cuda_lib).unwrap_or_default();
    write_built_libs(&libs);
    let stamp = prefix.join(PATCH_STAMP);
    println!("cargo:rerun-if-changed={}", stamp.display());
    let patch_id = std::fs::read_to_string(&stamp).map(|s| s.trim().to_string()).unwrap_or_default();

    println!("cargo:rustc-env=TCH_STREAMS_BUILT_LIB_DIR={}", lib_dir.display());
    println!("cargo:rustc-env=TCH_STREAMS_BUILT_TORCH_VERSION={version}");
    println!("cargo:rustc-env=TCH_STREAMS_BUILT_CPU_SHA256={cpu_sha}");
    println!("cargo:rustc-env=TCH_STREAMS_BUILT_CUDA_SHA256={cuda_sha}");
    println!("cargo:rustc-env=TCH_STREAMS_BUILT_PATCH_ID={patch_id}");
    // Reaches build scripts of crates that depend on us (DEP_TCH_STREAMS_LIBTORCH_LIB).
    println!("cargo:libtorch_lib={}", lib_dir.display());
}

/// The `doc-only` build: tch and torch-sys (`tch/doc-only`) link no libtorch, so there is no
/// shim to compile, no header of libtorch's to read, and no library to record. `src/ffi.rs`
/// then declares the shim's functions itself instead of bindgen's output, and the build record
/// is empty. Such a build only type-checks and documents: it does not link.
fn doc_only() {
    write_built_libs(&[]);
    for key in ["LIB_DIR", "TORCH_VERSION", "CPU_SHA256", "CUDA_SHA256", "PATCH_ID"] {
        println!("cargo:rustc-env=TCH_STREAMS_BUILT_{key}=");
    }
}

// The rule the runtime verifier uses too.
include!("src/runtime/library_names.rs");

/// Every libtorch library in `lib_dir` (regular files and links to them), with its SHA-256,
/// sorted by name.
fn torch_libraries(lib_dir: &Path) -> Vec<(PathBuf, String)> {
    let entries = std::fs::read_dir(lib_dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", lib_dir.display()));
    let mut libs: Vec<(PathBuf, String)> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(is_torch_library))
        .map(|p| {
            println!("cargo:rerun-if-changed={}", p.display());
            let sha = sha256_file(&p).unwrap_or_else(|e| panic!("cannot hash {}: {e}", p.display()));
            (p, sha)
        })
        .collect();
    libs.sort();
    libs
}

/// `$OUT_DIR/built_libs.rs`: `BUILT_LIBS`, the (file name, SHA-256) pairs of the build record.
fn write_built_libs(libs: &[(PathBuf, String)]) {
    let mut text = String::from("/// (file name, SHA-256) of every libtorch library in the lib dir the build linked.\n");
    text.push_str("pub(crate) const BUILT_LIBS: &[(&str, &str)] = &[\n");
    for (path, sha) in libs {
        let name = path.file_name().and_then(|n| n.to_str()).expect("utf-8 library name");
        text.push_str(&format!("    ({name:?}, {sha:?}),\n"));
    }
    text.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("built_libs.rs");
    std::fs::write(out, text).expect("write built_libs.rs");
}

fn compile_shim(includes: &[PathBuf]) {
    let sources: Vec<PathBuf> = std::fs::read_dir("src/shim")
        .expect("src/shim exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cpp"))
        .collect();
    println!("cargo:rerun-if-changed=src/shim");
    println!("cargo:rerun-if-changed=src/runtime/library_names.rs");
    for p in &sources {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let mut build = cc::Build::new();
    build.cpp(true).pic(true).flag("-std=c++17").flag("-D_GLIBCXX_USE_CXX11_ABI=1").warnings(true);
    for inc in includes {
        // -isystem: libtorch's own headers are not ours to warn about.
        build.flag("-isystem").flag(inc.to_str().expect("utf-8 include path"));
    }
    build.files(&sources).compile("tch_streams_shim");
}

/// CUDA graphs are compiled in whenever they can be: the linked libtorch is a CUDA build
/// (libc10_cuda beside libtorch_cpu) and the CUDA headers are found, in PyPI's nvidia packages
/// beside torch (`site-packages/nvidia/cu13/include`, which `scripts/setup.sh` installs with
/// torch's CUDA build), under `CUDA_HOME`, or at `CUDA_INCLUDE_DIR`. Then the crate is built with
/// `cfg(tss_cuda_graphs)` and the engine can use graphs by default.
///
/// `TCH_STREAMS_CUDA_GRAPHS=0` opts out. The `cuda-graphs` feature makes them mandatory: the
/// build fails, saying what is missing, instead of leaving them out.
fn cuda_graphs(includes: &[PathBuf], lib_dir: &Path) {
    println!("cargo:rerun-if-env-changed=TCH_STREAMS_CUDA_GRAPHS");
    println!("cargo:rerun-if-env-changed=CUDA_INCLUDE_DIR");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let required = std::env::var_os("CARGO_FEATURE_CUDA_GRAPHS").is_some();
    if std::env::var("TCH_STREAMS_CUDA_GRAPHS").is_ok_and(|v| v == "0") {
        if required {
            panic!("TCH_STREAMS_CUDA_GRAPHS=0 opts out of CUDA graphs, but the `cuda-graphs` feature requires them; drop one of the two");
        }
        println!("cargo:warning=CUDA graphs left out (TCH_STREAMS_CUDA_GRAPHS=0)");
        return;
    }
    let has_cuda_lib = ["so", "dylib"].iter().any(|so| lib_dir.join(format!("libc10_cuda.{so}")).exists());
    let site = lib_dir.parent().and_then(Path::parent);
    let mut candidates: Vec<PathBuf> = std::env::var_os("CUDA_INCLUDE_DIR").map(PathBuf::from).into_iter().collect();
    if let Some(home) = std::env::var_os("CUDA_HOME") {
        candidates.push(PathBuf::from(home).join("include"));
    }
    if let Some(site) = site {
        for v in ["cu13", "cu12", "cuda_runtime"] {
            candidates.push(site.join("nvidia").join(v).join("include"));
        }
    }
    // crt/host_config.h comes with nvcc's headers (PyPI nvidia-cuda-crt), which cuda_runtime_api.h
    // alone does not carry on CUDA 13.
    let cuda_inc = candidates
        .into_iter()
        .find(|p| p.join("cuda_runtime_api.h").exists() && p.join("crt/host_config.h").exists());
    let cuda_inc = match (has_cuda_lib, cuda_inc) {
        (true, Some(inc)) => inc,
        (has_lib, _) => {
            let why = if !has_lib {
                format!("the linked libtorch ({}) is not a CUDA build (no libc10_cuda)", lib_dir.display())
            } else {
                "the CUDA headers (cuda_runtime_api.h and crt/host_config.h) were not found: run scripts/setup.sh \
                 (it installs PyPI nvidia-cuda-crt beside torch), or set CUDA_INCLUDE_DIR"
                    .to_string()
            };
            if required {
                panic!("the cuda-graphs feature requires CUDA graphs, but {why}");
            }
            if has_lib {
                println!("cargo:warning=CUDA graphs left out: {why}");
            }
            return;
        }
    };
    println!("cargo:rustc-cfg=tss_cuda_graphs");
    println!("cargo:rerun-if-changed=src/shim/cuda");
    let mut build = cc::Build::new();
    build.cpp(true).pic(true).flag("-std=c++17").flag("-D_GLIBCXX_USE_CXX11_ABI=1").warnings(true);
    for inc in includes.iter().chain(std::iter::once(&cuda_inc)) {
        build.flag("-isystem").flag(inc.to_str().expect("utf-8 include path"));
    }
    build.file("src/shim/cuda/graph.cpp").compile("tch_streams_graph_shim");
    // blas.cpp reads ATen/cuda/CUDAContextLight.h with our stand-ins for the cuBLAS, cuSPARSE and
    // cuSOLVER headers (src/shim/cuda/handles: -I is searched before -isystem), which give it the
    // handle types it needs without the half-precision headers behind the real ones.
    let mut blas = cc::Build::new();
    blas.cpp(true).pic(true).flag("-std=c++17").flag("-D_GLIBCXX_USE_CXX11_ABI=1").warnings(true).include("src/shim/cuda/handles");
    for inc in includes.iter().chain(std::iter::once(&cuda_inc)) {
        blas.flag("-isystem").flag(inc.to_str().expect("utf-8 include path"));
    }
    blas.file("src/shim/cuda/blas.cpp").compile("tch_streams_blas_shim");
    println!("cargo:rustc-link-lib=c10_cuda");
    // One bindings file per header: `ffi::graph` and `ffi::blas`.
    for (header, functions, types, file) in [
        ("src/shim/cuda/tss_graph.h", "tss_graph_.*", Some("TssGraph"), "ffi_graph.rs"),
        ("src/shim/cuda/tss_blas.h", "tss_cuda_.*", None, "ffi_blas.rs"),
    ] {
        let mut builder = bindgen::Builder::default().header(header).allowlist_function(functions).layout_tests(false);
        if let Some(types) = types {
            builder = builder.allowlist_type(types);
        }
        let bindings = builder
            .generate()
            .unwrap_or_else(|e| panic!("bindgen failed on {header}: {e}"));
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join(file);
        bindings.write_to_file(out).unwrap_or_else(|e| panic!("write {file}: {e}"));
    }
}

fn generate_bindings() {
    let header = "src/shim/tss_shim.h";
    println!("cargo:rerun-if-changed={header}");
    let bindings = bindgen::Builder::default()
        .header(header)
        .allowlist_function("tss_.*")
        .allowlist_type("Tss.*")
        .rustified_enum("TssStatus")
        .derive_debug(true)
        .derive_default(true)
        .derive_eq(true)
        .layout_tests(false)
        .generate()
        .expect("bindgen failed on src/shim/tss_shim.h (is libclang installed? scripts/setup.sh installs it)");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("ffi.rs");
    bindings.write_to_file(out).expect("write bindings");
}

/// `TORCH_VERSION` from the headers the shim compiles against.
fn read_torch_version(includes: &[PathBuf]) -> Option<String> {
    let candidates = [
        includes[0].join("torch/headeronly/version.h"),
        includes[1].join("torch/version.h"),
    ];
    for path in candidates {
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        // The macro may wrap onto the next line: take the first quoted string after its name.
        if let Some(pos) = text.find("#define TORCH_VERSION \\").or_else(|| text.find("#define TORCH_VERSION ")) {
            let rest = &text[pos..];
            if let Some(start) = rest.find('"') {
                if let Some(len) = rest[start + 1..].find('"') {
                    return Some(rest[start + 1..start + 1 + len].to_string());
                }
            }
        }
    }
    None
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

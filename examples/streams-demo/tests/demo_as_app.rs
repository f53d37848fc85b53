//! The streams demo as a user meets it: started with no LD_LIBRARY_PATH, producer and consumer
//! threads on pool streams, every value checked. `TCH_STREAMS_EXAMPLES_DIR` overrides where the
//! binary is (on another machine).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::Duration;

fn run(args: &[&str]) -> Output {
    let bin = match std::env::var_os("TCH_STREAMS_EXAMPLES_DIR") {
        Some(d) => Path::new(&d).join("streams-demo"),
        None => PathBuf::from(env!("CARGO_BIN_EXE_streams-demo")),
    };
    let mut cmd = Command::new(bin);
    cmd.args(args).env_remove("LD_LIBRARY_PATH").env_remove("LD_PRELOAD").env_remove("TCH_STREAMS_ALLOW_MISMATCH");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(cmd.output());
    });
    rx.recv_timeout(Duration::from_secs(300)).expect("the demo finished within 300 s").expect("the demo started")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn producers_and_consumers_hand_tensors_over_through_events_on_cpu() {
    let out = run(&["--device", "cpu", "--pairs", "3", "--rounds", "10"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("values right: 30/30"), "{all}");
    // CPU has one stream (id 0) by design: every thread reports it.
    assert!(all.contains("6 thread(s) on 1 distinct stream(s)"), "{all}");
}

#[test]
fn bad_arguments_are_refused_with_a_message() {
    let out = run(&["--pairs", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("--pairs: expected 1..=64"), "{}", text(&out));
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn on_cuda_every_thread_owns_a_distinct_pool_stream() {
    let out = run(&["--device", "cuda:0", "--pairs", "4", "--rounds", "50"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("cuda registered: yes"), "{all}");
    assert!(all.contains("8 thread(s) on 8 distinct stream(s)"), "{all}");
    assert!(all.contains("values right: 200/200"), "{all}");
}

//! One gRPC (HTTP/2) connection carrying many requests, the way tritonclient and perf_analyzer
//! use it: a request held open does not hold back another on the same connection, and answers
//! that are ready together leave the server in one write instead of one write each. Every read
//! and call is bounded (a watchdog), and no assertion depends on how fast anything ran.

mod serve_common;

use serve_common::{good_mlp_grpc, grpc_frame, Grpc, Served};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn a_request_held_open_does_not_hold_back_the_others_on_its_connection() {
    let server = Served::start(&["--builtin", "small-mlp"]);
    let g = Grpc::connect(&server.grpc);
    let whole = grpc_frame(&prost::Message::encode_to_vec(&good_mlp_grpc()));
    // First stream: the prefix and part of the message, then nothing (its handler waits).
    let (mut held, answer) = g.stall(whole[..100].to_vec(), LIMIT).expect("a stalled stream");
    // Others on the same connection are answered meanwhile: health and whole inferences.
    for _ in 0..3 {
        let live = g.call_raw("ServerLive", grpc_frame(&[]), &[], LIMIT).expect("ServerLive while a request is held");
        assert_eq!((live.code, live.body.as_slice()), (Some(0), &[0x08, 0x01][..]), "live: true");
        let r = g.call("ModelInfer", &good_mlp_grpc(), LIMIT).expect("ModelInfer while a request is held");
        assert_eq!(r.code, Some(0), "{}", r.message);
        let m: tch_streams_cli::serve::grpc::pb::ModelInferResponse = prost::Message::decode(r.body.as_slice()).expect("a ModelInferResponse");
        assert_eq!(m.model_name, "small-mlp");
        assert_eq!(m.raw_output_contents.len(), 1);
    }
    // The held request, completed, is answered too.
    held.send_data(bytes::Bytes::copy_from_slice(&whole[100..]), true).expect("the rest of the message");
    assert_eq!(g.answer_of(answer, LIMIT), Ok(Some(0)));
}

// --- A minimal HTTP/2 client on a blocking socket: frames as they come off the wire. ---

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let n = payload.len() as u32;
    let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A header block of literal fields, never indexed or Huffman-coded (names and values < 127 bytes).
fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (k, v) in fields {
        b.push(0x00);
        b.push(k.len() as u8);
        b.extend_from_slice(k.as_bytes());
        b.push(v.len() as u8);
        b.extend_from_slice(v.as_bytes());
    }
    b
}

/// Frames read off the socket: kind, flags, stream, payload.
type Frame = (u8, u8, u32, Vec<u8>);

/// Whole frames at the front of `buf` (removed from it).
fn split_frames(buf: &mut Vec<u8>) -> Vec<Frame> {
    let mut out = Vec::new();
    loop {
        if buf.len() < 9 {
            return out;
        }
        let n = (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
        if buf.len() < 9 + n {
            return out;
        }
        let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
        out.push((buf[3], buf[4], stream, buf[9..9 + n].to_vec()));
        buf.drain(..9 + n);
    }
}

/// Reads until `done` says so; returns the frames and how many reads brought bytes.
fn read_until(tcp: &mut TcpStream, buf: &mut Vec<u8>, mut done: impl FnMut(&Frame) -> bool) -> (Vec<Frame>, usize) {
    let (mut frames, mut reads) = (Vec::new(), 0);
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let n = tcp.read(&mut chunk).expect("a read within the watchdog");
        assert!(n > 0, "the server closed the connection; frames so far: {frames:?}");
        reads += 1;
        buf.extend_from_slice(&chunk[..n]);
        for f in split_frames(buf) {
            let stop = done(&f);
            frames.push(f);
            if stop {
                return (frames, reads);
            }
        }
    }
}

#[test]
fn answers_ready_together_leave_in_one_write() {
    // One runtime thread: the order tasks run in is fixed, so "ready together" is exact.
    let server = Served::start(&["--builtin", "small-mlp", "--io-threads", "1"]);
    let mut tcp = TcpStream::connect(&server.grpc).expect("connect");
    tcp.set_read_timeout(Some(LIMIT)).unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    // Handshake; then a PING whose answer comes after everything the handshake made the server
    // write: the connection is quiet from then on.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    tcp.write_all(&hello).unwrap();
    read_until(&mut tcp, &mut buf, |f| f.0 == SETTINGS && f.1 & ACK == 0);
    let mut sync = frame(SETTINGS, ACK, 0, &[]);
    sync.extend(frame(PING, 0, 0, b"quiet..."));
    tcp.write_all(&sync).unwrap();
    read_until(&mut tcp, &mut buf, |f| f.0 == PING && f.1 & ACK != 0);
    assert!(buf.is_empty(), "nothing after the PING's answer");

    // Eight ServerLive calls in one write: eight streams the server reads at once.
    let block = header_block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/inference.GRPCInferenceService/ServerLive"),
        (":authority", "test"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]);
    let streams: Vec<u32> = (0..8).map(|i| 1 + 2 * i).collect();
    let mut calls = Vec::new();
    for &s in &streams {
        calls.extend(frame(HEADERS, END_HEADERS, s, &block));
        calls.extend(frame(DATA, END_STREAM, s, &grpc_frame(&[])));
    }
    tcp.write_all(&calls).unwrap();
    let mut ended = 0;
    let (frames, reads) = read_until(&mut tcp, &mut buf, |f| {
        ended += usize::from(f.0 == HEADERS && f.1 & END_STREAM != 0);
        ended == streams.len()
    });
    // Every stream has its answer: headers, the message `live: true`, trailers.
    let mut per_stream: BTreeMap<u32, Vec<(u8, Vec<u8>)>> = BTreeMap::new();
    for (kind, flags, stream, payload) in frames {
        per_stream.entry(stream).or_default().push((kind, if kind == DATA { payload } else { vec![flags & END_STREAM] }));
    }
    assert_eq!(per_stream.keys().copied().collect::<Vec<_>>(), streams);
    for (s, fs) in &per_stream {
        assert_eq!(fs, &vec![(HEADERS, vec![0]), (DATA, vec![0, 0, 0, 0, 2, 0x08, 0x01]), (HEADERS, vec![END_STREAM])], "stream {s}");
    }
    // And they came in one write: the first read after the calls held all eight.
    assert_eq!(reads, 1, "answers ready together were written separately");
    assert!(buf.is_empty());
}

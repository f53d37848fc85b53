//! The CLI's device and shape parsing, fuzzed: it never panics, and every error explains.

use proptest::prelude::*;
use tch::Device;
use tch_streams_cli::parse::{parse_devices, parse_shape};

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn device_parsing_never_panics_and_explains(s in ".{0,40}") {
        match parse_devices(&s) {
            Ok(devs) => prop_assert!(!devs.is_empty()),
            Err(msg) => prop_assert!(msg.contains("expected"), "unhelpful message {msg:?}"),
        }
    }

    #[test]
    fn well_formed_device_lists_parse(idx in proptest::collection::vec(0u8..=255, 1..5)) {
        let s = idx.iter().map(|i| format!("cuda:{i}")).collect::<Vec<_>>().join(",");
        let want: Vec<Device> = idx.iter().map(|&i| Device::Cuda(i as usize)).collect();
        prop_assert_eq!(parse_devices(&s).unwrap(), want);
    }

    #[test]
    fn shape_parsing_never_panics_and_explains(s in "[0-9xX, a-z-]{0,30}") {
        match parse_shape(&s) {
            Ok(dims) => prop_assert!(!dims.is_empty() && dims.iter().all(|&d| d >= 1)),
            Err(msg) => prop_assert!(msg.contains("bad"), "unhelpful message {msg:?}"),
        }
    }

    #[test]
    fn well_formed_shapes_round_trip(dims in proptest::collection::vec(1i64..5000, 1..8)) {
        let s = dims.iter().map(i64::to_string).collect::<Vec<_>>().join("x");
        prop_assert_eq!(parse_shape(&s).unwrap(), dims);
    }

}

//! Models with several inputs, any dtype, and tuple/dict outputs, served by the engine on CPU.
//! The TorchScript fixtures come from `scripts/fixtures/make_models.py`, run by the `python3` on
//! PATH (the venv `scripts/setup.sh --print-env` puts first), so they match the linked libtorch.
//! Every test runs under a watchdog and checks submitted = completed + failed.

mod common;

use common::{accounted, watchdog};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tch::{Device, Kind, Tensor};
use tch_streams::engine::{Batching, Engine, EngineError, InputSpec, Output, Replicas};
use tch_streams::models::{Forward, ForwardError, Model, Outputs};

const L: i64 = 16;

fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("TCH_STREAMS_FIXTURES") {
            return PathBuf::from(d);
        }
        let dir = std::env::temp_dir().join(format!("tch-streams-fixtures-{}", std::process::id()));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fixtures/make_models.py");
        let out = std::process::Command::new("python3").arg(&script).arg(&dir).output().expect("python3 on PATH");
        assert!(out.status.success(), "fixture script failed: {}", String::from_utf8_lossy(&out.stderr));
        dir
    })
}

fn model(name: &str) -> Model {
    Model::TorchScript(fixtures().join(name))
}


fn two_input_specs() -> Vec<InputSpec> {
    vec![InputSpec::new([L], Kind::Int64), InputSpec::new([L], Kind::Float)]
}

/// Request `r` of client `c`: 1 to 3 samples of ids in 0..100 and a 0/1 mask.
fn two_input_request(c: i64, r: i64) -> Vec<Tensor> {
    let rows = 1 + (c + r) % 3;
    let n = rows * L;
    let ids = Tensor::arange(n, (Kind::Int64, Device::Cpu)).f_mul_scalar(7 + c).unwrap().f_add_scalar(r).unwrap().remainder(100).reshape([rows, L]);
    let mask = Tensor::arange(n, (Kind::Int64, Device::Cpu)).f_add_scalar(c * 3 + r).unwrap().remainder(3).ne(0).to_kind(Kind::Float).reshape([rows, L]);
    vec![ids, mask]
}

fn same_bits(a: &Outputs, b: &Outputs) -> bool {
    a.describe() == b.describe() && a.tensors().iter().zip(b.tensors()).all(|(x, y)| x.size() == y.size() && x.kind() == y.kind() && x.equal(y))
}

/// Request `r` of client `c` for a one-input `[N, 8]` fixture of dtype `kind`: 1 to 3 samples.
fn one_input_request(c: i64, r: i64, kind: Kind) -> Vec<Tensor> {
    let rows = 1 + (c * 7 + r) % 3;
    vec![Tensor::arange(rows * 8, (Kind::Float, Device::Cpu)).f_add_scalar((c * 1000 + r) as f64 * 0.25).unwrap().reshape([rows, 8]).to_kind(kind)]
}

#[test]
fn tuple_dict_and_float16_models_match_running_alone_in_every_mode_under_31_clients() {
    type Make = fn(i64, i64) -> Vec<Tensor>;
    let cases: [(&str, Vec<InputSpec>, Make, &str); 3] = [
        ("two_inputs.pt", two_input_specs(), two_input_request, "a tuple of 2 tensors"),
        ("dict_out.pt", vec![InputSpec::new([8], Kind::Float)], |c, r| one_input_request(c, r, Kind::Float), "a dict of 2 tensors (double, shifted)"),
        ("half.pt", vec![InputSpec::new([8], Kind::Half)], |c, r| one_input_request(c, r, Kind::Half), "one tensor"),
    ];
    for (file, specs, make, structure) in cases {
        watchdog(600, move || {
            let reference = model(file).instantiate(Device::Cpu).unwrap();
            let modes = [
                (Batching::Off, Replicas::Shared),
                (Batching::Off, Replicas::PerWorker),
                (Batching::Dynamic { max_batch: 32, max_wait: Duration::from_millis(2) }, Replicas::Shared),
                (Batching::Dynamic { max_batch: 32, max_wait: Duration::from_millis(2) }, Replicas::PerWorker),
            ];
            for (batching, replicas) in modes {
                let engine = Arc::new(
                    Engine::builder(model(file))
                        .devices(vec![Device::Cpu])
                        .workers(4)
                        .batching(batching)
                        .replicas(replicas)
                        .inputs(specs.clone())
                        .output(Output::Cpu)
                        .build()
                        .unwrap(),
                );
                let clients: Vec<_> = (0..31)
                    .map(|c| {
                        let (engine, reference) = (Arc::clone(&engine), Arc::clone(&reference));
                        std::thread::spawn(move || {
                            let _ng = tch::no_grad_guard();
                            let tickets: Vec<_> = (0..100).map(|r| engine.submit(make(c, r))).collect();
                            for (r, t) in tickets.into_iter().enumerate() {
                                let got = t.wait_outputs().unwrap_or_else(|e| panic!("{file} {batching:?} {replicas:?} client {c} request {r}: {e}"));
                                let alone = reference.run(&make(c, r as i64)).unwrap();
                                assert_eq!(got.describe(), structure);
                                assert!(same_bits(&got, &alone), "{file} {batching:?} {replicas:?} client {c} request {r}: {got} vs alone {alone}");
                            }
                        })
                    })
                    .collect();
                for c in clients {
                    c.join().unwrap();
                }
                engine.shutdown();
                let st = engine.stats();
                accounted(&st);
                assert_eq!((st.completed, st.failed), (3100, 0), "{file} {batching:?} {replicas:?}");
                if let Batching::Dynamic { .. } = batching {
                    assert!(st.batch_sizes.keys().any(|&k| k > 1), "{file}: no batch formed: {:?}", st.batch_sizes);
                }
            }
        });
    }
}

#[test]
fn a_dict_output_keeps_its_names_order_and_each_requests_rows() {
    watchdog(120, || {
        let engine = Arc::new(
            Engine::builder(model("dict_out.pt"))
                .devices(vec![Device::Cpu])
                .workers(2)
                .batching(Batching::Dynamic { max_batch: 16, max_wait: Duration::from_millis(2) })
                .inputs(vec![InputSpec::new([8], Kind::Float)])
                .build()
                .unwrap(),
        );
        let clients: Vec<_> = (0..8)
            .map(|c| {
                let engine = Arc::clone(&engine);
                std::thread::spawn(move || {
                    let xs: Vec<Tensor> = (0..20).map(|r| Tensor::full([1 + r % 2, 8], (c * 100 + r) as f64, (Kind::Float, Device::Cpu))).collect();
                    let tickets: Vec<_> = xs.iter().map(|x| engine.submit(x.shallow_clone())).collect();
                    for (x, t) in xs.iter().zip(tickets) {
                        match t.wait_outputs().unwrap() {
                            Outputs::Dict(v) => {
                                let names: Vec<&str> = v.iter().map(|(k, _)| k.as_str()).collect();
                                assert_eq!(names, ["double", "shifted"]);
                                assert!(v[0].1.equal(&(x * 2)), "double");
                                assert!(v[1].1.equal(&(x + 1)), "shifted");
                            }
                            other => panic!("expected a dict, got {other}"),
                        }
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        engine.shutdown();
        let st = engine.stats();
        accounted(&st);
        assert_eq!((st.completed, st.failed), (160, 0));
    });
}

#[test]
fn a_float16_model_keeps_its_dtype_and_refuses_float32_by_name() {
    watchdog(120, || {
        let engine = Engine::builder(model("half.pt"))
            .devices(vec![Device::Cpu])
            .workers(2)
            .batching(Batching::Dynamic { max_batch: 8, max_wait: Duration::from_millis(1) })
            .inputs(vec![InputSpec::new([8], Kind::Half)])
            .build()
            .unwrap();
        let x = Tensor::arange(16, (Kind::Float, Device::Cpu)).reshape([2, 8]).to_kind(Kind::Half);
        let y = engine.infer(x.shallow_clone()).unwrap();
        assert_eq!(y.kind(), Kind::Half);
        assert!(y.equal(&(&x * 2 + 1)));
        let err = engine.infer(Tensor::zeros([1, 8], (Kind::Float, Device::Cpu))).unwrap_err();
        assert!(matches!(&err, EngineError::InvalidInput(m) if m.contains("wrong dtype: expected Half, got Float")), "{err}");
        engine.shutdown();
        let st = engine.stats();
        accounted(&st);
        assert_eq!((st.completed, st.failed), (1, 1));
    });
}

fn three_input_engine() -> Engine {
    let m = Model::closure_many(|xs: &[Tensor]| -> Result<Outputs, tch::TchError> { Ok(Outputs::Tensor(xs[0].f_add(&xs[1])?.f_add(&xs[2])?)) });
    Engine::builder(m).devices(vec![Device::Cpu]).workers(1).inputs(vec![InputSpec::new([4], Kind::Float); 3]).build().unwrap()
}

#[test]
fn wrong_dtype_on_input_2_is_an_error_naming_input_2() {
    watchdog(60, || {
        let engine = three_input_engine();
        let f = || Tensor::ones([1, 4], (Kind::Float, Device::Cpu));
        let err = engine.infer(vec![f(), f(), Tensor::ones([1, 4], (Kind::Int64, Device::Cpu))]).unwrap_err();
        match &err {
            EngineError::InvalidInput(m) => assert!(m.starts_with("input 2: wrong dtype: expected Float, got Int64"), "{m}"),
            other => panic!("expected InvalidInput, got {other:?}"),
        }
        // Shape errors name the input too, with expected versus actual.
        let err = engine.infer(vec![f(), Tensor::ones([1, 5], (Kind::Float, Device::Cpu)), f()]).unwrap_err();
        assert_eq!(err.to_string(), "invalid input: input 1: wrong shape: expected [batch, 4], got [1, 5]");
        // The right inputs are served.
        assert_eq!(engine.infer(vec![f(), f(), f()]).unwrap().sum(Kind::Float).double_value(&[]), 12.0);
        engine.shutdown();
        let st = engine.stats();
        accounted(&st);
        assert_eq!((st.completed, st.failed), (1, 2));
    });
}

#[test]
fn differing_batch_sizes_and_a_wrong_input_count_are_refused() {
    watchdog(60, || {
        let engine = three_input_engine();
        let t = |rows: i64| Tensor::ones([rows, 4], (Kind::Float, Device::Cpu));
        let err = engine.infer(vec![t(2), t(3), t(2)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid input: input 1 has 3 sample(s) along dim 0 but input 0 has 2: every input of a request carries the same samples"
        );
        let err = engine.infer(vec![t(1), t(1)]).unwrap_err();
        assert_eq!(err.to_string(), "invalid input: expected 3 input(s), got 2");
        let err = engine.try_submit(Vec::<Tensor>::new()).err().unwrap();
        assert!(err.to_string().contains("at least one input"), "{err}");
        engine.shutdown();
        accounted(&engine.stats());
    });
}

#[test]
fn a_model_returning_a_scalar_fails_each_request_with_a_clear_error() {
    watchdog(60, || {
        let engine = Arc::new(
            Engine::builder(model("scalar.pt"))
                .devices(vec![Device::Cpu])
                .workers(2)
                .batching(Batching::Dynamic { max_batch: 8, max_wait: Duration::from_millis(1) })
                .inputs(vec![InputSpec::new([8], Kind::Float)])
                .build()
                .unwrap(),
        );
        let tickets: Vec<_> = (0..20).map(|_| engine.submit(Tensor::ones([1, 8], (Kind::Float, Device::Cpu)))).collect();
        for t in tickets {
            match t.wait_outputs() {
                Err(EngineError::Output(m)) => {
                    assert!(m.contains("output 0 has shape []") && m.contains("dim 0"), "{m}");
                }
                other => panic!("expected an Output error, got {other:?}"),
            }
        }
        engine.shutdown();
        let st = engine.stats();
        accounted(&st);
        assert_eq!((st.completed, st.failed), (0, 20));
    });
}

#[test]
fn a_batch_mixing_model_is_refused_for_batching_and_served_without() {
    watchdog(60, || {
        let err = Engine::builder(model("mixing.pt"))
            .devices(vec![Device::Cpu])
            .batching(Batching::Dynamic { max_batch: 8, max_wait: Duration::from_millis(1) })
            .inputs(vec![InputSpec::new([8], Kind::Float)])
            .build()
            .err()
            .expect("refused");
        assert!(matches!(&err, EngineError::Build(m) if m.contains("mixes samples across the batch") && m.contains("Batching::Off")), "{err}");
        // Without batching each request is its own batch: x - x.mean(0) of one sample is zero.
        let engine = Engine::builder(model("mixing.pt")).devices(vec![Device::Cpu]).inputs(vec![InputSpec::new([8], Kind::Float)]).build().unwrap();
        let y = engine.infer(Tensor::arange(8, (Kind::Float, Device::Cpu)).reshape([1, 8])).unwrap();
        assert_eq!(y.abs().sum(Kind::Float).double_value(&[]), 0.0);
        engine.shutdown();
        accounted(&engine.stats());
    });
}

#[test]
fn asking_one_tensor_of_a_tuple_model_says_to_read_its_outputs() {
    watchdog(60, || {
        let engine = Engine::builder(model("two_inputs.pt")).devices(vec![Device::Cpu]).workers(1).inputs(two_input_specs()).build().unwrap();
        let err = engine.infer(two_input_request(0, 0)).unwrap_err();
        assert!(matches!(&err, EngineError::Output(m) if m.contains("a tuple of 2 tensors") && m.contains("wait_outputs")), "{err}");
        let out = engine.submit(two_input_request(0, 0)).outputs().wait().unwrap();
        assert_eq!(out.len(), 2);
        engine.shutdown();
        accounted(&engine.stats());
    });
}

struct Doubler;

impl Forward for Doubler {
    fn run(&self, inputs: &[Tensor]) -> Result<Outputs, ForwardError> {
        Ok(Outputs::List(vec![inputs[0].f_mul_scalar(2.0)?, inputs[0].f_mul_scalar(3.0)?]))
    }
}

#[test]
fn an_app_loaded_module_and_an_app_instance_are_served_as_they_are() {
    watchdog(60, || {
        let module = tch::CModule::load_on_device(fixtures().join("dict_out.pt"), Device::Cpu).unwrap();
        let engine = Engine::builder(Model::from(module)).devices(vec![Device::Cpu]).workers(2).inputs(vec![InputSpec::new([8], Kind::Float)]).build().unwrap();
        let x = Tensor::ones([3, 8], (Kind::Float, Device::Cpu));
        let out = engine.infer_outputs(x.shallow_clone()).unwrap();
        assert!(out.get("shifted").unwrap().equal(&(&x + 1)));
        engine.shutdown();
        accounted(&engine.stats());

        let engine = Engine::builder(Model::instance(Arc::new(Doubler))).devices(vec![Device::Cpu]).workers(2).replicas(Replicas::PerWorker).build().unwrap();
        match engine.infer_outputs(x.shallow_clone()).unwrap() {
            Outputs::List(v) => {
                assert!(v[0].equal(&(&x * 2)) && v[1].equal(&(&x * 3)));
            }
            other => panic!("expected a list, got {other}"),
        }
        engine.shutdown();
        accounted(&engine.stats());
    });
}

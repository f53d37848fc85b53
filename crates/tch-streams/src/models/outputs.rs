//! [`Outputs`]: what a model returns, in the model's own structure (one tensor, a tuple or list
//! of tensors, or a dict of named tensors), and [`Inputs`]: the positional tensors of a request.

use super::ForwardError;
use std::fmt;
use tch::{IValue, Tensor};

/// A model's answer, in the structure the model returned it. The engine splits every tensor in
/// it along dim 0, so each request gets the same structure with its own rows.
///
/// ```
/// use tch_streams::models::Outputs;
/// let t = || tch::Tensor::zeros([2, 3], (tch::Kind::Float, tch::Device::Cpu));
/// let out = Outputs::Dict(vec![("logits".into(), t()), ("hidden".into(), t())]);
/// assert_eq!(out.len(), 2);
/// assert_eq!(out.get("logits").unwrap().size(), vec![2, 3]);
/// assert!(Outputs::Tensor(t()).into_tensor().is_ok());
/// assert!(out.into_tensor().unwrap_err().to_string().contains("dict of 2"));
/// ```
#[derive(Debug, PartialEq)]
pub enum Outputs {
    /// One tensor.
    Tensor(Tensor),
    /// A tuple of tensors, in order.
    Tuple(Vec<Tensor>),
    /// A list of tensors, in order.
    List(Vec<Tensor>),
    /// Named tensors, in the model's order.
    Dict(Vec<(String, Tensor)>),
}

impl Outputs {
    /// Every tensor, in order (a dict in its own order).
    pub fn tensors(&self) -> Vec<&Tensor> {
        match self {
            Outputs::Tensor(t) => vec![t],
            Outputs::Tuple(v) | Outputs::List(v) => v.iter().collect(),
            Outputs::Dict(v) => v.iter().map(|(_, t)| t).collect(),
        }
    }

    /// How many tensors it holds.
    pub fn len(&self) -> usize {
        match self {
            Outputs::Tensor(_) => 1,
            Outputs::Tuple(v) | Outputs::List(v) => v.len(),
            Outputs::Dict(v) => v.len(),
        }
    }

    /// Whether it holds no tensor (an empty tuple, list or dict).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A dict entry by name.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        match self {
            Outputs::Dict(v) => v.iter().find(|(k, _)| k == name).map(|(_, t)| t),
            _ => None,
        }
    }

    /// Names of the tensors, for messages: `output 0`, `output 1`, … or the dict's keys.
    pub fn names(&self) -> Vec<String> {
        match self {
            Outputs::Dict(v) => v.iter().map(|(k, _)| format!("output {k:?}")).collect(),
            _ => (0..self.len()).map(|i| format!("output {i}")).collect(),
        }
    }

    /// The single tensor of a one-tensor answer; anything else is an error that says what the
    /// model returned.
    pub fn into_tensor(self) -> Result<Tensor, ForwardError> {
        match self {
            Outputs::Tensor(t) => Ok(t),
            other => Err(ForwardError::Structure(format!(
                "expected one tensor, but the model returned {}; read it with wait_outputs()/infer_outputs()",
                other.describe()
            ))),
        }
    }

    /// The same structure with every tensor replaced by `f(tensor)`.
    pub fn try_map<E>(self, mut f: impl FnMut(Tensor) -> Result<Tensor, E>) -> Result<Outputs, E> {
        Ok(match self {
            Outputs::Tensor(t) => Outputs::Tensor(f(t)?),
            Outputs::Tuple(v) => Outputs::Tuple(v.into_iter().map(f).collect::<Result<_, _>>()?),
            Outputs::List(v) => Outputs::List(v.into_iter().map(f).collect::<Result<_, _>>()?),
            Outputs::Dict(v) => Outputs::Dict(v.into_iter().map(|(k, t)| Ok((k, f(t)?))).collect::<Result<_, E>>()?),
        })
    }

    /// The same structure, built from `tensors` in the order [`tensors`](Outputs::tensors) gives.
    pub(crate) fn rebuild_like(&self, tensors: Vec<Tensor>) -> Outputs {
        debug_assert_eq!(tensors.len(), self.len());
        match self {
            Outputs::Tensor(_) => Outputs::Tensor(tensors.into_iter().next().expect("one tensor")),
            Outputs::Tuple(_) => Outputs::Tuple(tensors),
            Outputs::List(_) => Outputs::List(tensors),
            Outputs::Dict(v) => Outputs::Dict(v.iter().map(|(k, _)| k.clone()).zip(tensors).collect()),
        }
    }

    /// "one tensor", "a tuple of 2 tensors", "a dict of 2 tensors (logits, hidden)".
    pub fn describe(&self) -> String {
        match self {
            Outputs::Tensor(_) => "one tensor".into(),
            Outputs::Tuple(v) => format!("a tuple of {} tensors", v.len()),
            Outputs::List(v) => format!("a list of {} tensors", v.len()),
            Outputs::Dict(v) => format!("a dict of {} tensors ({})", v.len(), v.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", ")),
        }
    }

    /// Converts a TorchScript result: a tensor, a tuple or list of tensors, or a dict with string
    /// keys and tensor values. Nested structures and non-tensor values are refused by name.
    pub fn from_ivalue(v: IValue) -> Result<Outputs, ForwardError> {
        fn tensor(v: IValue, what: &str) -> Result<Tensor, ForwardError> {
            match v {
                IValue::Tensor(t) => Ok(t),
                other => Err(ForwardError::Structure(format!("{what} is {}, not a tensor; the engine serves tensors, tuples/lists of tensors, and dicts of tensors", kind_of(&other)))),
            }
        }
        match v {
            IValue::Tensor(t) => Ok(Outputs::Tensor(t)),
            IValue::Tuple(v) => Ok(Outputs::Tuple(v.into_iter().enumerate().map(|(i, x)| tensor(x, &format!("tuple element {i}"))).collect::<Result<_, _>>()?)),
            IValue::TensorList(v) => Ok(Outputs::List(v)),
            IValue::GenericList(v) => Ok(Outputs::List(v.into_iter().enumerate().map(|(i, x)| tensor(x, &format!("list element {i}"))).collect::<Result<_, _>>()?)),
            IValue::GenericDict(v) => Ok(Outputs::Dict(
                v.into_iter()
                    .map(|(k, x)| match k {
                        IValue::String(k) => {
                            let t = tensor(x, &format!("dict entry {k:?}"))?;
                            Ok((k, t))
                        }
                        other => Err(ForwardError::Structure(format!("a dict key is {}, not a string", kind_of(&other)))),
                    })
                    .collect::<Result<_, _>>()?,
            )),
            other => Err(ForwardError::Structure(format!("the model returned {}; the engine serves tensors, tuples/lists of tensors, and dicts of tensors", kind_of(&other)))),
        }
    }
}

fn kind_of(v: &IValue) -> &'static str {
    match v {
        IValue::None => "None",
        IValue::Tensor(_) => "a tensor",
        IValue::Double(_) => "a float",
        IValue::Int(_) => "an int",
        IValue::Bool(_) => "a bool",
        IValue::Tuple(_) => "a tuple",
        IValue::IntList(_) => "a list of ints",
        IValue::DoubleList(_) => "a list of floats",
        IValue::BoolList(_) => "a list of bools",
        IValue::String(_) => "a string",
        IValue::StringList(_) => "a list of strings",
        IValue::Device(_) => "a device",
        IValue::TensorList(_) => "a list of tensors",
        IValue::GenericList(_) => "a list",
        IValue::GenericDict(_) => "a dict",
        IValue::Object(_) => "an object",
        #[allow(unreachable_patterns)] // IValue may grow variants
        _ => "a value of another kind",
    }
}

impl From<Tensor> for Outputs {
    fn from(t: Tensor) -> Self {
        Outputs::Tensor(t)
    }
}

impl fmt::Display for Outputs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())?;
        let shapes: Vec<String> = self.names().iter().zip(self.tensors()).map(|(n, t)| format!("{n} {:?} {:?}", t.size(), t.kind())).collect();
        write!(f, ": {}", shapes.join(", "))
    }
}

/// The positional input tensors of one request (forward's arguments, in order), all with the
/// same number of samples along dim 0. A single tensor converts into it, so single-input code
/// stays `engine.submit(x)`.
///
/// ```
/// use tch_streams::models::Inputs;
/// let ids = tch::Tensor::zeros([1, 8], (tch::Kind::Int64, tch::Device::Cpu));
/// let mask = tch::Tensor::ones([1, 8], (tch::Kind::Int64, tch::Device::Cpu));
/// assert_eq!(Inputs::from(vec![ids, mask]).0.len(), 2);
/// ```
#[derive(Debug)]
pub struct Inputs(pub Vec<Tensor>);

impl From<Tensor> for Inputs {
    fn from(t: Tensor) -> Self {
        Inputs(vec![t])
    }
}

impl From<Vec<Tensor>> for Inputs {
    fn from(v: Vec<Tensor>) -> Self {
        Inputs(v)
    }
}

impl<const N: usize> From<[Tensor; N]> for Inputs {
    fn from(v: [Tensor; N]) -> Self {
        Inputs(v.into())
    }
}

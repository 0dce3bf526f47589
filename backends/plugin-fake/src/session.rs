//! [`FakeSession`]: one session's objects and the requests performed on them.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use farcall_core::{codec, DecodeError, EvalSession, ExportTable, Message, Release, RemoteException, Request, Target, Value};

use crate::objects::{holds_reference, Data, Object};

/// The default `timeout` of `echo.barrier`, in seconds.
pub const BARRIER_TIMEOUT_S: f64 = 10.0;

/// Why [`FakeSession::handle_frame`] could not perform a buffer.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The buffer is not a well-formed farcall message.
    #[error(transparent)]
    Malformed(#[from] DecodeError),
    /// The buffer is a reply; a plugin only gets requests and releases.
    #[error("expected a request or a release, got a reply")]
    NotARequest,
}

/// The state of one session of the fake evaluator: its object table, the
/// attributes set on its `echo.Object` instances, and its barriers.
///
/// This is what the plugin's `farcall_plugin_open` creates; it can also be
/// used in process, as an [`EvalSession`]. All methods may be called from
/// several threads at once; locks are held only to read or update the
/// tables, never while a call sleeps or waits.
pub struct FakeSession {
    id: u64,
    identity: Option<String>,
    table: Mutex<ExportTable<Object, Object>>,
    instances: AtomicU64,
    attributes: Mutex<HashMap<u64, BTreeMap<String, Data>>>,
    barriers: Barriers,
}

impl std::fmt::Debug for FakeSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let table = lock(&self.table);
        f.debug_struct("FakeSession")
            .field("id", &self.id)
            .field("identity", &self.identity)
            .field("live_objects", &table.len())
            .field("exported_total", &table.exported_total())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn error(type_name: &str, message: impl Into<String>) -> RemoteException {
    RemoteException::new("builtins", type_name, message)
}

impl FakeSession {
    /// A new session; `identity` is the client's certificate identity
    /// (what module `whoami` returns).
    pub fn new(id: u64, identity: Option<String>) -> Self {
        FakeSession {
            id,
            identity,
            table: Mutex::new(ExportTable::new()),
            instances: AtomicU64::new(0),
            attributes: Mutex::new(HashMap::new()),
            barriers: Barriers::default(),
        }
    }

    /// The session's id, as given to [`FakeSession::new`].
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Performs one encoded message, as `farcall_plugin_handle` does: a
    /// request gets its encoded reply, a release gets `None`. A request for
    /// an operation this version does not know is answered with a
    /// `farcall.ProtocolError` exception.
    ///
    /// # Errors
    ///
    /// [`FrameError`] when `frame` is not a request or a release.
    pub fn handle_frame(&self, frame: &[u8]) -> Result<Option<Vec<u8>>, FrameError> {
        let reply = match codec::decode(Bytes::copy_from_slice(frame)) {
            Ok(Message::Request { id, op }) => Message::Reply { id, result: self.evaluate(op) },
            Ok(Message::Release(refs)) => {
                self.release(&refs);
                return Ok(None);
            }
            Ok(Message::Reply { .. }) => return Err(FrameError::NotARequest),
            // Advisory; every request here completes before the next frame.
            Ok(Message::Cancel(_)) => return Ok(None),
            Err(DecodeError::UnknownOp { id, op }) => Message::Reply {
                id,
                result: Err(RemoteException::protocol(format!("unknown operation {op}: the fake evaluator does not know it"))),
            },
            Err(e) => return Err(e.into()),
        };
        let frame = codec::encode(&reply);
        let mut out = Vec::with_capacity(frame.len());
        for chunk in frame.chunks() {
            out.extend_from_slice(chunk);
        }
        Ok(Some(out))
    }

    fn perform(&self, request: Request) -> Result<Value, RemoteException> {
        match request {
            Request::GetModule { name } => match (Object::module(&name), name.as_str()) {
                (Some(module), _) => Ok(self.export(Data::Object(module))),
                (None, "whoami") => Ok(self.identity.clone().map_or(Value::None, Value::Str)),
                (None, _) => Err(error("ModuleNotFoundError", format!("No module named '{name}'"))),
            },
            Request::GetAttr { target, name } => {
                let object = self.resolve(&target)?;
                Ok(self.export(self.getattr(&object, &name)?))
            }
            Request::SetAttr { target, name, value } => {
                let object = self.resolve(&target)?;
                let value = self.import(value)?;
                self.setattr(&object, name, Some(value))?;
                Ok(Value::None)
            }
            Request::DelAttr { target, name } => {
                let object = self.resolve(&target)?;
                self.setattr(&object, name, None)?;
                Ok(Value::None)
            }
            Request::Call { target, args, kwargs } => {
                let function = self.resolve(&target)?;
                let args = args.into_iter().map(|a| self.import(a)).collect::<Result<Vec<_>, _>>()?;
                let kwargs = kwargs.into_iter().map(|(k, v)| Ok((k, self.import(v)?))).collect::<Result<Vec<_>, RemoteException>>()?;
                let result = self.call(&function, args, kwargs)?;
                Ok(self.export(result))
            }
            Request::Repr { target } => Ok(Value::Str(self.resolve(&target)?.repr())),
            Request::Str { target } => Ok(Value::Str(self.resolve(&target)?.str())),
            Request::Stats => {
                let table = lock(&self.table);
                Ok(Value::Tuple(vec![
                    Value::Int(i64::try_from(table.len()).unwrap_or(i64::MAX)),
                    Value::Int(i64::try_from(table.exported_total()).unwrap_or(i64::MAX)),
                ]))
            }
            Request::Builtin { name, .. } => {
                Err(RemoteException::protocol(format!("Builtin request {name:?}: not supported by the fake evaluator yet")))
            }
        }
    }

    /// A request's value as data: the fake's own objects passed back are
    /// looked up; the client's objects are refused.
    fn import(&self, value: Value) -> Result<Data, RemoteException> {
        Ok(match value {
            Value::ReceiverObject(target) => self.resolve(&target)?,
            Value::SenderObject(desc) => {
                return Err(RemoteException::protocol(format!(
                    "the fake evaluator does not take the client's objects by reference (got a reference to a {})",
                    desc.type_name
                )))
            }
            Value::Tuple(items) => Data::Tuple(items.into_iter().map(|v| self.import(v)).collect::<Result<_, _>>()?),
            Value::FrozenSet(items) if items.iter().any(holds_reference) => {
                return Err(RemoteException::protocol("a frozenset holds values only, not object references"))
            }
            plain => Data::Value(plain),
        })
    }

    /// A result as a wire value: objects are recorded in the table (one more
    /// sending each) and sent by reference.
    fn export(&self, data: Data) -> Value {
        match data {
            Data::Value(v) => v,
            Data::Tuple(items) => Value::Tuple(items.into_iter().map(|d| self.export(d)).collect()),
            Data::Object(object) => {
                let id = lock(&self.table).export(object.clone(), || object.clone());
                Value::SenderObject(object.describe(id))
            }
        }
    }

    /// The object a target designates: the table's entry, then each attribute of the path.
    fn resolve(&self, target: &Target) -> Result<Data, RemoteException> {
        let root = lock(&self.table).get(target.id).cloned().ok_or_else(|| {
            RemoteException::protocol(format!(
                "reference {} is not (or no longer) valid in this session: the object was released or never existed",
                target.id
            ))
        })?;
        target.path.iter().try_fold(Data::Object(root), |object, name| self.getattr(&object, name))
    }

    fn getattr(&self, object: &Data, name: &str) -> Result<Data, RemoteException> {
        let found = match object {
            Data::Object(Object::Module(m)) => match Object::functions(m).iter().find(|f| **f == name) {
                Some(f) => Some(Data::Object(Object::Function(m, f))),
                None if name == "__name__" => Some(Data::Value(Value::Str((*m).into()))),
                None => Object::module_value(m, name).map(Data::Value),
            },
            Data::Object(Object::Function(m, f)) => match name {
                "__name__" | "__qualname__" => Some(Data::Value(Value::Str((*f).into()))),
                "__module__" => Some(Data::Value(Value::Str((*m).into()))),
                _ => None,
            },
            Data::Object(Object::Instance(n)) => lock(&self.attributes).get(n).and_then(|attrs| attrs.get(name)).cloned(),
            _ => None,
        };
        found.ok_or_else(|| match object {
            Data::Object(Object::Module(m)) => error("AttributeError", format!("module '{m}' has no attribute '{name}'")),
            other => error("AttributeError", format!("'{}' object has no attribute '{name}'", other.short_type())),
        })
    }

    /// Sets (`Some`) or deletes (`None`) an attribute: only `echo.Object`
    /// instances have writable attributes.
    fn setattr(&self, object: &Data, name: String, value: Option<Data>) -> Result<(), RemoteException> {
        match object {
            Data::Object(Object::Instance(n)) => {
                let mut attributes = lock(&self.attributes);
                let attrs = attributes.entry(*n).or_default();
                match value {
                    Some(v) => {
                        attrs.insert(name, v);
                        Ok(())
                    }
                    None => attrs
                        .remove(&name)
                        .map(drop)
                        .ok_or_else(|| error("AttributeError", format!("'Object' object has no attribute '{name}'"))),
                }
            }
            Data::Object(Object::Module(m)) => Err(error("AttributeError", format!("module '{m}' is read-only in the fake evaluator"))),
            other => Err(error("AttributeError", format!("'{}' object attribute '{name}' is read-only", other.short_type()))),
        }
    }

    fn call(&self, function: &Data, args: Vec<Data>, kwargs: Vec<(String, Data)>) -> Result<Data, RemoteException> {
        let Data::Object(Object::Function(module, name)) = function else {
            return Err(error("TypeError", format!("'{}' object is not callable", function.short_type())));
        };
        match (*module, *name) {
            ("echo", "echo") => {
                let pairs = kwargs.into_iter().map(|(k, v)| Data::Tuple(vec![Data::Value(Value::Str(k)), v]));
                Ok(Data::Tuple(args.into_iter().chain(pairs).collect()))
            }
            ("echo", "obj") => {
                bind("obj", &[], 0, args, kwargs)?;
                Ok(Data::Object(Object::Instance(self.instances.fetch_add(1, Ordering::Relaxed) + 1)))
            }
            ("echo", "sleep") => {
                let [seconds] = bind("sleep", &["seconds"], 1, args, kwargs)?;
                let seconds = seconds.expect("required").as_f64()?;
                if seconds.is_nan() || seconds < 0.0 {
                    return Err(error("ValueError", "sleep length must be non-negative"));
                }
                let duration = Duration::try_from_secs_f64(seconds).map_err(|_| error("OverflowError", "sleep length is too large"))?;
                std::thread::sleep(duration);
                Ok(Data::Value(Value::None))
            }
            ("echo", "fail") => {
                let [message] = bind("fail", &["message"], 1, args, kwargs)?;
                let message = message.expect("required");
                let text = message.str();
                let arg = match message {
                    Data::Value(v) => v,
                    other => Value::Str(other.repr()),
                };
                Err(RemoteException {
                    type_module: "builtins".into(),
                    type_name: "ValueError".into(),
                    args: vec![arg],
                    traceback: format!("Traceback (most recent call last):\n  File \"<fake>\", line 1, in fail\nValueError: {text}\n"),
                    message: text,
                })
            }
            ("echo", "barrier") => {
                let [parties, timeout] = bind("barrier", &["parties", "timeout"], 1, args, kwargs)?;
                let parties = match parties.expect("required") {
                    Data::Value(Value::Int(n)) if n >= 1 => n as u64,
                    Data::Value(Value::Int(_)) => return Err(error("ValueError", "parties must be at least 1")),
                    other => return Err(error("TypeError", format!("parties must be an int, not {}", other.short_type()))),
                };
                let timeout = timeout.map_or(Ok(BARRIER_TIMEOUT_S), |t| t.as_f64())?;
                let timeout =
                    Duration::try_from_secs_f64(timeout).map_err(|_| error("ValueError", "timeout must be a non-negative number"))?;
                let index = self.barriers.wait(parties, timeout)?;
                Ok(Data::Value(Value::Int(index as i64)))
            }
            ("math", "pow") => {
                let [x, y] = bind("pow", &["x", "y"], 2, args, kwargs)?;
                let (x, y) = (x.expect("required").as_f64()?, y.expect("required").as_f64()?);
                let r = x.powf(y);
                if r.is_nan() && !x.is_nan() && !y.is_nan() {
                    return Err(error("ValueError", "math domain error"));
                }
                if r.is_infinite() && x.is_finite() && y.is_finite() {
                    return Err(if x == 0.0 {
                        error("ValueError", "math domain error")
                    } else {
                        error("OverflowError", "math range error")
                    });
                }
                Ok(Data::Value(Value::Float(r)))
            }
            (m, f) => Err(error("TypeError", format!("'{m}.{f}' is not callable"))),
        }
    }
}

/// Binds positional and keyword arguments to `params`, of which the first
/// `required` are required; Python's `TypeError`s otherwise.
fn bind<const N: usize>(
    func: &str,
    params: &[&str; N],
    required: usize,
    args: Vec<Data>,
    kwargs: Vec<(String, Data)>,
) -> Result<[Option<Data>; N], RemoteException> {
    if args.len() > N {
        let plural = if N == 1 { "" } else { "s" };
        return Err(error("TypeError", format!("{func}() takes {N} positional argument{plural} but {} were given", args.len())));
    }
    let mut slots: [Option<Data>; N] = std::array::from_fn(|_| None);
    for (slot, arg) in slots.iter_mut().zip(args) {
        *slot = Some(arg);
    }
    for (name, value) in kwargs {
        match params.iter().position(|p| *p == name) {
            Some(i) if slots[i].is_none() => slots[i] = Some(value),
            Some(_) => return Err(error("TypeError", format!("{func}() got multiple values for argument '{name}'"))),
            None => return Err(error("TypeError", format!("{func}() got an unexpected keyword argument '{name}'"))),
        }
    }
    if let Some(missing) = (0..required).find(|&i| slots[i].is_none()) {
        return Err(error("TypeError", format!("{func}() missing required argument: '{}'", params[missing])));
    }
    Ok(slots)
}

impl EvalSession for FakeSession {
    fn evaluate(&self, request: Request) -> Result<Value, RemoteException> {
        self.perform(request)
    }

    fn release(&self, refs: &[Release]) {
        let mut table = lock(&self.table);
        for r in refs {
            table.release(r.id, r.count);
        }
    }
}

/// The barriers of `echo.barrier`, one per party count.
#[derive(Debug, Default)]
struct Barriers {
    gates: Mutex<HashMap<u64, Gate>>,
    opened: Condvar,
}

/// One barrier: how many callers wait, and how many times it opened.
#[derive(Debug, Default)]
struct Gate {
    generation: u64,
    waiting: u64,
}

impl Barriers {
    /// Waits until `parties` callers (this one included) wait on the barrier
    /// of `parties`, then returns this caller's arrival index (0 for the
    /// first); `builtins.TimeoutError` after `timeout` (the caller then
    /// leaves the barrier).
    fn wait(&self, parties: u64, timeout: Duration) -> Result<u64, RemoteException> {
        let deadline = Instant::now() + timeout;
        let mut gates = lock(&self.gates);
        let gate = gates.entry(parties).or_default();
        let (generation, index) = (gate.generation, gate.waiting);
        gate.waiting += 1;
        if gate.waiting == parties {
            gate.generation += 1;
            gate.waiting = 0;
            self.opened.notify_all();
            return Ok(index);
        }
        loop {
            let gate = gates.entry(parties).or_default();
            if gate.generation != generation {
                return Ok(index);
            }
            let now = Instant::now();
            if now >= deadline {
                gate.waiting -= 1;
                let waiting = gate.waiting;
                return Err(error(
                    "TimeoutError",
                    format!("barrier of {parties} parties timed out after {:?} with {waiting} other caller(s) waiting", timeout),
                ));
            }
            gates = self.opened.wait_timeout(gates, deadline - now).unwrap_or_else(PoisonError::into_inner).0;
        }
    }
}

//! The fake evaluator's objects and values, and how they print.

use std::fmt::Write as _;

use farcall_core::{flags, LazyAttr, LazyKind, RefDesc, RefId, RemoteException, Value};

/// The modules `GetModule` knows.
pub(crate) const MODULES: &[&str] = &["echo", "math"];
/// The functions of module `echo`.
const ECHO_FUNCTIONS: &[&str] = &["echo", "obj", "sleep", "fail", "barrier"];
/// The functions of module `math`.
const MATH_FUNCTIONS: &[&str] = &["pow"];
/// The plain values of module `math`.
const MATH_VALUES: &[(&str, f64)] = &[("pi", std::f64::consts::PI), ("e", std::f64::consts::E)];

/// An object the fake hands out by reference. Objects are values with an
/// identity: two equal `Object`s are the same object (one table entry).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Object {
    /// Module `echo` or `math`.
    Module(&'static str),
    /// A function of a module.
    Function(&'static str, &'static str),
    /// An instance made by `echo.obj()`, numbered from 1 in its session.
    Instance(u64),
}

impl Object {
    /// The module named `name`, if the fake has it.
    pub(crate) fn module(name: &str) -> Option<Object> {
        MODULES.iter().find(|m| **m == name).map(|m| Object::Module(m))
    }

    /// The functions of module `module`.
    pub(crate) fn functions(module: &str) -> &'static [&'static str] {
        match module {
            "echo" => ECHO_FUNCTIONS,
            "math" => MATH_FUNCTIONS,
            _ => &[],
        }
    }

    /// The plain value attribute `name` of module `module`, if any.
    pub(crate) fn module_value(module: &str, name: &str) -> Option<Value> {
        match module {
            "math" => MATH_VALUES.iter().find(|(n, _)| *n == name).map(|(_, v)| Value::Float(*v)),
            _ => None,
        }
    }

    /// The type's short name, as Python error messages show it.
    pub(crate) fn short_type(&self) -> &'static str {
        match self {
            Object::Module(_) => "module",
            Object::Function(..) => "function",
            Object::Instance(_) => "Object",
        }
    }

    /// The qualified type name sent with references.
    fn type_name(&self) -> &'static str {
        match self {
            Object::Module(_) => "builtins.module",
            Object::Function(..) => "builtins.function",
            Object::Instance(_) => "echo.Object",
        }
    }

    /// The reference description sent for this object under `id`.
    pub(crate) fn describe(&self, id: RefId) -> RefDesc {
        let mut desc = RefDesc::new(id, self.type_name());
        match self {
            Object::Module(m) => {
                desc.flags = flags::MODULE;
                desc.attrs = Self::functions(m).iter().map(|f| LazyAttr { name: (*f).to_owned(), kind: LazyKind::Callable }).collect();
            }
            Object::Function(..) => desc.flags = flags::CALLABLE,
            Object::Instance(_) => {}
        }
        desc
    }

    /// `repr(self)`.
    pub(crate) fn repr(&self) -> String {
        match self {
            Object::Module(m) => format!("<module '{m}' (fake)>"),
            Object::Function(m, f) => format!("<function {m}.{f}>"),
            Object::Instance(n) => format!("<echo.Object object #{n}>"),
        }
    }
}

/// A value inside the fake: plain values, its own objects, and tuples mixing
/// both (what a request's arguments resolve to, and what results are made of).
#[derive(Debug, Clone)]
pub(crate) enum Data {
    /// A value holding no object references.
    Value(Value),
    /// One of the fake's objects.
    Object(Object),
    /// A tuple that may hold objects.
    Tuple(Vec<Data>),
}

impl Data {
    /// The type's short name, as Python error messages show it.
    pub(crate) fn short_type(&self) -> &'static str {
        match self {
            Data::Object(o) => o.short_type(),
            Data::Tuple(_) => "tuple",
            Data::Value(v) => value_type(v),
        }
    }

    /// `repr(self)`, close to Python's.
    pub(crate) fn repr(&self) -> String {
        match self {
            Data::Value(v) => repr(v),
            Data::Object(o) => o.repr(),
            Data::Tuple(items) => tuple_repr(items.iter().map(Data::repr).collect()),
        }
    }

    /// `str(self)`: a string is itself, everything else its `repr`.
    pub(crate) fn str(&self) -> String {
        match self {
            Data::Value(Value::Str(s)) => s.clone(),
            other => other.repr(),
        }
    }

    /// The value as a float, for `math.pow` and `echo.sleep` (`func` names
    /// the caller in errors): ints, bools and floats are real numbers.
    pub(crate) fn as_f64(&self) -> Result<f64, RemoteException> {
        match self {
            Data::Value(Value::Int(i)) => Ok(*i as f64),
            Data::Value(Value::Bool(b)) => Ok(if *b { 1.0 } else { 0.0 }),
            Data::Value(Value::Float(f)) => Ok(*f),
            Data::Value(Value::BigInt(b)) => {
                let f = big_to_f64(b);
                if f.is_finite() {
                    Ok(f)
                } else {
                    Err(RemoteException::new("builtins", "OverflowError", "int too large to convert to float"))
                }
            }
            other => Err(RemoteException::new("builtins", "TypeError", format!("must be real number, not {}", other.short_type()))),
        }
    }
}

/// Whether `v` holds an object reference anywhere.
pub(crate) fn holds_reference(v: &Value) -> bool {
    match v {
        Value::SenderObject(_) | Value::ReceiverObject(_) => true,
        Value::Tuple(items) | Value::FrozenSet(items) => items.iter().any(holds_reference),
        _ => false,
    }
}

/// The Python type name of a plain value.
fn value_type(v: &Value) -> &'static str {
    match v {
        Value::None => "NoneType",
        Value::Bool(_) => "bool",
        Value::Int(_) | Value::BigInt(_) => "int",
        Value::Float(_) => "float",
        Value::Complex(..) => "complex",
        Value::Str(_) => "str",
        Value::Bytes(_) => "bytes",
        Value::Tuple(_) => "tuple",
        Value::FrozenSet(_) => "frozenset",
        Value::SenderObject(_) | Value::ReceiverObject(_) => "object",
        Value::List(_) => "list",
        Value::Dict(_) => "dict",
        Value::Set(_) => "set",
        Value::Slice(_) => "slice",
        Value::Ellipsis => "ellipsis",
    }
}

/// `repr` of a plain value, close to Python's (floats print as Rust does
/// beyond the integral and special cases).
pub(crate) fn repr(v: &Value) -> String {
    match v {
        Value::None => "None".into(),
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        Value::Int(i) => i.to_string(),
        Value::BigInt(b) => big_to_decimal(b),
        Value::Float(f) => float_repr(*f),
        Value::Complex(re, im) => {
            let im_text = float_repr(*im);
            let im_text = im_text.strip_suffix(".0").unwrap_or(&im_text);
            if *re == 0.0 && re.is_sign_positive() {
                format!("{im_text}j")
            } else {
                let re_text = float_repr(*re);
                let re_text = re_text.strip_suffix(".0").unwrap_or(&re_text);
                let sign = if im_text.starts_with('-') { "" } else { "+" };
                format!("({re_text}{sign}{im_text}j)")
            }
        }
        Value::Str(s) => str_repr(s),
        Value::Bytes(b) => bytes_repr(b),
        Value::Tuple(items) => tuple_repr(items.iter().map(repr).collect()),
        Value::FrozenSet(items) if items.is_empty() => "frozenset()".into(),
        Value::FrozenSet(items) => format!("frozenset({{{}}})", items.iter().map(repr).collect::<Vec<_>>().join(", ")),
        Value::SenderObject(d) => format!("<{} object>", d.type_name),
        Value::ReceiverObject(t) => format!("<object {}>", t.id),
        Value::List(items) => format!("[{}]", items.iter().map(repr).collect::<Vec<_>>().join(", ")),
        Value::Dict(pairs) => {
            format!("{{{}}}", pairs.iter().map(|(k, v)| format!("{}: {}", repr(k), repr(v))).collect::<Vec<_>>().join(", "))
        }
        Value::Set(items) if items.is_empty() => "set()".into(),
        Value::Set(items) => format!("{{{}}}", items.iter().map(repr).collect::<Vec<_>>().join(", ")),
        Value::Slice(p) => format!("slice({}, {}, {})", repr(&p[0]), repr(&p[1]), repr(&p[2])),
        Value::Ellipsis => "Ellipsis".into(),
    }
}

fn tuple_repr(items: Vec<String>) -> String {
    match items.as_slice() {
        [one] => format!("({one},)"),
        _ => format!("({})", items.join(", ")),
    }
}

fn float_repr(f: f64) -> String {
    if f.is_nan() {
        "nan".into()
    } else if f.is_infinite() {
        if f > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{f:?}")
    }
}

fn str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

fn bytes_repr(b: &[u8]) -> String {
    let quote = if b.contains(&b'\'') && !b.contains(&b'"') { b'"' } else { b'\'' };
    let mut out = String::with_capacity(b.len() + 3);
    out.push('b');
    out.push(quote as char);
    for &c in b {
        match c {
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c as char);
            }
            0x20..=0x7e => out.push(c as char),
            c => {
                let _ = write!(out, "\\x{c:02x}");
            }
        }
    }
    out.push(quote as char);
    out
}

/// The sign and magnitude (little-endian bytes) of a little-endian two's
/// complement integer.
fn big_magnitude(b: &[u8]) -> (bool, Vec<u8>) {
    let negative = b.last().is_some_and(|last| last & 0x80 != 0);
    if !negative {
        return (false, b.to_vec());
    }
    // Negate: invert and add one.
    let mut m: Vec<u8> = b.iter().map(|x| !x).collect();
    for byte in m.iter_mut() {
        let (v, carry) = byte.overflowing_add(1);
        *byte = v;
        if !carry {
            break;
        }
    }
    (true, m)
}

fn big_to_f64(b: &[u8]) -> f64 {
    let (negative, m) = big_magnitude(b);
    let f = m.iter().rev().fold(0.0f64, |acc, &byte| acc * 256.0 + byte as f64);
    if negative {
        -f
    } else {
        f
    }
}

fn big_to_decimal(b: &[u8]) -> String {
    let (negative, mut m) = big_magnitude(b);
    let mut digits = Vec::new();
    while m.iter().any(|&x| x != 0) {
        // Divide the little-endian magnitude by 10, most significant byte first.
        let mut rem = 0u32;
        for byte in m.iter_mut().rev() {
            let cur = (rem << 8) | *byte as u32;
            *byte = (cur / 10) as u8;
            rem = cur % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    if digits.is_empty() {
        digits.push(b'0');
    }
    if negative {
        digits.push(b'-');
    }
    digits.reverse();
    String::from_utf8(digits).expect("ASCII digits")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reprs_are_pythonic() {
        assert_eq!(repr(&Value::Float(9.0)), "9.0");
        assert_eq!(repr(&Value::Float(f64::NAN)), "nan");
        assert_eq!(repr(&Value::Str("it's".into())), "\"it's\"");
        assert_eq!(repr(&Value::Str("a\nb".into())), "'a\\nb'");
        assert_eq!(repr(&Value::Bytes(b"a\x00".as_slice().into())), "b'a\\x00'");
        assert_eq!(repr(&Value::Tuple(vec![Value::Int(1)])), "(1,)");
        assert_eq!(repr(&Value::Tuple(vec![Value::None, Value::Bool(true)])), "(None, True)");
        assert_eq!(repr(&Value::Complex(1.0, -2.0)), "(1-2j)");
        assert_eq!(repr(&Value::Complex(0.0, 2.0)), "2j");
        assert_eq!(repr(&Value::FrozenSet(vec![])), "frozenset()");
    }

    #[test]
    fn big_integers_print_and_convert() {
        // 2**64 and -(2**64), little-endian two's complement.
        let two_64 = [0, 0, 0, 0, 0, 0, 0, 0, 1];
        let minus_two_64 = [0, 0, 0, 0, 0, 0, 0, 0, 0xff];
        assert_eq!(big_to_decimal(&two_64), "18446744073709551616");
        assert_eq!(big_to_decimal(&minus_two_64), "-18446744073709551616");
        assert_eq!(big_to_f64(&two_64), 18446744073709551616.0);
        assert_eq!(big_to_f64(&minus_two_64), -18446744073709551616.0);
    }
}

// What travels by value (exact types only), big integers and bulk bytes.

use bytes::Bytes;
use farcall_core::Value;

use crate::{call, module, reference, session};

/// 2**200 as little-endian two's complement: `(201 + 8) // 8` bytes.
fn two_pow_200(negative: bool) -> Value {
    let mut b = vec![0u8; 26];
    b[25] = if negative { 0xff } else { 0x01 };
    Value::BigInt(Bytes::from(b))
}

#[test]
fn simple_values_round_trip_through_identity() {
    let s = session();
    let builtins = module(&*s, "builtins");
    // `tuple(x)` of a tuple is the tuple itself: every element comes back as sent.
    let values = vec![
        Value::None,
        Value::Bool(true),
        Value::Bool(false),
        Value::Int(-5),
        Value::Int(i64::MAX),
        Value::Int(i64::MIN),
        Value::Float(1.5),
        Value::Float(f64::INFINITY),
        Value::Complex(1.0, -2.0),
        Value::Str("héllo".into()),
        Value::Bytes(Bytes::from_static(b"\x00\xff")),
        Value::Tuple(vec![Value::Int(1), Value::Tuple(vec![])]),
        Value::FrozenSet(vec![Value::Int(1)]),
        two_pow_200(false),
        two_pow_200(true),
    ];
    let back = call(&*s, &builtins, "tuple", vec![Value::Tuple(values.clone())]).unwrap();
    assert_eq!(back, Value::Tuple(values));
    match call(&*s, &builtins, "float", vec![Value::Str("nan".into())]).unwrap() {
        Value::Float(f) => assert!(f.is_nan()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn big_integers() {
    let s = session();
    let operator = module(&*s, "operator");
    let builtins = module(&*s, "builtins");
    assert_eq!(call(&*s, &operator, "neg", vec![two_pow_200(false)]).unwrap(), two_pow_200(true));
    assert_eq!(call(&*s, &operator, "neg", vec![two_pow_200(true)]).unwrap(), two_pow_200(false));
    assert_eq!(call(&*s, &builtins, "int", vec![two_pow_200(true)]).unwrap(), two_pow_200(true));
    // 2**200 computed in Python.
    assert_eq!(call(&*s, &builtins, "pow", vec![Value::Int(2), Value::Int(200)]).unwrap(), two_pow_200(false));
    // Just outside the 64-bit range: 2**63 takes 9 bytes (a sign byte).
    let mut b = vec![0u8; 9];
    b[7] = 0x80;
    let two_pow_63 = Value::BigInt(Bytes::from(b));
    assert_eq!(call(&*s, &operator, "add", vec![Value::Int(i64::MAX), Value::Int(1)]).unwrap(), two_pow_63);
    assert_eq!(call(&*s, &operator, "neg", vec![Value::Int(i64::MIN)]).unwrap(), two_pow_63);
    assert_eq!(call(&*s, &operator, "neg", vec![two_pow_63]).unwrap(), Value::Int(i64::MIN));
}

#[test]
fn one_mebibyte_of_bytes() {
    let s = session();
    let operator = module(&*s, "operator");
    let pattern: Vec<u8> = (0..=255u8).collect();
    let big = call(&*s, &operator, "mul", vec![Value::Bytes(pattern.clone().into()), Value::Int(4096)]).unwrap();
    let Value::Bytes(big) = big else { panic!("expected bytes, got {big:?}") };
    assert_eq!(big.len(), 1 << 20);
    assert!(big.chunks(256).all(|c| c == pattern.as_slice()));
    // The buffer outlives the session (and, for the subprocess backend, its
    // worker; for the embedded one it may be dropped on a thread that never
    // attached to Python).
    drop(s);
    std::thread::spawn(move || {
        assert_eq!(big[1000], (1000 % 256) as u8);
        drop(big);
    })
    .join()
    .unwrap();
    // Small ones are copied.
    let s = session();
    let operator = module(&*s, "operator");
    let small = call(&*s, &operator, "mul", vec![Value::Bytes(b"ab"[..].into()), Value::Int(3)]).unwrap();
    assert_eq!(small, Value::Bytes(b"ababab"[..].into()));
}

#[test]
fn subclasses_of_simple_types_travel_by_reference() {
    let s = session();
    let http = module(&*s, "http");
    let ok = reference(
        s.evaluate(farcall_core::Request::GetAttr {
            target: farcall_core::Target { id: http.id, path: vec!["HTTPStatus".into()] },
            name: "OK".into(),
        })
        .unwrap(),
    );
    assert_eq!(ok.type_name, "http.HTTPStatus");
    assert!(!ok.is_callable());
}

#[test]
fn tuples_carry_references_and_frozensets_only_values() {
    let s = session();
    let builtins = module(&*s, "builtins");
    let math = module(&*s, "math");
    // (1, <list>)
    let t = call(&*s, &builtins, "tuple", vec![Value::Tuple(vec![Value::Int(1), Value::Tuple(vec![])])]).unwrap();
    assert_eq!(t, Value::Tuple(vec![Value::Int(1), Value::Tuple(vec![])]));
    let list = reference(call(&*s, &builtins, "list", vec![]).unwrap());
    let t = call(&*s, &builtins, "tuple", vec![Value::Tuple(vec![Value::Int(1), crate::mine(list.id)])]).unwrap();
    match t {
        Value::Tuple(items) => {
            assert_eq!(items[0], Value::Int(1));
            assert_eq!(reference(items[1].clone()).id, list.id);
        }
        other => panic!("{other:?}"),
    }
    // A frozenset holding a module: the whole set is a reference.
    let fs = call(&*s, &builtins, "frozenset", vec![Value::Tuple(vec![Value::Int(1), crate::mine(math.id)])]).unwrap();
    assert_eq!(reference(fs).type_name, "builtins.frozenset");
    let fs = call(&*s, &builtins, "frozenset", vec![Value::Tuple(vec![Value::Int(1), Value::Str("a".into())])]).unwrap();
    match fs {
        Value::FrozenSet(mut items) => {
            items.sort_by_key(|v| matches!(v, Value::Str(_)));
            assert_eq!(items, vec![Value::Int(1), Value::Str("a".into())]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn deeply_nested_tuples_become_references_at_depth_32() {
    let s = session();
    let builtins = module(&*s, "builtins");
    let mut v = Value::Tuple(vec![]);
    for _ in 0..40 {
        v = Value::Tuple(vec![v]);
    }
    let mut back = call(&*s, &builtins, "tuple", vec![v]).unwrap();
    let mut depth = 0;
    while let Value::Tuple(mut items) = back {
        back = items.pop().unwrap();
        depth += 1;
    }
    assert_eq!(depth, 32);
    assert_eq!(reference(back).type_name, "builtins.tuple");
}

#[test]
fn strings_that_are_not_utf8_travel_by_reference() {
    let s = session();
    let builtins = module(&*s, "builtins");
    let lone = call(&*s, &builtins, "chr", vec![Value::Int(0xdc80)]).unwrap();
    assert_eq!(reference(lone).type_name, "builtins.str");
}

#[test]
fn ten_megabytes_each_way() {
    let s = session();
    let builtins = module(&*s, "builtins");
    let data: Vec<u8> = (0..10_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    // bytes(x) of a bytes object is the object itself: the same 10 MB come back.
    let back = call(&*s, &builtins, "bytes", vec![Value::Bytes(data.clone().into())]).unwrap();
    assert_eq!(back, Value::Bytes(data.clone().into()));
    // And the worker received exactly what was sent.
    let sum: i64 = data.iter().map(|&b| i64::from(b)).sum();
    assert_eq!(call(&*s, &builtins, "sum", vec![Value::Bytes(data.into())]).unwrap(), Value::Int(sum));
}

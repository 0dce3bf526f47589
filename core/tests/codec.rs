// The wire codec and framing: round trips, zero-copy bytes, and hostile input.

use bytes::Bytes;
use farcall_core::codec::{self, decode, encode, DecodeError};
use farcall_core::framing::{read_frame, write_frame, FrameError};
use farcall_core::{LazyAttr, LazyKind, Message, RefDesc, Release, RemoteException, Request, Target, Value};
use proptest::prelude::*;

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::None),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        proptest::collection::vec(any::<u8>(), 1..40).prop_map(|b| Value::BigInt(b.into())),
        any::<f64>().prop_map(Value::Float),
        (any::<f64>(), any::<f64>()).prop_map(|(a, b)| Value::Complex(a, b)),
        ".*".prop_map(Value::Str),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(|b| Value::Bytes(b.into())),
        (any::<u64>(), "[a-z.]{0,20}", any::<u8>(), proptest::collection::vec(("[a-z_]{1,8}", 0..3u8, "[a-z.]{1,8}"), 0..4)).prop_map(
            |(id, t, flags, attrs)| {
                Value::SenderObject(RefDesc {
                    id,
                    type_name: t,
                    flags,
                    attrs: attrs
                        .into_iter()
                        .map(|(name, k, m)| LazyAttr {
                            name,
                            kind: match k {
                                0 => LazyKind::Callable,
                                1 => LazyKind::Class,
                                _ => LazyKind::Module(m),
                            },
                        })
                        .collect(),
                })
            }
        ),
        (any::<u64>(), proptest::collection::vec("[a-z_]{1,8}", 0..3)).prop_map(|(id, path)| Value::ReceiverObject(Target { id, path })),
        Just(Value::Ellipsis),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Tuple),
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::FrozenSet),
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::List),
            proptest::collection::vec((inner.clone(), inner.clone()), 0..6).prop_map(Value::Dict),
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Set),
            (inner.clone(), inner.clone(), inner).prop_map(|(a, b, c)| Value::Slice(Box::new([a, b, c]))),
        ]
    })
}

fn arb_target() -> impl Strategy<Value = Target> {
    (any::<u64>(), proptest::collection::vec(".{0,8}", 0..3)).prop_map(|(id, path)| Target { id, path })
}

fn arb_message() -> impl Strategy<Value = Message> {
    let request = prop_oneof![
        ".*".prop_map(|name| Request::GetModule { name }),
        (arb_target(), ".*").prop_map(|(target, name)| Request::GetAttr { target, name }),
        (arb_target(), ".*", arb_value()).prop_map(|(target, name, value)| Request::SetAttr { target, name, value }),
        (arb_target(), ".*").prop_map(|(target, name)| Request::DelAttr { target, name }),
        (arb_target(), proptest::collection::vec(arb_value(), 0..4), proptest::collection::vec((".{0,6}", arb_value()), 0..3))
            .prop_map(|(target, args, kwargs)| Request::Call { target, args, kwargs }),
        arb_target().prop_map(|target| Request::Repr { target }),
        arb_target().prop_map(|target| Request::Str { target }),
        Just(Request::Stats),
        (".*", proptest::collection::vec(arb_value(), 0..4)).prop_map(|(name, args)| Request::Builtin { name, args }),
    ];
    let exc = (".*", ".*", proptest::collection::vec(arb_value(), 0..3), ".*", ".*")
        .prop_map(|(m, n, args, message, traceback)| RemoteException { type_module: m, type_name: n, args, message, traceback });
    prop_oneof![
        (any::<u64>(), request).prop_map(|(id, op)| Message::Request { id, op }),
        (any::<u64>(), arb_value()).prop_map(|(id, v)| Message::Reply { id, result: Ok(v) }),
        (any::<u64>(), exc).prop_map(|(id, e)| Message::Reply { id, result: Err(e) }),
        proptest::collection::vec((any::<u64>(), any::<u32>()), 0..10)
            .prop_map(|r| { Message::Release(r.into_iter().map(|(id, count)| Release { id, count }).collect(),) }),
        any::<u64>().prop_map(Message::Cancel),
    ]
}

proptest! {
    // NaN != NaN, so equality is checked on the re-encoded bytes.
    #[test]
    fn messages_round_trip(msg in arb_message()) {
        let bytes = encode(&msg).to_bytes();
        let back = decode(bytes.clone()).expect("decodes");
        prop_assert_eq!(encode(&back).to_bytes(), bytes);
    }

    #[test]
    fn values_round_trip(v in arb_value()) {
        let bytes = codec::encode_value(&v);
        let back = codec::decode_value(bytes.clone()).expect("decodes");
        prop_assert_eq!(codec::encode_value(&back), bytes);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(data.into());
    }

    #[test]
    fn mutated_messages_never_panic(msg in arb_message(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
        let mut bytes = encode(&msg).to_bytes().to_vec();
        for (i, b) in flips {
            let n = bytes.len();
            bytes[i % n] = b;
        }
        let _ = decode(bytes.into());
    }

    #[test]
    fn framing_round_trips(msgs in proptest::collection::vec(arb_message(), 1..5)) {
        let mut wire = Vec::new();
        for m in &msgs {
            write_frame(&mut wire, &encode(m)).unwrap();
        }
        let mut r = &wire[..];
        for m in &msgs {
            let body = read_frame(&mut r, 1 << 20).unwrap();
            prop_assert_eq!(body, encode(m).to_bytes());
        }
        prop_assert!(matches!(read_frame(&mut r, 1 << 20), Err(FrameError::Closed)));
    }
}

#[test]
fn plain_values_are_exact() {
    for v in [
        Value::Int(i64::MIN),
        Value::Int(i64::MAX),
        Value::Float(f64::INFINITY),
        Value::Float(-0.0),
        Value::Str("é∑🚀".into()),
        Value::Tuple(vec![]),
    ] {
        assert_eq!(codec::decode_value(codec::encode_value(&v)).unwrap(), v);
    }
    let nan = codec::decode_value(codec::encode_value(&Value::Float(f64::NAN))).unwrap();
    assert!(matches!(nan, Value::Float(f) if f.is_nan()));
}

#[test]
fn large_bytes_are_not_copied() {
    let payload = Bytes::from(vec![7u8; 1 << 20]);
    let msg = Message::Reply { id: 9, result: Ok(Value::Bytes(payload.clone())) };
    let frame = encode(&msg);
    // The payload is its own chunk: the same memory, not a copy.
    assert!(frame.chunks().iter().any(|c| c.as_ptr() == payload.as_ptr()));
    let body = frame.to_bytes();
    let Message::Reply { result: Ok(Value::Bytes(b)), .. } = decode(body.clone()).unwrap() else { panic!("not bytes") };
    assert_eq!(b.len(), 1 << 20);
    // The decoded value is a slice of the received frame.
    let start = body.as_ptr() as usize;
    assert!((b.as_ptr() as usize) >= start && (b.as_ptr() as usize) < start + body.len());
}

#[test]
fn impossible_counts_are_refused_before_allocation() {
    // An array32 claiming 4 billion elements in a 10-byte frame.
    let bytes = vec![0x93, 0x01, 0x01, 0xdd, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00];
    assert_eq!(decode(bytes.into()), Err(DecodeError::Truncated));
    // A bin32 claiming 4 GiB.
    let bytes = vec![0x93, 0x01, 0x01, 0xc6, 0xff, 0xff, 0xff, 0xff];
    assert_eq!(decode(bytes.into()), Err(DecodeError::Truncated));
}

#[test]
fn deep_nesting_is_refused() {
    let mut bytes = vec![0x93, 0x01, 0x01];
    bytes.extend(std::iter::repeat_n(0x91, 10_000));
    bytes.push(0xc0);
    assert_eq!(decode(bytes.into()), Err(DecodeError::TooDeep));
}

#[test]
fn unknown_operation_keeps_the_request_id() {
    // [0, 42, 99] : a request with id 42 for opcode 99.
    let bytes = vec![0x93, 0x00, 42, 99];
    assert_eq!(decode(bytes.into()), Err(DecodeError::UnknownOp { id: 42, op: 99 }));
}

#[test]
fn frames_over_the_limit_are_refused_before_reading() {
    let wire = [0xff, 0xff, 0xff, 0xff, 1, 2, 3];
    match read_frame(&mut &wire[..], 1024) {
        Err(FrameError::TooLarge { len, max }) => {
            assert_eq!((len, max), (0xffff_ffff, 1024));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn truncated_frames_are_reported() {
    let wire = [0, 0, 0, 10, 1, 2, 3];
    assert!(matches!(read_frame(&mut &wire[..], 1024), Err(FrameError::Truncated { got: 3, want: 10 })));
    let wire = [0, 0];
    assert!(matches!(read_frame(&mut &wire[..], 1024), Err(FrameError::Truncated { got: 2, want: 4 })));
}

#[test]
fn frame_reader_reads_frames_split_and_joined_and_reuses_its_buffer() {
    use farcall_core::framing::FrameReader;
    // A reader that hands out at most 3 bytes per read.
    struct Trickle<'a>(&'a [u8]);
    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(buf.len()).min(3);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let msgs: Vec<Message> =
        (0..5).map(|i| Message::Reply { id: i, result: Ok(Value::Bytes(vec![i as u8; 100 * i as usize].into())) }).collect();
    let mut wire = Vec::new();
    for m in &msgs {
        write_frame(&mut wire, &encode(m)).unwrap();
    }
    for (retain, trickle) in [(1 << 20, false), (1 << 20, true), (10, false), (10, true)] {
        let mut reader = FrameReader::new(1 << 20, retain);
        let mut whole = &wire[..];
        let mut slow = Trickle(&wire);
        for m in &msgs {
            let body = if trickle { reader.read(&mut slow) } else { reader.read(&mut whole) }.unwrap();
            assert_eq!(body, encode(m).to_bytes());
        }
        let end = if trickle { reader.read(&mut slow) } else { reader.read(&mut whole) };
        assert!(matches!(end, Err(FrameError::Closed)));
    }
    // Over the limit: refused from the header alone.
    let mut reader = FrameReader::new(16, 1024);
    assert!(matches!(reader.read(&mut &[0u8, 0, 1, 0][..]), Err(FrameError::TooLarge { len: 256, max: 16 })));
    // Cut short inside the body.
    let mut reader = FrameReader::new(1024, 1024);
    assert!(matches!(reader.read(&mut &[0u8, 0, 0, 9, 1, 2][..]), Err(FrameError::Truncated { got: 2, want: 9 })));
}

#[test]
fn routes_can_be_read_without_decoding() {
    use farcall_core::codec::peek_route;
    use farcall_core::Route;
    let req = encode(&Message::Request { id: 300, op: Request::Stats });
    assert_eq!(req.route, Route::Request(300));
    assert_eq!(peek_route(&req.to_bytes()), Some(Route::Request(300)));
    let rep = encode(&Message::Reply { id: 1 << 40, result: Ok(Value::Bytes(vec![0u8; 100_000].into())) });
    assert_eq!(peek_route(&rep.to_bytes()), Some(Route::Reply(1 << 40)));
    let rel = encode(&Message::Release(vec![Release { id: 1, count: 1 }]));
    assert_eq!(peek_route(&rel.to_bytes()), Some(Route::Oneway));
    assert_eq!(peek_route(&[0xc1]), None);
    assert_eq!(peek_route(&[]), None);
}

#[test]
fn copies_slices_and_ellipsis_have_their_ext_numbers() {
    // ext 6 list copy: [1, 2] as a nested array.
    assert_eq!(&codec::encode_value(&Value::List(vec![Value::Int(1), Value::Int(2)]))[..], &[0xc7, 3, 6, 0x92, 1, 2]);
    // ext 7 dict copy: {"a": 1} as [k, v].
    assert_eq!(&codec::encode_value(&Value::Dict(vec![(Value::Str("a".into()), Value::Int(1))]))[..], &[0xd6, 7, 0x92, 0xa1, b'a', 1]);
    // ext 8 set copy.
    assert_eq!(&codec::encode_value(&Value::Set(vec![Value::Int(3)]))[..], &[0xd5, 8, 0x91, 3]);
    // ext 9 slice(None, 5, None).
    assert_eq!(
        &codec::encode_value(&Value::Slice(Box::new([Value::None, Value::Int(5), Value::None])))[..],
        &[0xd6, 9, 0x93, 0xc0, 5, 0xc0]
    );
    // ext 10 Ellipsis: an empty payload.
    assert_eq!(&codec::encode_value(&Value::Ellipsis)[..], &[0xc7, 0, 10]);
    for v in [
        Value::List(vec![Value::Dict(vec![(Value::Int(1), Value::List(vec![]))]), Value::Tuple(vec![Value::Set(vec![])])]),
        Value::Slice(Box::new([Value::Int(-1), Value::Ellipsis, Value::Int(2)])),
        Value::Ellipsis,
    ] {
        assert_eq!(codec::decode_value(codec::encode_value(&v)).unwrap(), v);
    }
}

#[test]
fn malformed_copies_are_refused() {
    // A dict copy with an odd number of items.
    assert_eq!(codec::decode_value(Bytes::from_static(&[0xd5, 7, 0x91, 1])), Err(DecodeError::Invalid("dict copy is not key/value pairs")));
    // A slice of two values.
    assert_eq!(codec::decode_value(Bytes::from_static(&[0xc7, 3, 9, 0x92, 1, 2])), Err(DecodeError::Invalid("slice is not 3 values")));
    // Ellipsis with a payload.
    assert_eq!(codec::decode_value(Bytes::from_static(&[0xd4, 10, 0])), Err(DecodeError::Invalid("Ellipsis with a payload")));
    // A list copy claiming 4 billion items inside a 6-byte payload.
    assert_eq!(codec::decode_value(Bytes::from_static(&[0xc7, 5, 6, 0xdd, 0xff, 0xff, 0xff, 0xff])), Err(DecodeError::Truncated));
    // A dict copy claiming 4 billion pairs.
    assert_eq!(codec::decode_value(Bytes::from_static(&[0xc7, 5, 7, 0xdd, 0xff, 0xff, 0xff, 0xfe])), Err(DecodeError::Truncated));
}

#[test]
fn deeply_nested_copies_are_refused() {
    // List copies nested inside each other past the depth limit.
    let mut v = Value::None;
    for i in 0..(codec::MAX_DEPTH + 2) {
        v = match i % 3 {
            0 => Value::List(vec![v]),
            1 => Value::Dict(vec![(Value::Int(0), v)]),
            _ => Value::Slice(Box::new([v, Value::None, Value::None])),
        };
    }
    assert_eq!(codec::decode_value(codec::encode_value(&v)), Err(DecodeError::TooDeep));
}

#[test]
fn builtin_requests_and_cancels_are_exact() {
    let msg = Message::Request { id: 5, op: Request::Builtin { name: "add".into(), args: vec![Value::Int(1), Value::Int(2)] } };
    // [0, 5, 9, "add", [1, 2]]
    assert_eq!(&encode(&msg).to_bytes()[..], &[0x95, 0, 5, 9, 0xa3, b'a', b'd', b'd', 0x92, 1, 2]);
    assert_eq!(decode(encode(&msg).to_bytes()).unwrap(), msg);
    let cancel = encode(&Message::Cancel(300));
    assert_eq!(&cancel.to_bytes()[..], &[0x92, 4, 0xcd, 1, 44]);
    assert_eq!(cancel.route, farcall_core::Route::Oneway);
    assert_eq!(decode(cancel.to_bytes()).unwrap(), Message::Cancel(300));
    // A cancel with extra fields, a builtin with a missing field.
    assert!(decode(Bytes::from_static(&[0x93, 4, 1, 2])).is_err());
    assert!(decode(Bytes::from_static(&[0x94, 0, 1, 9, 0xa1, b'x'])).is_err());
}

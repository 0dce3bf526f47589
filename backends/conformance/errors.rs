// Exceptions described as data, and protocol misuse.

use farcall_core::{Request, Target, Value};

use crate::{call, mine, module, reference, session};

#[test]
fn missing_module_is_module_not_found_with_traceback() {
    let s = session();
    let e = s.evaluate(Request::GetModule { name: "no_such_module".into() });
    let e = e.unwrap_err();
    assert_eq!((e.type_module.as_str(), e.type_name.as_str()), ("builtins", "ModuleNotFoundError"));
    assert_eq!(e.message, "No module named 'no_such_module'");
    assert_eq!(e.args, vec![Value::Str("No module named 'no_such_module'".into())]);
    assert!(e.traceback.starts_with("Traceback (most recent call last):"), "{}", e.traceback);
    assert!(e.traceback.contains("ModuleNotFoundError: No module named 'no_such_module'"), "{}", e.traceback);
}

#[test]
fn math_domain_error_is_value_error() {
    let s = session();
    let math = module(&*s, "math");
    let e = call(&*s, &math, "sqrt", vec![Value::Int(-1)]).unwrap_err();
    assert_eq!(e.qualified_type(), "builtins.ValueError");
    assert_eq!(e.message, "math domain error");
    assert!(e.traceback.contains("ValueError: math domain error"), "{}", e.traceback);
}

#[test]
fn exception_from_python_code_names_its_frames_and_module() {
    let s = session();
    let json = module(&*s, "json");
    let e = call(&*s, &json, "loads", vec![Value::Str("{".into())]).unwrap_err();
    assert_eq!(e.qualified_type(), "json.decoder.JSONDecodeError");
    assert!(e.traceback.contains("json/decoder.py"), "{}", e.traceback);
    assert_eq!(e.args, vec![Value::Str(e.message.clone())]);
    assert!(e.message.starts_with("Expecting property name enclosed in double quotes"), "{}", e.message);
}

#[test]
fn exception_args_that_are_not_values_travel_as_repr() {
    let s = session();
    let builtins = module(&*s, "builtins");
    let operator = module(&*s, "operator");
    let d = reference(call(&*s, &builtins, "dict", vec![]).unwrap());
    let key = reference(call(&*s, &builtins, "list", vec![]).unwrap());
    let e = call(&*s, &operator, "getitem", vec![mine(d.id), Value::Tuple(vec![Value::Int(1), mine(key.id)])]).unwrap_err();
    assert_eq!(e.qualified_type(), "builtins.TypeError");
    let obj = reference(call(&*s, &builtins, "object", vec![]).unwrap());
    let e = call(&*s, &operator, "getitem", vec![mine(d.id), mine(obj.id)]).unwrap_err();
    assert_eq!(e.qualified_type(), "builtins.KeyError");
    match e.args.as_slice() {
        [Value::Str(r)] => assert!(r.starts_with("<object object at 0x"), "{r}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_reference_is_a_protocol_error() {
    let s = session();
    let e = s.evaluate(Request::GetAttr { target: Target::object(999_999), name: "x".into() }).unwrap_err();
    assert_eq!(e.qualified_type(), "farcall.ProtocolError");
    assert!(e.message.contains("not (or no longer) valid"), "{}", e.message);
    // Also as an argument.
    let builtins = module(&*s, "builtins");
    let e = call(&*s, &builtins, "len", vec![mine(999_999)]).unwrap_err();
    assert_eq!(e.qualified_type(), "farcall.ProtocolError");
}

#[test]
fn client_objects_without_a_client_to_call_fail_clearly() {
    let s = session();
    let builtins = module(&*s, "builtins");
    let theirs = Value::SenderObject(farcall_core::RefDesc::new(1, "builtins.list"));
    // The session has no client (NoCallbacks): using the client's object fails, clearly.
    let e = call(&*s, &builtins, "len", vec![theirs]).unwrap_err();
    assert_eq!(e.type_module, "farcall", "{e:?}");
    assert!(e.message.contains("no client to call back"), "{}", e.message);
}

#[test]
fn system_exit_and_keyboard_interrupt_are_just_exceptions() {
    let s = session();
    let sys = module(&*s, "sys");
    let e = call(&*s, &sys, "exit", vec![Value::Int(3)]).unwrap_err();
    assert_eq!(e.qualified_type(), "builtins.SystemExit");
    assert_eq!(e.args, vec![Value::Int(3)]);
    // The interpreter is still there.
    let math = module(&*s, "math");
    assert_eq!(call(&*s, &math, "floor", vec![Value::Float(2.5)]).unwrap(), Value::Int(2));
}

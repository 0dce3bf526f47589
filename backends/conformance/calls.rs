// Calls, attributes and module references: the seed's examples.

use farcall_core::{flags, LazyKind, Request, Target, Value};

use crate::{call, call_kw, module, reference, session};

#[test]
fn math_pow_through_get_attr_then_call() {
    let s = session();
    let math = module(&*s, "math");
    assert!(math.is_module());
    assert_eq!(math.type_name, "builtins.module");
    assert!(math.attrs.iter().any(|a| a.name == "pow" && a.kind == LazyKind::Callable));
    let pow = reference(s.evaluate(Request::GetAttr { target: Target::object(math.id), name: "pow".into() }).unwrap());
    assert!(pow.is_callable());
    assert_eq!(pow.type_name, "builtins.builtin_function_or_method");
    let nine =
        s.evaluate(Request::Call { target: Target::object(pow.id), args: vec![Value::Int(3), Value::Int(2)], kwargs: vec![] }).unwrap();
    assert_eq!(nine, Value::Float(9.0));
}

#[test]
fn math_pow_through_a_target_path() {
    let s = session();
    let math = module(&*s, "math");
    assert_eq!(call(&*s, &math, "pow", vec![Value::Int(3), Value::Int(2)]).unwrap(), Value::Float(9.0));
}

#[test]
fn module_variable_of_a_basic_type_arrives_by_value() {
    let s = session();
    let os = module(&*s, "os");
    assert!(os.attrs.iter().any(|a| a.name == "path" && a.kind == LazyKind::Module("posixpath".into())));
    assert!(os.attrs.iter().any(|a| a.name == "PathLike" && a.kind == LazyKind::Class));
    // os.path.sep, with the path resolved at use time.
    let sep = s.evaluate(Request::GetAttr { target: Target { id: os.id, path: vec!["path".into()] }, name: "sep".into() }).unwrap();
    assert_eq!(sep, Value::Str("/".into()));
    // A module reached as an attribute carries hints too.
    let path = reference(s.evaluate(Request::GetAttr { target: Target::object(os.id), name: "path".into() }).unwrap());
    assert!(path.is_module());
    assert!(path.attrs.iter().any(|a| a.name == "join" && a.kind == LazyKind::Callable));
}

#[test]
fn dotted_module_names_import_the_submodule() {
    let s = session();
    let path = module(&*s, "os.path");
    let joined = call(&*s, &path, "join", vec![Value::Str("a".into()), Value::Str("b".into())]).unwrap();
    assert_eq!(joined, Value::Str("a/b".into()));
    // A module not yet imported goes through importlib.
    let colorsys = module(&*s, "colorsys");
    assert!(colorsys.attrs.iter().any(|a| a.name == "rgb_to_hsv"));
}

#[test]
fn the_same_object_keeps_its_id() {
    let s = session();
    let a = module(&*s, "math");
    let b = module(&*s, "math");
    assert_eq!(a.id, b.id);
    assert_eq!(a.attrs, b.attrs);
}

#[test]
fn keyword_arguments() {
    let s = session();
    let builtins = module(&*s, "builtins");
    let v = call_kw(&*s, &builtins, "int", vec![Value::Str("ff".into())], vec![("base", Value::Int(16))]).unwrap();
    assert_eq!(v, Value::Int(255));
}

#[test]
fn classes_are_flagged() {
    let s = session();
    let builtins = module(&*s, "builtins");
    let list = reference(s.evaluate(Request::GetAttr { target: Target::object(builtins.id), name: "list".into() }).unwrap());
    assert_eq!(list.flags, flags::CLASS | flags::CALLABLE);
    assert_eq!(list.type_name, "builtins.type");
    assert!(list.attrs.is_empty());
}

#[test]
fn repr_and_str() {
    let s = session();
    let builtins = module(&*s, "builtins");
    let list = reference(call(&*s, &builtins, "list", vec![Value::Str("ab".into())]).unwrap());
    assert_eq!(s.evaluate(Request::Repr { target: Target::object(list.id) }).unwrap(), Value::Str("['a', 'b']".into()));
    let s_of = s.evaluate(Request::Str { target: Target { id: builtins.id, path: vec!["ValueError".into()] } });
    assert_eq!(s_of.unwrap(), Value::Str("<class 'ValueError'>".into()));
}

#[test]
fn set_and_delete_attributes() {
    let s = session();
    let types = module(&*s, "types");
    let ns = reference(call(&*s, &types, "SimpleNamespace", vec![]).unwrap());
    let target = Target::object(ns.id);
    let set = Request::SetAttr { target: target.clone(), name: "x".into(), value: Value::Int(7) };
    assert_eq!(s.evaluate(set).unwrap(), Value::None);
    let get = Request::GetAttr { target: target.clone(), name: "x".into() };
    assert_eq!(s.evaluate(get.clone()).unwrap(), Value::Int(7));
    let del = Request::DelAttr { target, name: "x".into() };
    assert_eq!(s.evaluate(del).unwrap(), Value::None);
    assert_eq!(s.evaluate(get).unwrap_err().type_name, "AttributeError");
}

#[test]
fn module_hints_follow_a_replaced_or_growing_module() {
    let s = session();
    let types = module(&*s, "types");
    let sys = module(&*s, "sys");
    let operator = module(&*s, "operator");
    let name = Value::Str("farcall_test_replaced".into());
    let install = |m: &farcall_core::RefDesc| {
        let modules = Value::ReceiverObject(Target { id: sys.id, path: vec!["modules".into()] });
        call(&*s, &operator, "setitem", vec![modules, name.clone(), crate::mine(m.id)]).unwrap();
    };
    let has = |attr: &str| {
        let m = module(&*s, "farcall_test_replaced");
        m.attrs.iter().any(|a| a.name == attr)
    };
    let first = reference(call(&*s, &types, "ModuleType", vec![name.clone()]).unwrap());
    install(&first);
    assert!(!has("f"));
    // The namespace grows: the hints follow.
    let set = Request::SetAttr {
        target: Target::object(first.id),
        name: "f".into(),
        value: Value::ReceiverObject(Target { id: operator.id, path: vec!["neg".into()] }),
    };
    s.evaluate(set).unwrap();
    assert!(has("f"));
    // Another module object under the same name.
    let second = reference(call(&*s, &types, "ModuleType", vec![name.clone()]).unwrap());
    install(&second);
    assert!(!has("f"));
    let modules = Value::ReceiverObject(Target { id: sys.id, path: vec!["modules".into()] });
    call(&*s, &operator, "delitem", vec![modules, name]).unwrap();
}

#[test]
fn cancel_raises_timeout_error_in_the_python_code_of_the_request() {
    let s = session();
    let s = &*s;
    crate::execute(s, "import threading\nstarted = threading.Event()\ndef spin():\n    started.set()\n    while True:\n        pass\n");
    let spin = reference(crate::eval(s, "spin").unwrap());
    std::thread::scope(|scope| {
        let running =
            scope.spawn(|| s.evaluate_request(7, Request::Call { target: Target::object(spin.id), args: vec![], kwargs: vec![] }));
        assert_eq!(crate::eval(s, "started.wait(60)").unwrap(), Value::Bool(true));
        s.cancel(7);
        let e = running.join().unwrap().unwrap_err();
        assert_eq!(e.qualified_type(), "builtins.TimeoutError", "{e:?}");
    });
    // Nothing lingers: a cancel of a finished or unknown request does nothing,
    // and the next requests (on any thread) run to their end.
    s.cancel(7);
    s.cancel(12345);
    let done = reference(crate::eval(s, "lambda: sum(range(100000))").unwrap());
    for id in 20..25 {
        let r = s.evaluate_request(id, Request::Call { target: Target::object(done.id), args: vec![], kwargs: vec![] });
        assert_eq!(r.unwrap(), Value::Int(4999950000));
    }
}

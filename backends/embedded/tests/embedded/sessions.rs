// Sessions apart: what one session holds, another cannot see, and closing
// a session frees what it held (one interpreter, one table per session).

use farcall_core::{Request, Target, Value};

use crate::{assert_sessions_apart, call, mine, module, reference, session};

#[test]
fn sessions_do_not_see_each_other() {
    let a = session();
    let b = session();
    assert_sessions_apart(&*a, &*b);
    let builtins_a = module(&*a, "builtins");
    // Dropping a session drops its objects; the other goes on.
    let weakref = module(&*a, "weakref");
    let probe = reference(call(&*a, &builtins_a, "set", vec![]).unwrap());
    let weak = reference(call(&*a, &weakref, "ref", vec![mine(probe.id)]).unwrap());
    let builtins_b = module(&*b, "builtins");
    // Hand the weak reference to session b through a module attribute.
    let sys_a = module(&*a, "sys");
    let set = Request::SetAttr { target: Target::object(sys_a.id), name: "_farcall_test_weak".into(), value: mine(weak.id) };
    a.evaluate(set).unwrap();
    drop(a);
    let sys_b = module(&*b, "sys");
    let dead = call(&*b, &sys_b, "_farcall_test_weak", vec![]).unwrap();
    assert_eq!(dead, Value::None, "the session's set was freed when it closed");
    b.evaluate(Request::DelAttr { target: Target::object(sys_b.id), name: "_farcall_test_weak".into() }).unwrap();
    assert_eq!(call(&*b, &builtins_b, "len", vec![Value::Tuple(vec![])]).unwrap(), Value::Int(0));
}

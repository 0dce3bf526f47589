// Sessions apart: what one session holds, another cannot see, and closing
// a session frees what it held (a worker process per session).

use farcall_core::{Request, Target, Value};

use crate::{call, module, reference, session, stats};

#[test]
fn sessions_do_not_see_each_other() {
    let a = session();
    let b = session();
    let builtins_a = module(&*a, "builtins");
    let list = reference(call(&*a, &builtins_a, "list", vec![]).unwrap());
    assert_eq!(stats(&*b), (0, 0));
    let e = b.evaluate(Request::Repr { target: Target::object(list.id) }).unwrap_err();
    assert_eq!(e.qualified_type(), "farcall.ProtocolError");
    // Each session has a process of its own.
    assert_ne!(crate::worker_pid(&*a), crate::worker_pid(&*b));
    // Dropping a session ends its worker; the other goes on.
    drop(a);
    let builtins_b = module(&*b, "builtins");
    assert_eq!(call(&*b, &builtins_b, "len", vec![Value::Tuple(vec![])]).unwrap(), Value::Int(0));
}

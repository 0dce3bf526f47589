// Sessions apart: what one session holds, another cannot see, and closing
// a session frees what it held (a worker process per session).

use farcall_core::Value;

use crate::{assert_sessions_apart, call, module, session};

#[test]
fn sessions_do_not_see_each_other() {
    let a = session();
    let b = session();
    assert_sessions_apart(&*a, &*b);
    // Each session has a process of its own.
    assert_ne!(crate::worker_pid(&*a), crate::worker_pid(&*b));
    // Dropping a session ends its worker; the other goes on.
    drop(a);
    let builtins_b = module(&*b, "builtins");
    assert_eq!(call(&*b, &builtins_b, "len", vec![Value::Tuple(vec![])]).unwrap(), Value::Int(0));
}

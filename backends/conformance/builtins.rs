// Builtin requests (opcode 9): operators, items and slices, batched
// iteration, copies (obtain/deliver), eval/execute/namespace, context
// managers and teleport from source (every backend).

use farcall_core::{Request, Target, Value};

use farcall_core::EvalSession;

use crate::{builtin, call_ref, eval, execute, mine, reference, session, text};

/// What `code` evaluates to, as an argument for the same session (its own
/// objects go home as targets).
fn obj(s: &dyn EvalSession, code: &str) -> Value {
    match eval(s, code).unwrap() {
        Value::SenderObject(desc) => mine(desc.id),
        v => v,
    }
}

fn int(i: i64) -> Value {
    Value::Int(i)
}

fn slice(start: Value, stop: Value, step: Value) -> Value {
    Value::Slice(Box::new([start, stop, step]))
}

fn tuple(items: Vec<Value>) -> Value {
    Value::Tuple(items)
}

#[test]
fn operators_on_values_and_objects() {
    let s = session();
    let s = &*s;
    assert_eq!(builtin(s, "add", vec![int(2), int(3)]).unwrap(), int(5));
    assert_eq!(builtin(s, "mul", vec![text("ab"), int(3)]).unwrap(), text("ababab"));
    assert_eq!(builtin(s, "truediv", vec![int(7), int(2)]).unwrap(), Value::Float(3.5));
    assert_eq!(builtin(s, "floordiv", vec![int(-7), int(2)]).unwrap(), int(-4));
    assert_eq!(builtin(s, "pow", vec![int(2), int(100)]).unwrap(), eval(s, "2 ** 100").unwrap());
    assert_eq!(builtin(s, "pow3", vec![int(3), int(4), int(5)]).unwrap(), int(1));
    assert_eq!(builtin(s, "xor", vec![int(6), int(3)]).unwrap(), int(5));
    assert_eq!(builtin(s, "and", vec![Value::Bool(true), Value::Bool(false)]).unwrap(), Value::Bool(false));
    assert_eq!(builtin(s, "lt", vec![int(1), int(2)]).unwrap(), Value::Bool(true));
    assert_eq!(builtin(s, "ne", vec![text("a"), text("a")]).unwrap(), Value::Bool(false));
    assert_eq!(builtin(s, "neg", vec![int(5)]).unwrap(), int(-5));
    assert_eq!(builtin(s, "invert", vec![int(0)]).unwrap(), int(-1));
    assert_eq!(builtin(s, "abs", vec![Value::Float(-1.5)]).unwrap(), Value::Float(1.5));
    assert_eq!(builtin(s, "divmod", vec![int(7), int(2)]).unwrap(), tuple(vec![int(3), int(1)]));
    assert_eq!(builtin(s, "round", vec![Value::Float(2.567), int(1)]).unwrap(), Value::Float(2.6));
    assert_eq!(builtin(s, "format", vec![Value::Float(0.5), text(".1%")]).unwrap(), text("50.0%"));
    let e = builtin(s, "truediv", vec![int(1), int(0)]).unwrap_err();
    assert_eq!(e.qualified_type(), "builtins.ZeroDivisionError");
    assert!(e.message.contains("division by zero"), "{}", e.message);

    // On objects: lists concatenate into a new list; += extends in place.
    let a = reference(eval(s, "[1, 2]").unwrap());
    let b = reference(eval(s, "[3]").unwrap());
    let sum = reference(builtin(s, "add", vec![mine(a.id), mine(b.id)]).unwrap());
    assert_ne!(sum.id, a.id);
    assert_eq!(s.evaluate(Request::Repr { target: Target::object(sum.id) }).unwrap(), text("[1, 2, 3]"));
    let same = reference(builtin(s, "iadd", vec![mine(a.id), mine(b.id)]).unwrap());
    assert_eq!(same.id, a.id, "in-place forms return the object itself");
    assert_eq!(builtin(s, "len", vec![mine(a.id)]).unwrap(), int(3));
    assert_eq!(builtin(s, "eq", vec![mine(a.id), mine(sum.id)]).unwrap(), Value::Bool(true));
    assert_eq!(builtin(s, "truth", vec![mine(a.id)]).unwrap(), Value::Bool(true));
    assert_eq!(builtin(s, "hash", vec![text("")]).unwrap(), int(0));
    assert_eq!(builtin(s, "hash", vec![mine(a.id)]).unwrap_err().qualified_type(), "builtins.TypeError");
    assert_eq!(builtin(s, "callable", vec![mine(a.id)]).unwrap(), Value::Bool(false));
    assert_eq!(builtin(s, "int", vec![text("12")]).unwrap(), int(12));
    assert_eq!(builtin(s, "float", vec![text("inf")]).unwrap(), Value::Float(f64::INFINITY));
    assert_eq!(builtin(s, "complex", vec![int(1), int(2)]).unwrap(), Value::Complex(1.0, 2.0));
    assert_eq!(builtin(s, "index", vec![Value::Bool(true)]).unwrap(), int(1));
}

#[test]
fn unknown_builtins_are_protocol_errors() {
    let s = session();
    let e = builtin(&*s, "no_such_builtin", vec![]).unwrap_err();
    assert_eq!(e.qualified_type(), "farcall.ProtocolError");
    assert!(e.message.contains("no_such_builtin"), "{}", e.message);
    let e = builtin(&*s, "__import__", vec![text("os")]).unwrap_err();
    assert_eq!(e.qualified_type(), "farcall.ProtocolError");
}

#[test]
fn items_slices_and_ellipsis() {
    let s = session();
    let s = &*s;
    let list = reference(eval(s, "list(range(6))").unwrap());
    let l = || mine(list.id);
    assert_eq!(builtin(s, "getitem", vec![l(), int(-1)]).unwrap(), int(5));
    assert_eq!(builtin(s, "setitem", vec![l(), int(0), text("zero")]).unwrap(), Value::None);
    assert_eq!(builtin(s, "contains", vec![l(), text("zero")]).unwrap(), Value::Bool(true));
    assert_eq!(builtin(s, "contains", vec![l(), int(0)]).unwrap(), Value::Bool(false));
    assert_eq!(builtin(s, "delitem", vec![l(), int(0)]).unwrap(), Value::None);
    assert_eq!(builtin(s, "getitem", vec![l(), int(9)]).unwrap_err().qualified_type(), "builtins.IndexError");
    // A slice of a list is a new list (by reference); of a str, a str.
    let part = reference(builtin(s, "getitem", vec![l(), slice(int(1), Value::None, int(2))]).unwrap());
    assert_eq!(part.type_name, "builtins.list");
    assert_eq!(s.evaluate(Request::Repr { target: Target::object(part.id) }).unwrap(), text("[2, 4]"));
    assert_eq!(builtin(s, "getitem", vec![text("hello"), slice(int(1), int(3), Value::None)]).unwrap(), text("el"));
    assert_eq!(builtin(s, "getitem", vec![text("hello"), slice(Value::None, Value::None, int(-1))]).unwrap(), text("olleh"));
    // Slice assignment and deletion.
    builtin(s, "setitem", vec![l(), slice(int(0), int(2), Value::None), tuple(vec![text("a"), text("b"), text("c")])]).unwrap();
    builtin(s, "delitem", vec![l(), slice(int(3), Value::None, Value::None)]).unwrap();
    assert_eq!(s.evaluate(Request::Repr { target: Target::object(list.id) }).unwrap(), text("['a', 'b', 'c']"));
    // Slices and Ellipsis travel as themselves, both ways.
    assert_eq!(eval(s, "slice(1, None, 'x')").unwrap(), slice(int(1), Value::None, text("x")));
    assert_eq!(eval(s, "...").unwrap(), Value::Ellipsis);
    assert_eq!(builtin(s, "eq", vec![Value::Ellipsis, Value::Ellipsis]).unwrap(), Value::Bool(true));
    execute(s, "class Grid:\n    def __getitem__(self, key):\n        return repr(key)\n");
    let grid = reference(eval(s, "Grid()").unwrap());
    let key = tuple(vec![Value::Ellipsis, slice(Value::None, int(2), Value::None)]);
    assert_eq!(builtin(s, "getitem", vec![mine(grid.id), key]).unwrap(), text("(Ellipsis, slice(None, 2, None))"));
}

#[test]
fn iterate_fetches_items_in_batches() {
    let s = session();
    let s = &*s;
    let r = reference(eval(s, "range(5)").unwrap());
    let Value::Tuple(reply) = builtin(s, "iterate", vec![mine(r.id), int(3)]).unwrap() else { panic!("iterate replies with a pair") };
    assert_eq!(reply[0], tuple(vec![int(0), int(1), int(2)]));
    let rest = reference(reply[1].clone());
    let Value::Tuple(reply) = builtin(s, "iterate", vec![mine(rest.id), int(3)]).unwrap() else { panic!() };
    assert_eq!(reply, vec![tuple(vec![int(3), int(4)]), Value::None], "exhausted within the batch: no rest");
    // Items that are objects are references; over a container they come in one batch.
    let Value::Tuple(reply) = builtin(s, "iterate", vec![obj(s, "[[0], [1]]"), int(10)]).unwrap() else { panic!() };
    let Value::Tuple(items) = &reply[0] else { panic!() };
    assert_eq!(items.len(), 2);
    assert_eq!(reference(items[1].clone()).type_name, "builtins.list");
    assert_eq!(reply[1], Value::None);
    // Any other iterator stops its batch after an item sent by reference
    // (reading on could change it: a groupby group), not after values.
    let Value::Tuple(reply) = builtin(s, "iterate", vec![obj(s, "(x for x in (1, 2, [3], 4))"), int(10)]).unwrap() else { panic!() };
    let Value::Tuple(items) = &reply[0] else { panic!() };
    assert_eq!(items.len(), 3);
    assert_eq!(reference(items[2].clone()).type_name, "builtins.list");
    assert!(matches!(reply[1], Value::SenderObject(_)), "the generator is not known to be exhausted");
    // An error raised by next() is the reply.
    execute(s, "def broken():\n    yield 1\n    raise KeyError('gone')\n");
    let e = builtin(s, "iterate", vec![obj(s, "broken()"), int(5)]).unwrap_err();
    assert_eq!(e.qualified_type(), "builtins.KeyError");
    // iter/next one at a time.
    let it = reference(builtin(s, "iter", vec![tuple(vec![int(7)])]).unwrap());
    assert_eq!(builtin(s, "next", vec![mine(it.id)]).unwrap(), int(7));
    assert_eq!(builtin(s, "next", vec![mine(it.id)]).unwrap_err().qualified_type(), "builtins.StopIteration");
}

#[test]
fn obtain_copies_and_deliver_makes_objects() {
    let s = session();
    let s = &*s;
    let data = reference(eval(s, "[1, {'a': {2}}, (3, [4]), 'x', None]").unwrap());
    let copy = builtin(s, "obtain", vec![mine(data.id)]).unwrap();
    let expected = Value::List(vec![
        int(1),
        Value::Dict(vec![(text("a"), Value::Set(vec![int(2)]))]),
        tuple(vec![int(3), Value::List(vec![int(4)])]),
        text("x"),
        Value::None,
    ]);
    assert_eq!(copy, expected);
    // Plain values are their own copies; subclasses copy as their base type.
    assert_eq!(builtin(s, "obtain", vec![int(3)]).unwrap(), int(3));
    let counter = obj(s, "__import__('collections').Counter('aab')");
    assert_eq!(builtin(s, "obtain", vec![counter]).unwrap(), Value::Dict(vec![(text("a"), int(2)), (text("b"), int(1))]));
    // What cannot be copied says what and where.
    let e = builtin(s, "obtain", vec![obj(s, "[0, {'k': object()}]")]).unwrap_err();
    assert_eq!(e.qualified_type(), "builtins.TypeError");
    assert!(e.message.contains("object") && e.message.contains("[1]['k']"), "{}", e.message);
    // deliver: a copy becomes a new object, sent back by reference.
    let delivered = reference(builtin(s, "deliver", vec![expected.clone()]).unwrap());
    assert_eq!(delivered.type_name, "builtins.list");
    assert_eq!(s.evaluate(Request::Repr { target: Target::object(delivered.id) }).unwrap(), text("[1, {'a': {2}}, (3, [4]), 'x', None]"));
    assert_eq!(builtin(s, "obtain", vec![mine(delivered.id)]).unwrap(), expected);
    // A copy passed as a call argument is a new, mutable object too.
    let b = crate::module(s, "builtins");
    let d = Value::Dict(vec![(text("k"), Value::List(vec![]))]);
    assert_eq!(crate::call(s, &b, "repr", vec![d]).unwrap(), text("{'k': []}"));
}

#[test]
fn eval_execute_and_the_namespace() {
    let s = session();
    let s = &*s;
    execute(s, "x = 41\ndef f(y):\n    return x + y\n");
    assert_eq!(eval(s, "x + 1").unwrap(), int(42));
    let f = reference(eval(s, "f").unwrap());
    assert_eq!(call_ref(s, f.id, vec![int(2)]).unwrap(), int(43));
    let ns = reference(builtin(s, "namespace", vec![]).unwrap());
    assert_eq!(ns.type_name, "builtins.dict");
    assert_eq!(builtin(s, "getitem", vec![mine(ns.id), text("x")]).unwrap(), int(41));
    builtin(s, "setitem", vec![mine(ns.id), text("x"), int(1)]).unwrap();
    assert_eq!(eval(s, "f(1)").unwrap(), int(2));
    let e = eval(s, "undefined_name").unwrap_err();
    assert_eq!(e.qualified_type(), "builtins.NameError");
    let e = builtin(s, "execute", vec![text("def (")]).unwrap_err();
    assert_eq!(e.qualified_type(), "builtins.SyntaxError");
    // Another session has its own namespace.
    let other = session();
    assert_eq!(eval(&*other, "x").unwrap_err().qualified_type(), "builtins.NameError");
    assert_eq!(builtin(s, "stats", vec![]).unwrap(), s.evaluate(Request::Stats).unwrap());
}

#[test]
fn dir_type_and_isinstance() {
    let s = session();
    let s = &*s;
    let Value::Tuple(names) = builtin(s, "dir", vec![obj(s, "[]")]).unwrap() else { panic!("dir is a tuple by value") };
    assert!(names.contains(&text("append")));
    let list_type = reference(builtin(s, "type", vec![obj(s, "[]")]).unwrap());
    assert_eq!(list_type.type_name, "builtins.type");
    assert_eq!(builtin(s, "isinstance", vec![obj(s, "[]"), mine(list_type.id)]).unwrap(), Value::Bool(true));
    let bool_type = obj(s, "bool");
    let int_type = obj(s, "int");
    assert_eq!(builtin(s, "issubclass", vec![bool_type, int_type]).unwrap(), Value::Bool(true));
}

#[test]
fn context_managers_enter_and_exit() {
    let s = session();
    let s = &*s;
    execute(
        s,
        "class CM:\n    log = []\n    def __enter__(self):\n        self.log.append('enter')\n        return 5\n    \
         def __exit__(self, et, ev, tb):\n        self.log.append((et.__name__ if et else None, str(ev) if ev else None))\n        \
         return et is KeyError\ncm = CM()\n",
    );
    let cm = obj(s, "cm");
    assert_eq!(builtin(s, "enter", vec![cm.clone()]).unwrap(), int(5));
    let none = || Value::None;
    assert_eq!(builtin(s, "exit", vec![cm.clone(), none(), none(), none()]).unwrap(), Value::Bool(false));
    let swallowed = builtin(s, "exit", vec![cm.clone(), text("builtins"), text("KeyError"), text("k")]).unwrap();
    assert_eq!(swallowed, Value::Bool(true));
    builtin(s, "exit", vec![cm, text("no_such_module"), text("Oops"), text("custom")]).unwrap();
    let log = obj(s, "CM.log");
    let log = builtin(s, "obtain", vec![log]).unwrap();
    let entry = |a: Value, b: Value| tuple(vec![a, b]);
    assert_eq!(
        log,
        Value::List(vec![
            text("enter"),
            entry(none(), none()),
            entry(text("KeyError"), text("'k'")),
            entry(text("RemoteError"), text("custom")),
        ])
    );
}

#[test]
fn teleport_from_source() {
    let s = session();
    let s = &*s;
    let payload = |name: &str, source: &str, globals: Vec<(Value, Value)>, modules: Vec<(Value, Value)>, defaults: Value| {
        Value::Dict(vec![
            (text("name"), text(name)),
            (text("source"), text(source)),
            (text("globals"), Value::Dict(globals)),
            (text("modules"), Value::Dict(modules)),
            (text("defaults"), defaults),
            (text("kwdefaults"), Value::None),
            (text("closure"), Value::Dict(vec![])),
        ])
    };
    // Indented source (a nested function), a module and a global by value, a default.
    let source = "    def hyp(a, b=4):\n        return m.sqrt(a * a + b * b) * scale\n";
    let p = payload("hyp", source, vec![(text("scale"), int(2))], vec![(text("m"), text("math"))], tuple(vec![int(4)]));
    let f = reference(builtin(s, "teleport", vec![text("source"), p]).unwrap());
    assert!(f.is_callable());
    assert_eq!(call_ref(s, f.id, vec![int(3)]).unwrap(), Value::Float(10.0));
    // Recursion finds its own name; a lambda is found by its name "<lambda>".
    let fact = payload("fact", "def fact(n):\n    return 1 if n < 2 else n * fact(n - 1)\n", vec![], vec![], Value::None);
    let fact = reference(builtin(s, "teleport", vec![text("source"), fact]).unwrap());
    assert_eq!(call_ref(s, fact.id, vec![int(10)]).unwrap(), int(3_628_800));
    let lam = payload("<lambda>", "f = lambda x: x + 1\n", vec![], vec![], Value::None);
    let lam = reference(builtin(s, "teleport", vec![text("source"), lam]).unwrap());
    assert_eq!(call_ref(s, lam.id, vec![int(1)]).unwrap(), int(2));
    // Failures are farcall.TeleportError with the reason.
    let bad = payload("g", "def g(:\n", vec![], vec![], Value::None);
    let e = builtin(s, "teleport", vec![text("source"), bad]).unwrap_err();
    assert_eq!(e.qualified_type(), "farcall.TeleportError");
    let e = builtin(s, "teleport", vec![text("carrier-pigeon"), Value::None]).unwrap_err();
    assert_eq!(e.qualified_type(), "farcall.TeleportError");
}

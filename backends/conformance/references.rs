// Object tables: references passed back, releases, concurrency (every backend).

use farcall_core::{Release, Request, Target, Value};

use crate::{call, mine, module, reference, session, stats};

#[test]
fn a_list_is_a_reference_that_can_be_passed_back() {
    let s = session();
    let builtins = module(&*s, "builtins");
    let list = reference(call(&*s, &builtins, "list", vec![Value::Tuple(vec![Value::Int(1), Value::Int(2), Value::Int(3)])]).unwrap());
    assert_eq!(list.type_name, "builtins.list");
    assert_eq!(list.flags, 0);
    assert_eq!(call(&*s, &builtins, "len", vec![mine(list.id)]).unwrap(), Value::Int(3));
    // A method through the target path.
    let target = Target { id: list.id, path: vec!["append".into()] };
    let append = Request::Call { target, args: vec![Value::Int(4)], kwargs: vec![] };
    assert_eq!(s.evaluate(append).unwrap(), Value::None);
    assert_eq!(call(&*s, &builtins, "len", vec![mine(list.id)]).unwrap(), Value::Int(4));
}

#[test]
fn releases_bring_the_table_back() {
    let s = session();
    let builtins = module(&*s, "builtins");
    let (live0, total0) = stats(&*s);
    let ids: Vec<u64> = (0..10_000).map(|_| reference(call(&*s, &builtins, "object", vec![]).unwrap()).id).collect();
    let (live, total) = stats(&*s);
    assert_eq!(live, live0 + 10_000);
    assert_eq!(total, total0 + 10_000);
    let releases: Vec<Release> = ids.iter().map(|&id| Release { id, count: 1 }).collect();
    for batch in releases.chunks(1000) {
        s.release(batch);
    }
    assert_eq!(stats(&*s), (live0, total0 + 10_000));
    // Released ids are gone for good; unknown and excess releases are ignored.
    let e = call(&*s, &builtins, "len", vec![mine(ids[0])]).unwrap_err();
    assert_eq!(e.qualified_type(), "farcall.ProtocolError");
    s.release(&[Release { id: ids[0], count: 5 }, Release { id: 12_345_678, count: 1 }]);
    assert_eq!(stats(&*s).0, live0);
}

#[test]
fn an_object_sent_twice_needs_two_releases() {
    let s = session();
    let builtins = module(&*s, "builtins");
    let (live0, _) = stats(&*s);
    let list = reference(call(&*s, &builtins, "list", vec![]).unwrap());
    // `tuple((x, x))` sends the list twice more.
    let pair = call(&*s, &builtins, "tuple", vec![Value::Tuple(vec![mine(list.id), mine(list.id)])]).unwrap();
    let Value::Tuple(items) = pair else { panic!() };
    assert!(items.iter().all(|i| reference(i.clone()).id == list.id));
    assert_eq!(stats(&*s).0, live0 + 1);
    s.release(&[Release { id: list.id, count: 2 }]);
    assert_eq!(call(&*s, &builtins, "len", vec![mine(list.id)]).unwrap(), Value::Int(0));
    s.release(&[Release { id: list.id, count: 1 }]);
    assert_eq!(stats(&*s).0, live0);
}

#[test]
fn concurrent_calls_on_one_session() {
    let s = session();
    let math = module(&*s, "math");
    let builtins = module(&*s, "builtins");
    std::thread::scope(|scope| {
        for t in 0..4i64 {
            let (s, math, builtins) = (&*s, &math, &builtins);
            scope.spawn(move || {
                for i in 0..2_000i64 {
                    let x = t * 10_000 + i;
                    let v = call(s, math, "pow", vec![Value::Int(x), Value::Int(2)]).unwrap();
                    assert_eq!(v, Value::Float((x * x) as f64));
                    if i % 10 == 0 {
                        let list = reference(call(s, builtins, "list", vec![]).unwrap());
                        s.release(&[Release { id: list.id, count: 1 }]);
                    }
                }
            });
        }
    });
}

#[test]
fn a_blocked_call_does_not_hold_up_the_session() {
    // One thread waits on an Event (releasing the GIL) inside a call; another
    // call on the same session sets it. If the session held a lock across
    // Python code, the second call could not run and the wait would time out.
    let s = session();
    let threading = module(&*s, "threading");
    let event = reference(call(&*s, &threading, "Event", vec![]).unwrap());
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            s.evaluate(Request::Call {
                target: Target { id: event.id, path: vec!["wait".into()] },
                args: vec![Value::Float(60.0)],
                kwargs: vec![],
            })
        });
        let set = Request::Call { target: Target { id: event.id, path: vec!["set".into()] }, args: vec![], kwargs: vec![] };
        s.evaluate(set).unwrap();
        assert_eq!(waiter.join().unwrap().unwrap(), Value::Bool(true));
    });
}

#[test]
fn a_sleeping_call_does_not_hold_up_the_session() {
    // time.sleep(2) on one thread; calls on another thread of the same
    // session are answered while it sleeps.
    let s = session();
    let time = module(&*s, "time");
    let math = module(&*s, "math");
    std::thread::scope(|scope| {
        let sleeper = scope.spawn(|| call(&*s, &time, "sleep", vec![Value::Int(2)]));
        // Make sure the sleep has started: the worker answers this only after reading it.
        let started = std::time::Instant::now();
        for i in 0..20i64 {
            assert_eq!(call(&*s, &math, "pow", vec![Value::Int(i), Value::Int(2)]).unwrap(), Value::Float((i * i) as f64));
        }
        assert!(!sleeper.is_finished(), "the quick calls waited for the sleeping one");
        println!("20 calls answered in {:?} while another call slept", started.elapsed());
        assert_eq!(sleeper.join().unwrap().unwrap(), Value::None);
    });
}

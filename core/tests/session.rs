// The session state machine with two sessions wired back to back in memory:
// request ids, pending replies, exported objects and their release.

use std::sync::Mutex;

use farcall_core::session::{cancel_frame, release_frame, reply_frame, sender_objects};
use farcall_core::transport::memory_pair;
use farcall_core::{Connection, ExportTable, Incoming, RefDesc, Release, ReleaseQueue, Request, Session, SessionError, Target, Value};

/// The "server" side: answers `GetModule` with a new object and `Stats` with
/// its table size, applying releases as they come.
fn serve_one(conn: &dyn Connection, session: &Mutex<Session>, table: &Mutex<ExportTable<String, String>>) {
    let body = conn.recv().unwrap();
    let incoming = session.lock().unwrap().receive(body).unwrap();
    match incoming {
        Incoming::Request { id, op: Request::GetModule { name } } => {
            let oid = table.lock().unwrap().export(name.clone(), || name.clone());
            conn.send(&[&reply_frame(id, Ok(Value::SenderObject(RefDesc::new(oid, "module"))))]).unwrap();
        }
        Incoming::Request { id, op: Request::Stats } => {
            let n = table.lock().unwrap().len() as i64;
            conn.send(&[&reply_frame(id, Ok(Value::Int(n)))]).unwrap();
        }
        Incoming::Release(refs) => {
            let mut t = table.lock().unwrap();
            for r in refs {
                t.release(r.id, r.count);
            }
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn requests_replies_and_releases_between_two_sessions() {
    let (a, b) = memory_pair();
    let client = Mutex::new(Session::new());
    let server = Mutex::new(Session::new());
    let table = Mutex::new(ExportTable::new());
    let releases = ReleaseQueue::new();

    // Two requests in flight; replies matched by id.
    let (id1, f1) = client.lock().unwrap().request(&Request::GetModule { name: "math".into() });
    let (id2, f2) = client.lock().unwrap().request(&Request::GetModule { name: "math".into() });
    assert_ne!(id1, id2);
    a.send(&[&f1, &f2]).unwrap();
    serve_one(&b, &server, &table);
    serve_one(&b, &server, &table);
    let mut got = Vec::new();
    for _ in 0..2 {
        let incoming = client.lock().unwrap().receive(a.recv().unwrap()).unwrap();
        let Incoming::Reply(id) = incoming else { panic!("{incoming:?}") };
        got.push(client.lock().unwrap().take_reply(id).unwrap().unwrap());
    }
    // The same object sent twice has one id and a count of two.
    assert_eq!(got[0], got[1]);
    let Value::SenderObject(desc) = &got[0] else { panic!() };
    assert_eq!(table.lock().unwrap().len(), 1);

    // Giving back one reception keeps it; the second frees it.
    releases.push(desc.id, 1);
    a.send(&[&release_frame(releases.take())]).unwrap();
    serve_one(&b, &server, &table);
    assert_eq!(table.lock().unwrap().len(), 1);
    releases.push(desc.id, 1);
    a.send(&[&release_frame(releases.take())]).unwrap();
    serve_one(&b, &server, &table);
    assert!(table.lock().unwrap().is_empty());

    // Ids are never reused.
    let (_, f) = client.lock().unwrap().request(&Request::GetModule { name: "math".into() });
    a.send(&[&f]).unwrap();
    serve_one(&b, &server, &table);
    let incoming = client.lock().unwrap().receive(a.recv().unwrap()).unwrap();
    let Incoming::Reply(id) = incoming else { panic!() };
    let Ok(Value::SenderObject(again)) = client.lock().unwrap().take_reply(id).unwrap() else { panic!() };
    assert!(again.id > desc.id);
    assert_eq!(client.lock().unwrap().in_flight(), 0);
}

#[test]
fn a_reply_to_an_unknown_request_is_a_protocol_error() {
    let mut s = Session::new();
    let frame = reply_frame(77, Ok(Value::None));
    assert!(matches!(s.receive(frame.to_bytes()), Err(SessionError::UnknownReply(77))));
}

#[test]
fn a_late_reply_to_an_abandoned_request_is_handed_back_once() {
    let mut s = Session::new();
    let (id, _) = s.request(&Request::Stats);
    assert_eq!(s.abandon(id), None);
    assert_eq!(s.abandoned(), 1);
    let late = Value::Tuple(vec![Value::SenderObject(RefDesc::new(7, "list")), Value::SenderObject(RefDesc::new(7, "list"))]);
    assert_eq!(s.receive(reply_frame(id, Ok(late.clone())).to_bytes()).unwrap(), Incoming::Late { id, result: Ok(late.clone()) });
    assert_eq!(s.abandoned(), 0);
    // Its references, to give back: id 7 received twice.
    assert_eq!(sender_objects(&late), vec![Release { id: 7, count: 2 }]);
    // Only once: a second copy is a violation.
    assert!(s.receive(reply_frame(id, Ok(Value::None)).to_bytes()).is_err());
    assert_eq!(s.in_flight(), 0);
}

#[test]
fn abandoning_after_the_reply_arrived_returns_it() {
    let mut s = Session::new();
    let (id, _) = s.request(&Request::Stats);
    assert_eq!(s.receive(reply_frame(id, Ok(Value::Int(3))).to_bytes()).unwrap(), Incoming::Reply(id));
    assert_eq!(s.abandon(id), Some(Ok(Value::Int(3))));
    assert_eq!((s.in_flight(), s.abandoned()), (0, 0));
    // Unknown ids: nothing.
    assert_eq!(s.abandon(999), None);
    assert_eq!(s.abandoned(), 0);
}

#[test]
fn cancels_are_surfaced_and_close_fails_what_is_pending() {
    let mut s = Session::new();
    assert_eq!(s.receive(cancel_frame(12).to_bytes()).unwrap(), Incoming::Cancel(12));
    let (a, _) = s.request(&Request::Stats);
    let (b, _) = s.request(&Request::Stats);
    let (c, _) = s.request(&Request::Stats);
    s.receive(reply_frame(b, Ok(Value::None)).to_bytes()).unwrap();
    s.abandon(c);
    let mut open = s.close();
    open.sort();
    assert_eq!(open, vec![a]);
    // The reply that had arrived can still be taken; nothing else is pending.
    assert_eq!(s.take_reply(b), Some(Ok(Value::None)));
    assert_eq!((s.in_flight(), s.abandoned()), (0, 0));
}

#[test]
fn sender_objects_walks_every_container() {
    let r = |id| Value::SenderObject(RefDesc::new(id, "object"));
    let v = Value::List(vec![
        r(1),
        Value::Dict(vec![(r(2), r(1))]),
        Value::Set(vec![r(3)]),
        Value::FrozenSet(vec![r(4)]),
        Value::Slice(Box::new([r(5), Value::None, Value::Ellipsis])),
        Value::ReceiverObject(Target::object(6)),
    ]);
    let got = sender_objects(&v);
    assert_eq!(
        got,
        vec![
            Release { id: 1, count: 2 },
            Release { id: 2, count: 1 },
            Release { id: 3, count: 1 },
            Release { id: 4, count: 1 },
            Release { id: 5, count: 1 }
        ]
    );
    assert!(sender_objects(&Value::Int(1)).is_empty());
}

#[test]
fn export_table_counts_and_forgets() {
    let mut t: ExportTable<&str, u32> = ExportTable::new();
    let a = t.export(1, || "a");
    assert_eq!(t.export(1, || "a-again"), a);
    assert_eq!(t.get(a), Some(&"a"));
    assert_eq!(t.release(a, 1), None);
    assert_eq!(t.release(a, 1), Some("a"));
    assert_eq!(t.get(a), None);
    // Releasing unknown ids or too much is harmless.
    assert_eq!(t.release(a, 5), None);
    let b = t.export(1, || "b");
    assert_ne!(a, b);
    assert_eq!(t.exported_total(), 2);
    assert_eq!(t.drain(), vec!["b"]);
}

#[test]
fn receiver_targets_survive_the_codec() {
    let mut s = Session::new();
    let target = Target { id: 3, path: vec!["path".into(), "join".into()] };
    let (id, frame) =
        s.request(&Request::Call { target: target.clone(), args: vec![Value::ReceiverObject(target.clone())], kwargs: vec![] });
    let mut peer = Session::new();
    let Incoming::Request { id: got, op: Request::Call { target: t, args, .. } } = peer.receive(frame.to_bytes()).unwrap() else {
        panic!()
    };
    assert_eq!((got, t), (id, target.clone()));
    assert_eq!(args, vec![Value::ReceiverObject(target)]);
}

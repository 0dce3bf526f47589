"""Unit tests of farcall_semantics and farcall_worker's codec (stdlib
unittest; run by ``cargo test -p farcall-backend-subprocess`` through
tests/python.rs, or ``python3 -m unittest`` in this folder)."""

import os
import struct
import sys
import threading
import unittest

# farcall_semantics.py is shared with the embedded backend (backends/python).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))

import farcall_semantics as sem
import farcall_worker as w


def request(request_id, op, *fields):
    """Encodes a request as core's codec does (fields given as encoder calls)."""
    e = w.Encoder(True)
    e.array(3 + len(fields))
    e.uint(0)
    e.uint(request_id)
    e.uint(op)
    for f in fields:
        f(e)
    return bytes(b"".join(e.finish()))


def value_bytes(v):
    e = w.Encoder(True)
    e.value(v)
    return bytes(b"".join(e.finish()))


def decode_value(data):
    d = w.Decoder(data)
    v = d.value()
    d.end()
    return v


class CodecTest(unittest.TestCase):
    def test_values_round_trip(self):
        for v in [
            None,
            True,
            False,
            0,
            127,
            128,
            -1,
            -32,
            -33,
            -129,
            2**31,
            -(2**31) - 1,
            2**63 - 1,
            -(2**63),
            2**63,
            -(2**63) - 1,
            2**200,
            -(2**200),
            1.5,
            float("inf"),
            -0.0,
            1 + 2j,
            "",
            "é" * 40,
            "x" * 70000,
            b"",
            b"\x00" * 300,
            b"y" * 70000,
            (),
            (1, (2, (3,))),
            tuple(range(20)),
            frozenset([1, 2, "a"]),
            sem.Target(3, ["a", "b"]),
            sem.Ref(9, "builtins.module", 2, (sem.LazyAttr("f", 0), sem.LazyAttr("C", 1), sem.LazyAttr("p", 2, "posixpath"))),
        ]:
            self.assertEqual(decode_value(value_bytes(v)), v)

    def test_layout_matches_cores(self):
        # Bytes produced by farcall_core::codec for the same messages.
        self.assertEqual(b"".join(w.encode_reply(5, 9.0)), b"\x93\x01\x05\xcb\x40\x22" + b"\x00" * 6)
        self.assertEqual(value_bytes(2**63), b"\xc7\x09\x01" + b"\x00" * 7 + b"\x80\x00")
        self.assertEqual(value_bytes(-1), b"\xff")
        self.assertEqual(value_bytes(1 - 2j), b"\xd8\x02" + struct.pack("<dd", 1.0, -2.0))
        self.assertEqual(value_bytes(frozenset([1])), b"\xd5\x03\x91\x01")
        self.assertEqual(value_bytes(sem.Target(1, ["pow"])), b"\xc7\x06\x05\x92\x01\xa3pow")
        data = sem.ExceptionData("builtins", "ValueError", ["m"], "m", "")
        self.assertEqual(
            b"".join(w.encode_error(2, data)),
            b"\x93\x02\x02\x95\xa8builtins\xaaValueError\x91\xa1m\xa1m\xa0",
        )

    def test_large_bytes_are_separate_chunks(self):
        big = b"z" * (w.ZERO_COPY_MIN + 1)
        chunks = w.encode_reply(1, (big, 1))
        self.assertTrue(any(c is big for c in chunks))

    def test_requests_decode(self):
        body = request(
            7,
            sem.CALL,
            lambda e: e.target(sem.Target(1, ["pow"])),
            lambda e: (e.array(2), e.int(3), e.int(2)),
            lambda e: (e.array(2), e.str("base"), e.int(16)),
        )
        self.assertEqual(w.decode_message(body), (w.KIND_REQUEST, 7, sem.CALL, (sem.Target(1, ["pow"]), (3, 2), [("base", 16)])))
        self.assertEqual(w.decode_message(request(1, sem.STATS)), (w.KIND_REQUEST, 1, sem.STATS, ()))
        self.assertEqual(w.decode_message(b"\x95\x03\x01\x02\x07\x01"), (w.KIND_RELEASE, [(1, 2), (7, 1)]))

    def assertMalformed(self, data, text):
        with self.assertRaises(w.MalformedMessage) as caught:
            w.decode_message(data)
        self.assertIn(text, str(caught.exception))

    def test_malformed_input_is_refused_clearly(self):
        good = request(1, sem.GET_MODULE, lambda e: e.str("math"))
        self.assertMalformed(good[:-1], "truncated")
        self.assertMalformed(good + b"\x00", "1 trailing bytes")
        self.assertMalformed(b"\x90", "empty message")
        self.assertMalformed(b"\x92\x00\x01", "request without an operation")
        self.assertMalformed(b"\x80", "expected an array")
        self.assertMalformed(b"\x94\x00\x01\x01\x01", "expected a string")
        self.assertMalformed(b"\x94\x00\x01\x01\xa2\xff\xfe", "not valid UTF-8")
        self.assertMalformed(b"\x95\x00\x01\x01\xa1m\xa1n", "wrong number of fields")
        self.assertMalformed(b"\x94\x00\xff\x01\xa1m", "negative id or count")
        self.assertMalformed(b"\x94\x03\x01\x02\x03", "not id/count pairs")
        self.assertMalformed(b"\x93\x03\x01\xcf\x00\x00\x00\x01\x00\x00\x00\x00", "release count out of range")
        self.assertMalformed(b"\x92\x01\x01", "reply is not 3 fields")
        self.assertMalformed(b"\x93\x02\x01\x94\xa1m\xa1n\x90\xa1x", "exception is not 5 fields")
        self.assertMalformed(b"\x93\x04\x01\x01", "cancel is not 2 fields")
        self.assertMalformed(b"\x91\x09", "unknown message kind 9")
        self.assertMalformed(b"\xdd\xff\xff\xff\xff", "truncated")
        # A call whose argument is a map, an unknown extension, a bad target.
        call = lambda arg: request(1, sem.CALL, lambda e: e.target(sem.Target(1)), lambda e: (e.array(1), e.buf.extend(arg)), lambda e: e.array(0))
        self.assertMalformed(call(b"\x80"), "expected a value")
        self.assertMalformed(call(b"\xd4\x0b\x00"), "unknown value extension type")
        self.assertMalformed(call(b"\xd4\x01\x00"[:2] + b""), "truncated")
        self.assertMalformed(call(b"\xc7\x00\x01"), "empty big integer")
        self.assertMalformed(call(b"\xd6\x02\x00\x00\x00\x00"), "complex is not 16 bytes")
        self.assertMalformed(call(b"\xd4\x05\x90"), "empty target")
        self.assertMalformed(call(b"\xd5\x04\x91\x01"), "object reference is not 4 fields")
        self.assertMalformed(call(b"\xd5\x03\x90\x00"), "trailing bytes")
        odd_kwargs = request(1, sem.CALL, lambda e: e.target(sem.Target(1)), lambda e: e.array(0), lambda e: (e.array(1), e.str("k")))
        self.assertMalformed(odd_kwargs, "odd keyword argument list")

    def test_replies_and_cancels_decode(self):
        self.assertEqual(w.decode_message(b"\x93\x01\x05\xc0"), (w.KIND_REPLY_OK, 5, None))
        kind, rid, data = w.decode_message(b"\x93\x02\x02\x95\xa8builtins\xaaValueError\x91\xa1m\xa1m\xa2tb")
        self.assertEqual((kind, rid), (w.KIND_REPLY_ERR, 2))
        self.assertEqual(data, sem.ExceptionData("builtins", "ValueError", ("m",), "m", "tb"))
        self.assertIsInstance(data, sem.ExceptionData)
        self.assertEqual(w.decode_message(b"\x92\x04\x07"), (w.KIND_CANCEL, 7))

    def test_builtin_requests_decode(self):
        body = request(3, w.OP_BUILTIN, lambda e: e.str("add"), lambda e: (e.array(2), e.int(1), e.int(2)))
        self.assertEqual(w.decode_message(body), (w.KIND_REQUEST, 3, w.OP_BUILTIN, ("add", (1, 2))))

    def test_callback_requests_match_cores_layout(self):
        # [0, 1, 9, "add", [1, 2]]
        self.assertEqual(b"".join(w.encode_request(1, w.OP_BUILTIN, ("add", (1, 2)))), b"\x95\x00\x01\x09\xa3add\x92\x01\x02")
        # [0, 2, 5, [7, "f"], [1], ["k", 2]]
        got = b"".join(w.encode_request(2, sem.CALL, (sem.Target(7, ["f"]), (1,), [("k", 2)])))
        self.assertEqual(got, b"\x96\x00\x02\x05\x92\x07\xa1f\x91\x01\x92\xa1k\x02")
        self.assertEqual(b"".join(w.encode_request(2, sem.CALL, (sem.Target(7, ["f"]), (1,), {"k": 2}))), got)
        self.assertEqual(b"".join(w.encode_request(3, sem.STATS, ())), b"\x93\x00\x03\x08")
        self.assertEqual(b"".join(w.encode_request(4, sem.GET_ATTR, (sem.Target(1), "x"))), b"\x95\x00\x04\x02\x91\x01\xa1x")
        with self.assertRaises(sem.ProtocolError):
            w.encode_request(5, sem.CALL, (sem.Ref(1, "x"), (), ()))
        with self.assertRaises(sem.ProtocolError):
            w.encode_request(5, 99, ())
        self.assertEqual(w.encode_release([(3, 1), (9, 2)]), b"\x95\x03\x03\x01\x09\x02")

    @unittest.skipUnless(hasattr(sem, "ListValue"), "farcall_semantics without copies")
    def test_copies_slices_and_ellipsis(self):
        values = [
            sem.ListValue((1, sem.DictValue((("a", sem.SetValue((1, 2))),)), ())),
            sem.DictValue(()),
            sem.SetValue(()),
            slice(1, None, -1),
            slice(None, None, None),
            Ellipsis,
            (Ellipsis, slice(0, 1, 2)),
        ]
        for v in values:
            back = decode_value(value_bytes(v))
            self.assertEqual(back, v)
            self.assertIs(type(back), type(v))
        # The layouts of core's codec.
        self.assertEqual(value_bytes(sem.ListValue((1,))), b"\xd5\x06\x91\x01")
        self.assertEqual(value_bytes(sem.DictValue((("k", 1),))), b"\xd6\x07\x92\xa1k\x01")
        self.assertEqual(value_bytes(sem.SetValue(())), b"\xd4\x08\x90")
        self.assertEqual(value_bytes(slice(1, None, None)), b"\xd6\x09\x93\x01\xc0\xc0")
        self.assertEqual(value_bytes(Ellipsis), b"\xc7\x00\x0a")
        call = lambda arg: request(1, sem.CALL, lambda e: e.target(sem.Target(1)), lambda e: (e.array(1), e.buf.extend(arg)), lambda e: e.array(0))
        self.assertMalformed(call(b"\xd5\x09\x91\x01"), "slice is not 3 values")
        self.assertMalformed(call(b"\xd4\x0a\x00"), "Ellipsis with a payload")
        self.assertMalformed(call(b"\xd5\x07\x91\x01"), "dict copy is not key/value pairs")

    def test_nesting_is_limited_to_64(self):
        deep = lambda n: b"\x91" * n + b"\x01"
        ok = request(1, sem.CALL, lambda e: e.target(sem.Target(1)), lambda e: (e.array(1), e.buf.extend(deep(62))), lambda e: e.array(0))
        w.decode_message(ok)
        too = request(1, sem.CALL, lambda e: e.target(sem.Target(1)), lambda e: (e.array(1), e.buf.extend(deep(64))), lambda e: e.array(0))
        self.assertMalformed(too, "nested deeper than 64")

    def test_unknown_operations_are_answerable(self):
        with self.assertRaises(w.UnknownOperation) as caught:
            w.decode_message(b"\x94\x00\x05\x63\x01")
        self.assertEqual((caught.exception.request_id, caught.exception.op), (5, 99))


class PeerTest(unittest.TestCase):
    """The worker's side of callbacks, over real pipes: requests up, replies
    delivered to the waiting thread by the reading one, releases queued."""

    def setUp(self):
        self.to_worker_r, self.to_worker_w = os.pipe()
        self.from_worker_r, self.from_worker_w = os.pipe()
        self.worker = w.Worker(os.fdopen(self.to_worker_r, "rb"), self.from_worker_w)
        self.out = os.fdopen(self.from_worker_r, "rb")

    def tearDown(self):
        for f in (self.out, self.worker.reader):
            f.close()
        for fd in (self.to_worker_w, self.from_worker_w):
            os.close(fd)

    def to_worker(self, body):
        os.write(self.to_worker_w, struct.pack(">I", len(body)) + body)

    def test_a_callback_round_trip(self):
        peer = self.worker.session.peer
        got = []

        def call():
            try:
                got.append(peer.request(sem.CALL, sem.Target(4, ["f"]), (1, sem.ListValue((2,))), (("k", 3),)))
            except BaseException as e:
                got.append(e)

        t = threading.Thread(target=call, daemon=True)
        t.start()
        body = w.read_frame(self.out)
        self.assertEqual(body, b"\x96\x00\x01\x05\x92\x04\xa1f\x92\x01\xd5\x06\x91\x02\x92\xa1k\x03")
        # The reply arrives ahead of a request: the reading thread delivers it and returns the request.
        self.to_worker(b"\x93\x01\x01\xc7\x06\x04\x94\x09\xa1x\x00\x90")
        self.to_worker(request(1, sem.STATS))
        self.assertEqual(self.worker.next_request(), (w.KIND_REQUEST, 1, sem.STATS, ()))
        t.join(10)
        self.assertEqual(got, [sem.Ref(9, "x")])

    def test_a_callback_that_raised(self):
        peer = self.worker.session.peer
        got = []
        def call():
            try:
                peer.request(sem.REPR, sem.Target(1))
            except sem.PeerError as e:
                got.append(e.data)

        t = threading.Thread(target=call, daemon=True)
        t.start()
        self.assertEqual(w.read_frame(self.out), b"\x94\x00\x01\x06\x91\x01")
        self.to_worker(b"\x93\x02\x01\x95\xa8builtins\xaaValueError\x91\xa1m\xa1m\xa2tb")
        self.to_worker(request(2, sem.STATS))
        self.worker.next_request()
        t.join(10)
        self.assertEqual(got[0], sem.ExceptionData("builtins", "ValueError", ("m",), "m", "tb"))

    def test_replies_nobody_waits_for_are_refused(self):
        self.to_worker(b"\x93\x01\x05\xc0")
        with self.assertRaises(w.MalformedMessage):
            self.worker.next_request()

    def test_releases_go_ahead_of_the_next_frame(self):
        peer = self.worker.session.peer
        peer.release(5, 1)
        peer.release(6, 2)
        self.worker.send(w.encode_reply(3, None))
        self.assertEqual(w.read_frame(self.out), b"\x95\x03\x05\x01\x06\x02")
        self.assertEqual(w.read_frame(self.out), b"\x93\x01\x03\xc0")
        self.worker.send(w.encode_reply(4, None))
        self.assertEqual(w.read_frame(self.out), b"\x93\x01\x04\xc0")


class SemanticsTest(unittest.TestCase):
    def setUp(self):
        self.s = sem.Session()
        self.builtins = self.s.handle(sem.GET_MODULE, "builtins")

    def call(self, name, *args, **kwargs):
        return self.s.handle(sem.CALL, sem.Target(self.builtins.id, [name]), args, list(kwargs.items()))

    def test_exact_types_travel_by_value(self):
        class MyInt(int):
            pass

        self.assertEqual(self.s.box(1), 1)
        self.assertIs(self.s.box(True), True)
        self.assertIsInstance(self.s.box(MyInt(1)), sem.Ref)
        self.assertIsInstance(self.s.box([1]), sem.Ref)
        self.assertIsInstance(self.s.box("\udc80"), sem.Ref)
        t = self.s.box((1, [2]))
        self.assertEqual(t[0], 1)
        self.assertIsInstance(t[1], sem.Ref)
        self.assertEqual(self.s.box(frozenset([1, (2, 3)])), frozenset([1, (2, 3)]))
        nested = ()
        for _ in range(40):
            nested = (nested,)
        boxed = self.s.box(nested)
        depth = 0
        while type(boxed) is tuple:
            boxed = boxed[0]
            depth += 1
        self.assertEqual(depth, 32)
        self.assertEqual(boxed.type_name, "builtins.tuple")

    def test_a_frozenset_holding_a_reference_is_itself_a_reference(self):
        import math

        self.assertIsInstance(self.s.box(frozenset([1, math])), sem.Ref)

    def test_ids_counts_and_releases(self):
        live, total = self.s.stats()
        lst = self.call("list")
        again = self.s.box(self.s.lookup(lst.id))
        self.assertEqual(again.id, lst.id)
        self.assertEqual(self.s.stats(), (live + 1, total + 1))
        self.s.release([(lst.id, 1)])
        self.assertEqual(self.s.stats()[0], live + 1)
        self.s.release([(lst.id, 5), (12345, 1)])
        self.assertEqual(self.s.stats(), (live, total + 1))
        with self.assertRaises(sem.ProtocolError):
            self.s.lookup(lst.id)
        new = self.call("list")
        self.assertGreater(new.id, lst.id)

    def test_client_references_are_refused(self):
        with self.assertRaises(sem.ProtocolError) as caught:
            self.call("len", sem.Ref(1, "client.thing"))
        self.assertIn("not supported yet (got a reference to a client.thing)", str(caught.exception))

    def test_exceptions_as_data(self):
        import math

        m = self.s.box(math)
        try:
            self.s.handle(sem.CALL, sem.Target(m.id, ["sqrt"]), (-1,), [])
        except BaseException as e:
            d = sem.describe(e)
        self.assertEqual(d[:4], ("builtins", "ValueError", ("math domain error",), "math domain error"))
        self.assertTrue(d.traceback.startswith(sem._C_HEADER), d.traceback)
        try:
            self.call("getattr", sem.Target(self.builtins.id), "nope")
        except BaseException as e:
            d = sem.describe(e)
        self.assertEqual(d.type_name, "AttributeError")
        try:
            self.call("len", sem.Target(999))
        except BaseException as e:
            d = sem.describe(e)
        self.assertEqual((d.type_module, d.type_name, d.traceback), ("farcall", "ProtocolError", ""))

    def test_python_frames_of_the_users_code_only(self):
        ns = self.call("dict")
        self.call("exec", "def f():\n    raise KeyError('k')\n", sem.Target(ns.id))
        f = self.s.handle(sem.CALL, sem.Target(ns.id, ["__getitem__"]), ("f",), [])
        try:
            self.s.handle(sem.CALL, sem.Target(f.id), (), [])
        except BaseException as e:
            d = sem.describe(e)
        self.assertEqual(d.traceback.splitlines()[1], '  File "<string>", line 2, in f', d.traceback)
        self.assertNotIn("<farcall", d.traceback)

    def test_calls_see_the_sessions_namespace(self):
        self.call("exec", "import os")
        g = self.call("globals")
        self.assertIs(self.s.lookup(g.id), self.s.namespace)
        self.assertNotIn("Session", self.s.namespace)

    def test_concurrent_exports_get_distinct_ids(self):
        ids = []

        def work():
            for _ in range(500):
                ids.append(self.call("object").id)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(len(set(ids)), 2000)

    def test_module_hints(self):
        os_ref = self.s.handle(sem.GET_MODULE, "os")
        hints = {a.name: a for a in os_ref.attrs}
        self.assertEqual(hints["path"].kind, sem.LAZY_MODULE)
        self.assertEqual(hints["getcwd"].kind, sem.LAZY_CALLABLE)
        self.assertEqual(hints["PathLike"].kind, sem.LAZY_CLASS)
        self.assertNotIn("sep", hints)


if __name__ == "__main__":
    unittest.main()

"""Remote objects behave like the objects they stand for: every operator (reflected and in-place
forms too), comparisons, hash, bool, len, items and slices, `in`, format, dir, callable, `with`,
isinstance/issubclass against remote classes, properties, and attribute assignment with its policy."""

from __future__ import annotations

import operator

import farcall
import pytest
from _support import Server

# A remote class whose every operator answers with what it was asked: (operator, its value, the
# other operand). Tuples of values come back by value, so each answer names the method that ran.
BINARY = ("add", "sub", "mul", "matmul", "truediv", "floordiv", "mod", "pow", "lshift", "rshift", "and", "or", "xor")

_METHODS = []
for _name in BINARY:
    _METHODS.append(f"    def __{_name}__(self, other): return ('{_name}', self.v, other)")
    _METHODS.append(f"    def __r{_name}__(self, other): return ('r{_name}', self.v, other)")
for _name in ("lt", "le", "eq", "ne", "gt", "ge"):
    _METHODS.append(f"    def __{_name}__(self, other): return ('{_name}', self.v, other)")
for _name in ("neg", "pos", "abs", "invert"):
    _METHODS.append(f"    def __{_name}__(self): return ('{_name}', self.v)")

REMOTE_CODE = (
    "class Echo:\n"
    "    __hash__ = None\n"
    "    def __init__(self, v): self.v = v\n"
    + "\n".join(_METHODS)
    + "\n"
    "    def __divmod__(self, other): return ('divmod', self.v, other)\n"
    "    def __rdivmod__(self, other): return ('rdivmod', self.v, other)\n"
    "    def __index__(self): return self.v\n"
    "    def __int__(self): return self.v + 1\n"
    "    def __float__(self): return self.v + 0.5\n"
    "    def __complex__(self): return complex(self.v, 1)\n"
    "    def __round__(self, n=None): return ('round', self.v, n)\n"
    "    def __format__(self, spec): return 'Echo(%d):%s' % (self.v, spec)\n"
    "\n"
    "class Acc:\n"
    "    '''In-place operators mutate and return the same object.'''\n"
    "    def __init__(self, v): self.v = v; self.log = []\n"
    + "".join(
        f"    def __i{name}__(self, other): self.log.append('i{name}'); self.v = ('i{name}', other); return self\n"
        for name in BINARY
    )
    + "\n"
    "class Counted:\n"
    "    def __init__(self): self.reads = 0\n"
    "    @property\n"
    "    def value(self):\n"
    "        self.reads += 1\n"
    "        return self.reads\n"
    "\n"
    "class Recorder:\n"
    "    '''A context manager that records what __enter__ and __exit__ got.'''\n"
    "    def __init__(self, suppress=False): self.events = []; self.suppress = suppress\n"
    "    def __enter__(self):\n"
    "        self.events.append(('enter',))\n"
    "        return 'entered'\n"
    "    def __exit__(self, et, ev, tb):\n"
    "        if et is None:\n"
    "            self.events.append(('exit', None, None, tb is None))\n"
    "        else:\n"
    "            self.events.append(('exit', et.__name__, ev.args[0] if ev.args else None, tb is None))\n"
    "        return self.suppress\n"
    "\n"
    "class Animal: pass\n"
    "class Dog(Animal):\n"
    "    def __init__(self): self.name = 'rex'\n"
    "class Truthy:\n"
    "    def __init__(self, answer): self.answer = answer\n"
    "    def __bool__(self): return self.answer\n"
    "    def __len__(self): return 99\n"
)


@pytest.fixture(scope="module")
def remote(module_conn: farcall.Connection) -> farcall.Connection:
    """The module's connection with the remote classes above defined in its namespace."""
    module_conn.execute(REMOTE_CODE)
    return module_conn


def echo(conn: farcall.Connection, v: int) -> farcall.Proxy:
    return conn.eval(f"Echo({v})")


# -- arithmetic and bitwise operators ---------------------------------------------------------

BINARY_OPERATORS = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "matmul": operator.matmul,
    "truediv": operator.truediv,
    "floordiv": operator.floordiv,
    "mod": operator.mod,
    "pow": operator.pow,
    "lshift": operator.lshift,
    "rshift": operator.rshift,
    "and": operator.and_,
    "or": operator.or_,
    "xor": operator.xor,
}


@pytest.mark.parametrize("name", BINARY)
def test_binary_operator_runs_the_remote_method(remote: farcall.Connection, name: str) -> None:
    op = BINARY_OPERATORS[name]
    assert op(echo(remote, 6), 2) == (name, 6, 2)


@pytest.mark.parametrize("name", BINARY)
def test_reflected_operator_runs_the_remote_reflected_method(remote: farcall.Connection, name: str) -> None:
    op = BINARY_OPERATORS[name]
    assert op(2, echo(remote, 6)) == ("r" + name, 6, 2)


def test_binary_operator_between_two_proxies(remote: farcall.Connection) -> None:
    left, right = echo(remote, 1), echo(remote, 2)
    got = left + right
    assert got[0] == "add" and got[1] == 1
    assert isinstance(got[2], farcall.Proxy) and got[2].v == 2


def test_divmod_and_pow_with_modulo(remote: farcall.Connection) -> None:
    assert divmod(echo(remote, 7), 2) == ("divmod", 7, 2)
    assert divmod(2, echo(remote, 7)) == ("rdivmod", 7, 2)
    big = remote.modules.decimal.Decimal(7)
    assert int(pow(big, 2, 5)) == 4


def test_unary_operators_and_conversions(remote: farcall.Connection) -> None:
    e = echo(remote, 5)
    assert -e == ("neg", 5)
    assert +e == ("pos", 5)
    assert abs(e) == ("abs", 5)
    assert ~e == ("invert", 5)
    assert operator.index(e) == 5
    assert [10, 20, 30, 40, 50, 60][e] == 60  # __index__ makes it usable as a local index
    assert int(e) == 6
    assert float(e) == 5.5
    assert complex(e) == complex(5, 1)
    assert round(e) == ("round", 5, None)
    assert round(e, 2) == ("round", 5, 2)


def test_arithmetic_on_real_remote_numbers(remote: farcall.Connection) -> None:
    Fraction = remote.modules.fractions.Fraction
    half = Fraction(1, 2)
    third = Fraction(1, 3)
    total = half + third
    assert isinstance(total, farcall.Proxy)
    assert str(total) == "5/6"
    assert str(1 - half) == "1/2"
    assert str(half * 3) == "3/2"
    assert str(third / half) == "2/3"
    assert str(-half) == "-1/2"
    assert float(half) == 0.5
    assert str(half**2) == "1/4"
    assert str(2**half)[:5] == "1.414"


# -- in-place operators -------------------------------------------------------------------------

INPLACE = {
    "add": operator.iadd,
    "sub": operator.isub,
    "mul": operator.imul,
    "matmul": operator.imatmul,
    "truediv": operator.itruediv,
    "floordiv": operator.ifloordiv,
    "mod": operator.imod,
    "pow": operator.ipow,
    "lshift": operator.ilshift,
    "rshift": operator.irshift,
    "and": operator.iand,
    "or": operator.ior,
    "xor": operator.ixor,
}


@pytest.mark.parametrize("name", BINARY)
def test_inplace_operator_mutates_the_remote_object(remote: farcall.Connection, name: str) -> None:
    remote.execute("acc = Acc(0)")
    acc = remote.eval("acc")
    result = INPLACE[name](acc, 3)
    assert result == acc  # __iname__ returned self: the same remote object
    assert remote.eval("acc.v") == ("i" + name, 3)
    assert remote.eval("tuple(acc.log)") == ("i" + name,)


def test_inplace_operator_falls_back_to_the_binary_form(remote: farcall.Connection) -> None:
    e = echo(remote, 4)
    e += 1  # Echo has no __iadd__: Python uses __add__
    assert e == ("add", 4, 1)


def test_augmented_assignment_on_remote_list_and_item(remote: farcall.Connection) -> None:
    items = remote.builtins.list((1, 2))
    alias = items
    items += (3, 4)
    assert alias == items  # list.__iadd__ extends in place
    assert remote.builtins.tuple(alias) == (1, 2, 3, 4)
    counts = remote.eval("{'a': 1}")
    counts["a"] += 5
    assert counts["a"] == 6


# -- comparisons, hash, bool --------------------------------------------------------------------


@pytest.mark.parametrize(
    "op, name, reflected",
    [
        (operator.lt, "lt", "gt"),
        (operator.le, "le", "ge"),
        (operator.eq, "eq", "eq"),
        (operator.ne, "ne", "ne"),
        (operator.gt, "gt", "lt"),
        (operator.ge, "ge", "le"),
    ],
)
def test_comparisons_run_the_remote_method(remote: farcall.Connection, op, name: str, reflected: str) -> None:
    assert op(echo(remote, 3), 4) == (name, 3, 4)
    assert op(4, echo(remote, 3)) == (reflected, 3, 4)  # int has no answer: Python asks the proxy, reflected


def test_comparisons_of_remote_values(remote: farcall.Connection) -> None:
    Decimal = remote.modules.decimal.Decimal
    a, b = Decimal("1.5"), Decimal("2.5")
    assert a < b and a <= b and b > a and b >= a and a != b
    assert not (a == b)
    assert a == Decimal("1.5")
    assert a == 1.5 and 1.5 == a
    assert 1 < a < 2
    assert sorted([b, a], key=float) == [a, b]


def test_hash_is_the_remote_hash(remote: farcall.Connection) -> None:
    Decimal = remote.modules.decimal.Decimal
    from decimal import Decimal as LocalDecimal

    assert hash(Decimal("1.5")) == hash(LocalDecimal("1.5"))
    assert hash(remote.eval("(1, 'a')")) == hash((1, "a"))
    assert {Decimal("2"): "two"}[Decimal("2")] == "two"  # equal remote objects, equal hashes
    with pytest.raises(TypeError):
        hash(remote.builtins.list())
    with pytest.raises(TypeError):
        hash(echo(remote, 1))  # __hash__ = None on the server


def test_bool_is_the_remote_truth(remote: farcall.Connection) -> None:
    assert bool(remote.builtins.list()) is False
    assert bool(remote.builtins.list((0,))) is True
    assert bool(remote.eval("Truthy(False)")) is False  # __bool__ wins over __len__
    assert bool(remote.eval("Truthy(True)")) is True
    assert not remote.eval("set()")
    if remote.eval("{}"):
        pytest.fail("an empty remote dict is true")


# -- len, items, slices, in ------------------------------------------------------------------


def test_len(remote: farcall.Connection) -> None:
    assert len(remote.builtins.list(range(7))) == 7
    assert len(remote.eval("{'a': 1, 'b': 2}")) == 2
    assert len(remote.eval("Truthy(True)")) == 99
    with pytest.raises(TypeError):
        len(echo(remote, 1))


def test_items_get_set_delete(remote: farcall.Connection) -> None:
    d = remote.eval("{'a': 1}")
    assert d["a"] == 1
    d["b"] = (2, 3)
    assert d["b"] == (2, 3)
    del d["a"]
    assert farcall.obtain(d) == {"b": (2, 3)}
    with pytest.raises(KeyError):
        d["missing"]
    with pytest.raises(KeyError):
        del d["missing"]
    nested = remote.eval("{'inner': [10, 20, 30]}")
    nested["inner"][1] = 21
    assert nested["inner"][1] == 21
    assert remote.builtins.tuple(nested["inner"]) == (10, 21, 30)


def test_slices_get_set_delete(remote: farcall.Connection) -> None:
    items = remote.builtins.list(range(10))
    assert remote.builtins.tuple(items[2:5]) == (2, 3, 4)
    assert remote.builtins.tuple(items[::3]) == (0, 3, 6, 9)
    assert remote.builtins.tuple(items[-2:]) == (8, 9)
    assert remote.builtins.tuple(items[:]) == tuple(range(10))
    items[0:3] = (100,)
    assert remote.builtins.tuple(items) == (100, 3, 4, 5, 6, 7, 8, 9)
    del items[1::2]
    assert remote.builtins.tuple(items) == (100, 4, 6, 8)
    del items[-1]
    assert remote.builtins.tuple(items) == (100, 4, 6)
    assert items[-1] == 6
    with pytest.raises(IndexError):
        items[10]
    text = remote.builtins.bytearray(b"hello world")
    assert bytes(text[0:5]) == b"hello"


def test_ellipsis_index(remote: farcall.Connection) -> None:
    remote.execute("class Indexed:\n    def __getitem__(self, key): return repr(key)\n")
    indexed = remote.eval("Indexed()")
    assert indexed[...] == "Ellipsis"
    assert indexed[1:2, ...] == "(slice(1, 2, None), Ellipsis)"
    assert indexed[::-1] == "slice(None, None, -1)"


def test_in(remote: farcall.Connection) -> None:
    items = remote.builtins.list((1, "two", (3,)))
    assert 1 in items
    assert "two" in items
    assert (3,) in items
    assert 4 not in items
    d = remote.eval("{'k': 'v'}")
    assert "k" in d and "v" not in d
    assert "ell" in remote.builtins.str("hello")  # a str is a value: local `in`
    assert remote.modules.decimal.Decimal(2) in remote.eval("[2]")


# -- str, repr, format, dir, callable --------------------------------------------------------


def test_repr_str_and_format(remote: farcall.Connection) -> None:
    date = remote.modules.datetime.date(2024, 1, 2)
    assert repr(date) == "datetime.date(2024, 1, 2)"
    assert str(date) == "2024-01-02"
    assert format(date, "%Y/%m/%d") == "2024/01/02"
    assert f"{date:%d.%m.%Y}" == "02.01.2024"
    assert f"{date}" == "2024-01-02"
    assert format(echo(remote, 3), "spec") == "Echo(3):spec"
    assert f"{remote.modules.decimal.Decimal('3.14159'):.2f}" == "3.14"


def test_dir(remote: farcall.Connection) -> None:
    names = dir(remote.builtins.list())
    assert "append" in names and "sort" in names
    dog = remote.eval("Dog()")
    assert "name" in dir(dog)
    assert "pow" in dir(remote.modules.math)


def test_callable_remote_objects_are_callable(remote: farcall.Connection) -> None:
    assert callable(remote.modules.math.pow)
    assert callable(remote.eval("Dog"))  # a class
    assert callable(remote.eval("len"))
    with pytest.raises(TypeError):
        remote.builtins.list()()  # not callable on the server


def test_non_callable_remote_objects_are_not_callable(remote: farcall.Connection) -> None:
    assert not callable(remote.builtins.list())
    assert not callable(remote.eval("Dog()"))
    assert not callable(remote.modules.math)


# -- with ----------------------------------------------------------------------------------


def test_with_without_an_exception(remote: farcall.Connection) -> None:
    recorder = remote.eval("Recorder()")
    with recorder as entered:
        assert entered == "entered"
        assert remote.builtins.tuple(recorder.events) == (("enter",),)
    assert remote.builtins.tuple(recorder.events) == (("enter",), ("exit", None, None, True))


def test_with_an_exception_raised_inside(remote: farcall.Connection) -> None:
    recorder = remote.eval("Recorder()")
    with pytest.raises(ValueError, match="boom"):
        with recorder:
            raise ValueError("boom")
    assert remote.builtins.tuple(recorder.events) == (("enter",), ("exit", "ValueError", "boom", True))


def test_with_an_exception_the_remote_exit_suppresses(remote: farcall.Connection) -> None:
    recorder = remote.eval("Recorder(suppress=True)")
    with recorder:
        raise KeyError("swallowed")
    events = remote.builtins.tuple(recorder.events)
    assert events[1][:2] == ("exit", "KeyError")


def test_with_a_local_exception_type_the_server_does_not_know(remote: farcall.Connection) -> None:
    class OnlyHere(Exception):
        pass

    recorder = remote.eval("Recorder()")
    with pytest.raises(OnlyHere):
        with recorder:
            raise OnlyHere("local")
    kind, name, message = remote.builtins.tuple(recorder.events)[1][:3]
    assert (kind, name, message) == ("exit", "RemoteError", "local")


def test_with_on_real_remote_objects(remote: farcall.Connection) -> None:
    lock = remote.modules.threading.Lock()
    with lock:
        assert lock.locked()
    assert not lock.locked()


# -- isinstance, issubclass --------------------------------------------------------------------


def test_isinstance_and_issubclass_with_remote_classes(remote: farcall.Connection) -> None:
    Animal, Dog = remote.eval("Animal"), remote.eval("Dog")
    dog = Dog()
    assert isinstance(dog, Dog) and isinstance(dog, Animal)
    assert not isinstance(remote.eval("Animal()"), Dog)
    assert issubclass(Dog, Animal)
    assert not issubclass(Animal, Dog)
    assert isinstance(dog, (int, Animal))
    remote_int = remote.builtins.int
    assert isinstance(5, remote_int)  # a local value checked against a remote class
    assert not isinstance("5", remote_int)
    assert not isinstance(dog, remote_int)
    assert isinstance(dog, farcall.Proxy)
    assert not isinstance(dog, int)
    assert isinstance(remote.builtins.list(), remote.builtins.list)


# -- attributes and properties ---------------------------------------------------------------


def test_properties_are_evaluated_on_every_access(remote: farcall.Connection) -> None:
    counted = remote.eval("Counted()")
    assert counted.value == 1
    assert counted.value == 2
    assert counted.value == 3
    assert counted.reads == 3


def test_setattr_and_delattr_are_allowed_by_default(conn: farcall.Connection) -> None:
    ns = conn.modules.types.SimpleNamespace(a=1)
    ns.b = 2
    ns.a = "changed"
    assert ns.a == "changed" and ns.b == 2
    del ns.a
    assert not hasattr(ns, "a")
    with pytest.raises(AttributeError):
        del ns.missing
    with pytest.raises(AttributeError):
        conn.builtins.list().append = 1  # the server refuses it as Python would


def test_setattr_and_delattr_refused_by_policy(guarded_server: Server) -> None:
    with guarded_server.connect() as conn:
        ns = conn.modules.types.SimpleNamespace(a=1)
        with pytest.raises(farcall.PolicyError):
            ns.a = 2
        with pytest.raises(farcall.PolicyError):
            del ns.a
        assert ns.a == 1  # refused before anything was evaluated
        items = conn.builtins.list((1, 2))
        items[0] = 5  # items are not attributes: allowed
        assert items[0] == 5
        assert conn.modules.math.pow(2, 3) == 8.0  # and the connection goes on


def test_repr_never_raises_on_a_closed_connection(server: Server) -> None:
    conn = server.connect()
    items, function = conn.builtins.list((1,)), conn.modules.math.pow
    assert repr(items) == "[1]"
    conn.close()
    for proxy in (items, function):
        text = repr(proxy)
        assert text.startswith("<farcall.Proxy of remote ") and "ConnectionLost" in text, text
    with pytest.raises(farcall.ConnectionLost):
        str(items)
    with pytest.raises(farcall.ConnectionLost):
        len(items)
    with pytest.raises(farcall.ConnectionLost):
        function(2, 2)

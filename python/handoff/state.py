"""State helpers: a bot's dataclasses to JSON bytes and back.

``snapshot()`` and ``restore()`` work with any bytes. Two ways cover most
bots (both are tested in ``python/tests/test_state.py``, with a schema
change and a rollback):

1. **Dataclasses as JSON** (this module): readable, diffable, and a new
   field with a default is a compatible change. ``to_json`` writes a
   dataclass (nested dataclasses, ``Decimal`` as a string, ``dict`` with str
   keys, ``list``, ``tuple``, ``Optional``, ``Enum`` by value) with sorted
   keys; ``from_json`` rebuilds it from the type hints, filling fields the
   bytes lack with their defaults and ignoring fields the class lacks::

       @dataclass
       class State:
           positions: Dict[str, Position] = field(default_factory=dict)
           next_order_seq: int = 0

       class Bot(handoff.App):
           NAME, SCHEMA = "bot", 1
           def snapshot(self):
               return handoff.state.to_json(self.state)
           def restore(self, schema, data, mode):
               self.state = handoff.state.from_json(State, data)

2. **msgpack or pickle of plain data, with the schema number**: compact and
   fast for large states. Pickle only dicts, lists and numbers, never class
   instances: an instance's bytes name its class by module path, so renaming
   or moving the class breaks the restore of every snapshot before.

**A schema change with a rollback.** Version 2 adds a field: it sets
``SCHEMA = 2``, ``READS_SCHEMAS = [1, 2]`` (it reads version 1's state, the
new field at its default) and ``WRITES_SCHEMAS = [2, 1]`` with a
``snapshot_as(1)`` that leaves the new field out. The supervisor then lets
version 1 take back over from version 2 (``supervisorctl rollback``, or
probation), and refuses, before anything is frozen, a version that cannot
read the running one's state.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
import types
import typing
from decimal import Decimal
from typing import Any, Type, TypeVar

__all__ = ["to_json", "from_json", "to_plain", "from_plain", "StateError"]

T = TypeVar("T")

# `Optional[X]`, `Union[X, Y]`, and from Python 3.10 on `X | Y`.
_UNIONS = (typing.Union,) + ((types.UnionType,) if hasattr(types, "UnionType") else ())


class StateError(ValueError):
    """The bytes do not hold the state the class describes (the message
    names the field)."""


def to_plain(value: Any) -> Any:
    """``value`` as JSON-able data: dataclasses as dicts, ``Decimal`` as a
    string, enums by value."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)
        }
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return to_plain(value.value)
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [to_plain(v) for v in value]
        return sorted(items) if isinstance(value, (set, frozenset)) else items
    return value


def to_json(value: Any) -> bytes:
    """A dataclass (or plain data) as compact JSON bytes with sorted keys:
    the same state always gives the same bytes."""
    return json.dumps(
        to_plain(value), sort_keys=True, separators=(",", ":"), allow_nan=False
    ).encode()


def _hints(cls: type) -> dict:
    module = sys.modules.get(cls.__module__)
    return typing.get_type_hints(cls, vars(module) if module else None)


def from_plain(tp: Any, data: Any, where: str = "state") -> Any:
    """Rebuild a value of type ``tp`` from what :func:`to_plain` made."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return data
    if origin is not None and origin in _UNIONS:
        if data is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return from_plain(option, data, where)
            except StateError as e:
                errors.append(str(e))
        raise StateError("; ".join(errors) or f"{where}: no type fits {data!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise StateError(f"{where}: expected an object for {tp.__name__}, got {data!r}")
        hints = _hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in data:
                kwargs[f.name] = from_plain(hints[f.name], data[f.name], f"{where}.{f.name}")
            elif (
                f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
            ):
                raise StateError(f"{where}.{f.name}: missing, and it has no default")
        return tp(**kwargs)
    if tp is Decimal:
        if isinstance(data, (str, int)):
            try:
                return Decimal(data)
            except ArithmeticError as e:
                raise StateError(f"{where}: not a decimal: {data!r}") from e
        raise StateError(f"{where}: a decimal is stored as a string, got {data!r}")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(data)
        except ValueError as e:
            raise StateError(f"{where}: {e}") from e
    if origin in (dict, typing.Dict) or tp is dict:
        if not isinstance(data, dict):
            raise StateError(f"{where}: expected an object, got {data!r}")
        kt, vt = args or (str, Any)
        return {
            from_plain(kt, k, where) if kt is not str else k: from_plain(vt, v, f"{where}[{k!r}]")
            for k, v in data.items()
        }
    if origin in (list, typing.List, set, frozenset, tuple) or tp in (list, set, tuple):
        if not isinstance(data, list):
            raise StateError(f"{where}: expected a list, got {data!r}")
        container = origin or tp
        if container is tuple and args and args[-1] is not Ellipsis:
            return tuple(
                from_plain(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, data))
            )
        et = args[0] if args else Any
        items = [from_plain(et, v, f"{where}[{i}]") for i, v in enumerate(data)]
        return container(items) if container is not list else items
    if tp in (int, float, str, bool):
        if tp is float and isinstance(data, int) and not isinstance(data, bool):
            return float(data)
        if not isinstance(data, tp) or (tp is int and isinstance(data, bool)):
            raise StateError(f"{where}: expected {tp.__name__}, got {data!r}")
        return data
    if tp is type(None):
        if data is not None:
            raise StateError(f"{where}: expected null, got {data!r}")
        return None
    return data


def from_json(cls: Type[T], data: bytes) -> T:
    """Rebuild ``cls`` from :func:`to_json`'s bytes. Fields the bytes lack
    take their defaults, fields ``cls`` lacks are ignored; anything else
    that does not fit raises :class:`StateError` naming the field (which,
    in ``restore``, refuses the takeover: the old worker carries on)."""
    try:
        plain = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise StateError(f"state: not JSON: {e}") from e
    return from_plain(cls, plain)

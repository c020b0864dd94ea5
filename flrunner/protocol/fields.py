"""The fields of a message body: their types, whether they must be there, and their limits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flrunner.errors import BadRequest

#: Deepest nesting accepted inside one field's value. A receiver stores and later echoes values
#: (site resources in the registry listing, progress in status replies) wrapped in a few more
#: levels, which must still encode.
MAX_FIELD_DEPTH = 64
#: Longest job id / site name / token on the wire.
ID_LEN = 128
#: Longest key of a sealed aux payload (public keys are 32 bytes, sealed keys 72).
KEY_LEN = 128

_SCALARS = frozenset((type(None), bool, int, float, str, bytes))


def deeper_than(value: Any, limit: int) -> bool:
    """Whether lists/maps in ``value`` nest more than ``limit`` levels (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        if _SCALARS.issuperset(map(type, children)):  # runs in C: cheap for long lists of numbers
            continue
        stack.extend((v, depth + 1) for v in children if isinstance(v, (dict, list)))
    return False


@dataclass(frozen=True)
class Field:
    """One body field: its accepted Python types and whether it must be present.

    ``values``, for a map field, is the field every value of the map must pass (its keys must be
    strings): a map of site names to keys is checked entry by entry, not just as "a dict".
    """

    types: tuple
    required: bool = True
    max_len: int | None = None
    max_depth: int = MAX_FIELD_DEPTH
    values: Field | None = None

    def check(self, op: str, name: str, value: Any) -> None:
        """Raise `BadRequest` naming ``op`` and ``name`` if ``value`` does not fit."""
        if isinstance(value, bool) and bool not in self.types:
            raise BadRequest(f"op '{op}': field '{name}' must be {self.type_names()}, got bool")
        if not isinstance(value, self.types):
            raise BadRequest(f"op '{op}': field '{name}' must be {self.type_names()}, got {type(value).__name__}")
        if self.max_len is not None and hasattr(value, "__len__") and len(value) > self.max_len:
            raise BadRequest(f"op '{op}': field '{name}' is longer than {self.max_len}")
        if isinstance(value, (dict, list)) and deeper_than(value, self.max_depth):
            raise BadRequest(f"op '{op}': field '{name}' is nested deeper than {self.max_depth} levels")
        if self.values is not None and isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise BadRequest(f"op '{op}': field '{name}' must have string keys, got {type(key).__name__}")
                self.values.check(op, f"{name}.{key[:60]}", item)

    def type_names(self) -> str:
        return " or ".join(sorted({"null" if t is type(None) else t.__name__ for t in self.types}))


def req(*types: type, max_len: int | None = None, values: Field | None = None) -> Field:
    """A field that must be present (and not null)."""
    return Field(types, True, max_len, values=values)


def opt(*types: type, max_len: int | None = None, values: Field | None = None) -> Field:
    """A field that may be absent or null."""
    return Field(types + (type(None),), False, max_len, values=values)

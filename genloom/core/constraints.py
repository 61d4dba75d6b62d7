"""Value constraints of config fields, declared once in the config dataclass and checked by the core.

A field's annotation carries its allowed range as `annotated-types
<https://github.com/annotated-types/annotated-types>`_ metadata::

    from typing import Annotated
    from annotated_types import Ge, Interval

    n_heads: Annotated[int, Ge(1)] = 4
    dropout: Annotated[float, Interval(ge=0, le=1)] = 0.0

or with the short names below (``n_heads: PositiveInt = 4``). :func:`genloom.core.config.build_dataclass`
checks every constraint after the type check, also inside ``Optional[...]``, lists and tuples, and
raises a :class:`~genloom.core.errors.ConfigError` naming the field path, the value and the allowed
range (``ALLOW_INFINITY`` in the metadata lets a float field take ``inf``). Constraints between fields (``d_model`` divisible by ``n_heads``) stay in ``__post_init__``,
whose ``ValueError`` the core re-raises at the path of the first field its message names.

Supported metadata: ``Gt``, ``Ge``, ``Lt``, ``Le``, ``Interval``, ``MultipleOf``, ``MinLen``,
``MaxLen``, ``Len``. Float fields never accept NaN or infinity, constrained or not. This module
imports nothing heavy.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import annotated_types as at
from annotated_types import Ge, Gt, Interval, Le, Len, Lt, MaxLen, MinLen, MultipleOf

__all__ = [
    "Ge", "Gt", "Interval", "Le", "Len", "Lt", "MaxLen", "MinLen", "MultipleOf",
    "PositiveInt", "NonNegativeInt", "PositiveFloat", "NonNegativeFloat", "Probability", "Fraction", "Seed",
    "AnyFloat", "AnyInt", "UNBOUNDED", "ALLOW_INFINITY",
    "constraints_of", "check", "describe",
]

PositiveInt = Annotated[int, Ge(1)]
"""A size or count: at least 1."""
NonNegativeInt = Annotated[int, Ge(0)]
"""A count that may be 0 (warmup steps, extra layers...)."""
PositiveFloat = Annotated[float, Gt(0)]
"""A rate, scale or epsilon: strictly above 0."""
NonNegativeFloat = Annotated[float, Ge(0)]
"""A weight or penalty that may be 0."""
Probability = Annotated[float, Interval(ge=0, le=1)]
"""A probability or rate in [0, 1]."""
Fraction = Annotated[float, Interval(ge=0, lt=1)]
"""A share of something that must leave some of it over: [0, 1)."""
Seed = Annotated[int, Interval(ge=0, lt=2**63)]
"""A random seed: any non-negative 64-bit integer."""




class _Unbounded:
    """Marks a numeric field whose every (finite) value is meaningful, so that a reader (and the
    test that every built-in field declares its range) knows the range was considered."""

    def __repr__(self):
        return "UNBOUNDED"


UNBOUNDED = _Unbounded()
AnyFloat = Annotated[float, UNBOUNDED]
"""Any finite float (a signed penalty, a guidance scale...)."""
AnyInt = Annotated[int, UNBOUNDED]
"""Any integer."""


class _AllowInfinity:
    """Marks a float field for which infinity is a meaningful value (a limit of the method, e.g. an
    infinite decay), so that ``inf`` passes the finiteness check; NaN never does."""

    def __repr__(self):
        return "ALLOW_INFINITY"


ALLOW_INFINITY = _AllowInfinity()


class Violation(Exception):
    """A value outside its declared range; ``str()`` says what is allowed."""


def constraints_of(metadata) -> list:
    """The constraint objects in ``Annotated`` metadata (``Interval`` and other groups expanded)."""
    out = []
    for m in metadata:
        if isinstance(m, at.GroupedMetadata):
            out.extend(constraints_of(list(m)))
        elif isinstance(m, (Gt, Ge, Lt, Le, MultipleOf, MinLen, MaxLen)):
            out.append(m)
    return out


def describe(constraints) -> str:
    """The allowed range in words: ``>= 1``, ``>= 0 and <= 1``, ``a multiple of 8``, ``length >= 1``."""
    words = []
    for c in constraints:
        if isinstance(c, Gt):
            words.append(f"> {c.gt}")
        elif isinstance(c, Ge):
            words.append(f">= {c.ge}")
        elif isinstance(c, Lt):
            words.append(f"< {c.lt}")
        elif isinstance(c, Le):
            words.append(f"<= {c.le}")
        elif isinstance(c, MultipleOf):
            words.append(f"a multiple of {c.multiple_of}")
        elif isinstance(c, MinLen):
            words.append(f"length >= {c.min_length}")
        elif isinstance(c, MaxLen):
            words.append(f"length <= {c.max_length}")
    return " and ".join(words)


def check(value: Any, constraints) -> None:
    """Raise :class:`Violation` if ``value`` breaks one of ``constraints``."""
    for c in constraints:
        ok = True
        if isinstance(c, Gt):
            ok = value > c.gt
        elif isinstance(c, Ge):
            ok = value >= c.ge
        elif isinstance(c, Lt):
            ok = value < c.lt
        elif isinstance(c, Le):
            ok = value <= c.le
        elif isinstance(c, MultipleOf):
            ok = value % c.multiple_of == 0
        elif isinstance(c, MinLen):
            ok = len(value) >= c.min_length
        elif isinstance(c, MaxLen):
            ok = len(value) <= c.max_length
        if not ok:
            raise Violation(f"{value!r} is out of range: allowed {describe(constraints)}")


def finite(value: float) -> bool:
    return math.isfinite(value)

"""Arrays handed to compiled code by address: one int64 table instead of a dozen arguments.

numba checks the type of every argument and unboxes every array on every call: 3 µs a call for the
encoder's nineteen, a third of a whole lookup. A table of addresses and lengths, built once per
snapshot or status, is one argument; the compiled side rebuilds its arrays with `array_at`.
Whoever passes a table must hold the arrays it points into: each table lives beside its arrays in
one object (Lookup, StatusView) and is only used through it.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import numpy.typing as npt
from numba import types
from numba.extending import intrinsic

Table = npt.NDArray[np.int64]


def address(array: npt.NDArray[Any]) -> int:
    """Return where a C-contiguous array's data starts."""
    if not array.flags.c_contiguous:
        raise ValueError("only C-contiguous arrays can be passed by address")
    return int(array.ctypes.data)


def float_bits(value: float) -> int:
    """Return a float as the int64 with the same bits, to store it in a table."""
    return int(np.array([value], np.float64).view(np.int64)[0])


@intrinsic
def _pointer(typingctx: Any, at: Any, dtype: Any) -> Any:  # pragma: no cover - compiled
    pointer = types.CPointer(dtype.dtype)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], context.get_value_type(pointer))

    return pointer(at, dtype), codegen


@numba.njit(nogil=True, cache=True, inline="always")
def array_at(at: int, size: int, dtype: Any) -> Any:  # pragma: no cover - compiled
    """Return the `size` items of `dtype` at address `at` as an array (no copy)."""
    return numba.carray(_pointer(at, dtype), size)  # type: ignore[call-arg]  # numba passes typingctx


@numba.njit(nogil=True, cache=True, inline="always")
def float_at(table: Table, slot: int) -> float:  # pragma: no cover - compiled
    """Return the float stored with float_bits in a table slot."""
    return table[slot : slot + 1].view(np.float64)[0]

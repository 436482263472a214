"""The njit options of every kernel, kept in one place (cache to disk, release the GIL)."""

import numba

JIT_OPTIONS = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")


def njit(*args, **overrides):
    """`numba.njit` with the project's options; keyword overrides win (e.g. parallel=True)."""
    options = {**JIT_OPTIONS, **overrides}
    if args and callable(args[0]):
        return numba.njit(**options)(args[0])
    return numba.njit(*args, **options)

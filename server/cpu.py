"""Process-wide CPU threading defaults. ``import server`` calls :func:`limit_helper_threads`, before
anything imports numpy or CTranslate2 (both read the environment when they load)."""

from __future__ import annotations

import os


def limit_helper_threads() -> None:
    """One OpenMP/OpenBLAS thread for everything but CTranslate2, unless the user says otherwise.

    CTranslate2 sets its own thread count per decode (``--cpu-threads``). Left at their
    defaults, OpenMP and numpy's OpenBLAS (the mel filterbank) start a thread per core that
    spin-waits between calls: a 6 s tiny.en decode took 0.39 CPU-s instead of 0.23 (same wall
    time), CPU stolen from the other sessions' decodes.
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")

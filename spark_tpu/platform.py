"""Emulated CPU devices for the client mesh (tests, demos, experiments without an accelerator)."""

from __future__ import annotations

import glob
import mmap
import os

import jax

# XLA:CPU aborts the process when a device waits longer than this (default 40 s) at a collective.
# NTK-FL's server step runs on one device while the others wait at the next psum, and at the
# reference scale (Ñ = 4,200) on 2 cores it takes longer than that.
_TIMEOUT_FLAG = "xla_cpu_collective_call_terminate_timeout_seconds"
CPU_COLLECTIVE_TIMEOUT_S = 6 * 3600


def _jaxlib_knows(flag: str) -> bool:
    """Whether the installed jaxlib's binaries define `flag` (an unknown XLA flag is fatal)."""
    import jaxlib

    for path in glob.glob(os.path.join(os.path.dirname(jaxlib.__file__), "*.so")):
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            if m.find(flag.encode()) >= 0:
                return True
    return False


def default_cpu_devices() -> int:
    """One emulated device per core, at most 8: emulated devices share the cores, and more of them
    than cores only adds contention (``python -m benchmarks.bench scaling``: an NTK-DFL round on 2
    cores takes 0.71x the 1-device time with 2 devices and 1.05x with 8)."""
    return max(1, min(8, os.cpu_count() or 1))


def limit_blas_threads(threads: int = 1) -> None:
    """At most `threads` threads in every BLAS library of the process (OpenBLAS in numpy and in
    scipy, whose LAPACK jaxlib calls for ``eigh`` and ``qr`` on CPU).

    Why: the solvers' decompositions are tiny (10×10 to 40×40 ``eigh``, a 1,188×10 ``qr``), but
    OpenBLAS runs them on its own thread pool beside XLA's threads, one per emulated device, and
    the threads then wait on each other: in a 20-client NTK-DFL round (Ñ = 1,200, the exponential
    solver, 2 devices on 2 cores) LAPACK took 807 ms of op time with OpenBLAS's default threads and
    160 ms with one (one ``geqrf`` of the Krylov block 8 ms against 0.04 ms), and the round 4.3–4.5 s
    against 3.5–3.7 s (docs/ntk_step.md §8).
    """
    import scipy.linalg  # noqa: F401 - loads scipy's OpenBLAS, so that the limit reaches it too
    import threadpoolctl

    threadpoolctl.threadpool_limits(limits=threads, user_api="blas")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(threads))  # libraries loaded later


def emulate_cpu_devices(count: int, *, blas_threads: int | None = 1) -> None:
    """`count` CPU devices, a long XLA:CPU collective timeout and `blas_threads` BLAS threads
    (`limit_blas_threads`; None leaves the libraries' own); call before JAX starts a backend.

    Used only where there is no accelerator: GPU and TPU backends ignore the first two settings.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if _TIMEOUT_FLAG not in flags and _jaxlib_knows(_TIMEOUT_FLAG):
        os.environ["XLA_FLAGS"] = f"{flags} --{_TIMEOUT_FLAG}={CPU_COLLECTIVE_TIMEOUT_S}".strip()
    jax.config.update("jax_num_cpu_devices", count)
    if blas_threads is not None:
        limit_blas_threads(blas_threads)

"""spectral_jax.host: the CPU host settings the entry points apply (glibc heap, synchronous CPU dispatch)."""

import subprocess
import sys
import textwrap

import pytest

from spectral_jax import host


def _run(script: str) -> str:
    """stdout of a fresh Python process (the settings are per process, and must precede JAX's CPU client)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, check=True
    ).stdout


def test_mallopt_settings_fit_a_c_int():
    """mallopt takes a C int; ctypes truncated a larger Python int silently (1 << 34 arrived as 0)."""
    for param, value in host.MALLOPT_SETTINGS:
        assert -(2**31) <= value < 2**31, (param, value)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tuned_heap_serves_repeated_large_allocations_without_page_faults():
    """After tune_glibc_heap, freeing and reallocating 64 MiB in the main thread and 16 MiB in a long-lived
    worker thread (as XLA's) reuses resident heap pages: no page fault of that thread over five rounds, where the
    untuned heap faults hundreds and the trim threshold truncated to 0 thousands of pages back in."""
    out = _run("""
        import resource, threading, numpy as np
        from spectral_jax.host import tune_glibc_heap
        assert tune_glibc_heap()
        def touch(mb):
            a = np.empty(mb << 20, np.uint8); a[::4096] = 1; del a
        def faults(fn):  # of the calling thread only, so that other threads' work cannot count
            fn()
            f0 = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            for _ in range(5):
                fn()
            return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - f0
        worker = {}
        t = threading.Thread(target=lambda: worker.update(faults=faults(lambda: touch(16))))
        t.start(); t.join()
        print(faults(lambda: touch(64)), worker["faults"])
    """)
    main_faults, thread_faults = map(int, out.split())
    assert main_faults < 50 and thread_faults < 50, out


def test_synchronous_dispatch_only_before_the_cpu_client_exists():
    """Set before the first computation it takes effect (reported True); afterwards it changes nothing and says
    so (False), since JAX reads the mode when it creates the CPU client."""
    out = _run("""
        import jax, jax.numpy as jnp
        from spectral_jax.host import synchronous_cpu_dispatch, tune_cpu_host
        first = tune_cpu_host(heap=False)
        print(first["sync_dispatch"], first["glibc_heap"], jax.config.values["jax_cpu_enable_async_dispatch"])
        print(float(jnp.ones(3).sum()), synchronous_cpu_dispatch())
    """)
    assert out.split() == ["True", "False", "False", "3.0", "True"], out
    late = _run("""
        import jax, jax.numpy as jnp
        from spectral_jax.host import synchronous_cpu_dispatch
        jnp.ones(3).block_until_ready()
        print(synchronous_cpu_dispatch(), jax.config.values["jax_cpu_enable_async_dispatch"])
    """)
    assert late.split() == ["False", "True"], late

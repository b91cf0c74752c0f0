"""experiments._cli: the host allocator tuning the entry points apply."""

import subprocess
import sys
import textwrap

import pytest

from experiments import _cli


def test_mallopt_settings_fit_a_c_int():
    """mallopt takes a C int; ctypes truncated a larger Python int silently (1 << 34 arrived as 0)."""
    for param, value in _cli.MALLOPT_SETTINGS:
        assert -2**31 <= value < 2**31, (param, value)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tuned_heap_serves_repeated_large_allocations_without_page_faults():
    """After tune_host_allocator, freeing and reallocating 64 MiB in the main thread and 16 MiB in fresh threads
    (XLA's workers) reuses resident heap pages: a handful of page faults over five rounds, where the untuned
    heap, or the trim threshold truncated to 0, faults thousands of pages back in."""
    script = textwrap.dedent("""
        import resource, threading, numpy as np
        from experiments._cli import tune_host_allocator
        assert tune_host_allocator()
        def touch(mb):
            a = np.empty(mb << 20, np.uint8); a[::4096] = 1; del a
        def in_thread(mb):
            t = threading.Thread(target=touch, args=(mb,)); t.start(); t.join()
        def faults(fn):
            fn()
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(5):
                fn()
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
        print(faults(lambda: touch(64)), faults(lambda: in_thread(16)))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    main_faults, thread_faults = map(int, out.stdout.split())
    assert main_faults < 200 and thread_faults < 200, out.stdout

"""BLAS threads: set_num_threads/get_num_threads, BACKPROP_NUM_THREADS at import, and joblib workers.

The environment variable is read at import, so those checks run a fresh interpreter. The BLAS's own
variables (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS) are removed from its environment unless a
test sets them, so that the BLAS starts with one thread per core.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

threadpoolctl = pytest.importorskip("threadpoolctl")

from backprop.engine import threads

BLAS_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "GOTO_NUM_THREADS",
             "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "BACKPROP_NUM_THREADS")
MULTI_CORE = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: the BLAS has one thread anyway")


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in BLAS_VARS}
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full, timeout=120, check=False)


REPORT = textwrap.dedent("""
    import json, threadpoolctl
    blas = [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
    print(json.dumps(blas))
""")


def _counts(proc: subprocess.CompletedProcess) -> list[int]:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_set_and_get_num_threads() -> None:
    before = threads.get_num_threads()
    try:
        threads.set_num_threads(1)
        assert threads.get_num_threads() == 1 and set(_blas_threads()) == {1}
        threads.set_num_threads(2)
        assert threads.get_num_threads() == 2
    finally:
        threads.set_num_threads(before)
    assert threads.get_num_threads() == before


def test_threadpool_limits_is_threadpoolctls_and_restores() -> None:
    assert threads.threadpool_limits is threadpoolctl.threadpool_limits
    before = threads.get_num_threads()
    with threads.threadpool_limits(1, user_api="blas"):
        assert threads.get_num_threads() == 1
    assert threads.get_num_threads() == before


@pytest.mark.parametrize("bad", [0, -2, 1.5, "2", True, None])
def test_set_num_threads_rejects_bad_counts(bad) -> None:
    before = threads.get_num_threads()
    with pytest.raises(ValueError, match=r"set_num_threads: n must be an integer >= 1, got " + repr(bad).replace(".", r"\.")):
        threads.set_num_threads(bad)
    assert threads.get_num_threads() == before


@MULTI_CORE
def test_env_var_limits_the_blas_at_import_of_the_threads_module() -> None:
    assert _counts(_python("import backprop.engine.threads" + REPORT, BACKPROP_NUM_THREADS="1")) == [1]


@MULTI_CORE
def test_env_var_limits_the_blas_at_import_of_backprop() -> None:
    assert _counts(_python("import backprop" + REPORT, BACKPROP_NUM_THREADS="1")) == [1]


@MULTI_CORE
def test_env_var_never_raises_a_lower_limit() -> None:
    """OMP_NUM_THREADS=1 (or joblib's limit) stays: BACKPROP_NUM_THREADS only lowers the count."""
    counts = _counts(_python("import backprop.engine.threads" + REPORT, OMP_NUM_THREADS="1", BACKPROP_NUM_THREADS="8"))
    assert counts == [1]


def test_invalid_env_var_warns_and_changes_nothing() -> None:
    code = textwrap.dedent("""
        import warnings
        warnings.simplefilter("always")
        with warnings.catch_warnings(record=True) as caught:
            import backprop.engine.threads
        print(caught[0].category.__name__, "|", caught[0].message)
    """)
    plain = _counts(_python("import numpy\n" + REPORT))
    for bad in ("abc", "0", "-1", "2.5"):
        proc = _python(code + REPORT, BACKPROP_NUM_THREADS=bad)
        assert proc.returncode == 0, proc.stderr
        warning = proc.stdout.splitlines()[0]
        assert warning.startswith("RuntimeWarning") and "BACKPROP_NUM_THREADS" in warning and repr(bad) in warning
        assert "integer >= 1" in warning
        assert _counts(proc) == plain


JOBLIB_SCRIPT = textwrap.dedent("""
    import json
    import numpy as np
    from joblib import Parallel, delayed, parallel_config

    def work(seed):
        import threadpoolctl
        import backprop as bp
        import backprop.engine.threads as threads
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(96, 256)).astype(np.float32)
        y = rng.integers(0, 3, size=96)
        bp.manual_seed(seed)
        model = bp.nn.Sequential(bp.nn.Linear(256, 64), bp.nn.ReLU(), bp.nn.Linear(64, 3))
        bp.fit(model, x, y, batch_size=32, epochs=2, verbose=0)  # batch 32: the small-batch BLAS path
        blas = [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
        return {"blas": blas, "backprop": threads.get_num_threads()}

    with parallel_config(backend="loky", inner_max_num_threads=1):
        out = Parallel(n_jobs=2)(delayed(work)(s) for s in range(4))
    print(json.dumps(out))
""")


def test_joblib_workers_keep_their_one_blas_thread() -> None:
    """Inside loky workers joblib limits the BLAS; backprop (even with BACKPROP_NUM_THREADS=4) keeps it."""
    pytest.importorskip("joblib")
    proc = _python(JOBLIB_SCRIPT, BACKPROP_NUM_THREADS="4")
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == 4
    for r in results:
        assert r["blas"] and set(r["blas"]) == {1} and r["backprop"] == 1, results

"""benchmarks/bench.py: ``all --small`` runs and writes well-formed results; the analytic counts
and the exponent fit are right. No timing thresholds: performance claims live in the JSON files."""

import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks import _flops, _plots, _suites

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = list(_suites.SUITES)
SIM_KEYS = ("seconds_per_round", "compile_s", "peak_rss_mb", "rounds_per_s_per_device")
SUMMARY_KEYS = {
    "baselines": ("dfedavg_over_dpsgd",),
    "ntk_round": ("speedup_vs_quoted_reference",),
    "kernel": ("materialized_over_structured", "ntk_round"),
    "scaling": ("exponents", "device_overhead"),
    "gossip": ("dense_over_ppermute",),
    "fusion": ("dpsgd",),
    "spark_overhead": ("spark_over_ntk_dfl", "paired_ratios"),
    "degree_buckets": ("padded_over_buckets", "paired_ratios"),
}


@pytest.fixture(scope="module")
def small_results(tmp_path_factory):
    """Runs ``python -m benchmarks.bench all --small`` once (about a minute on 2 cores)."""
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "all", "--small", f"--output_dir={out}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def _numbers(value):
    """Every int/float inside a JSON value (bools excluded)."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_small_benchmark_writes_json_and_png(small_results, name):
    out, stdout = small_results
    res = json.loads((out / f"bench_{name}_small.json").read_text())
    assert os.path.getsize(out / f"bench_{name}_small.png") > 1000
    assert f"== {name}:" in stdout
    assert res["benchmark"] == name and res["small"] is True and not res["errors"]
    assert res["command"] == f"python -m benchmarks.bench {name} --small"
    assert res["rows"] and all(isinstance(r["label"], str) for r in res["rows"])
    for row in res["rows"]:
        assert all(math.isfinite(v) and v >= 0 for v in _numbers(row)), row
        if row["kind"] in ("sim", "pair", "fusion"):
            assert all(row[k] > 0 for k in SIM_KEYS), row
    for key in SUMMARY_KEYS[name]:
        assert res["summary"][key], key
    assert all(math.isfinite(v) for v in _numbers(res["summary"]))


@pytest.mark.slow
def test_small_benchmarks_check_their_baselines(small_results):
    """The benchmarks compare paths that must agree: kernels and mixing results."""
    out, _ = small_results
    kernel, gossip, scaling = (
        json.loads((out / f"bench_{name}_small.json").read_text())
        for name in ("kernel", "gossip", "scaling")
    )
    assert all(
        r["relative_difference"] < 1e-4 for r in kernel["rows"] if "relative_difference" in r
    )
    assert all(r["max_abs_difference"] < 1e-4 for r in gossip["rows"])
    assert set(scaling["summary"]["exponents"]) == {"dfedavg", "ntk_dfl"}


def test_unknown_benchmark_is_a_usage_error():
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "nope"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0
    assert "nope" in proc.stderr and "baselines" in proc.stderr


def test_fit_exponent_recovers_a_power_law():
    clients = [64, 128, 256, 512]
    assert _suites.fit_exponent(clients, [3e-4 * q**1.05 for q in clients]) == pytest.approx(
        1.05
    )


def test_solver_products_match_the_solver_schedule():
    # RK4: 8 warm-up grid steps of 4 substeps, then one substep per grid step; 4 stages each.
    assert _flops.solver_products((100, 200, 400, 600, 800)) == 4 * (8 * 4 + 792)
    assert _flops.solver_products((100,), "euler") == 100
    assert _flops.solver_products((4,)) == 4 * 4 * 4


def test_kernel_flops_of_the_reference_mlp():
    n, widths = 1200, [784, 100, 10]
    p = _flops.num_params(widths)
    assert p == 79_510
    # 1200 rows: Grams as the 6 upper blocks of a 3 × 3 split, 400 rows each (6/9 of 2 n² d)
    grams = 6 * 2 * 400 * 400 * (784 + 100 + 100)
    extra = 6 * n * n + 2 * n * p + 2 * n * 10**2 * 100
    assert _flops.kernel_flops(n, widths) == grams + extra
    assert _flops.materialized_kernel_flops(n, widths) > 100 * grams
    small = 300  # below 384 rows, one product per Gram
    assert _flops.kernel_flops(small, widths) == 2 * small**2 * 984 + (
        6 * small**2 + 2 * small * p + 2 * small * 10**2 * 100
    )


def test_format_table_marks_missing_values():
    table = _plots.format_table(
        [{"label": "a", "x": 1.5}, {"label": "b"}], (("name", "label", "s"), ("x", "x", ".2f"))
    )
    assert table.splitlines()[2:] == ["| a | 1.50 |", "| b | — |"]

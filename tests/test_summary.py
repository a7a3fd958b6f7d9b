"""summary.csv, slopes.csv and the end-of-run report of a workdir written without training."""

import csv
import math
import subprocess
import sys

import numpy as np
import pytest
import synthetic_workdir as synthetic

from ncjax import estimates, summary


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic")
    synthetic.write(path)
    summary.write(path)
    return path


def _rows(path):
    return list(csv.DictReader(path.open()))


def _run(rows, depth, seed):
    return next(r for r in rows if (int(r["depth"]), int(r["seed"])) == (depth, seed))


def test_last3_is_the_geometric_mean_for_collapse_and_the_arithmetic_mean_for_accuracy(workdir):
    rows = _rows(workdir / "summary.csv")
    row = _run(rows, *synthetic.DIPPED)
    window = [synthetic.line(*synthetic.DIPPED, step, step == synthetic.STEPS[-1]) for step in synthetic.STEPS[-3:]]
    nc1 = [line["nc1_quotient"] for line in window]
    assert math.isclose(float(row["nc1_quotient_last3"]), math.prod(nc1) ** (1 / 3), rel_tol=1e-12)
    assert math.isclose(float(row["nc1_quotient"]), nc1[-1], rel_tol=1e-12)  # the last evaluation kept as it was
    assert math.isclose(float(row["train_accuracy_last3"]), (1.0 + 1.0 + 0.98) / 3, rel_tol=1e-12)
    assert row["steps_last3"] == "100 300 1000"
    assert float(row["nc4_last3"]) == 0.0  # arithmetic: a fraction that is exactly 0 stays 0


def test_each_estimate_applies_the_failed_run_rule_to_its_own_values(workdir):
    rows = _rows(workdir / "summary.csv")
    dipped, failed = _run(rows, *synthetic.DIPPED), _run(rows, *synthetic.FAILED)
    assert (dipped["status"], dipped["status_last3"]) == ("failed", "ok")  # one checkpoint's dip does not decide
    assert dipped["reason"] == "training accuracy < 0.99 (0.980)"  # the stored config has no summary: defaults
    assert (failed["status"], failed["status_last3"]) == ("failed", "failed")
    assert sum(r["status"] == "ok" for r in rows) == 10 and sum(r["status_last3"] == "ok" for r in rows) == 11


def test_slopes_give_both_estimates_with_r2(workdir):
    slopes = [s for s in _rows(workdir / "slopes.csv") if s["metric"] == "nc1_quotient"]
    assert [s["seed"] for s in slopes] == ["0", "1", "2", "mean", "std"]
    mean = slopes[3]
    assert math.isclose(float(mean["slope_last3"]), synthetic.SLOPE, abs_tol=0.01)
    assert float(mean["r2_last3"]) > 0.99 and float(mean["r2"]) > 0.99
    assert (int(mean["runs_used"]), int(mean["runs_used_last3"])) == (10, 11)  # the dipped run counts in last3 only
    v_shaped = next(s for s in _rows(workdir / "slopes.csv") if s["metric"] == "nc2_etf_w" and s["seed"] == "mean")
    assert float(v_shaped["r2_last3"]) < 0.8


def test_r2_of_the_mean_line_against_a_float64_reference():
    xs, ys = [2, 4, 8, 2, 4, 8], [1.0, 0.5, 0.3, 1.2, 0.6, 0.2]
    slope = -0.6
    lx, ly = np.log10([2, 4, 8]), np.log10([math.sqrt(1.2), math.sqrt(0.3), math.sqrt(0.06)])
    intercept = ly.mean() - slope * lx.mean()
    reference = 1 - ((ly - slope * lx - intercept) ** 2).sum() / ((ly - ly.mean()) ** 2).sum()
    assert math.isclose(estimates.mean_line(xs, ys, slope)[1], reference, rel_tol=1e-12)


def test_geometric_mean_of_zero_and_of_nan():
    assert float(estimates.geometric_mean([0.0, 1.0, 4.0])) == 0.0
    assert math.isnan(float(estimates.geometric_mean([float("nan"), 1.0])))
    assert math.isclose(float(estimates.geometric_mean([1.0, 4.0])), 2.0)


def test_report_names_failures_slopes_and_files(workdir):
    text = summary.report(workdir)
    assert "12 runs: 11 ok, 1 failed" in text and "10 ok, 2 failed" in text
    assert "training accuracy < 0.99: 1 run (depth_016/seed_2 (0.500))" in text
    assert "failed on the last evaluation alone: depth_008/seed_1 (training accuracy < 0.99 (0.980))" in text
    for metric in ("nc1_quotient", "nc2_etf_w", "nc3_cos"):
        assert metric in text
    assert "-0.33 ± 0.00" in text and "R² 1.00" in text
    assert "summary.csv, slopes.csv" in text and "nc_vs_depth.png" in text and "per-block figures" in text


def test_redraw_imports_no_training_code(tmp_path):
    """summary and figures read files only: a redraw loads neither flax nor optax (issue 20)."""
    copy = tmp_path / "w"
    synthetic.write(copy)
    code = ("import sys; from ncjax import summary, figures; summary.write(sys.argv[1]); "
            "print(summary.report(sys.argv[1])); "
            "loaded = {m.split('.')[0] for m in sys.modules} & {'flax', 'optax', 'ml_collections'}; "
            "assert not loaded, loaded")
    result = subprocess.run([sys.executable, "-c", code, str(copy)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (copy / "nc_vs_depth.png").exists() and (copy / "summary.csv").exists()

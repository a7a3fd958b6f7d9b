"""The figures of a workdir written without training: what each one shows, read off the matplotlib objects."""

import math

import pytest
import synthetic_workdir as synthetic

from ncjax import summary
from ncjax.figures import blocks, setup, style, training, trend


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """Every figure of the synthetic workdir, by file name, as it was saved."""
    path = tmp_path_factory.mktemp("synthetic")
    synthetic.write(path)
    figures = {}
    patch = pytest.MonkeyPatch()

    def keep(fig, file):
        figures[file.name] = fig
        style.save_figure(fig, file)

    for module in (trend, training, blocks):
        patch.setattr(module, "save_figure", keep)
    summary.write(path)
    patch.undo()
    return path, figures


def _axes(fig, title):
    return next(ax for ax in fig.axes if ax.get_title() == title)


def _legend(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_every_figure_is_written(drawn):
    path, figures = drawn
    names = {"nc_vs_depth.png", "collapse_vs_steps.png", "collapse_vs_loss.png", "nc1_vs_block.png",
             "cdnv_vs_block.png", "ncc_accuracy_vs_block.png"}
    assert set(figures) == names  # one per-block figure for each *_per_block key, no more
    for name in names:
        assert (path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_titles_state_the_setup(drawn):
    _, figures = drawn
    for fig in figures.values():
        text = fig._suptitle.get_text().replace("\n", " ")  # a long part may wrap onto the next line
        for part in ("L-RN1", "LayerNorm after every block", "width 64", "L = {2, 4, 8, 16}",
                     "1,000 training examples (100 per class × 10)", "1,000 steps (125 epochs)", "batch 128",
                     "λ = 0.005", "Adam, lr 0.005 100 warm-up steps + cosine decay"):
            assert part in text, (part, text)
        assert "synthetic" not in text  # the config's name says nothing to a reader


def test_setup_of_a_panel_and_of_lambda_over_depth():
    config = dict(synthetic.CONFIG, train=dict(synthetic.CONFIG["train"], l2_schedule="inverse_depth"))
    parts = setup.describe(config, {"depth": [2, 4], "train.learning_rate": 0.001})
    assert "λ = 0.005/L" in parts[3] and "lr 0.001" in parts[4] and "L = {2, 4}" in parts[0]


def test_every_panel_has_a_y_label_and_nc4_unc3_their_own_axes(drawn):
    _, figures = drawn
    for fig in figures.values():
        assert all(ax.get_ylabel() for ax in fig.axes if ax.has_data())
    fig = figures["nc_vs_depth.png"]
    nc4, unc3, nc3 = _axes(fig, "NC4"), _axes(fig, "UNC3"), _axes(fig, "NC3")
    assert nc4.get_yscale() == "linear" and nc4.get_ylim()[0] == 0  # nc4 is exactly 0 here
    assert unc3.get_yscale() == "log" and all("unc3" in t for t in _legend(unc3)[:1])
    assert not any("nc4" in t or "unc3" in t for t in _legend(nc3))


def test_a_line_is_fitted_only_where_r2_reaches_the_threshold(drawn):
    fig = drawn[1]["nc_vs_depth.png"]
    nc1, nc2 = _axes(fig, "NC1"), _axes(fig, "NC2")
    assert any(line.get_linestyle() == "--" for line in nc1.get_lines())
    assert "R² = 1.00" in _legend(nc1)[0]
    assert not any(line.get_linestyle() == "--" for line in nc2.get_lines())  # V-shaped against depth
    assert "no line (R² = 0.25)" in _legend(nc2)[0]


def test_legends_are_readable_and_failed_runs_counted(drawn):
    _, figures = drawn
    for fig in figures.values():
        for legend in [ax.get_legend() for ax in fig.axes if ax.get_legend()] + fig.legends:
            assert all(t.get_fontsize() >= 8 for t in legend.get_texts())
    assert "×: failed run (1 here)" in figures["nc_vs_depth.png"]._suptitle.get_text()


def test_a_value_a_log_axis_cannot_show_is_not_drawable(tmp_path):
    rows = [dict(synthetic.line(d, 0, 1000, False), failed=False) for d in synthetic.DEPTHS]
    rows[0]["nc1_quotient"] = 0.0
    figures = {}
    trend.save_figure, original = (lambda fig, file: figures.setdefault("f", fig)), trend.save_figure
    try:
        trend.against_axis(rows, [], "depth", {}, tmp_path / "f.png", ["setup"])
    finally:
        trend.save_figure = original
    assert "nc1_quotient (paper)\n1 not drawable" in _legend(_axes(figures["f"], "NC1"))
    assert "×: failed run (none here)" in figures["f"]._suptitle.get_text()


def test_training_time_on_a_log_axis_without_failed_runs(drawn):
    fig = drawn[1]["collapse_vs_steps.png"]
    panels = [ax for ax in fig.axes if ax.has_data()]
    assert [ax.get_ylabel() for ax in panels] == ["nc1_quotient (paper) (log)", "nc2_etf_w (paper) (log)",
                                                  "nc3_cos (paper) (log)", "test_nc1_quotient (log)", "train_accuracy",
                                                  "test_accuracy", "test_ncc_accuracy"]
    assert all(ax.get_xscale() == "log" for ax in panels)
    nc1 = panels[0]
    assert len(nc1.collections) == len(synthetic.DEPTHS)  # a min–max band per depth
    # depth 16 has its failed seed left out: the geometric mean of the two others at the last step
    top = max(line.get_ydata()[-1] for line in nc1.get_lines() if line.get_label() == "L = 16")
    kept = [synthetic.line(16, s, 1000, True)["nc1_quotient"] for s in (0, 1)]
    assert math.isclose(top, math.sqrt(kept[0] * kept[1]), rel_tol=1e-9)
    assert "1 failed run left out" in fig._suptitle.get_text()


def test_collapse_against_loss_one_line_per_run_that_passes(drawn):
    fig = drawn[1]["collapse_vs_loss.png"]
    runs = len(synthetic.DEPTHS) * len(synthetic.SEEDS) - 1
    assert [len(ax.get_lines()) for ax in fig.axes] == [runs, runs]
    assert _legend(fig.axes[1]) == [f"L = {d}" for d in synthetic.DEPTHS]


def test_per_block_lines_one_per_depth(drawn):
    ax = drawn[1]["nc1_vs_block.png"].axes[0]
    assert [len(line.get_xdata()) for line in ax.get_lines()] == list(synthetic.DEPTHS)
    assert ax.get_yscale() == "log" and drawn[1]["ncc_accuracy_vs_block.png"].axes[0].get_yscale() == "linear"


def test_points_sort_numerically_not_as_text():
    points = [(13,), (2,), (None,), (3,), (0.5,), ("rn2",)]
    assert sorted(points, key=style.point_order) == [(0.5,), (2,), (3,), (13,), (None,), ("rn2",)]


def test_log_limits_cover_every_value_with_a_margin():
    low, high = style.log_limits([0.05, 0.2, 0.1])
    assert low < 0.05 < 0.2 < high
    assert math.isclose(math.log10(high / 0.2), math.log10(0.05 / low))  # symmetric on a log axis
    assert style.log_limits([]) is None


def test_file_suffix_spells_the_point_as_the_run_folders():
    assert style.file_suffix({}) == ""
    assert style.file_suffix({"depth": 1}) == "-depth_001"
    assert style.file_suffix({"train.l2": 0.0005, "data.source": "tfds:mnist"}) == "-l2_0.0005-source_tfds_mnist"

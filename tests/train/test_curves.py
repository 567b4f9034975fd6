"""The training curves (dp_fast.train.curves): which panels, what each draws, log scales, legends, the
smoothing, the PNG file, and `dp-fast curves` on a folder that holds only logs.jsonl."""
import json

import numpy as np
import pytest
from matplotlib.image import imread

from dp_fast.cli import main as cli_main
from dp_fast.train.curves import draw_curves, plot_curves, series, smooth


def _rows(rollouts: bool):
    steps = [{"global_step": s, "epoch": (s - 1) // 10, "train_loss": 1.0 / s, "lr": 1e-4 * min(1, s / 5)}
             for s in range(1, 41)]
    epochs = []
    for e in range(4):
        r = {"epoch": e, "global_step": 10 * (e + 1), "train_loss": 0.5 / (e + 1), "lr": 1e-4, "steps_per_s": 3.0}
        if e % 2 == 0:
            r.update(val_loss=0.6 / (e + 1), train_action_mse_error=0.2 / (e + 1))
        if rollouts and e % 2 == 1:
            r.update(test_success_rate=0.25 * e, train_success_rate=0.5, test_mean_score=0.25 * e)
        epochs.append(r)
    epochs.append({"event": "stopped", "reason": "budget", "epoch": 4, "global_step": 40})
    return steps, epochs


def _axes(fig):
    return {ax.get_title(): ax for ax in fig.axes}


def _line(ax, label):
    lines = [ln for ln in ax.get_lines() if ln.get_label() == label or ln.get_label().startswith(label)]
    assert len(lines) == 1, [ln.get_label() for ln in ax.get_lines()]
    return lines[0]


def test_panels_draw_the_logged_values():
    steps, epochs = _rows(rollouts=True)
    axes = _axes(draw_curves(steps, epochs))
    assert set(axes) == {"loss", "action MSE (EMA policy, training batch)", "learning rate", "rollout success rate"}
    loss = axes["loss"]
    assert loss.get_yscale() == "log" and loss.get_xlabel() == "global step"
    raw = _line(loss, "train (batch)")
    np.testing.assert_array_equal(raw.get_xdata(), np.arange(1, 41))
    np.testing.assert_allclose(raw.get_ydata(), [1.0 / s for s in range(1, 41)])
    val = _line(loss, "validation")
    np.testing.assert_array_equal(val.get_xdata(), [10, 30])  # the epochs that validated
    np.testing.assert_allclose(val.get_ydata(), [0.6, 0.2])
    np.testing.assert_allclose(_line(loss, "train (epoch mean)").get_ydata(), [0.5, 0.25, 0.5 / 3, 0.125])
    legend = [t.get_text() for t in loss.get_legend().get_texts()]
    assert legend[0] == "train (batch)" and legend[1].startswith("train (smoothed") and "validation" in legend
    mse = axes["action MSE (EMA policy, training batch)"]
    assert mse.get_yscale() == "log"
    np.testing.assert_allclose(_line(mse, "train_action_mse_error").get_ydata(), [0.2, 0.2 / 3])
    lr = axes["learning rate"]
    assert lr.get_yscale() == "linear"
    np.testing.assert_allclose(_line(lr, "per batch").get_ydata(), [1e-4 * min(1, s / 5) for s in range(1, 41)])
    succ = axes["rollout success rate"]
    test = _line(succ, "test (test_success_rate)")
    np.testing.assert_array_equal(test.get_xdata(), [20, 40])
    np.testing.assert_allclose(test.get_ydata(), [25.0, 75.0])  # percent
    # ticks are labelled (the axes carry numbers, not only a min / max)
    fig = loss.figure
    fig.canvas.draw()
    assert len([t for t in loss.get_xticklabels() if t.get_text()]) >= 3


def test_success_panel_only_when_rollouts_ran_and_lr_from_epochs_without_steps():
    _, epochs = _rows(rollouts=False)
    axes = _axes(draw_curves([], epochs))
    assert "rollout success rate" not in axes and len(axes) == 3
    assert [ln.get_label() for ln in axes["loss"].get_lines()] == ["train (epoch mean)", "validation"]
    lr = _line(axes["learning rate"], "at epoch end")
    np.testing.assert_array_equal(lr.get_xdata(), [10, 20, 30, 40])


def test_nothing_logged_yet_still_draws():
    axes = _axes(draw_curves([], []))
    assert all(not ax.get_lines() for ax in axes.values())
    assert any(t.get_text() == "no data yet" for t in axes["loss"].texts)


def test_series_skips_missing_non_finite_and_events():
    rows = [{"global_step": 1, "v": 1.0}, {"global_step": 2}, {"global_step": 3, "v": float("nan")},
            {"global_step": 4, "v": None}, {"global_step": 5, "v": True}, {"event": "stopped", "v": 9.0},
            {"global_step": 6, "v": 2}]
    xs, ys = series(rows, "v")
    assert xs.tolist() == [1, 6] and ys.tolist() == [1.0, 2.0]


def test_smooth_starts_at_the_data_and_lags_a_step():
    np.testing.assert_allclose(smooth(np.full(20, 3.0), 5), 3.0)
    step = np.r_[np.zeros(10), np.ones(30)]
    out = smooth(step, 5)
    assert out[0] == 0.0 and out[10] == pytest.approx(0.2 / (1 - 0.8 ** 11)) and 0.99 < out[-1] < 1.0
    assert np.all(np.diff(out[10:]) > 0)
    np.testing.assert_array_equal(smooth(step, 1), step)  # span 1: no smoothing


def test_plot_curves_writes_a_png(tmp_path):
    steps, epochs = _rows(rollouts=True)
    path = tmp_path / "run" / "curves.png"
    plot_curves(path, steps, epochs, title="t")
    img = imread(path)
    assert img.shape[0] > 400 and img.shape[1] > 700  # a 2 x 2 grid at 80 dpi
    assert len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 50  # drawn, not blank
    assert [p.name for p in path.parent.iterdir()] == ["curves.png"]  # no temporary file left


def test_curves_command_on_a_logs_only_folder(tmp_path, capsys):
    _, epochs = _rows(rollouts=False)
    (tmp_path / "logs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in epochs))
    assert cli_main(["curves", str(tmp_path), "--out", str(tmp_path / "c.png")]) == 0
    assert "wrote" in capsys.readouterr().out and imread(tmp_path / "c.png").shape[1] > 700
    assert cli_main(["curves", str(tmp_path / "missing")]) == 2
    assert "logs.jsonl not found" in capsys.readouterr().err

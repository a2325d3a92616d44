"""PNG plots of evaluation results: per-class AP bars and precision-recall curves.

Figures are drawn on matplotlib's Agg canvas directly, without pyplot: no display is needed and
the process-wide backend is left alone.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ssd_jax import files


def _save(figure: Figure, path) -> str:
    """The figure as a PNG at ``path``, written atomically and marked as ssd_jax's (``files``)."""
    path = os.fspath(path)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": files.PRODUCER})
    return files.write_atomically(path, buffer.getvalue())


def plot_class_ap(per_class_ap: Mapping[str, float], path, *, mean_ap: float | None = None,
                  title: str = "Average precision") -> str:
    """Horizontal bars of the per-class APs, first class on top, mAP in the title -> ``path``.

    Args:
      per_class_ap: {class name: AP in [0, 1]}; NaN (no ground truth) is drawn as "n/a".
      path: the PNG to write.
      mean_ap: the mAP for the title; default the mean of the defined APs.
    """
    names = [str(name) for name in per_class_ap]
    values = np.array([float(v) for v in per_class_ap.values()], np.float64)
    defined = ~np.isnan(values)
    if mean_ap is None:
        mean_ap = float(np.mean(values[defined])) if defined.any() else float("nan")

    figure = Figure(figsize=(7, 1.2 + 0.28 * max(len(names), 1)), layout="constrained")
    axes = figure.add_subplot()
    rows = np.arange(len(names))
    axes.barh(rows, np.where(defined, values, 0.0), color="tab:blue")
    for row, value, ok in zip(rows, values, defined):
        axes.text((value if ok else 0.0) + 0.01, row, f"{value:.3f}" if ok else "n/a", va="center", fontsize=8)
    axes.set_yticks(rows, names, fontsize=8)
    axes.set_ylim(len(names) - 0.5, -0.5)  # first class on top, no margins
    axes.set_xlim(0, 1.1)
    axes.set_xlabel("AP")
    if not math.isnan(mean_ap):
        axes.axvline(mean_ap, color="tab:red", linestyle="--", linewidth=1)
    axes.set_title(f"{title}: mAP = {mean_ap:.4f}")
    axes.grid(axis="x", alpha=0.3)
    return _save(figure, path)


def plot_precision_recall(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path, *, columns: int = 4,
                          per_class_ap: Mapping[str, float] | None = None) -> str:
    """A grid of small precision-recall curves, one per class -> ``path``.

    Each plot shows the raw curve and, dashed, its monotone envelope (the all-point AP is the area
    under it).

    Args:
      curves: {class name: (recall [n], precision [n])} in rank order (``PrecisionRecall`` works).
      path: the PNG to write.
      columns: plots per row.
      per_class_ap: optional {class name: AP} shown in the titles.
    """
    count = max(len(curves), 1)
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(2.6 * columns, 2.4 * rows), layout="constrained")
    axes_grid = figure.subplots(rows, columns, squeeze=False)
    for axes, (name, curve) in zip(axes_grid.flat, curves.items()):
        recall, precision = np.asarray(curve[0]), np.asarray(curve[1])
        if len(recall):
            axes.plot(recall, precision, linewidth=1.0, label="raw")
            # The envelope whose area is the all-point AP: best precision at recall >= r.
            envelope = np.maximum.accumulate(precision[::-1])[::-1]
            axes.step(np.concatenate([[0.0], recall]), np.concatenate([envelope[:1], envelope]), where="pre",
                      linewidth=1.0, linestyle="--", color="tab:red", label="envelope")
        else:
            axes.text(0.5, 0.5, "no detections", ha="center", va="center", fontsize=8, color="gray")
        title = str(name)
        if per_class_ap is not None and name in per_class_ap and not math.isnan(per_class_ap[name]):
            title += f" (AP {per_class_ap[name]:.3f})"
        axes.set_title(title, fontsize=9)
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1.05)
        axes.set_xlabel("recall", fontsize=8)
        axes.set_ylabel("precision", fontsize=8)
        axes.tick_params(labelsize=7)
        axes.grid(alpha=0.3)
    for axes in axes_grid.flat[len(curves):]:
        axes.set_visible(False)
    return _save(figure, path)


def plot_training_curve(history_path, path) -> str | None:
    """The loss, its parts and the learning rate (and mAP, when evaluated) against the step, from a
    ``metrics.jsonl`` -> ``path``.

    Returns None when the history holds no loss yet.
    """
    import json

    records = [json.loads(line) for line in open(history_path)] if os.path.exists(history_path) else []
    losses = [(r["step"], r["loss"], r.get("loss/localization"), r.get("loss/confidence")) for r in records
              if "loss" in r]
    if not losses:
        return None
    maps = [(r["step"], r["voc07_mAP"], r.get("voc_mAP")) for r in records if "voc07_mAP" in r]
    figure = Figure(figsize=(9, 4.5))
    loss_axes = figure.add_subplot(1, 2 if maps else 1, 1)
    steps = [s for s, *_ in losses]
    loss_axes.plot(steps, [v for _, v, _, _ in losses], label="total")
    if losses[0][2] is not None:
        loss_axes.plot(steps, [loc for _, _, loc, _ in losses], label="localization", alpha=0.7)
        loss_axes.plot(steps, [conf for _, _, _, conf in losses], label="confidence", alpha=0.7)
    loss_axes.set(xlabel="step", ylabel="multibox loss", title="training loss and learning rate")
    loss_axes.set_yscale("log")
    loss_axes.grid(alpha=0.3)
    rates = [(r["step"], r["learning_rate"]) for r in records if "learning_rate" in r]
    handles, labels = loss_axes.get_legend_handles_labels()
    if rates:
        rate_axes = loss_axes.twinx()
        (line,) = rate_axes.plot([s for s, _ in rates], [v for _, v in rates], color="gray", linestyle=":",
                                 label="learning rate")
        rate_axes.set_ylabel("learning rate")
        rate_axes.set_ylim(bottom=0)
        handles, labels = handles + [line], labels + ["learning rate"]
    loss_axes.legend(handles, labels)
    if maps:
        map_axes = figure.add_subplot(1, 2, 2)
        map_axes.plot([s for s, *_ in maps], [m for _, m, _ in maps], "o-", label="VOC07 11-point mAP")
        map_axes.plot([s for s, *_ in maps], [m for _, _, m in maps], "s--", label="all-point mAP", alpha=0.7)
        map_axes.set(xlabel="step", ylabel="mAP@0.5", ylim=(0, 1), title=f"evaluation (last {maps[-1][1]:.3f})")
        map_axes.grid(alpha=0.3)
        map_axes.legend(loc="lower right")
    figure.tight_layout()
    return _save(figure, path)

"""Figures a person would rather look at than read: curves, confusion matrices, sweep comparisons,
expressions over time."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def training_curves(history: dict[str, list[float]], title: str = "") -> plt.Figure:
    """Loss and accuracy per epoch, train vs validation, side by side."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "accuracy")):
        for prefix, label in (("", "train"), ("val_", "validation")):
            values = history.get(prefix + key)
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=label)
        ax.set(xlabel="epoch", ylabel=key, title=key)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_matrix_figure(cm: np.ndarray, classes: list[str], title: str = "") -> plt.Figure:
    """Row-normalised confusion matrix with the raw counts in each cell."""
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set(
        xticks=range(len(classes)),
        yticks=range(len(classes)),
        xticklabels=classes,
        yticklabels=classes,
        xlabel="predicted",
        ylabel="true",
    )
    ax.set_title(title or f"confusion matrix (accuracy {np.trace(cm) / max(cm.sum(), 1):.1%})")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                f"{cm[i, j]}\n{norm[i, j]:.0%}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


STATUS_COLOURS = {
    "FINISHED": "tab:blue",
    "PRUNED": "tab:purple",
    "RUNNING": "tab:orange",
    "FAILED": "tab:red",
    "KILLED": "tab:gray",
}


def shade_sweeps(ax: plt.Axes, spans: list[tuple[int, int, str]], label_y: float) -> None:
    """Each sweep's jobs (first, last, label) shaded in turn, labelled above them at `label_y`."""
    for i, (first, last, label) in enumerate(spans):
        ax.axvspan(first - 0.5, last + 0.5, color="0.93" if i % 2 else "0.97", zorder=0)
        if len(spans) <= 30:
            ax.text((first + last) / 2, label_y, label, ha="center", va="bottom", fontsize=7,
                    rotation=0 if len(spans) < 8 else 60)  # fmt: skip


def story_timeline(
    scores: list[float | None],
    statuses: list[str],
    spans: list[tuple[int, int, str]],
    bands: list[tuple[int, int, float, float]],
    metric: str,
    title: str = "",
    lower_is_better: bool = False,
) -> plt.Figure:
    """Every job's metric in launch order with the best so far as a step line.

    statuses: FINISHED, PRUNED, FAILED, KILLED, RUNNING per job; jobs without a score sit on the
    bottom edge as crosses. spans: (first, last, label) of each sweep, shaded in turn.
    bands: (first, last, mean, std) of configs repeated with several seeds, drawn as mean +- std.
    """
    n = len(scores)
    fig, ax = plt.subplots(figsize=(min(18, 6 + 0.04 * n), 4.5))
    known = [s for s in scores if s is not None]
    low = min(known) if known else 0.0
    high = max(known) if known else 1.0
    pad = max((high - low) * 0.1, 0.01)
    floor = low - pad
    shade_sweeps(ax, spans, high + pad * 0.6)
    for first, last, mean, std in bands:
        ax.fill_between([first - 0.4, last + 0.4], mean - std, mean + std, color="tab:green", alpha=0.2, zorder=1)
        ax.hlines(mean, first - 0.4, last + 0.4, color="tab:green", linewidth=1, zorder=1)
    for status in ("FINISHED", "PRUNED", "FAILED", "KILLED", "RUNNING"):
        idx = [i for i, st in enumerate(statuses) if st == status]
        ys = [scores[i] if scores[i] is not None else floor for i in idx]
        colour = STATUS_COLOURS[status]
        if not idx:
            continue
        if status in ("FINISHED", "PRUNED"):  # pruned: hollow
            face = "none" if status == "PRUNED" else colour
            ax.scatter(idx, ys, marker="o", facecolors=face, edgecolors=colour, label=status.lower(), zorder=3, s=22)
        else:
            ax.scatter(idx, ys, marker="x", color=colour, label=status.lower(), zorder=3, s=22)
    sign = -1.0 if lower_is_better else 1.0  # fmax skips the jobs without a score
    line = sign * np.fmax.accumulate(sign * np.array([np.nan if v is None else v for v in scores], dtype=float))
    ax.step(range(n), line, where="post", color="black", linewidth=1.2, label="best so far", zorder=2)
    ax.set(xlabel="jobs in launch order", ylabel=metric, xlim=(-0.7, n - 0.3), ylim=(floor - pad * 0.5, high + pad * 2))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def sweep_comparison(rows: list[dict], metric: str, title: str = "") -> plt.Figure:
    """Jobs as bars, best first, coloured by status; then the metric by each differing setting.

    rows: dicts with label, status, value (None: not measured yet) and settings {key: value}.
    """
    keys = list(rows[0]["settings"]) if rows else []
    fig, axes = plt.subplots(1, 1 + len(keys), figsize=(6 + 3 * len(keys), 1.5 + 0.4 * len(rows)), squeeze=False)
    values = [r["value"] if r["value"] is not None else 0.0 for r in rows]
    colours = [STATUS_COLOURS.get(r["status"], "tab:gray") for r in rows]
    ax, y = axes[0, 0], np.arange(len(rows))[::-1]
    ax.barh(y, values, color=colours)
    for yi, r, v in zip(y, rows, values):
        ax.text(v, yi, f" {v:.3f}" + ("" if r["status"] == "FINISHED" else f" {r['status']}"), va="center", fontsize=8)
    ax.set_yticks(y, [r["label"] for r in rows], fontsize=8)
    ax.set(xlabel=metric, xlim=(0, max(values + [1e-9]) * 1.3), title="jobs, best first")
    for ax, key in zip(axes[0, 1:], keys):
        levels = sorted({r["settings"][key] for r in rows})
        ax.scatter([levels.index(r["settings"][key]) for r in rows], values, c=colours)
        ax.set_xticks(range(len(levels)), levels, fontsize=8)
        ax.set(xlabel=key, ylabel=metric, title=f"by {key}", xlim=(-0.5, len(levels) - 0.5))
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def cost_front(
    points: list[tuple[float | None, float | None]],
    labels: list[str],
    front: list[bool],
    metric: str,
    title: str = "",
) -> plt.Figure:
    """Each run's score against its training minutes; the front (no run better for less) joined and labelled.

    points: (minutes, score) per run, None where unknown (those are left out); front: per run.
    """
    fig, ax = plt.subplots(figsize=(7, 4.5))
    known = [(m, s, label, f) for (m, s), label, f in zip(points, labels, front) if m is not None and s is not None]
    if known:
        ax.scatter([m for m, *_ in known], [s for _, s, *_ in known], color="0.6", s=22, label="runs", zorder=2)
        best = sorted((m, s, label) for m, s, label, f in known if f)
        ax.plot([m for m, *_ in best], [s for _, s, _ in best], "o-", color="tab:red", label="front", zorder=3)
        for m, s, label in best:
            ax.annotate(label, (m, s), textcoords="offset points", xytext=(4, 4), fontsize=7)
    else:
        ax.text(0.5, 0.5, "no finished run with training minutes yet", ha="center", transform=ax.transAxes)
    ax.set(xlabel="training minutes", ylabel=metric, title=title or "cost: score against training minutes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def probability_timeline(times: np.ndarray, probs: np.ndarray, classes: list[str], title: str = "") -> plt.Figure:
    """One line per class: its probability over time (seconds), e.g. for the largest face of a clip."""
    fig, ax = plt.subplots(figsize=(10, 4))
    for k, name in enumerate(classes):
        ax.plot(times, probs[:, k], marker="o", markersize=2, label=name)
    ax.set(xlabel="time (s)", ylabel="probability", ylim=(0, 1), title=title or "class probabilities over time")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    fig.tight_layout()
    return fig


def save(fig: plt.Figure, path) -> None:
    fig.savefig(path, dpi=100)
    plt.close(fig)

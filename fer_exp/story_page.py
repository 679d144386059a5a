"""The story page: story.html (self-contained, figures embedded as data URIs, no script and nothing
fetched) and story.md (the same content, figures as files beside it), from a Story (built by fer_exp.story)."""

from __future__ import annotations

import base64
import html
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from fer_exp import plots, tracking
from fer_exp.sweeps import results

# What the page shows; fer_exp.story builds them from the experiment's runs and calls write().


@dataclass
class Section:
    """A sweep (its parent's record and jobs) or a single run, as launched."""

    title: str
    parent: dict | None
    jobs: list[dict]
    command: str = ""
    rows: list[dict] = field(default_factory=list)  # results.job_rows: best first, the settings that differ
    best: dict | None = None  # its best row
    before: float | None = None  # the best score of every job launched before this section
    effects: dict[str, dict[str, tuple[float, int]]] = field(default_factory=dict)  # param -> value -> (mean, n)


@dataclass
class Story:
    experiment: str
    metric: str
    jobs: list[dict]  # launch order
    scores: list[float | None]  # the metric of each job, None when it has none (failed, pruned, running)
    sections: list[Section]
    noise: list[dict]  # configs run with several seeds: {"label", "mean", "std", "n", "jobs"}
    spread: float | None  # the largest seed std measured, what a difference must beat
    importance: dict[str, float] | None
    importance_note: str
    study: object  # the Optuna study importance was computed on (its trials: the comparable runs), or None


CSS = """body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}table{border-collapse:collapse;margin:.6em 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;font-size:13px}th{background:#f4f4f4}code{background:#f4f4f4;padding:1px 4px}
img{max-width:100%}.note{color:#555}.up{color:#1a7f37}.down{color:#b42318}.noise{color:#8a6d00}"""


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def delta_text(section: Section, spread: float | None, metric: str) -> str:
    """Its best against the best before it: '+2.3 points over the best before' (or within noise)."""
    if section.best is None:
        return "no finished run with the metric"
    if section.before is None:
        return f"the first result: {pct(section.best['value'])}"
    delta = section.best["value"] - section.before
    if results.lower_is_better(metric):
        delta = -delta
    word = "over" if delta > 0 else "behind"
    text = f"{100 * delta:+.1f} points {word} the best before ({pct(section.before)})"
    if spread is not None and abs(delta) < spread:
        return f"{text}: within noise (seed spread {100 * spread:.1f} points)"
    return text


def job_table(section: Section) -> tuple[list[str], list[list[str]]]:
    keys = list(section.rows[0]["settings"]) if section.rows else []
    distilled = any(r.get("distilled_from") for r in section.rows)
    head = ["#", *keys, "status", "score", "TTA", "epochs", "train s", "training PFLOP", "commit", "dirty", "data"]
    head += ["distilled from"] if distilled else []
    by_id = {j["run_id"]: j for j in section.jobs}
    body = []
    for i, r in enumerate(section.rows, 1):
        j = by_id[r["run_id"]]
        m = j["metrics"]
        flops = m.get("train_gflop_per_image", 0) * m.get("data_train_images", 0) * m.get("epochs_run", 0) / 1e6
        train = next((d for name, d in j["datasets"].items() if name.endswith("-train")), "")
        body.append(
            [
                str(i),
                *(str(r["settings"][k]) for k in keys),
                r["status"],
                pct(r["value"]),
                pct(r["tta"]),
                str(int(m["epochs_run"])) if "epochs_run" in m else "-",
                f"{m['train_seconds']:.0f}" if "train_seconds" in m else "-",
                f"{flops:.4f}" if flops else "-",
                j["tags"].get(tracking.TAG_GIT_COMMIT, "-")[:8],
                j["tags"].get(tracking.TAG_GIT_DIRTY, "-"),
                (train if train.startswith("synthetic") else train[:12]) or "-",
                *([r.get("distilled_from") or "-"] if distilled else []),
            ]
        )
    return head, body


def headline(story: Story) -> list[tuple]:
    """The best run so far, its model and the command that re-runs it."""
    sign = -1 if results.lower_is_better(story.metric) else 1
    best = max((s for s in story.sections if s.best), key=lambda s: s.best["value"] * sign, default=None)
    if best is None:
        return [("p", "No run has the metric yet." if story.jobs else "This experiment has no runs yet.")]
    b = best.best
    name = next(j["name"] for j in best.jobs if j["run_id"] == b["run_id"])
    return [
        ("p", f"Best so far: {pct(b['value'])} {story.metric} (TTA {pct(b['tta'])}), run {b['run_id']}: {name}."),
        ("code", f"runs:/{b['run_id']}/model"),
        ("p", "Re-run and check it:"),
        ("code", f"python -m fer_exp.reproduce {b['run_id']}"),
    ]


def noise(story: Story) -> list[tuple]:
    """Configs run with several seeds (mean ± std), or what is not yet shown to be real without them."""
    if story.noise:
        rows = [[g["label"], f"{pct(g['mean'])} ± {100 * g['std']:.1f} points", str(g["n"])] for g in story.noise]
        spread = f"A difference under {100 * story.spread:.1f} points (the largest seed spread measured)"
        return [
            ("table", ["config", f"{story.metric} mean ± std", "seeds"], rows),
            ("p", f"{spread} is marked within noise."),
        ]
    top = sorted((s for s in story.scores if s is not None), reverse="loss" not in story.metric)[:2]
    gap = ""
    if len(top) == 2:
        gap = f" The best run's lead of {100 * abs(top[0] - top[1]):.1f} points over the next is therefore not yet shown to be real."
    text = (
        "No config was repeated with another seed, so the seed noise is not measured: no difference between runs is yet"
    )
    return [
        (
            "p",
            f"{text} shown to be more than noise.{gap} Repeat the best config with seed=1,2,3.",
        )
    ]


def section(i: int, s: Section, story: Story) -> list[tuple]:
    """A sweep (or single run): its command, what varies, its gain, its jobs and its main effects."""
    out = [("h2", f"{i}. {s.title}"), ("code", s.command or "(command not recorded)")]
    varies = {k: sorted({str(r["settings"][k]) for r in s.rows}) for k in (s.rows[0]["settings"] if s.rows else {})}
    if varies:
        out.append(("p", "Varies: " + "; ".join(f"{k} in {{{', '.join(v)}}}" for k, v in varies.items())))
    out += [("p", delta_text(s, story.spread, story.metric)), ("table", *job_table(s))]
    for key, values in s.effects.items():
        rows = [[v, pct(mean), str(n)] for v, (mean, n) in sorted(values.items())]
        out.append(("table", [key, f"mean {story.metric}", "runs"], rows))
    return out


def cost_front(story: Story) -> list[tuple[dict, float | None, float, float | None]]:
    """(job, score, training minutes, PFLOP) of the runs on the cost front, cheapest first."""
    costs = [results.training_cost(j) for j in story.jobs]
    front = results.pareto_front([(s, m) for s, (m, _) in zip(story.scores, costs)], story.metric)
    on = [(j, s, m, p) for j, s, (m, p), f in zip(story.jobs, story.scores, costs, front) if f]
    return sorted(on, key=lambda row: row[2])


def cost(story: Story, figures: dict[str, Path]) -> list[tuple]:
    """The cost view: score against training minutes, and the front as a table (the cheapest run that
    reaches a score is the first row at or above it)."""
    out: list[tuple] = [("h2", "Cost")]
    rows = cost_front(story)
    if not rows:
        return [*out, ("p", "No finished run has recorded its training minutes yet.")]
    out.append(
        (
            "p",
            "Each run's score against its training minutes. On the front: the runs that no other run beats for "
            "fewer minutes, cheapest first; the cheapest config that reaches a score is the first row at or above it.",
        )
    )
    if "cost" in figures:
        out.append(("img", figures["cost"], "each run's score against its training minutes, the front joined"))
    table = [[j["name"], pct(s), f"{m:.1f}", "-" if p is None else f"{p:.3g}"] for j, s, m, p in rows]
    return [*out, ("table", ["run on the front", story.metric, "training minutes", "PFLOP"], table)]


def blocks(story: Story, figures: dict[str, Path]) -> list[tuple]:
    """The page as a list of (kind, ...) blocks, rendered to HTML and Markdown alike."""
    out: list[tuple] = [("h1", f"The tuning story of experiment {story.experiment}"), *headline(story)]
    legend = "the line is the best so far, crosses are failed or killed runs, hollow circles pruned ones"
    runs = f"{len(story.jobs)} runs in {len(story.sections)} sweeps or single runs, in launch order; {legend}."
    out += [("h2", "Timeline"), ("p", runs)]
    if "timeline" in figures:
        out.append(("img", figures["timeline"], "every run's score in launch order"))
    out += [*cost(story, figures), ("h2", "Noise"), *noise(story)]
    for i, s in enumerate(story.sections, 1):
        out += section(i, s, story)
    out += [("h2", "What mattered"), ("p", story.importance_note)]
    if story.importance:
        out.append(("table", ["setting", "importance"], [[k, f"{v:.2f}"] for k, v in story.importance.items()]))
    if "parallel" in figures:
        out.append(("img", figures["parallel"], "parallel coordinates of the comparable runs"))
    return out


def to_html(page: list[tuple]) -> str:
    parts = []
    for kind, *rest in page:
        if kind in ("h1", "h2", "p"):
            attr = f' id="section-{len(parts)}"' if kind == "h2" else ""
            parts.append(f"<{kind}{attr}>{html.escape(rest[0])}</{kind}>")
        elif kind == "code":
            parts.append(f"<p><code>{html.escape(rest[0])}</code></p>")
        elif kind == "img":
            data = base64.b64encode(Path(rest[0]).read_bytes()).decode()
            parts.append(f'<img alt="{html.escape(rest[1])}" src="data:image/png;base64,{data}">')
        elif kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in rest[0])
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rest[1])
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
    title = html.escape(page[0][1])
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>{CSS}</style></head><body>\n'
        + "\n".join(parts)
        + "\n</body></html>\n"
    )


def to_markdown(page: list[tuple]) -> str:
    parts = []
    for kind, *rest in page:
        if kind == "h1":
            parts.append(f"# {rest[0]}")
        elif kind == "h2":
            parts.append(f"## {rest[0]}")
        elif kind == "p":
            parts.append(rest[0])
        elif kind == "code":
            parts.append(f"    {rest[0]}")
        elif kind == "img":
            parts.append(f"![{rest[1]}]({Path(rest[0]).name})")
        elif kind == "table":
            cell = lambda c: re.sub(r"\|", r"\\|", c)  # noqa: E731
            parts.append(
                "\n".join(
                    [
                        "| " + " | ".join(map(cell, rest[0])) + " |",
                        "|" + "---|" * len(rest[0]),
                        *("| " + " | ".join(map(cell, row)) + " |" for row in rest[1]),
                    ]
                )
            )
    return "\n\n".join(parts) + "\n"


def draw(story: Story, out: Path) -> dict[str, Path]:
    """The figures: the timeline and, with importance, the parallel coordinates."""
    figures = {}
    if story.jobs:
        index = {j["run_id"]: i for i, j in enumerate(story.jobs)}
        spans = [
            (index[s.jobs[0]["run_id"]], index[s.jobs[-1]["run_id"]], str(i)) for i, s in enumerate(story.sections, 1)
        ]
        bands = [
            (
                min(index[j["run_id"]] for j in g["jobs"]),
                max(index[j["run_id"]] for j in g["jobs"]),
                g["mean"],
                g["std"],
            )
            for g in story.noise
        ]
        statuses = [results.status(j) for j in story.jobs]
        figures["timeline"] = out / "story_timeline.png"
        plots.save(
            plots.story_timeline(
                story.scores,
                statuses,
                spans,
                bands,
                story.metric,
                "sweeps shaded, numbered as below; green: seed mean ± std",
                lower_is_better=results.lower_is_better(story.metric),
            ),
            figures["timeline"],
        )
    if front := cost_front(story):
        figures["cost"] = out / "story_cost.png"
        costs = [results.training_cost(j)[0] for j in story.jobs]
        ids = {j["run_id"] for j, *_ in front}
        on = [j["run_id"] in ids for j in story.jobs]
        plots.save(
            plots.cost_front(list(zip(costs, story.scores)), [j["name"] for j in story.jobs], on, story.metric),
            figures["cost"],
        )
    if story.importance:
        figures["parallel"] = out / "story_parallel.png"
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            ax = optuna.visualization.matplotlib.plot_parallel_coordinate(
                story.study, params=list(story.importance)[:6]
            )
        ax.figure.set_size_inches(10, 4.5)
        ax.figure.tight_layout()
        plots.save(ax.figure, figures["parallel"])
    return figures


def write(story: Story, out: Path) -> list[Path]:
    """Write story.html, story.md and their figures into `out`; returns [html, md, *figures]."""
    out.mkdir(parents=True, exist_ok=True)
    figures = draw(story, out)
    page = blocks(story, figures)
    (out / "story.html").write_text(to_html(page))
    (out / "story.md").write_text(to_markdown(page))
    return [out / "story.html", out / "story.md", *figures.values()]

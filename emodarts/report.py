"""`emodarts report RUN_DIR`: plots of a run (alphas per epoch, loss and UA curves, confusion matrix, cell
diagrams) as PNG files plus a Markdown summary linking them, all under RUN_DIR/report/."""
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from emodarts.engine.config import config_from_dict, recorded_classes
from emodarts.model.space import CELL_KINDS, Genotype, load_genotype, seq_inputs
from emodarts.runtime.errors import EmodartsError
from emodarts.runtime.files import read_jsonl, torn_line_note


def _read_jsonl(path: Path, notes: List[str]) -> List[dict]:
    """The records of a run log; a last line cut off by a kill is left out and noted in `notes`."""
    records, torn = read_jsonl(path, required=("epoch",))
    if torn:
        notes.append(torn_line_note(path))
    return records


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _edge_labels(n_nodes: int, n_inputs: int = 2) -> List[str]:
    return [f"n{i}<-s{j}" for i in range(n_nodes) for j in range(n_inputs + i)]


def plot_alphas(history: List[dict], kind: str, primitives, n_nodes: int, path: Path, n_inputs: int = 2) -> None:
    """One heatmap (edges x candidates, softmax weights) per recorded epoch, up to 8 epochs shown."""
    plt = _pyplot()
    key = f"alpha_{kind}"
    epochs = [h for h in history if key in h]
    if len(epochs) > 8:
        picks = np.linspace(0, len(epochs) - 1, 8).round().astype(int)
        epochs = [epochs[i] for i in sorted(set(picks))]
    fig, axes = plt.subplots(1, len(epochs), figsize=(2.2 + 1.9 * len(epochs), 0.35 * (len(_edge_labels(n_nodes, n_inputs)) + 4)),
                             squeeze=False)
    lo = min(float(np.min(rec[key])) for rec in epochs)
    hi = max(float(np.max(rec[key])) for rec in epochs)
    for ax, rec in zip(axes[0], epochs):
        weights = np.asarray(rec[key])
        im = ax.imshow(weights, aspect="auto", cmap="viridis", vmin=lo, vmax=max(hi, lo + 1e-6))
        ax.set_title(f"epoch {rec['epoch'] + 1}", fontsize=8)
        ax.set_xticks(range(len(primitives)))
        ax.set_xticklabels(primitives, rotation=90, fontsize=6)
        ax.set_yticks(range(weights.shape[0]))
        ax.set_yticklabels(_edge_labels(n_nodes, n_inputs) if ax is axes[0][0] else [], fontsize=6)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    fig.suptitle(f"softmax(alpha), {kind} cell", fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_betas(history: List[dict], n_nodes: int, path: Path) -> None:
    """PC-DARTS edge weights (softmax(beta) over each node's incoming edges): edges x epochs, one panel per
    CNN cell kind."""
    plt = _pyplot()
    kinds = [k for k in ("normal", "reduce") if any(f"beta_{k}" in h for h in history)]
    labels = _edge_labels(n_nodes)
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.5 * len(kinds) + 1, 0.35 * (len(labels) + 4)), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        recs = [h for h in history if f"beta_{kind}" in h]
        weights = np.asarray([r[f"beta_{kind}"] for r in recs]).T
        im = ax.imshow(weights, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_title(f"{kind} cell", fontsize=8)
        ax.set_xlabel("epoch", fontsize=7)
        ax.set_xticks(range(len(recs)))
        ax.set_xticklabels([str(r["epoch"] + 1) for r in recs], fontsize=6)
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels, fontsize=6)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    fig.suptitle("softmax(beta) over each node's edges (PC-DARTS edge normalisation)", fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def beta_table(record: dict, n_nodes: int) -> List[str]:
    """Markdown table of one epoch's edge weights, normal and reduce cell side by side."""
    rows = ["| edge | normal | reduce |", "| --- | --- | --- |"]
    for e, label in enumerate(_edge_labels(n_nodes)):
        rows.append(f"| {label} | {record['beta_normal'][e]:.3f} | {record['beta_reduce'][e]:.3f} |")
    return rows


# per phase: the split its weights are fitted on, and the split it is judged on (with their metric keys)
_CURVES = (("search", "search (weight split)", "search (alpha split)", "alpha_loss", "alpha_ua"),
           ("train", "final training (training split)", "final training (dev)", "dev_loss", "dev_ua"))


def curve_series(metrics: List[dict]) -> List[Tuple[str, str, str, List[int], List[float]]]:
    """(panel, line style, legend label, epochs, values) of every curve the metrics allow; panel is
    "loss" or "ua". Fitted-split losses are solid, judged-split curves dashed."""
    out = []
    for phase, fit_label, judge_label, loss_key, ua_key in _CURVES:
        rows = [m for m in metrics if m.get("phase") == phase]
        if not rows:
            continue
        ep = [m["epoch"] + 1 for m in rows]
        out.append(("loss", "-", f"{fit_label} loss", ep, [m.get("train_loss", np.nan) for m in rows]))
        out.append(("loss", "--", f"{judge_label} loss", ep, [m.get(loss_key, np.nan) for m in rows]))
        out.append(("ua", ".-", f"{judge_label} UA", ep, [m.get(ua_key, np.nan) for m in rows]))
    return out


def plot_curves(metrics: List[dict], path: Path) -> None:
    plt = _pyplot()
    fig, (ax_loss, ax_ua) = plt.subplots(1, 2, figsize=(10, 3.6))
    for panel, style, label, ep, values in curve_series(metrics):
        (ax_ua if panel == "ua" else ax_loss).plot(ep, values, style, label=label)
    for ax, title in ((ax_loss, "loss"), (ax_ua, "unweighted accuracy")):
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def recall_table(metrics: dict) -> List[str]:
    """Markdown rows: each class, its test utterances and its recall (classes without any are left out of
    UA and shown as -)."""
    cm = np.asarray(metrics["confusion"])
    classes = metrics.get("classes") or [str(i) for i in range(len(cm))]
    rows = ["| class | utterances | recall |", "|---|---:|---:|"]
    for i, name in enumerate(classes):
        n = int(cm[i].sum())
        rows.append(f"| {name} | {n} | {cm[i, i] / n:.4f} |" if n else f"| {name} | 0 | - |")
    return rows


def plot_confusion(metrics: dict, path: Path) -> None:
    plt = _pyplot()
    cm = np.asarray(metrics["confusion"])
    classes = metrics.get("classes") or [str(i) for i in range(len(cm))]
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(len(classes)))
    ax.set_xticklabels(classes, rotation=45, fontsize=8)
    ax.set_yticks(range(len(classes)))
    ax.set_yticklabels(classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"test UA {metrics['ua']:.3f}  WA {metrics['wa']:.3f}", fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


_CELL_FONT = 8  # points, every label of a cell drawing
_ROW = 0.42  # inches between state rows
_GAP = 0.3  # inches between columns
_PAD = 0.2  # inches a label box adds to its text's width


def _text_width(text: str, monospace: bool = False) -> float:
    """Width of `text` at the cell font size, in inches: columns are sized to their longest label."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    prop = FontProperties(family="monospace" if monospace else None, size=_CELL_FONT)
    return TextToPath().get_text_width_height_descent(text, prop, ismath=False)[0] / 72.0


@dataclass
class CellLayout:
    """Where a cell drawing puts its boxes, in inches from the lower left corner of the figure."""

    states: Dict[int, Tuple[float, float, str]]  # state -> (x, y, label); inputs first, then the nodes
    ops: Dict[Tuple[int, int], Tuple[float, float, str]]  # (node's state, source state) -> (x, y, operation)
    output: Tuple[float, float, str]
    n_inputs: int
    size: Tuple[float, float]


def cell_layout(genotype: Genotype, kind: str) -> CellLayout:
    """States on a diagonal, each with its own row and column; the operation of edge j -> i sits where the
    row of state j meets the column of node i. No two operations share a place, and every column is as
    wide as its longest label, so every label is readable in full."""
    nodes = genotype.cell(kind).nodes
    darts = kind == "seq" and genotype.seq_space == "darts"
    inputs = ["s0 (x_t, h_t-1)"] if darts else ["s0 (k-2)", "s1 (k-1)"]
    first = len(inputs)  # state of node 0: after s0 (DARTS recurrent cell) or after s0, s1
    labels = inputs + [f"node {i}" for i in range(len(nodes))]
    op_text: Dict[Tuple[int, int], str] = {}
    for i, node in enumerate(nodes):
        for op, src in node:
            key = (first + i, src)
            op_text[key] = f"{op_text[key]} + {op}" if key in op_text else op
    out_label = "concat" if kind != "seq" else ("mean -> h_t" if darts else "concat -> mean")
    widths = [max([_text_width(label)] + [_text_width(t, True) for (k, _), t in op_text.items() if k == state])
              + _PAD for state, label in enumerate(labels)]
    out_w = _text_width(out_label) + _PAD
    xs, x = [], _GAP / 2
    for w in widths:
        xs.append(x + w / 2)
        x += w + _GAP
    width = x + out_w + _GAP / 2
    height = _ROW * (len(labels) + 1) + 0.35  # one row per state, one for the output, the title
    ys = [height - 0.35 - _ROW * (k + 0.5) for k in range(len(labels))]
    return CellLayout(states={k: (xs[k], ys[k], labels[k]) for k in range(len(labels))},
                      ops={(k, j): (xs[k], ys[j], t) for (k, j), t in op_text.items()},
                      output=(x + out_w / 2, height - 0.35 - _ROW * (len(labels) + 0.5), out_label),
                      n_inputs=first, size=(width, height))


def draw_cell(genotype: Genotype, kind: str):
    """The derived cell as a figure (see cell_layout): a source's row runs right to the operations that read
    it, a node's column collects its operations, and every node feeds the output."""
    plt = _pyplot()
    lay = cell_layout(genotype, kind)
    width, height = lay.size
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")
    out_x, out_y, out_label = lay.output
    nodes = [k for k in lay.states if k >= lay.n_inputs]
    for j, (x, y, _) in lay.states.items():  # each state's row, to its last reader
        ends = [ox for (_, src), (ox, _, _) in lay.ops.items() if src == j] + ([out_x] if j in nodes else [])
        if ends:
            ax.plot([x, max(ends)], [y, y], color="0.55", lw=1, zorder=1)
    arrow = dict(arrowstyle="->", lw=1.2, shrinkA=0, shrinkB=8)
    for k in nodes:  # each node's column, from its topmost operation down into the node
        x, y, _ = lay.states[k]
        tops = [oy for (node, _), (_, oy, _) in lay.ops.items() if node == k]
        if tops:
            ax.annotate("", xy=(x, y), xytext=(x, max(tops)), arrowprops=dict(arrow, color="tab:blue"), zorder=2)
    if nodes:
        ax.annotate("", xy=(out_x, out_y), xytext=(out_x, lay.states[nodes[0]][1]),
                    arrowprops=dict(arrow, color="0.55"), zorder=2)
    for x, y, op in lay.ops.values():
        ax.text(x, y, op, ha="center", va="center", fontsize=_CELL_FONT, family="monospace", color="tab:red",
                zorder=3, gid="op", bbox=dict(boxstyle="round,pad=0.25", fc="white", ec="tab:red", lw=0.6))
    for k, (x, y, label) in lay.states.items():
        ax.text(x, y, label, ha="center", va="center", fontsize=_CELL_FONT, zorder=3, gid="state",
                bbox=dict(boxstyle="round", fc="lightyellow" if k < lay.n_inputs else "lightblue", ec="0.3"))
    ax.text(out_x, out_y, out_label, ha="center", va="center", fontsize=_CELL_FONT, zorder=3, gid="state",
            bbox=dict(boxstyle="round", fc="lightgreen", ec="0.3"))
    ax.text(width / 2, height - 0.08, f"{kind} cell", ha="center", va="top", fontsize=9)
    return fig


def plot_cell(genotype: Genotype, kind: str, path: Path) -> None:
    """The derived cell as a PNG (see draw_cell)."""
    plt = _pyplot()
    fig = draw_cell(genotype, kind)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _run_config(run_dir: Path):
    """The run's settings; a folder without a readable config.json is not a run folder."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise EmodartsError(f"{path}: not found ({run_dir} is not a run folder)")
    try:
        return config_from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise EmodartsError(f"{path}: not a readable run configuration ({exc})") from None


def report_after_run(run_dir: Path) -> str:
    """The report a finished search or run writes, as one line to show: its path, or why there is none (no
    matplotlib installed: the run's own files are complete without it)."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        return f"report: not written (matplotlib is not installed; `emodarts report {run_dir}` writes it later)"
    return f"report: {write_report(run_dir)}"


def write_report(run_dir: Path) -> Path:
    """Write every plot the run's files allow and report/README.md; returns the Markdown path."""
    run_dir = Path(run_dir)
    cfg = _run_config(run_dir)
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    sections: Dict[str, List[str]] = {}
    notes: List[str] = []
    history = _read_jsonl(run_dir / "alphas.jsonl", notes)
    if history:
        for kind in CELL_KINDS:
            prims = cfg.model.seq_primitives if kind == "seq" else cfg.model.cnn_primitives
            n_nodes = cfg.model.seq_nodes if kind == "seq" else cfg.model.cnn_nodes
            n_inputs = seq_inputs(cfg.model.seq_space) if kind == "seq" else 2
            plot_alphas(history, kind, prims, n_nodes, out / f"alphas_{kind}.png", n_inputs)
            sections.setdefault("Architecture weights per epoch", []).append(f"![alphas {kind}](alphas_{kind}.png)")
        betas = [h for h in history if "beta_normal" in h and "beta_reduce" in h]
        if betas:
            plot_betas(betas, cfg.model.cnn_nodes, out / "betas.png")
            sections["Edge weights (PC-DARTS, --partial-channels "
                     f"{cfg.model.partial_channels})"] = [
                "![betas](betas.png)", "", f"Epoch {betas[-1]['epoch'] + 1}:", "",
                *beta_table(betas[-1], cfg.model.cnn_nodes)]
    metrics = _read_jsonl(run_dir / "metrics.jsonl", notes)
    if metrics:
        plot_curves(metrics, out / "curves.png")
        sections["Loss and UA"] = ["![curves](curves.png)"]
    if (run_dir / "metrics.json").exists():
        test = json.loads((run_dir / "metrics.json").read_text())
        test["classes"] = recorded_classes(run_dir) or test.get("classes")  # config.json's, else the metrics'
        plot_confusion(test, out / "confusion.png")
        sections["Test speakers"] = [
            f"UA {test['ua']:.4f}, WA {test['wa']:.4f}, macro-F1 {test['macro_f1']:.4f} over {test['n']} utterances.",
            "", "![confusion matrix](confusion.png)", "", *recall_table(test)]
    if (run_dir / "genotype.json").exists():
        genotype = load_genotype(run_dir / "genotype.json")
        lines = [f"Best epoch: {genotype.meta.get('epoch', '?')}.", ""]
        for kind in CELL_KINDS:
            plot_cell(genotype, kind, out / f"cell_{kind}.png")
            lines.append(f"![{kind} cell](cell_{kind}.png)")
        sections["Derived cells"] = lines
    md = [f"# Run report: {run_dir.name}", "",
          f"corpus `{cfg.corpus}`, preset `{cfg.preset}`, seed {cfg.seed}, backend `{cfg.backend}`, "
          f"{'second' if cfg.search.second_order else 'first'}-order search.", ""]
    for title, lines in sections.items():
        md += [f"## {title}", "", *lines, ""]
    if notes:
        md += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    path = out / "README.md"
    path.write_text("\n".join(md))
    return path

"""`emodarts report RUN_DIR`: plots of a run (alphas per epoch, loss and UA curves, confusion matrix, cell
diagrams) as PNG files plus a Markdown summary linking them, all under RUN_DIR/report/."""
import json
from pathlib import Path
from typing import Dict, List

import numpy as np

from .config import config_from_dict
from .space import CELL_KINDS, Genotype, load_genotype, seq_inputs


def _read_jsonl(path: Path) -> List[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


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


def plot_curves(metrics: List[dict], path: Path) -> None:
    plt = _pyplot()
    fig, (ax_loss, ax_ua) = plt.subplots(1, 2, figsize=(10, 3.6))
    for phase, loss_key, ua_key, label in (("search", "alpha_loss", "alpha_ua", "search (alpha split)"),
                                           ("train", "dev_loss", "dev_ua", "final training (dev)")):
        rows = [m for m in metrics if m.get("phase") == phase]
        if not rows:
            continue
        ep = [m["epoch"] + 1 for m in rows]
        ax_loss.plot(ep, [m["train_loss"] for m in rows], label=f"{phase} train loss")
        ax_loss.plot(ep, [m[loss_key] for m in rows], "--", label=f"{label} loss")
        ax_ua.plot(ep, [m[ua_key] for m in rows], marker=".", label=f"{label} UA")
    for ax, title in ((ax_loss, "loss"), (ax_ua, "unweighted accuracy")):
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


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


def plot_cell(genotype: Genotype, kind: str, path: Path) -> None:
    """The derived cell as a DAG: inputs s0, s1, intermediate nodes, edges labelled with operations."""
    plt = _pyplot()
    nodes = genotype.cell(kind).nodes
    n = len(nodes)
    darts = kind == "seq" and genotype.seq_space == "darts"
    first = 1 if darts else 2  # state of node 0: after s0 (DARTS recurrent cell) or after s0, s1
    pos = {0: (0.0, 0.0)} if darts else {0: (0.0, 1.0), 1: (0.0, -1.0)}
    for i in range(n):
        pos[i + first] = (1.5 + 1.5 * i, 0.7 if i % 2 else -0.7)
    out_x = 1.5 + 1.5 * n
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * n, 3.2))
    for i, node in enumerate(nodes):
        for op, src in node:
            (x0, y0), (x1, y1) = pos[src], pos[i + first]
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                        arrowprops=dict(arrowstyle="->", color="tab:blue", lw=1.2, connectionstyle="arc3,rad=0.2"))
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.15 * (1 if x1 - x0 > 0 else -1), op, fontsize=7,
                    ha="center", color="tab:red", bbox=dict(fc="white", ec="none", alpha=0.7, pad=0.5))
    for i in range(n):
        x, y = pos[i + first]
        ax.annotate("", xy=(out_x, 0), xytext=(x, y), arrowprops=dict(arrowstyle="->", color="0.6", lw=0.8))
    inputs = {0: "s0 (x_t, h_t-1)"} if darts else {0: "s0 (k-2)", 1: "s1 (k-1)"}
    labels = {**inputs, **{i + first: f"node {i}" for i in range(n)}}
    for k, (x, y) in pos.items():
        ax.text(x, y, labels[k], ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle="round", fc="lightyellow" if k < first else "lightblue", ec="0.3"))
    out_label = "concat" if kind != "seq" else ("mean -> h_t" if darts else "concat -> mean")
    ax.text(out_x, 0, out_label, ha="center", va="center", fontsize=8,
            bbox=dict(boxstyle="round", fc="lightgreen", ec="0.3"))
    ax.set_xlim(-0.8, out_x + 0.9)
    ax.set_ylim(-1.5, 1.5)
    ax.axis("off")
    ax.set_title(f"{kind} cell", fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def write_report(run_dir: Path) -> Path:
    """Write every plot the run's files allow and report/README.md; returns the Markdown path."""
    run_dir = Path(run_dir)
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    cfg = config_from_dict(json.loads((run_dir / "config.json").read_text()))
    sections: Dict[str, List[str]] = {}
    history = _read_jsonl(run_dir / "alphas.jsonl")
    if history:
        for kind in CELL_KINDS:
            prims = cfg.model.seq_primitives if kind == "seq" else cfg.model.cnn_primitives
            n_nodes = cfg.model.seq_nodes if kind == "seq" else cfg.model.cnn_nodes
            n_inputs = seq_inputs(cfg.model.seq_space) if kind == "seq" else 2
            plot_alphas(history, kind, prims, n_nodes, out / f"alphas_{kind}.png", n_inputs)
            sections.setdefault("Architecture weights per epoch", []).append(f"![alphas {kind}](alphas_{kind}.png)")
    metrics = _read_jsonl(run_dir / "metrics.jsonl")
    if metrics:
        plot_curves(metrics, out / "curves.png")
        sections["Loss and UA"] = ["![curves](curves.png)"]
    if (run_dir / "metrics.json").exists():
        test = json.loads((run_dir / "metrics.json").read_text())
        plot_confusion(test, out / "confusion.png")
        sections["Test speakers"] = [
            f"UA {test['ua']:.4f}, WA {test['wa']:.4f}, macro-F1 {test['macro_f1']:.4f} over {test['n']} utterances.",
            "", "![confusion matrix](confusion.png)"]
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
    path = out / "README.md"
    path.write_text("\n".join(md))
    return path

"""MODEL_CARD.md of an exported network: what a user needs to use it without emodarts (the classes, the
features to compute, the input and output, how to load it) and what it is (genotype, data, results)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from emodarts.engine.config import RunConfig
from emodarts.model.space import CELL_KINDS, Genotype, seq_inputs


def cell_drawing(genotype: Genotype, kind: str) -> List[str]:
    """A cell as a mermaid flowchart (GitHub draws it): an arrow per kept edge, labelled with its operation."""
    cell = getattr(genotype, kind)
    darts = kind == "seq" and genotype.seq_space == "darts"
    n_in = seq_inputs(genotype.seq_space) if kind == "seq" else 2
    inputs = ["s0"] if darts else (["q_k-2", "q_k-1"] if kind == "seq" else ["c_k-2", "c_k-1"])
    name = lambda state: f"in{state}" if state < n_in else f"n{state - n_in}"  # noqa: E731
    lines = ["```mermaid", "graph LR", *[f'  in{i}["{label}"]' for i, label in enumerate(inputs)]]
    for i, edges in enumerate(cell.nodes):
        for op, src in edges:
            lines.append(f"  {name(src)} -->|{op}| n{i}")
    out = "h_t (mean)" if darts else ("q_k" if kind == "seq" else "c_k")
    lines += [f'  n{i} --> out["{out}"]' for i in range(len(cell.nodes))]
    return lines + ["```"]


def feature_recipe(fc) -> List[str]:
    """The features the network takes, as settings and as librosa code that computes them."""
    rows, frames = fc.shape
    lines = [f"- kind: `{fc.kind}`; input shape per clip: {rows} x {frames} (rows x frames), float32",
             f"- sample rate {fc.sample_rate} Hz (resample first), mono (average the channels)",
             f"- window: the first {fc.n_samples} samples ({fc.duration_s:g} s), zero-padded at the end when "
             f"shorter; clips under {fc.min_duration_s:g} s were not used"]
    if fc.kind == "npy":
        return lines + ["- precomputed arrays of the corpus's own extractor (the manifest's `features` column); "
                        "frames cut or zero-padded to the count above"]
    if fc.kind == "spectrogram":
        return lines + ["- |STFT| (n_fft 278, hop 229, Hann, centred), max-pooled to the shape above with "
                        "PyTorch's adaptive windows (`adaptive_max_pool2d`)"]
    what = ("librosa.feature.mfcc(y=y, sr=sr, n_mfcc={m}, n_fft={f}, hop_length={h}, n_mels={b})" if fc.kind == "mfcc"
            else "librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr, n_fft={f}, hop_length={h}, "
                 "n_mels={m}))")
    call = what.format(m=fc.n_mfcc, f=fc.n_fft, h=fc.hop_length, b=fc.n_mels)
    return lines + [
        f"- n_fft {fc.n_fft}, hop {fc.hop_length}, {fc.n_mels} mel bands, {fc.n_mfcc} rows; frames trimmed (or "
        f"edge-padded) to {fc.n_frames}, then max-pooled over time by {fc.time_pool}",
        "", "```python", "import librosa, numpy as np",
        f"y, sr = librosa.load(path, sr={fc.sample_rate}, mono=True)",
        f"y = np.pad(y[:{fc.n_samples}], (0, max(0, {fc.n_samples} - len(y))))",
        f"m = {call}",
        f"m = np.pad(m[:, :{fc.n_frames}], ((0, 0), (0, max(0, {fc.n_frames} - m.shape[1]))), mode='edge')",
        f"features = m.reshape(m.shape[0], -1, {fc.time_pool}).max(axis=2).astype(np.float32)  # {rows} x {frames}",
        "```"]


def model_card(run_dir: Path, cfg: RunConfig, genotype: Genotype, classes: List[str], feature_cfg,
               metrics: Optional[dict], files: Dict[str, int]) -> str:
    """The card's Markdown. `metrics`: the run's metrics.json (None when it was not evaluated); `files`:
    the exported files and their sizes in bytes."""
    rows, frames = feature_cfg.shape
    split = (f"protocol `{cfg.protocol}`, fold {cfg.fold}" if cfg.protocol
             else f"the corpus's default speaker split (seed {cfg.seed})")
    md = [f"# {run_dir.name}: a speech emotion recognition network found by emodarts", "",
          f"Classes (output index order): {', '.join(f'{i} `{c}`' for i, c in enumerate(classes))}.", "",
          "## Files", "", "| file | bytes | what |", "|---|---:|---|"]
    what = {"model.torchscript.pt": "TorchScript (`torch.jit.load`)", "model.onnx": "ONNX, dynamic batch",
            "model.safetensors": "the weights (state dict of emodarts' DerivedNetwork, without any auxiliary head)"}
    md += [f"| `{name}` | {size} | {what.get(name, '')} |" for name, size in files.items()]
    md += ["", "Input `features`: float32 (N, " f"{rows}, {frames}) (any N). Output `probs`: float32 (N, "
           f"{len(classes)}), the class probabilities (softmax). The feature normalisation (per-row mean and "
           "standard deviation of the training speakers) is inside the model.", "",
           "## Use it without emodarts", "", "```python", "import torch",
           "model = torch.jit.load('model.torchscript.pt')",
           f"probs = model(torch.from_numpy(features)[None])  # features: {rows} x {frames}, see below",
           f"print({classes!r}[int(probs.argmax())])", "", "import onnxruntime",
           "session = onnxruntime.InferenceSession('model.onnx')",
           "probs = session.run(['probs'], {'features': features[None]})[0]", "```", "",
           "## Features to compute", "", *feature_recipe(feature_cfg), "",
           "## Data and results", "",
           f"- corpus `{cfg.corpus}`{' (' + cfg.root + ')' if cfg.root else ''}, {split}; "
           f"labels {('`' + ','.join(cfg.labels) + '`') if cfg.labels else 'the protocol classes'}"]
    if metrics:
        md.append(f"- test speakers ({metrics['n']} utterances, evaluated once): UA {metrics['ua']:.4f}, WA "
                  f"{metrics['wa']:.4f}, macro-F1 {metrics['macro_f1']:.4f}; recall per class: "
                  + ", ".join(f"{c} {r:.3f}" for c, r in zip(classes, metrics.get("recall", []))))
    else:
        md.append("- not evaluated yet (`emodarts evaluate RUN_DIR`)")
    t, s, m = cfg.train, cfg.search, cfg.model
    md += [f"- final training: {t.epochs} epoch(s) (the epoch chosen on the dev speakers), batch {t.batch_size}, SGD "
           f"lr {t.lr:g} (cosine to {t.lr_min:g}), momentum {t.momentum:g}, weight decay {t.weight_decay:g}, "
           f"grad clip {t.grad_clip:g}, drop path {t.drop_path:g}, dropout {m.dropout:g}, auxiliary weight "
           f"{t.aux_weight:g}, class weights {t.class_weights}",
           f"- search: {s.epochs} epoch(s), {'second' if s.second_order else 'first'} order, w lr {s.w_lr:g}, "
           f"alpha lr {s.alpha_lr:g}, alpha split {s.alpha_split:g}; preset `{cfg.preset}`, seed {cfg.seed}",
           f"- network: {m.cnn_layers} CNN cells of {m.cnn_nodes} nodes (C = {m.cnn_channels}), {m.seq_cells} "
           f"sequential cells ({m.seq_space} space) of {m.seq_nodes} nodes, hidden {m.hidden}", "",
           "## Genotype", ""]
    for kind in CELL_KINDS:
        md += [f"{kind} cell:", "", *cell_drawing(genotype, kind), ""]
    return "\n".join(md) + "\n"


__all__ = ["model_card", "cell_drawing", "feature_recipe"]

"""What a training run leaves for people: the model summary, history, curves, TensorBoard logs."""

from __future__ import annotations

import io
import json
import os
import shutil


def write_artifacts(model, history: dict, tensorboard_dir: str | None, out: str) -> None:
    """Model summary, training curves (PNG), history and TensorBoard logs under ``out``."""
    os.makedirs(out, exist_ok=True)
    lines: list[str] = []
    model.summary(print_fn=lambda line, **_: lines.append(line), expand_nested=True)
    with open(os.path.join(out, "model_summary.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "history.json"), "w") as f:
        json.dump(history, f, indent=1)
    plot_curves(history, os.path.join(out, "training_curves.png"))
    if tensorboard_dir and os.path.isdir(tensorboard_dir):
        shutil.copytree(tensorboard_dir, os.path.join(out, "tensorboard"), dirs_exist_ok=True)


def plot_curves(history: dict, path: str) -> None:
    """Loss and accuracy per epoch, training and validation, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            if history.get(key):
                ax.plot(range(1, len(history[key]) + 1), history[key], style, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    with open(path, "wb") as f:
        f.write(buf.getvalue())

"""A sweep's results as files: results.csv (every column of every finished run), results.md
(mean +- std over seeds per variant and prompt) and results.png (one bar-chart panel per column).

The view-consistency metrics lead the table and the figure (always, when computed); then the
training measurements (losses, gradient norm, Perp-Neg projections, D-SDS clipped fraction) that
differ between runs. Settings and bookkeeping logged as metrics (learning rates, lambdas, min/max
step, the clip threshold, UNet rows, the applied negative weights, n_views) and constants stay in
results.csv only.
"""

from __future__ import annotations

import csv
import math
import os
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

EVALUATION_KEYS = ("a_lpips", "clip_r_precision", "clip_front_in_region", "clip_side_in_region",
                   "clip_back_in_region")
MEASURED_DIAGNOSTICS = ("grad_norm", "perp_neg/mean_abs_proj", "dsds/clipped_fraction")
ROW_KEYS = ("variant", "prompt", "seed")  # what identifies a row; every other key is a column


def is_measurement(key: str) -> bool:
    """A training-log column that measures the run (a loss or a diagnostic), not a setting
    logged as a metric (learning rate, lambda, min/max step, clip threshold, UNet rows)."""
    name = key[len("train/"):] if key.startswith("train/") else key
    return name.split("/")[-1].startswith("loss") or name in MEASURED_DIAGNOSTICS


def varies(rows: Sequence[Mapping], key: str) -> bool:
    """The column's values differ between the runs that logged it (a run without training logs,
    e.g. one whose logs were deleted, is not a difference). With fewer than two values there is
    nothing to compare and the column is kept."""
    values = [row[key] for row in rows if row.get(key) is not None]
    if len(values) < 2:
        return True
    return max(values) - min(values) > 1e-9 * max(1.0, max(abs(v) for v in values))


def summary_keys(rows: Sequence[Mapping]) -> List[str]:
    """The columns of the table and the figure: the view-consistency metrics (also another view
    classifier's ``<name>_<view>_in_region``), then the training measurements that differ between
    runs (in name order)."""
    found = {k for row in rows for k in row} - set(ROW_KEYS)
    views = sorted(k for k in found - set(EVALUATION_KEYS) if k.endswith("_in_region"))
    measured = sorted(k for k in found - set(EVALUATION_KEYS) - set(views) if is_measurement(k) and varies(rows, k))
    return [k for k in EVALUATION_KEYS if k in found] + views + measured


def write_report(name: str, folder: str, rows: List[Dict], metrics: Optional[Iterable[str]] = None) -> Dict[str, str]:
    """results.csv, results.md (columns ``metrics``, default ``summary_keys``) and results.png of
    the rows (one per finished run) in ``folder``; returns the paths and the number of runs."""
    found = {k for row in rows for k in row} - set(ROW_KEYS)
    all_keys = [k for k in EVALUATION_KEYS if k in found] + sorted(found - set(EVALUATION_KEYS))
    keys = summary_keys(rows) if metrics is None else [k for k in metrics if k in found]
    os.makedirs(folder, exist_ok=True)
    csv_path, md_path = os.path.join(folder, "results.csv"), os.path.join(folder, "results.md")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(ROW_KEYS) + all_keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    groups: Dict[tuple, List[Dict]] = {}
    for row in rows:
        groups.setdefault((row["variant"], row["prompt"]), []).append(row)
    plot = plot_metrics(groups, keys, os.path.join(folder, "results.png"))
    plots = [plot] if plot else []
    with open(md_path, "w") as f:
        f.write(markdown_table(name, groups, keys, sorted(set(all_keys) - set(keys)), plots))
    return {"csv": csv_path, "markdown": md_path, "runs": str(len(rows)), "plots": plots}


def markdown_table(name: str, groups: Mapping[tuple, List[Dict]], keys: Sequence[str],
                   left_out: Sequence[str], plots: Sequence[str]) -> str:
    """results.md: one row per (variant, prompt), mean +- std over its runs of each column; then
    the columns left out and the figures."""
    lines = ["| variant | prompt | runs | " + " | ".join(keys) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in keys) + " |"]
    for (variant, prompt), group in groups.items():
        cells = [_mean_std([r[key] for r in group if key in r]) for key in keys]
        lines.append(f"| {variant} | {prompt} | {len(group)} | " + " | ".join(cells) + " |")
    text = f"# {name}\n\n" + "\n".join(lines) + "\n"
    if left_out:
        text += (f"\nIn results.csv only (settings and bookkeeping logged as metrics, or the same in every "
                 f"run): {', '.join(left_out)}\n")
    for path in plots:
        text += f"\n![{os.path.basename(path)}]({os.path.basename(path)})\n"
    return text


def plot_metrics(groups: Mapping[tuple, List[Dict]], keys: Sequence[str], path: str) -> Optional[str]:
    """One figure, one bar-chart panel per column (mean over seeds, std as error bars; variants
    grouped by prompt); None when matplotlib is not installed or there is nothing to plot."""
    if not keys or not groups:
        return None
    try:
        import matplotlib  # optional: matplotlib, for the figure only

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # optional: matplotlib
    except ImportError:
        return None
    variants = list(dict.fromkeys(v for v, _ in groups))
    prompts = list(dict.fromkeys(p for _, p in groups))
    columns = min(3, len(keys))
    rows = math.ceil(len(keys) / columns)
    panel_width = max(3.5, 0.9 * len(prompts) * len(variants))
    fig, axes = plt.subplots(rows, columns, figsize=(panel_width * columns, 2.8 * rows), squeeze=False)
    width = 0.8 / max(1, len(variants))
    for ax, key in zip(axes.flat, keys):
        for i, variant in enumerate(variants):
            stats = [_mean_and_std([r[key] for r in groups.get((variant, p), []) if key in r]) for p in prompts]
            ax.bar([j + i * width for j in range(len(prompts))], [m for m, _ in stats], width,
                   yerr=[s for _, s in stats], label=variant)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(prompts))])
        ax.set_xticklabels([p[:30] for p in prompts], fontsize=7)
        ax.set_title(key, fontsize=9)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _mean_and_std(values: Sequence[float]) -> tuple:
    """Mean (nan for none) and sample standard deviation (0 for fewer than two values)."""
    mean = sum(values) / len(values) if values else float("nan")
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def _mean_std(values: Sequence[float]) -> str:
    """A table cell: "-" for no values, the mean alone for one, else "mean ± std"."""
    if not values:
        return "-"
    mean, std = _mean_and_std(values)
    if len(values) == 1:
        return f"{mean:.4g}"
    return f"{mean:.4g} ± {std:.2g}"

"""Orbit grids: one image per variant, a row per run with its orbit's frames."""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from PIL import Image, ImageDraw

from antijanus.utils.imaging import to_pil

from ..janus import outcome_name

LABEL_WIDTH = 180  # pixels left of the frames for each row's label


def row_verdict(metrics: Mapping[str, Any]) -> str:
    """A row's verdict: the orbit's outcome (the tables' headline, seventh entry), or for a run
    judged before outcomes existed the old single Janus verdict."""
    if "outcome" in metrics:
        return outcome_name(metrics)
    return "JANUS" if metrics.get("janus", 0) >= 0.5 else "ok"


def orbit_grid(results: Sequence[Mapping[str, Any]], out: str, variant: str,
               frames_of: Callable[[Mapping[str, Any]], torch.Tensor], cell: int = 48,
               verdicts: bool = True) -> Optional[str]:
    """``out``/grids/<variant>.png: a row per (prompt, seed) with its orbit (azimuth 0 at the
    left), labelled with the prompt, the seed and (``verdicts``) the outcome (``row_verdict``) and view
    accuracy; None without results."""
    if not results:
        return None
    results = sorted(results, key=lambda r: (r["prompt"], r["seed"]))
    rows = [frames_of(r) for r in results]
    views = max(len(f) for f in rows)
    canvas = Image.new("RGB", (LABEL_WIDTH + cell * views, cell * len(results) + 16), "white")
    draw = ImageDraw.Draw(canvas)
    for j in range(0, views, 3):
        draw.text((LABEL_WIDTH + j * cell + 2, 2), f"{j}", fill="black")
    for i, (result, frames) in enumerate(zip(results, rows)):
        y = 16 + i * cell
        metrics = result["metrics"]
        draw.text((4, y + 4), f"{result['prompt']} s{result['seed']}", fill="black")
        if verdicts:
            draw.text((4, y + 20), f"{row_verdict(metrics)}  view acc {metrics.get('view_accuracy', float('nan')):.2f}",
                      fill="black")
        for j, frame in enumerate(frames):
            canvas.paste(to_pil(frame).resize((cell, cell)), (LABEL_WIDTH + j * cell, y))
    path = os.path.join(out, "grids", f"{variant}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    canvas.save(path)
    return path

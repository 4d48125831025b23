"""Labelled sets of method outputs (preregistration.md, seventh entry, items 2-3): the items (3D
orbits of the experiment's runs, 2D images of the view experiment), shuffled under random ids,
and the sheets a labeller sees: the images only, without prompt, method, scale or any verdict.

A set's folder holds ``manifest.json`` (id -> where the item came from; labellers never see it)
and, written by the labellers, ``labels-<name>.csv``; the sheets go to a separate folder.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import random
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

import torch
from PIL import Image, ImageDraw

from antijanus.utils.imaging import to_pil

from .orbits import orbit_azimuths
from .volume_orbits import ORBIT_FRAMES, frames_from_uint8

SHOWN_AZIMUTHS = tuple(range(0, 360, 30))  # the 12 frames a labeller sees of an orbit
CELL = 128  # pixels per frame on a sheet (32 px shown 4x)
LABEL_HEIGHT = 18
GAP = 6
ORBITS_PER_SHEET = 6
IMAGES_PER_SHEET = 15
SHUFFLE_SEED = 2026


@dataclass(frozen=True)
class Item:
    """One thing to label: an orbit (``kind`` "orbit", ``source`` its run folder) or a 2D image
    (``kind`` "image", ``source`` "<samples.pt>#<index>")."""

    id: str
    kind: str
    source: str
    meta: Dict[str, object]


def orbit_sources(run_roots: Sequence[str]) -> List[Dict[str, object]]:
    """Every finished run (a folder with ``result.json`` and ``orbit.pt``) under ``run_roots``."""
    found = []
    for root in run_roots:
        for result in sorted(glob.glob(os.path.join(root, "**", "result.json"), recursive=True)):
            folder = os.path.dirname(result)
            if not os.path.exists(os.path.join(folder, ORBIT_FRAMES)):
                continue
            with open(result) as f:
                record = json.load(f)
            found.append({"source": folder, "variant": record["variant"], "prompt": record["prompt"],
                          "seed": record["seed"], "root": root})
    return found


def image_sources(view2d_outs: Sequence[str]) -> List[Dict[str, object]]:
    """Every sampled image of the 2D experiment's outputs (``samples.pt``)."""
    found = []
    for out in view2d_outs:
        path = os.path.join(out, "samples.pt")
        records = samples_file(path)["records"]
        for index, record in enumerate(records):
            found.append({"source": f"{path}#{index}", **{k: record[k] for k in ("method", "kind", "view", "seed")}})
    return found


def make_items(orbits: Sequence[Dict[str, object]], images: Sequence[Dict[str, object]],
               seed: int = SHUFFLE_SEED) -> List[Item]:
    """Orbits and images shuffled (fixed seed) under ids o000.. / i000.. that say nothing else."""
    rng = random.Random(seed)
    items = []
    for prefix, kind, sources in (("o", "orbit", list(orbits)), ("i", "image", list(images))):
        rng.shuffle(sources)
        for n, source in enumerate(sources):
            meta = {k: v for k, v in source.items() if k != "source"}
            items.append(Item(f"{prefix}{n:03d}", kind, str(source["source"]), meta))
    return items


def write_manifest(items: Sequence[Item], folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "manifest.json")
    with open(path, "w") as f:
        json.dump({"shown_azimuths": list(SHOWN_AZIMUTHS), "items": [asdict(i) for i in items]}, f, indent=1)
    return path


def read_manifest(folder: str) -> List[Item]:
    with open(os.path.join(folder, "manifest.json")) as f:
        return [Item(**row) for row in json.load(f)["items"]]


def shown_frame_indices(n_views: int) -> List[int]:
    """Indices of ``SHOWN_AZIMUTHS`` in an orbit of ``n_views`` azimuths (``orbit_azimuths``)."""
    azimuths = [float(a) % 360 for a in orbit_azimuths(n_views)]
    out = []
    for wanted in SHOWN_AZIMUTHS:
        distance = [min(abs(a - wanted), 360 - abs(a - wanted)) for a in azimuths]
        best = min(range(len(azimuths)), key=distance.__getitem__)
        if distance[best] > 1e-3:
            raise ValueError(f"the orbit of {n_views} views has no frame at azimuth {wanted}")
        out.append(best)
    return out


def item_images(item: Item) -> List[torch.Tensor]:
    """The images of an item as [3, H, W] floats in [0, 1]: an orbit's shown frames, or one image."""
    if item.kind == "orbit":
        frames = frames_from_uint8(torch.load(os.path.join(item.source, ORBIT_FRAMES)))
        return [frames[i] for i in shown_frame_indices(frames.shape[0])]
    path, index = item.source.rsplit("#", 1)
    return [samples_file(path)["images"][int(index)].float() / 255.0]


def samples_file(path: str) -> Dict[str, object]:
    """A 2D experiment's ``samples.pt``, read once for all its images (again when rewritten)."""
    stat = os.stat(path)
    return _load_samples(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _load_samples(path: str, mtime_ns: int, size: int) -> Dict[str, object]:
    return torch.load(path)


def _paste(canvas: Image.Image, image: torch.Tensor, x: int, y: int, label: str) -> None:
    canvas.paste(to_pil(image).resize((CELL, CELL), Image.NEAREST), (x, y + LABEL_HEIGHT))
    ImageDraw.Draw(canvas).text((x + 2, y + 3), label, fill="black")


def orbit_sheet(items: Sequence[Item]) -> Image.Image:
    """Rows of orbits: each row the id and its 12 frames with their azimuths."""
    width = len(SHOWN_AZIMUTHS) * (CELL + GAP) + GAP
    canvas = Image.new("RGB", (width, len(items) * (CELL + LABEL_HEIGHT + 3 * GAP)), (170, 170, 170))
    for row, item in enumerate(items):
        y = row * (CELL + LABEL_HEIGHT + 3 * GAP) + GAP
        for col, (image, azimuth) in enumerate(zip(item_images(item), SHOWN_AZIMUTHS)):
            _paste(canvas, image, GAP + col * (CELL + GAP), y, f"{item.id}  az {azimuth}")
    return canvas


def image_sheet(items: Sequence[Item], columns: int = 5) -> Image.Image:
    rows = (len(items) + columns - 1) // columns
    canvas = Image.new("RGB", (columns * (CELL + 2 * GAP), rows * (CELL + LABEL_HEIGHT + 2 * GAP)), (170, 170, 170))
    for n, item in enumerate(items):
        x, y = (n % columns) * (CELL + 2 * GAP) + GAP, (n // columns) * (CELL + LABEL_HEIGHT + 2 * GAP) + GAP
        _paste(canvas, item_images(item)[0], x, y, item.id)
    return canvas


def write_sheets(items: Sequence[Item], folder: str) -> List[str]:
    """orbits-NN.png and images-NN.png in ``folder`` (the ids in order); returns the paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for kind, per_sheet, draw in (("orbit", ORBITS_PER_SHEET, orbit_sheet), ("image", IMAGES_PER_SHEET, image_sheet)):
        chosen = [i for i in items if i.kind == kind]
        for n in range(0, len(chosen), per_sheet):
            path = os.path.join(folder, f"{kind}s-{n // per_sheet:02d}.png")
            draw(chosen[n:n + per_sheet]).save(path)
            paths.append(path)
    return paths


def find_item(items: Sequence[Item], item_id: str) -> Optional[Item]:
    return next((i for i in items if i.id == item_id), None)

#!/usr/bin/env python
"""Time one VSD step of ours (`perp-neg-vsd-guidance`) against threestudio's own
`stable-diffusion-vsd-guidance`, on the same model folder, in the same run.

One step is what threestudio's `prolificdreamer-system` does per training step: the guidance's
forward (the VSD gradient: pretrained UNet and LoRA UNet, no grad; then the LoRA's denoising
loss, with grad) and the backward of `loss_vsd + loss_lora` (into the input and the LoRA). Rows:
ours with Perp-Neg off (the drop-in comparison: the same UNet rows as threestudio's), ours with
Perp-Neg on (the prompt processor's `use_perp_neg`: more pretrained rows, an extra row, not a
comparison) and threestudio's. The steps interleave (ours off, ours on, threestudio, ours off,
...) after warm-up, so machine load drifts hit all rows alike; the median is printed and the
ratio ours / threestudio. Each guidance's footprint: the full UNets it holds (counted among the
live objects: 1 when `pretrained_model_name_or_path_lora` names the pretrained model, the LoRA
being hooks on the shared UNet, as threestudio's), their parameters, the trainable parameters
(the LoRA and the camera embedding) and the memory its weights took (GPU: allocated; CPU: the
process's resident memory) plus, on a GPU, the peak of a step above it.

threestudio's VSD fixes 512x512 images, 64x64 latents and a 1280-wide time embedding, so
`--size tiny` is a tiny UNet/VAE with SD's geometry (the parity tests' model) and `--size sd21`
the full-size SD 2.1-base layout with random weights. Run from a threestudio checkout (the folder
holding launch.py) or with threestudio on PYTHONPATH:

    python custom/antijanus/scripts/bench_vsd.py --size tiny
    PYTHONPATH=/path/to/threestudio python scripts/bench_vsd.py --size sd21 --threads 2
    python custom/antijanus/scripts/bench_vsd.py --size sd21 --device cuda --half --repeats 10
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "custom"))

# The SDS bench's pieces (bench_guidance) and the plugin are imported where used, after the
# argument checks: they load diffusers (seconds), and a refusal should come at once.

ROWS = (("ours (Perp-Neg off)", "ours", False), ("ours (Perp-Neg on)", "ours", True),
        ("threestudio", "threestudio", False))
NAMES = {"ours": "perp-neg-vsd-guidance", "threestudio": "stable-diffusion-vsd-guidance"}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "sd21"], default="tiny")
    parser.add_argument("--model", help="existing SD folder (default: build random weights)")
    parser.add_argument("--lora-model", help="the LoRA branch's model (default: the same folder: one shared UNet)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--half", action="store_true", help="fp16 weights (threestudio's default; GPU)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--input", choices=["latents", "rgb"], default="latents",
                        help="latents (64x64x4) or a 64x64 RGB render encoded by the VAE at 512x512")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device here (torch {torch.__version__}); use --device cpu")
    if importlib.util.find_spec("threestudio") is None:
        if not (os.path.isdir("threestudio") and os.path.isfile("launch.py")):
            parser.error("needs threestudio importable: run it from a threestudio checkout (the folder "
                         "holding launch.py) or with PYTHONPATH=/path/to/threestudio")
        sys.path.insert(0, os.getcwd())  # the checkout in the working folder
    return args


def import_threestudio(device: torch.device):
    """threestudio with our modules registered, its BaseModule on ``device`` (its get_device()
    always answers cuda:<rank>)."""
    from antijanus.cpu.imports import prepare_threestudio_import  # deferred: after the argument checks
    from antijanus.cpu.quiet import filter_known_warnings  # deferred: after the argument checks

    prepare_threestudio_import()  # CPU: import-only stand-ins for tinycudann / nvdiffrast
    filter_known_warnings()  # threestudio's import-time deprecations, as the CPU mode
    warnings.filterwarnings("ignore", message="The configuration file of this scheduler", category=FutureWarning)
    import threestudio  # threestudio: the baseline, and the registry of ours
    import threestudio.utils.base as base  # threestudio: its modules' device

    import antijanus.adapters  # noqa: F401  (threestudio: registers perp-neg-vsd-guidance)

    base.get_device = lambda: device
    return threestudio


def prompt_outputs(threestudio, features: int, device):
    """threestudio PromptProcessorOutputs with random embeddings: use_perp_neg false / true, the
    perp_neg_f_* of threestudio's processor defaults."""
    from threestudio.models.prompt_processors.base import PromptProcessorOutput  # threestudio
    from bench_guidance import PromptOutput  # deferred: slow import (diffusers)

    defaults = threestudio.find("stable-diffusion-prompt-processor").Config()
    random = PromptOutput(features, device, torch.float32)
    outputs = {}
    for use_perp_neg in (False, True):
        outputs[use_perp_neg] = PromptProcessorOutput(
            text_embeddings=random.text_embeddings, uncond_text_embeddings=random.uncond_text_embeddings,
            text_embeddings_vd=random.text_embeddings_vd, uncond_text_embeddings_vd=random.uncond_text_embeddings_vd,
            directions=random.directions, direction2idx=random.direction2idx, use_perp_neg=use_perp_neg,
            perp_neg_f_sb=defaults.perp_neg_f_sb, perp_neg_f_fsb=defaults.perp_neg_f_fsb,
            perp_neg_f_fs=defaults.perp_neg_f_fs, perp_neg_f_sf=defaults.perp_neg_f_sf,
            prompt="a corgi", prompts_vd=[f"a corgi, {d.name} view" for d in random.directions])
    return outputs


def live_unets():
    from diffusers import UNet2DConditionModel  # deferred: slow import (loaded by now anyway)

    gc.collect()
    return {id(o): o for o in gc.get_objects() if issubclass(type(o), UNet2DConditionModel)}


def resident_mib() -> float:
    """The process's resident memory (Linux /proc; NaN elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return float("nan")


def memory_mib(device) -> float:
    from bench_guidance import sync  # deferred: slow import (diffusers)

    if device.type == "cuda":
        sync(device)
        return torch.cuda.memory_allocated(device) / 2**20
    return resident_mib()


def build(threestudio, name: str, keys: dict, device, footprints: dict):
    """The guidance and its footprint: (full UNets it added, their frozen parameters (threestudio
    attaches its camera embedding to the LoRA UNet), trainable parameters, MiB its construction
    took)."""
    before_unets, before_mib = live_unets(), memory_mib(device)
    guidance = threestudio.find(NAMES[name])(dict(keys))
    guidance.do_update_step(0, 0)
    added = {k: u for k, u in live_unets().items() if k not in before_unets}
    trainable = {id(p): p for p in guidance.parameters() if p.requires_grad}
    frozen = {id(p): p for u in added.values() for p in u.parameters() if id(p) not in trainable}
    footprints[name] = (len(added), sum(p.numel() for p in frozen.values()),
                        sum(p.numel() for p in trainable.values()), memory_mib(device) - before_mib)
    return guidance


def one_step(guidance, prompt_utils, x, cams, latents: bool, device):
    """ms of one step as prolificdreamer-system runs it, on a GPU with its peak memory above the
    memory allocated before it (MiB; NaN on a CPU)."""
    from bench_guidance import sync  # deferred: slow import (diffusers)

    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    x = x.clone().requires_grad_(True)
    sync(device)
    start = time.perf_counter()
    out = guidance(x, prompt_utils, **cams, rgb_as_latents=latents)
    (out["loss_vsd"] + out["loss_lora"]).backward()
    sync(device)
    seconds = time.perf_counter() - start
    guidance.zero_grad(set_to_none=True)
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else float("nan")
    return seconds * 1e3, peak, float(out.get("unet_rows", 4 * x.shape[0]))


def step_inputs(args, device, cams):
    """A step's input (the same for every row) and its cameras with both matrices."""
    g = torch.Generator().manual_seed(int(cams["azimuth"].sum().item() * 1000) % 2**31)
    shape = (args.batch, 64, 64, 4) if args.input == "latents" else (args.batch, 64, 64, 3)
    x = torch.rand(shape, generator=g).to(device)
    matrices = dict(c2w=torch.randn(args.batch, 4, 4, generator=g).to(device),
                    mvp_mtx=torch.randn(args.batch, 4, 4, generator=g).to(device))
    return x, {**cams, **matrices}


def run_rows(guidances, outputs, args, device):
    """Interleaved steps of every row; per row (median ms, spread of the ms in % of the median,
    max peak MiB, mean UNet rows: Perp-Neg's depend on the view)."""
    from bench_guidance import cameras  # deferred: slow import (diffusers)

    measured = {label: [] for label, _, _ in ROWS}  # (ms, peak, rows) per measured step
    for step, step_cams in enumerate(cameras(args.batch, args.warmup + args.repeats, device)):
        x, cams = step_inputs(args, device, step_cams)
        for label, name, perp_neg in ROWS:
            result = one_step(guidances[name], outputs[perp_neg], x, cams, args.input == "latents", device)
            if step >= args.warmup:
                measured[label].append(result)
    summary = {}
    for label, results in measured.items():
        ms, peaks, rows = zip(*results)
        median = statistics.median(ms)
        summary[label] = (median, 100 * (max(ms) - min(ms)) / median, max(peaks), statistics.mean(rows))
    return summary


def where(device, args) -> str:
    if device.type == "cuda":
        place = torch.cuda.get_device_name(device)
    else:
        place = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores visible"
    return (f"device={device} ({place}) threads={torch.get_num_threads()} torch={torch.__version__} "
            f"size={args.size} half={args.half} batch={args.batch} input={args.input} "
            f"warmup={args.warmup} repeats={args.repeats}")


def report(results, footprints, args, device) -> None:
    import diffusers  # deferred: slow import (loaded by now anyway)

    print(where(device, args) + f" diffusers={diffusers.__version__}")
    shared = not args.lora_model or args.lora_model == args.model
    print(f"model={args.model or f'random-weight {args.size} folder'} "
          f"lora model={'the same (one UNet, shared)' if shared else args.lora_model}")
    print(f"{'guidance':<22}{'ms/step':>10}{'spread %':>9}{'ratio':>7}{'unet rows':>10}{'peak MiB':>10}"
          f"{'full UNets':>11}{'frozen UNet':>13}{'trainable':>11}{'weights MiB':>12}")
    base_ms = results["threestudio"][0]
    for label, name, _ in ROWS:
        ms, spread, peak, rows = results[label]
        unets, unet_params, trainable, mib = footprints[name]
        print(f"{label:<22}{ms:>10.1f}{spread:>9.0f}{ms / base_ms:>7.2f}{rows:>10.2f}{peak:>10.1f}"
              f"{unets:>11}{unet_params:>13,}{trainable:>11,}{mib:>12.0f}")
    print("ms/step: median; spread: (max - min) / median; ratio: ms/step / threestudio's; unet rows: mean UNet"
          " rows of the VSD gradient (threestudio: 2B pretrained + 2B LoRA), the LoRA's training rows (B) not"
          " counted; peak MiB: GPU only (a step, above the weights); full UNets: UNet models the guidance"
          " holds, frozen UNet: their frozen parameters; trainable: LoRA + camera embedding; weights MiB: GPU"
          " allocated / CPU resident memory the guidance's construction took")


def main() -> None:
    args = parse_args()
    from antijanus.testing.tiny_models import make_sd512, make_stable_diffusion  # deferred: slow import
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    threestudio = import_threestudio(device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model or (make_sd512(os.path.join(tmp, "sd"), time_embedding_dim=1280) if args.size == "tiny"
                                else make_stable_diffusion(os.path.join(tmp, "sd"), size="sd21"))
        lora_folder = args.lora_model or folder
        keys = {"pretrained_model_name_or_path": folder, "pretrained_model_name_or_path_lora": lora_folder,
                "half_precision_weights": args.half, "guidance_scale": 7.5, "guidance_scale_lora": 1.0}
        footprints = {}
        guidances = {name: build(threestudio, name, keys, device, footprints) for name in NAMES}
        features = guidances["threestudio"].unet.config.cross_attention_dim
        results = run_rows(guidances, prompt_outputs(threestudio, features, device), args, device)
        report(results, footprints, args, device)


if __name__ == "__main__":
    main()

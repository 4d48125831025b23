#!/usr/bin/env python
"""GPU smoke run: every shipped config through threestudio's launch.py with the real hash-grid
backend, at the configs' own resolution, for a few hundred steps, with full-size random-weight
backbones, next to threestudio's built-in `stable-diffusion-guidance` (use_perp_neg / grad_clip)
on the same machine. Prints it/s and peak GPU memory for both.

Run from a working folder with antijanus linked into custom/, threestudio importable:

    python $ANTIJANUS/scripts/gpu_smoke.py --steps 300 --out smoke/
    python $ANTIJANUS/scripts/gpu_smoke.py --configs perp-neg-nerf-sd.yaml --steps 300

Models: `--models DIR` with `sd/` (and `if/`) folders, else a full-size SD 2.1-base layout with
random weights is written to OUT/models (scripts/make_tiny_models.py --size sd21). Random
weights: the numbers are speed and memory, not quality. `--cpu` runs the same orchestration
on a CPU with tiny models and CPU-capable overrides (to check the script itself).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "custom"))

SD_CONFIGS = ["perp-neg-nerf-sd.yaml", "dsds-nerf-sd.yaml", "perp-neg-dsds-nerf-sd.yaml",
              "dsds-full-nerf-sd.yaml", "dnp-perp-neg-nerf-sd.yaml", "magic3d-coarse-dsds-sd.yaml",
              "dsds-sjc-sd.yaml", "perp-neg-vsd-sd.yaml", "perp-neg-dsds-vsd-sd.yaml"]
VSD_ONLY_KEYS = ("perp_neg", "perp_neg_f_sb", "perp_neg_f_fsb", "perp_neg_f_fs", "perp_neg_f_sf",
                 "negative_prompt_weight", "score_clipping", "clip_schedule", "clip_start", "clip_end",
                 "clip_end_step", "clip_target")  # ours: threestudio's VSD guidance has no such key


# -- one run (this script re-invoked with --run-one): launch.py plus a timing callback ----------
def run_one(timing_json: str, cpu: bool, warmup: int, launch_args) -> None:
    if cpu:  # before pytorch_lightning is imported (stand-ins, torchvision op schemas)
        from antijanus.cpu.imports import prepare_threestudio_import

        prepare_threestudio_import()
    import pytorch_lightning as pl
    import torch

    class Timing(pl.Callback):
        def __init__(self):
            self.times, self.start = [], None

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.start)

        def on_train_end(self, trainer, module):
            timed = self.times[warmup:] or self.times
            peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
            with open(timing_json, "w") as f:
                json.dump({"steps": len(self.times), "timed_steps": len(timed),
                           "it_per_s": len(timed) / sum(timed), "peak_mib": peak}, f)

    original = pl.Trainer.__init__

    def with_timing(self, *args, **kwargs):
        kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + [Timing()]
        original(self, *args, **kwargs)

    pl.Trainer.__init__ = with_timing
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    if cpu:  # antijanus's CPU mode: the overrides each config needs, --small settings
        from antijanus.cpu.runner import main as cpu_main

        cpu_main(list(launch_args) + ["--small"])
        return
    import runpy

    import threestudio

    launch = os.path.join(os.path.dirname(os.path.dirname(threestudio.__file__)), "launch.py")
    sys.argv = [launch] + list(launch_args)
    runpy.run_path(launch, run_name="__main__")


# -- orchestration -----------------------------------------------------------------------------
def builtin_baseline(config_path: str, out_path: str, steps: int) -> bool:
    """The same experiment with threestudio's built-in guidance and stock prompt processor:
    Perp-Neg through `use_perp_neg`, D-SDS clipping through `grad_clip` (2 -> 8 over the run)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(config_path)
    ours = cfg.system.guidance
    system = cfg.system
    if system.guidance_type == "perp-neg-vsd-guidance":
        return builtin_vsd_baseline(cfg, out_path)
    if system.guidance_type not in ("perp-neg-sds-guidance", "dsds-guidance"):
        return False
    processor_cfg = system.prompt_processor
    perp_neg = ours.get("perp_neg")  # unset: the processor's use_perp_neg, as our guidance does
    if perp_neg is None:
        perp_neg = bool(processor_cfg.get("use_perp_neg", False))
    clip = ours.get("score_clipping", system.guidance_type == "dsds-guidance")
    guidance = {k: ours[k] for k in ("pretrained_model_name_or_path", "guidance_scale", "weighting_strategy",
                                     "min_step_percent", "max_step_percent", "use_sjc", "var_red") if k in ours}
    if clip:  # our default clip is this recipe (the authors' grad_clip), on SDS and on SJC alike
        guidance["grad_clip"] = [0, float(ours.get("clip_start", 2.0)), float(ours.get("clip_end", 8.0)), steps]
    system.guidance_type = "stable-diffusion-guidance"
    system.guidance = guidance
    processor = {k: v for k, v in OmegaConf.to_container(system.prompt_processor, resolve=False).items()
                 if k in ("pretrained_model_name_or_path", "prompt", "front_threshold", "back_threshold",
                          "overhead_threshold")}
    processor["use_perp_neg"] = bool(perp_neg)
    system.prompt_processor_type = "stable-diffusion-prompt-processor"
    system.prompt_processor = processor
    OmegaConf.save(cfg, out_path)
    return True


def builtin_vsd_baseline(cfg, out_path: str) -> bool:
    """A VSD config with threestudio's `stable-diffusion-vsd-guidance` (no Perp-Neg, no clipping
    schedule: it has neither) and its stock prompt processor: the cost of VSD itself."""
    from omegaconf import OmegaConf

    system = cfg.system
    system.guidance_type = "stable-diffusion-vsd-guidance"
    system.guidance = {k: v for k, v in OmegaConf.to_container(system.guidance, resolve=False).items()
                       if k not in VSD_ONLY_KEYS}
    processor = {k: v for k, v in OmegaConf.to_container(system.prompt_processor, resolve=False).items()
                 if k in ("pretrained_model_name_or_path", "prompt", "front_threshold", "back_threshold",
                          "overhead_threshold")}
    processor["use_perp_neg"] = False
    system.prompt_processor_type = "stable-diffusion-prompt-processor"
    system.prompt_processor = processor
    OmegaConf.save(cfg, out_path)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=SD_CONFIGS)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20, help="steps left out of it/s")
    parser.add_argument("--models", help="folder with sd/ (full-size, diffusers layout)")
    parser.add_argument("--out", default="outputs/gpu-smoke")
    parser.add_argument("--prompt", default="a DSLR photo of a corgi")
    parser.add_argument("--cpu", action="store_true", help="tiny models and CPU overrides (script check)")
    parser.add_argument("--skip-builtin", action="store_true",
                        help="no built-in baseline (on a CPU it is very slow: it always works at 512x512)")
    parser.add_argument("--run-one", help=argparse.SUPPRESS)
    args, launch_args = parser.parse_known_args()
    if args.run_one:
        run_one(args.run_one, args.cpu, args.warmup, [a for a in launch_args if a != "--"])
        return 0

    if not args.cpu:
        import torch

        if not torch.cuda.is_available():
            parser.error("needs a CUDA GPU (none here); --cpu checks the script itself on a CPU")
    if importlib.util.find_spec("threestudio") is None and not os.path.isdir("threestudio"):
        parser.error("needs threestudio: run it from a threestudio checkout (the folder holding launch.py)")
    if args.cpu:
        from antijanus.cpu.imports import prepare_threestudio_import

        prepare_threestudio_import()
    from omegaconf import OmegaConf

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    models = args.models
    if models is None:
        from antijanus.testing.tiny_models import make_bert, make_blip, make_stable_diffusion

        models = os.path.join(out, "models")
        if not os.path.isdir(os.path.join(models, "sd")):
            make_stable_diffusion(os.path.join(models, "sd"), size="tiny" if args.cpu else "sd21")
            make_bert(os.path.join(models, "bert"), "this image is depicting a view of front side back top corgi".split())
            make_blip(os.path.join(models, "blip"))
    sd = os.path.join(models, "sd")
    results = []
    for config in args.configs:
        config_path = os.path.join(ROOT, "configs", config)
        baseline_path = os.path.join(out, "builtin-" + config)
        jobs = [("antijanus", config_path)]
        if not args.skip_builtin and builtin_baseline(config_path, baseline_path, args.steps):
            jobs.append(("threestudio built-in", baseline_path))
        row = {"config": config}
        for label, path in jobs:
            tag = f"{config[:-5]}-{'ours' if label == 'antijanus' else 'builtin'}"
            timing = os.path.join(out, tag + ".json")
            overrides = [
                f"exp_root_dir={out}/runs", "name=smoke", f"tag={tag}", "use_timestamp=false",
                f"trainer.max_steps={args.steps}", "trainer.val_check_interval=1000000",
                f"checkpoint.every_n_train_steps={args.steps}", f"system.prompt_processor.prompt={args.prompt}",
                f"system.prompt_processor.pretrained_model_name_or_path={sd}",
                f"system.guidance.pretrained_model_name_or_path={sd}",
            ]
            processor = OmegaConf.load(path).system.prompt_processor_type
            if processor == "bert-pmi-prompt-processor":
                overrides.append(f"system.prompt_processor.debias_model={models}/bert")
            if processor == "dnp-prompt-processor":
                overrides.append(f"system.prompt_processor.captioner={models}/blip")
            if args.cpu and processor == "dnp-prompt-processor":
                overrides += ["system.prompt_processor.dns_steps=2"]
            command = [sys.executable, os.path.abspath(__file__), "--run-one", timing, "--warmup", str(args.warmup)]
            command += (["--cpu"] if args.cpu else []) + ["--", "--config", path, "--train"] + overrides
            done = subprocess.run(command, env=dict(os.environ, HF_HUB_OFFLINE="1"))
            row[label] = json.load(open(timing)) if done.returncode == 0 and os.path.exists(timing) else None
        results.append(row)

    print(f"\n{'config':<30}{'antijanus it/s':>16}{'built-in it/s':>15}{'ratio':>8}{'peak MiB':>10}{'built-in MiB':>14}")
    for row in results:
        ours, base = row.get("antijanus"), row.get("threestudio built-in")
        fmt = lambda r, k, f: f.format(r[k]) if r and r.get(k) is not None else "-"  # noqa: E731
        ratio = f"{ours['it_per_s'] / base['it_per_s']:.2f}" if ours and base else "-"
        print(f"{row['config']:<30}{fmt(ours, 'it_per_s', '{:.2f}'):>16}{fmt(base, 'it_per_s', '{:.2f}'):>15}"
              f"{ratio:>8}{fmt(ours, 'peak_mib', '{:.0f}'):>10}{fmt(base, 'peak_mib', '{:.0f}'):>14}")
    with open(os.path.join(out, "smoke.json"), "w") as f:
        json.dump(results, f, indent=2)
    return 0 if all(row.get("antijanus") for row in results) else 1


if __name__ == "__main__":
    sys.exit(main())

import csv
import hashlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import fields

import pytest
import yaml
from omegaconf import OmegaConf

from antijanus.testing.tiny_models import make_clip
from antijanus.utils.errors import ConfigError
from antijanus.tools.evaluate import RENDERED_MARKER, MetricModels, MetricSettings, orbit_folder
from antijanus.tools.sweep import (
    DONE_MARKER, IDENTITY_FILE, Sweep, SweepFailed, claim_folder, collect, evaluate_runs, parse_slurm_parameters,
    run_sweep, submit_slurm,
)
from helpers import REPO  # noqa: E402

FAKE_LAUNCH = textwrap.dedent('''
    """Stands in for threestudio's launch.py. --train: writes the CSV logs, parsed config and
    checkpoint of a finished run; --test: renders data.n_test_views numbered frames into
    <exp_root_dir>/<name>/<tag>/save/it3-test (a texture rolled a little per view)."""
    import os, sys
    args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
    config = sys.argv[sys.argv.index("--config") + 1]
    run = os.path.join(args["exp_root_dir"], args["name"], args["tag"] + args.get("timestamp", "").strip("'"))
    if "--test" in sys.argv:
        import numpy as np
        from PIL import Image
        assert args["resume"].endswith("last.ckpt") and os.path.exists(args["resume"]), args
        assert config.endswith("parsed.yaml") and os.path.exists(config), config
        texture = np.random.default_rng(0).integers(0, 255, (16, 64, 3)).astype(np.uint8)
        os.makedirs(os.path.join(run, "save", "it3-test"), exist_ok=True)
        for i in range(int(args["data.n_test_views"])):
            panel = np.concatenate([np.roll(texture, i, axis=1)[:, :16], np.zeros((16, 16, 3), np.uint8)], 1)
            Image.fromarray(panel).save(os.path.join(run, "save", "it3-test", "%d.png" % i))
        sys.exit(0)
    os.makedirs(os.path.join(run, "csv_logs", "version_0"), exist_ok=True)
    os.makedirs(os.path.join(run, "configs"), exist_ok=True)
    os.makedirs(os.path.join(run, "ckpts"), exist_ok=True)
    with open(os.path.join(run, "train-count"), "a") as f:
        f.write("1")
    import time
    start = time.time()
    time.sleep(float(os.environ.get("FAKE_TRAIN_SECONDS", "0")))
    with open(os.path.join(run, "slot"), "w") as f:
        f.write("%s %f %f" % (os.environ.get("CUDA_VISIBLE_DEVICES", "-"), start, time.time()))
    prompt = args["system.prompt_processor.prompt"]
    with open(os.path.join(run, "configs", "parsed.yaml"), "w") as f:
        f.write("system:\\n  prompt_processor:\\n    prompt: %s\\n" % prompt)
    open(os.path.join(run, "ckpts", "last.ckpt"), "w").write("weights")
    seed = int(args["seed"])
    bonus = 1.0 if "system.guidance.perp_neg=false" in sys.argv else 0.0
    grad_norm = 1.0 + bonus + (0.5 if config.endswith("b.yaml") else 0.0)
    # as threestudio logs them: losses and diagnostics, and settings logged as metrics
    # (the same in every run here: lambdas, learning rate, min/max step, clip threshold, UNet rows)
    with open(os.path.join(run, "csv_logs", "version_0", "metrics.csv"), "w") as f:
        f.write("step,train/loss_sds,train/dsds/clip_threshold,train/loss_sparsity,train/min_step,"
                "train/max_step,train_params/lambda_sds,lr-Adam/pg1,train/grad_norm,train/unet_rows\\n"
                "0,5.0,,,,,,,,\\n1,%f,2.0,0.5,20,980,1.0,0.01,%f,4\\n" % (seed + bonus, grad_norm))
    sys.exit(3 if "FAIL" in prompt else 0)
''')


@pytest.fixture
def sweep_file(tmp_path):
    (tmp_path / "fake_launch.py").write_text(FAKE_LAUNCH)
    (tmp_path / "a.yaml").write_text("name: x\n")
    (tmp_path / "b.yaml").write_text("name: y\n")
    spec = tmp_path / "sweep.yaml"
    spec.write_text(textwrap.dedent(f"""
        name: ablation
        config: a.yaml
        launch: ["{sys.executable}", "{tmp_path / 'fake_launch.py'}"]
        out: {tmp_path / 'out'}
        overrides: [trainer.max_steps=3]
        variants:
          baseline: {{overrides: [system.guidance.perp_neg=false]}}
          perp-neg: {{}}
          dsds: {{config: b.yaml}}
        prompts: ["a DSLR photo of a corgi", "a lion, zoomed out"]
        seeds: [0, 1]
    """))
    return spec


def test_sweep_expands_variants_prompts_and_seeds(sweep_file, tmp_path):
    sweep = Sweep.load(str(sweep_file))
    runs = sweep.runs()
    assert len(runs) == 3 * 2 * 2 and len({r.tag for r in runs}) == 12
    baseline = runs[0]
    assert re.fullmatch(r"baseline--a_dslr_photo_of_a_corgi--s0--[0-9a-f]{10}", baseline.tag)
    assert baseline.run_dir == os.path.join(sweep.out, "ablation", "runs", "ablation", baseline.tag)
    command = baseline.command(sweep.launch, sweep.name, sweep.exp_root)
    assert command[2:4] == ["--config", str(tmp_path / "a.yaml")]
    assert "seed=0" in command and "system.prompt_processor.prompt=a DSLR photo of a corgi" in command
    assert command[-2:] == ["trainer.max_steps=3", "system.guidance.perp_neg=false"]
    assert {r.config for r in runs if r.variant == "dsds"} == {str(tmp_path / "b.yaml")}


def test_sweep_skips_finished_runs_and_aggregates(sweep_file):
    sweep = Sweep.load(str(sweep_file))
    done = sweep.runs()[:4]  # the baseline runs
    for run in done:  # pretend these finished earlier (their metrics are collected too)
        claim_folder(run)
        open(os.path.join(run.run_dir, DONE_MARKER), "w").close()
    assert len(run_sweep(sweep, dry_run=True)) == 8
    launched = run_sweep(sweep, progress=False)
    assert len(launched) == 8 and all(r.variant != "baseline" for r in launched) and all(r.done for r in sweep.runs())
    assert run_sweep(sweep, dry_run=True) == []  # a second call launches nothing

    paths = collect(sweep, progress=False)
    rows = list(csv.DictReader(open(paths["csv"])))
    assert len(rows) == 12  # every finished run; the pre-marked ones have no logs, no values
    assert [r["train/loss_sds"] for r in rows if r["variant"] == "baseline"] == [""] * 4
    assert {"train_params/lambda_sds", "lr-Adam/pg1", "train/min_step", "train/max_step"} <= set(rows[0])
    table = open(paths["markdown"]).read()
    # the table shows the losses/diagnostics that differ between runs; settings logged as metrics
    # (learning rate, lambdas, min/max step, clip threshold) and constant losses are in the CSV only
    assert "| variant | prompt | runs | train/grad_norm | train/loss_sds |" in table
    # perp-neg, corgi: seeds 0 and 1 -> last loss 0 and 1 -> mean 0.5 +- 0.71
    assert "| perp-neg | a DSLR photo of a corgi | 2 | 1 ± 0 | 0.5 ± 0.71 |" in table
    assert "| dsds | a DSLR photo of a corgi | 2 | 1.5 ± 0 | 0.5 ± 0.71 |" in table
    assert "| baseline | a DSLR photo of a corgi | 2 | - | - |" in table
    assert "In results.csv only (settings and bookkeeping logged as metrics, or the same in every run): lr-Adam/pg1, train/dsds/clip_threshold, " \
        "train/loss_sparsity, train/max_step, train/min_step, train/unet_rows, train_params/lambda_sds" in table
    if importlib.util.find_spec("matplotlib") is not None:  # plots are optional
        assert paths["plots"] == [os.path.join(sweep.out, sweep.name, "results.png")]
        assert sorted(f for f in os.listdir(os.path.dirname(paths["csv"])) if f.endswith(".png")) == ["results.png"]
        assert os.path.getsize(paths["plots"][0]) > 0 and "![results.png](results.png)" in table
    # an explicit choice of columns is respected, constants included
    chosen = open(collect(sweep, ["train/min_step", "train/loss_sds"], progress=False)["markdown"]).read()
    assert "| variant | prompt | runs | train/min_step | train/loss_sds |" in chosen


def test_local_gpus_run_one_run_each_in_parallel(sweep_file, monkeypatch):
    sweep = Sweep.load(str(sweep_file))
    sweep.seeds = [0]
    monkeypatch.setenv("FAKE_TRAIN_SECONDS", "0.5")
    assert len(run_sweep(sweep, gpus=["0", "1"], progress=False)) == 6
    spans = {}
    for run in sweep.runs():
        slot, start, end = open(os.path.join(run.run_dir, "slot")).read().split()
        spans.setdefault(slot, []).append((float(start), float(end)))
    assert set(spans) == {"0", "1"}  # both GPUs used, each run pinned to one
    for slot_spans in spans.values():  # never two runs at once on one GPU
        slot_spans.sort()
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(slot_spans, slot_spans[1:]))
    starts = sorted((s, e) for v in spans.values() for s, e in v)
    assert any(b_start < a_end for (_, a_end), (b_start, _) in zip(starts, starts[1:]))  # in parallel


def test_failed_runs_are_reported_and_not_marked_done(sweep_file):
    sweep = Sweep.load(str(sweep_file))
    sweep.prompts = ["FAIL on purpose", "a corgi"]
    sweep.seeds = [0]
    with pytest.raises(SweepFailed, match="3 run\\(s\\) failed") as failed:
        run_sweep(sweep, progress=False)
    assert [r.done for r in sweep.runs()] == [False, True] * 3  # the other runs went on and finished
    assert len(failed.value.launched) == 6
    for failure in failed.value.failures:
        log = os.path.join(failure.run.run_dir, "sweep.log")
        assert failure.line() == f"error: {failure.run.tag}: training failed (exit 3), see {log}"


def test_sweep_script_reports_failed_runs_and_collects_the_finished_ones(sweep_file):
    text = sweep_file.read_text().replace('prompts: ["a DSLR photo of a corgi", "a lion, zoomed out"]',
                                          'prompts: ["a DSLR photo of a corgi", "FAIL on purpose"]')
    sweep_file.write_text(text.replace("seeds: [0, 1]", "seeds: [0]"))
    script = os.path.join(REPO, "scripts", "sweep.py")
    result = subprocess.run([sys.executable, script, str(sweep_file)], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    runs = Sweep.load(str(sweep_file)).runs()
    failed = sorted((r for r in runs if r.prompt == "FAIL on purpose"), key=lambda r: r.tag)
    assert [r.variant for r in failed] == ["baseline", "dsds", "perp-neg"]
    assert errors == [f"error: {r.tag}: training failed (exit 3), see {os.path.join(r.run_dir, 'sweep.log')}"
                      for r in failed]
    assert "6 of 6 runs launched (0 already done, 3 failed)" in result.stdout and "collected 3 runs" in result.stdout
    results = list(csv.DictReader(open(sweep_file.parent / "out" / "ablation" / "results.csv")))
    assert sorted(r["variant"] for r in results) == ["baseline", "dsds", "perp-neg"]
    assert {r["prompt"] for r in results} == {"a DSLR photo of a corgi"}


def test_dry_run_prints_shell_quoted_commands(sweep_file):
    sweep = Sweep.load(str(sweep_file))
    script = os.path.join(REPO, "scripts", "sweep.py")
    out = subprocess.run([sys.executable, script, str(sweep_file), "--dry-run"], capture_output=True, text=True).stdout
    lines = out.splitlines()[1:]
    assert [shlex.split(line) for line in lines] == [
        run.command(sweep.launch, sweep.name, sweep.exp_root) for run in sweep.runs()]
    assert "'system.prompt_processor.prompt=a lion, zoomed out'" in lines[2]


@pytest.mark.parametrize(
    "data, message",
    [
        ({"name": "x", "config": "a.yaml", "prompts": ["p"], "seed": [1]}, "`seed`.*unknown sweep key"),
        ({"name": "x", "config": "missing.yaml", "prompts": ["p"]}, "config file does not exist"),
        ({"name": "x", "config": "a.yaml", "prompts": []}, "prompts.*at least one"),
        ({"name": "x y", "config": "a.yaml", "prompts": ["p"]}, "`name`"),
        ({"name": "x", "config": "a.yaml", "prompts": ["p"], "variants": {"v": {"overide": []}}},
         "variants.v.overide.*unknown variant key"),
        # issue 12 item 11: wrong shapes are errors naming the key, never garbage commands
        ({"name": "x", "config": "a.yaml", "prompts": ["p"], "overrides": "trainer.max_steps=10"},
         "`overrides` = 'trainer.max_steps=10': must be a list"),
        ({"name": "x", "config": "a.yaml", "prompts": ["p"], "overrides": ["trainer.max_steps"]},
         "`overrides` = 'trainer.max_steps'.*dotted.key=value"),
        ({"name": "x", "config": "a.yaml", "prompts": ["p"], "variants": {"v": {"overrides": "seed=1"}}},
         "`variants.v.overrides` = 'seed=1': must be a list"),
        ({"name": "x", "config": "a.yaml", "prompts": "a corgi"}, "`prompts` = 'a corgi': must be a list"),
        ({"name": "x", "config": "a.yaml", "prompts": ["p"], "seeds": [0, "one"]}, "`seeds`.*'one' is not one"),
        ({"name": "x", "config": "a.yaml", "prompts": ["p"], "seeds": [0.5]}, "`seeds`.*list of integers"),
        ({"name": "x", "config": "a.yaml", "prompts": ["p"], "seeds": 3}, "`seeds` = 3: must be a list of integers"),
        ({"name": "x", "config": "a.yaml", "prompts": ["p"], "variants": ["baseline", "perp-neg"]},
         "`variants` = \\['baseline', 'perp-neg'\\]: maps variant names"),
        ({"name": "x", "config": "a.yaml", "prompts": ["p"], "variants": {"v": ["seed=1"]}},
         "`variants.v`.*a variant is a mapping"),
        ({"name": "x", "config": "a.yaml", "prompts": ["p"], "metrics": ["n_views=4"]}, "`metrics`.*a mapping"),
        ({"name": "x", "config": "a.yaml", "prompts": ["p"], "metrics": {"distractors": "a cat"}},
         "`metrics.distractors` = 'a cat': must be a list"),
        ({"name": "x", "config": "a.yaml", "prompts": ["p"], "metrics": {"n_views": "100"}},
         "`metrics.n_views`.*must be an integer"),
        ({"name": "x", "config": "a.yaml", "prompts": ["p"], "replace": ["system.material={}"]},
         "`replace`.*maps dotted config keys"),
        ({"name": "x", "config": "a.yaml", "prompts": ["p"], "variants": {"v": {"replace": {"nmae": 1}}}},
         "`variants.v.replace.nmae`.*a.yaml does not have.*'name'"),
        ({"name": "x", "config": "a.yaml", "prompts": ["p"], "replace": {"system.material.n_outptu_dims": 4}},
         "`variants.default.replace.system.material.n_outptu_dims`.*a.yaml does not have.*'n_output_dims'"),
    ],
)
def test_bad_sweep_files(tmp_path, data, message):
    (tmp_path / "a.yaml").write_text("name: x\nsystem: {material: {n_output_dims: 3}, material_type: m}\n")
    with pytest.raises(ConfigError, match=message):
        Sweep.from_dict(data, str(tmp_path))


def test_slurm_parameters_are_key_value_pairs():
    assert parse_slurm_parameters(["slurm_partition=gpu", "timeout_min=600", "slurm_comment=a=b"]) == {
        "slurm_partition": "gpu", "timeout_min": 600, "slurm_comment": "a=b"}
    with pytest.raises(ConfigError, match="`slurm` = 'gpu': expects KEY=VALUE"):
        parse_slurm_parameters(["timeout_min=600", "gpu"])


def test_sweep_script_reports_bad_slurm_parameters_and_sweep_files(sweep_file, tmp_path):
    script = os.path.join(REPO, "scripts", "sweep.py")
    bad = subprocess.run([sys.executable, script, str(sweep_file), "--slurm", "partition", "gpu"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "config key `slurm` = 'partition': expects KEY=VALUE" in bad.stderr
    assert "Traceback" not in bad.stderr
    text = sweep_file.read_text().replace("overrides: [trainer.max_steps=3]", "overrides: trainer.max_steps=3")
    sweep_file.write_text(text)
    bad = subprocess.run([sys.executable, script, str(sweep_file), "--dry-run"], capture_output=True, text=True)
    assert bad.returncode == 2 and "config key `overrides`" in bad.stderr and "Traceback" not in bad.stderr


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return make_clip(str(tmp_path_factory.mktemp("tiny-clip-sweep")))


def with_metrics(sweep_file, tiny_clip, **extra):
    """The sweep file with a metrics block (5-view orbit: 0, 90, .., 360; random LPIPS, tiny CLIP)."""
    data = yaml.safe_load(sweep_file.read_text())
    data["variants"] = {"baseline": {"overrides": ["system.guidance.perp_neg=false"]}, "perp-neg": {}}
    data["prompts"], data["seeds"] = ["a DSLR photo of a corgi"], [0]
    data["metrics"] = {"n_views": 5, "clip_model": tiny_clip, "random_lpips": True, "preprocess": "none",
                       "distractors": ["a cat"], **extra}
    sweep_file.write_text(yaml.safe_dump(data))
    return Sweep.load(str(sweep_file))


def test_sweep_renders_each_orbit_from_the_checkpoint_and_tabulates_the_metrics(sweep_file, tiny_clip):
    sweep = with_metrics(sweep_file, tiny_clip)
    assert len(run_sweep(sweep, progress=False)) == 2
    for run in sweep.runs():
        folder = orbit_folder(run.run_dir, 5)
        assert folder == os.path.join(run.run_dir, "metrics", "orbit-n5", "save", "it3-test")
        assert sorted(os.listdir(folder)) == ["0.png", "1.png", "2.png", "3.png", "4.png"]
    assert run_sweep(sweep, dry_run=True) == []

    paths = collect(sweep, progress=False)
    rows = list(csv.DictReader(open(paths["csv"])))
    assert len(rows) == 2 and all(float(r["a_lpips"]) > 0 and r["n_views"] == "5.0" for r in rows)
    assert all(0 <= float(r["clip_r_precision"]) <= 1 for r in rows)
    assert "metric_settings" not in rows[0]  # the settings key is bookkeeping, not a column
    table = open(paths["markdown"]).read()
    assert "| variant | prompt | runs | a_lpips | clip_r_precision | clip_front_in_region | clip_side_in_region |" \
        " clip_back_in_region | train/grad_norm | train/loss_sds |" in table

    # A lost orbit is rendered again without retraining; unchanged settings are not re-evaluated.
    run = sweep.runs()[0]
    os.remove(os.path.join(run.run_dir, "metrics", "orbit-n5", RENDERED_MARKER))
    assert run_sweep(sweep, dry_run=True) == [run]
    run_sweep(sweep, progress=False)
    assert open(os.path.join(run.run_dir, "train-count")).read() == "1"
    assert evaluate_runs(sweep, progress=False) == []
    # New settings (another view phrase) -> every run is evaluated again.
    sweep.metrics.phrases = {"front": "from the front", "back": "from behind"}
    assert evaluate_runs(sweep, progress=False) == [r.tag for r in sweep.runs()]
    header = open(os.path.join(run.run_dir, "clip_per_azimuth.csv")).readline().strip()
    assert header == "azimuth,front,back"
    # Other models (a retrained judge: another identity) -> evaluated again, then kept.
    retrained = MetricModels(sweep.metrics, identity="judge weights v2")
    assert evaluate_runs(sweep, progress=False, models=retrained) == [r.tag for r in sweep.runs()]
    assert evaluate_runs(sweep, progress=False, models=retrained) == []
    assert evaluate_runs(sweep, progress=False) == [r.tag for r in sweep.runs()]  # the default models again


def test_a_resumed_checkpoint_invalidates_the_rendered_orbit(sweep_file, tiny_clip):
    sweep = with_metrics(sweep_file, tiny_clip)
    run_sweep(sweep, progress=False)
    run = sweep.runs()[0]
    assert orbit_folder(run.run_dir, 5) is not None
    with open(os.path.join(run.run_dir, "ckpts", "last.ckpt"), "w") as f:
        f.write("weights after 1000 more steps")
    assert orbit_folder(run.run_dir, 5) is None
    assert run_sweep(sweep, dry_run=True) == [run]


def test_metrics_block_is_checked_when_the_sweep_is_loaded(sweep_file, tiny_clip):
    with pytest.raises(ConfigError, match="metrics.n_view`.*unknown metrics key"):
        with_metrics(sweep_file, tiny_clip, n_view=100)
    with pytest.raises(ConfigError, match="metrics.lpips_net.*allowed values: 'vgg', 'alex'"):
        with_metrics(sweep_file, tiny_clip, lpips_net="squeeze")
    with pytest.raises(ConfigError, match="metrics.phrases"):
        with_metrics(sweep_file, tiny_clip, phrases={"top": "overhead view"})


def test_slurm_array_through_submitit(sweep_file, tiny_clip):
    """The SLURM path end to end with submitit's local executor (same array code path, tasks run
    as local processes): every run trains, renders its orbit and is marked done."""
    pytest.importorskip("submitit")
    sweep = with_metrics(sweep_file, tiny_clip)
    jobs = submit_slurm(sweep, {"timeout_min": 5, "slurm_partition": "gpu"}, cluster="local")
    assert len(jobs) == 2
    for job in jobs:
        job.result()  # raises if the task failed
    assert all(r.done for r in sweep.runs()) and run_sweep(sweep, dry_run=True) == []
    assert submit_slurm(sweep, {"timeout_min": 5}, cluster="local") == []
    with pytest.raises(ConfigError, match="slurm.*not accepted by submitit"):
        submit_slurm(sweep, {"slurm_partitoin": "gpu"}, cluster="local")


def test_sweep_script_runs_and_collects(sweep_file, tiny_clip):
    with_metrics(sweep_file, tiny_clip)
    script = os.path.join(REPO, "scripts", "sweep.py")

    def sweep(*args):
        result = subprocess.run([sys.executable, script, str(sweep_file), *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    assert "2 of 2 runs to launch" in sweep("--dry-run")
    out = sweep()
    assert "2 of 2 runs launched" in out and "collected 2 runs" in out
    assert "0 of 2 runs to launch (2 already done)" in sweep("--dry-run")
    results = list(csv.DictReader(open(sweep_file.parent / "out" / "ablation" / "results.csv")))
    assert [r["variant"] for r in results] == ["baseline", "perp-neg"] and all(r["a_lpips"] for r in results)
    bad = subprocess.run([sys.executable, script, str(sweep_file), "--slurm", "slurm_partitoin=gpu", "--cluster",
                          "local"], capture_output=True, text=True)
    assert bad.returncode == 2 and "config key `slurm`" in bad.stderr


def test_readme_sweep_example_is_a_valid_sweep_file():
    root = REPO
    readme = open(os.path.join(root, "README.md")).read()
    example = re.search(r"```yaml\n(name: janus-ablation\n.*?)```", readme, re.S).group(1)
    sweep = Sweep.from_dict(yaml.safe_load(example), root)
    assert len(sweep.runs()) == 4 * 2 * 3
    assert sweep.metrics.n_views == 100 and sweep.metrics.lpips_net == "vgg" and sweep.metrics.render
    # the example lists every metrics key (the CPU options random_lpips and device included)
    assert set(yaml.safe_load(example)["metrics"]) == {f.name for f in fields(MetricSettings)}
    tools = readme[readme.index("## Research tools"):readme.index("## Ablation sweeps")]
    for option in ("--clip", "--random-lpips", "--device cpu", "--n-views", "--no-render", "--preprocess none",
                   "make_tiny_models.py", "threestudio_cpu.py"):
        assert option in tools, option


def test_launch_as_one_string_is_split_as_a_shell_would(sweep_file, tmp_path):
    folder = tmp_path / "with space"
    folder.mkdir()
    text = sweep_file.read_text().replace(
        f'launch: ["{sys.executable}", "{tmp_path / "fake_launch.py"}"]',
        f"launch: \"'{sys.executable}' '{folder / 'launch.py'}' --small\"")
    sweep_file.write_text(text)
    assert Sweep.load(str(sweep_file)).launch == [sys.executable, str(folder / "launch.py"), "--small"]


def test_replace_swaps_a_block_whole_in_a_derived_config(tmp_path):
    """A command-line override merges into a block (the shipped material's keys would stay);
    ``replace`` swaps the block whole: the variant runs from a derived config that has the new
    block and only it, interpolations kept, the other variants from their own configs."""
    (tmp_path / "nerf.yaml").write_text(textwrap.dedent("""
        name: nerf
        system:
          material_type: diffuse-with-point-light-material
          material: {ambient_only_steps: 2001, albedo_activation: sigmoid}
          renderer:
            radius: ${system.geometry.radius}
          geometry:
            radius: 2.0
    """))
    sweep = Sweep.from_dict({
        "name": "latent", "config": "nerf.yaml", "prompts": ["a bear"], "out": str(tmp_path / "out"),
        "variants": {"rgb": {}, "latent": {"overrides": ["system.material_type=no-material"],
                                           "replace": {"system.material": {"n_output_dims": 4,
                                                                           "color_activation": "none"}}}},
    }, str(tmp_path))
    run_sweep(sweep, dry_run=True)
    configs = {run.variant: run.config for run in sweep.runs()}
    assert configs["rgb"] == str(tmp_path / "nerf.yaml")
    assert configs["latent"] == str(tmp_path / "out" / "latent" / "configs" / "latent.yaml")
    derived = OmegaConf.load(configs["latent"])
    assert OmegaConf.to_container(derived.system.material) == {"n_output_dims": 4, "color_activation": "none"}
    assert derived.system.renderer.radius == 2.0 and "${system.geometry.radius}" in open(configs["latent"]).read()
    command = sweep.runs()[1].command(sweep.launch, sweep.name, sweep.exp_root)
    assert command[command.index("--config") + 1] == configs["latent"]
    assert oct(os.stat(configs["latent"]).st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Issue "Ablation runs that never report a wrong number": a run's identity (exact prompt, seed,
# overrides, config contents) names its folder; collections refuse duplicates; errors in one line.

def only_variant(sweep, variant, prompts, seeds=(0,)):
    sweep.variants = {variant: sweep.variants[variant]}
    sweep.prompts, sweep.seeds = list(prompts), list(seeds)
    return sweep


def parsed_prompt(run):
    """The prompt the (fake) launcher trained the run's folder with."""
    parsed = yaml.safe_load(open(os.path.join(run.run_dir, "configs", "parsed.yaml")))
    return parsed["system"]["prompt_processor"]["prompt"]


def test_prompts_that_share_a_slug_get_runs_of_their_own(sweep_file):
    """(1) 'a DSLR photo of a corgi' and 'A DSLR photo of a corgi!' had one run folder (the second
    prompt skipped, or trained over the first: one prompt's metrics under the other's name); so
    had long prompts that differ after the slug's 60 characters."""
    sweep = only_variant(Sweep.load(str(sweep_file)), "perp-neg", ["a DSLR photo of a corgi"])
    run_sweep(sweep, progress=False)
    sweep.prompts = ["A DSLR photo of a corgi!"]
    assert [r.prompt for r in run_sweep(sweep, dry_run=True)] == ["A DSLR photo of a corgi!"]  # not "done" by its tag
    long = " ".join(["a highly detailed DSLR photo of a corgi"] * 10)
    prompts = ["a DSLR photo of a corgi", "A DSLR photo of a corgi!", f"{long} in a hat", f"{long} in a scarf"]
    sweep.prompts = prompts
    assert [r.prompt for r in run_sweep(sweep, progress=False)] == prompts[1:]
    runs = sweep.runs()
    assert len({r.run_dir for r in runs}) == 4 and all(r.done for r in runs)
    for run in runs:  # each folder trained once, with its own exact prompt
        assert open(os.path.join(run.run_dir, "train-count")).read() == "1"
        assert parsed_prompt(run) == run.prompt
        assert json.load(open(os.path.join(run.run_dir, IDENTITY_FILE)))["prompt"] == run.prompt
    rows = list(csv.DictReader(open(collect(sweep, progress=False)["csv"])))
    assert sorted(r["prompt"] for r in rows) == sorted(prompts)  # exact prompts, not slugs


def test_edited_settings_give_new_runs_and_old_ones_are_not_reported(sweep_file):
    """(2) After editing a variant's overrides the sweep said '0 of 2 runs to launch (2 already
    done)' and reported the old results under the edited variant. The same for the sweep-wide
    overrides and the contents of a config file; the old runs stay on disk, untouched."""
    text = sweep_file.read_text().replace("seeds: [0, 1]", "seeds: [0]")
    sweep_file.write_text(text)
    before = Sweep.load(str(sweep_file))
    assert len(run_sweep(before, progress=False)) == 6
    edited = text.replace("baseline: {overrides: [system.guidance.perp_neg=false]}",
                          "baseline: {overrides: [system.guidance.perp_neg=true]}")
    sweep_file.write_text(edited)
    script = os.path.join(REPO, "scripts", "sweep.py")
    out = subprocess.run([sys.executable, script, str(sweep_file), "--dry-run"], capture_output=True, text=True).stdout
    assert "2 of 6 runs to launch (4 already done)" in out
    sweep = Sweep.load(str(sweep_file))
    assert sorted(r.variant for r in run_sweep(sweep, progress=False)) == ["baseline", "baseline"]
    rows = list(csv.DictReader(open(collect(sweep, progress=False)["csv"])))
    assert len(rows) == 6  # the current runs only
    # perp_neg=false added 1 to grad_norm; the edited baseline does not have it
    assert [float(r["train/grad_norm"]) for r in rows if r["variant"] == "baseline"] == [1.0, 1.0]
    for run in before.runs():  # the old runs: still there, untouched, no longer reported
        assert run.done and open(os.path.join(run.run_dir, "train-count")).read() == "1"

    sweep_file.write_text(edited.replace("trainer.max_steps=3", "trainer.max_steps=4"))
    assert len(run_sweep(Sweep.load(str(sweep_file)), dry_run=True)) == 6
    sweep_file.write_text(edited)
    (sweep_file.parent / "b.yaml").write_text("name: y\nsystem: {guidance: {perp_neg: true}}\n")
    assert [r.variant for r in run_sweep(Sweep.load(str(sweep_file)), dry_run=True)] == ["dsds"] * 2


def test_a_run_is_done_only_when_its_identity_file_matches(sweep_file, tmp_path):
    """(2) The identity is written beside the run; a finished folder without it, or with another
    identity, is not done, and is never trained over (the run fails, saying why)."""
    sweep = only_variant(Sweep.load(str(sweep_file)), "perp-neg", ["a corgi", "a lion"])
    run_sweep(sweep, progress=False)
    corgi, lion = sweep.runs()
    identity = json.load(open(corgi.identity_file))
    assert identity == {"variant": "perp-neg", "prompt": "a corgi", "seed": 0,
                        "config_sha256": hashlib.sha256((tmp_path / "a.yaml").read_bytes()).hexdigest(),
                        "overrides": ["trainer.max_steps=3"], "variant_overrides": []}
    os.remove(corgi.identity_file)
    with open(lion.identity_file, "w") as f:  # the lion's folder says it holds the corgi's run
        json.dump(identity, f)
    assert not corgi.done and not lion.done
    with pytest.raises(SweepFailed) as failed:
        run_sweep(sweep, progress=False)
    lines = sorted(f.line() for f in failed.value.failures)
    assert lines == [f"error: {corgi.tag}: the folder holds a finished run without a readable identity.json (made by "
                     f"another tool or an older sweep); move it away to run this one, see {corgi.run_dir}",
                     f"error: {lion.tag}: the folder holds another run (its identity.json differs in prompt); move "
                     f"it away to run this one, see {lion.identity_file}"]
    assert all(open(os.path.join(r.run_dir, "train-count")).read() == "1" for r in (corgi, lion))
    # a replaced block is part of the derived config's contents: another value, another run
    (tmp_path / "m.yaml").write_text("name: m\nsystem: {material: {n_output_dims: 3}}\n")

    def replaced(dims):
        return Sweep.from_dict({"name": "r", "config": "m.yaml", "prompts": ["a bear"], "out": str(tmp_path / "o"),
                                "replace": {"system.material": {"n_output_dims": dims}}}, str(tmp_path)).runs()[0]

    assert replaced(4).tag != replaced(3).tag and replaced(4).tag == replaced(4).tag


@pytest.mark.parametrize("change, message", [
    ({"variants": {}}, "`variants` = {}: needs at least one variant"),
    ({"variants": []}, "`variants` = \\[\\]: needs at least one variant"),
    ({"variants": None}, "`variants` = None: needs at least one variant"),
    ({"variants": {1: {}, "1": {}}}, "`variants`.*'1' names two variants"),
    ({"seeds": [0, 0, -1]}, "`seeds` = \\[0, 0, -1\\]: 0 is given twice"),
    ({"seeds": [0, -1]}, "`seeds`.*-1 is not a seed in \\[0, 4294967295\\]"),
    ({"seeds": [2 ** 32]}, "`seeds`.*4294967296 is not a seed"),
    ({"prompts": ["a corgi", "a lion", "a corgi"]}, "`prompts`.*'a corgi' is given twice"),
    ({"prompts": ["a corgi", "  "]}, "`prompts`.*prompt 2 is empty"),
    ({"prompts": [""]}, "`prompts` = \\[''\\]: prompt 1 is empty"),
])
def test_collections_refuse_duplicates_and_empty_lists(tmp_path, change, message):
    """(3) An empty variant list became one 'default' variant; duplicate seeds, prompts or
    variant names ran (and were reported) twice; a seed Lightning replaces by a random one ran."""
    (tmp_path / "a.yaml").write_text("name: x\n")
    with pytest.raises(ConfigError, match=message):
        Sweep.from_dict({"name": "x", "config": "a.yaml", "prompts": ["a corgi"], **change}, str(tmp_path))
    with pytest.raises(ConfigError, match="`slurm` = 'timeout_min=600': timeout_min is given twice"):
        parse_slurm_parameters(["timeout_min=5", "timeout_min=600"])
    assert Sweep.from_dict({"name": "x", "config": "a.yaml", "prompts": ["p"]}, str(tmp_path)).seeds == [0]
    assert list(Sweep.from_dict({"name": "x", "config": "a.yaml", "prompts": ["p"]}, str(tmp_path)).variants) == [
        "default"]  # the key left out: one variant with the sweep's config


@pytest.mark.parametrize("text, line, problem", [
    ('name: x\nconfig: a.yaml\nprompts: ["a corgi", "a lion"\nseeds: [0]\n', 4, "did not find expected ',' or ']'"),
    ("name: x\nconfig: a.yaml\nprompts: [a]\nvariants:\n  a: {}\n  a: {}\n", 6, "found duplicate key a"),
])
def test_a_sweep_files_yaml_error_is_one_line_naming_the_file_and_line(tmp_path, text, line, problem):
    """(4) A YAML syntax error in the sweep file was a traceback."""
    (tmp_path / "a.yaml").write_text("name: x\n")
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    script = os.path.join(REPO, "scripts", "sweep.py")
    result = subprocess.run([sys.executable, script, str(path), "--dry-run"], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: config key `sweep` = '{path}': not valid YAML: line {line}, ")
    assert problem in lines[0]
    with pytest.raises(ConfigError, match="no such sweep file"):
        Sweep.load(str(tmp_path / "missing.yaml"))


def test_collect_only_without_a_finished_run_fails_and_says_so(sweep_file):
    """(5) Collecting a sweep with no finished run exited 0 ('collected 0 runs', empty tables)."""
    script = os.path.join(REPO, "scripts", "sweep.py")
    result = subprocess.run([sys.executable, script, str(sweep_file), "--collect-only"], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: no finished run of sweep ablation" in result.stderr and "0 of 12 runs" in result.stderr
    assert not os.path.exists(sweep_file.parent / "out" / "ablation" / "results.csv")


@pytest.mark.parametrize("args, message", [
    (["--gpus", "-1"], "argument --gpus: '-1' is not a GPU"),
    (["--gpus", "0", "x"], "argument --gpus: 'x' is not a GPU"),
    (["--gpus", "0", "1", "0"], "argument --gpus: 0 is given twice"),
    (["--metrics", "a_lpips", "a_lpips"], "argument --metrics: a_lpips is given twice"),
])
def test_sweep_script_refuses_bad_gpu_and_column_lists(sweep_file, args, message):
    """(5) The command line's lists are checked by argparse (exit 2, one message): --gpus -1 hid
    every GPU from its runs, --gpus 0 0 put two runs on one GPU at once. (The script has no count
    option such as --jobs: its parallelism is the --gpus list.)"""
    script = os.path.join(REPO, "scripts", "sweep.py")
    result = subprocess.run([sys.executable, script, str(sweep_file), "--dry-run", *args], capture_output=True,
                            text=True)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_a_500_word_prompt_gets_a_run_folder_name_that_fits(sweep_file):
    """(6) The run folder's name stays short (<= 100 bytes: far below the 255 of most file systems
    and the 143 of eCryptfs) for a 500-word prompt, in any script, and still tells prompts apart."""
    words = "a zoomed out DSLR photo of a corgi wearing a tiny knitted hat".split()
    english = " ".join(words[i % len(words)] for i in range(500))
    chinese = " ".join(["一只", "戴着", "小帽子的", "柯基犬"] * 125)
    prompts = [english, english + " at dusk", chinese]
    assert len(english.split()) == 500 and len(chinese.split()) == 500
    sweep = only_variant(Sweep.load(str(sweep_file)), "perp-neg", prompts)
    runs = sweep.runs()
    names = [os.path.basename(r.run_dir) for r in runs]
    assert len(set(names)) == 3, names
    assert all(len(name.encode("utf-8")) <= 100 for name in names), names
    assert names[2].startswith("perp-neg--一只_戴着_小帽子的_柯基犬")
    assert re.search(r"--s0--[0-9a-f]{10}$", names[2])
    run_sweep(sweep, progress=False)
    assert [parsed_prompt(r) for r in sweep.runs()] == prompts

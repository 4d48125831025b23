"""Running a sweep: each run trained (and its test orbit rendered) on local GPUs one after the
other or in parallel, or as a SLURM job array through submitit.

A run that finished (it wrote ``.antijanus-done`` beside its ``identity.json``) is skipped when the
sweep is run again with the same identity (spec: the exact prompt, seed, overrides and config
contents); a folder that holds another run (its ``identity.json`` differs, or a finished run has
none) is never trained over: that run fails with a line saying so. With a
``metrics`` block, each run then renders its test orbit from its checkpoint in the same slot
(GPU / SLURM task) with threestudio's ``launch.py --test`` (a run whose orbit is missing is
rendered again, not retrained). A failed run does not stop the others; each failure is reported
with the log that says why.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

from ...utils.cache import write_json
from ...utils.errors import ConfigError
from ...utils.progress import progress_bar
from ..evaluate import orbit_folder, render_run_orbit
from .spec import DONE_MARKER, IDENTITY_FILE, Run, Sweep


class StepFailed(RuntimeError):
    """A run's training or orbit render failed; ``log`` is the file that says why."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(f"{message}, see {log}")
        self.log = log


@dataclass(frozen=True)
class RunFailure:
    run: Run
    message: str  # names the log to read

    def line(self) -> str:
        return f"error: {self.run.tag}: {self.message}"


class SweepFailed(RuntimeError):
    """Some runs failed (the others finished and can be collected)."""

    def __init__(self, failures: Sequence[RunFailure], launched: Sequence[Run]) -> None:
        self.failures = sorted(failures, key=lambda f: f.run.tag)
        self.launched = list(launched)
        super().__init__(f"{len(self.failures)} run(s) failed:\n" + "\n".join(f.line() for f in self.failures))


def orbit_missing(sweep: Sweep, run: Run) -> bool:
    """The sweep's metrics render an orbit from the checkpoint and this run has none (complete,
    of its current checkpoint)."""
    m = sweep.metrics
    return bool(m and m.render and orbit_folder(run.run_dir, m.n_views, m.elevation_deg) is None)


def needs_work(sweep: Sweep, run: Run) -> bool:
    """Not trained yet, or trained but its test orbit for the metrics is not rendered."""
    return not run.done or orbit_missing(sweep, run)


def training_log(run: Run) -> str:
    return os.path.join(run.run_dir, "sweep.log")


def claim_folder(run: Run) -> None:
    """Write the run's identity into its folder before it trains; a folder that holds another run
    (its identity.json differs, or a finished run has none) is refused (StepFailed), never
    trained over."""
    recorded, identity = run.recorded_identity(), json.loads(run.identity)
    if recorded is not None and recorded != identity:
        differ = sorted(k for k in set(recorded) | set(identity) if recorded.get(k) != identity.get(k))
        raise StepFailed(f"the folder holds another run (its {IDENTITY_FILE} differs in {', '.join(differ)}); "
                         "move it away to run this one", run.identity_file)
    if recorded is None and os.path.exists(os.path.join(run.run_dir, DONE_MARKER)):
        raise StepFailed(f"the folder holds a finished run without a readable {IDENTITY_FILE} (made by another "
                         "tool or an older sweep); move it away to run this one", run.run_dir)
    write_json(run.identity_file, identity)


def execute_run(sweep: Sweep, run: Run, cwd: Optional[str] = None, env: Optional[Mapping[str, str]] = None) -> None:
    """Train the run (unless it finished before with the same identity), then render its test
    orbit from the checkpoint when the sweep has a metrics block. Raises RuntimeError (naming the
    log) when a step fails or the folder holds another run."""
    os.makedirs(run.run_dir, exist_ok=True)
    if not run.done:
        claim_folder(run)
        with open(training_log(run), "w") as log:
            code = subprocess.run(run.command(sweep.launch, sweep.name, sweep.exp_root), cwd=cwd,
                                  env=None if env is None else dict(env), stdout=log,
                                  stderr=subprocess.STDOUT).returncode
        if code != 0:
            raise StepFailed(f"training failed (exit {code})", training_log(run))
        with open(os.path.join(run.run_dir, DONE_MARKER), "w") as f:
            f.write("ok\n")
    if orbit_missing(sweep, run):
        m = sweep.metrics
        render_run_orbit(run.run_dir, sweep.launch, m.n_views, m.elevation_deg, cwd=cwd, env=env)


def _failure(run: Run, error: BaseException) -> RunFailure:
    """The error as one line that names a log (the training log when the error names none)."""
    message = " ".join(str(error).split()) or type(error).__name__
    if not isinstance(error, StepFailed) and " see " not in message:
        message += f" (training log: {training_log(run)})"
    return RunFailure(run, message)


def run_sweep(sweep: Sweep, gpus: Optional[Sequence[str]] = None, dry_run: bool = False,
              cwd: Optional[str] = None, env: Optional[Mapping[str, str]] = None, progress: bool = True) -> List[Run]:
    """Launch the runs that are not done: one after the other, or one at a time on each local
    GPU (``gpus=["0", "1"]``) in parallel. Returns the runs launched (or that would be). A failed
    run does not stop the others; at the end ``SweepFailed`` lists every failure with its log."""
    sweep.write_derived_configs()
    todo = [run for run in sweep.runs() if needs_work(sweep, run)]
    if dry_run:
        return todo
    slots = list(gpus) if gpus else [None]
    free = list(slots)
    lock = threading.Lock()

    def work(run: Run) -> None:
        with lock:
            slot = free.pop()
        try:
            run_env = dict(os.environ if env is None else env)
            if slot is not None:
                run_env["CUDA_VISIBLE_DEVICES"] = slot
            execute_run(sweep, run, cwd=cwd, env=run_env)
        finally:
            with lock:
                free.append(slot)

    bar = progress_bar(len(todo), f"sweep {sweep.name}", "run", progress)
    failures = []
    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        futures = {pool.submit(work, run): run for run in todo}
        for future in as_completed(futures):
            if future.exception() is not None:
                failures.append(_failure(futures[future], future.exception()))
            bar.update(1)
    bar.close()
    if failures:
        raise SweepFailed(failures, todo)
    return todo


def dry_run_command(sweep: Sweep, run: Run) -> str:
    """The run's command as one shell-quoted line (copy-paste safe: prompts have spaces)."""
    return shlex.join(run.command(sweep.launch, sweep.name, sweep.exp_root))


def parse_slurm_parameters(items: Sequence[str]) -> Dict[str, object]:
    """``KEY=VALUE`` strings (the ``--slurm`` arguments) as submitit parameters; integer values
    become ints."""
    params: Dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("slurm", item, "expects KEY=VALUE, e.g. slurm_partition=gpu timeout_min=600")
        if key.strip() in params:
            raise ConfigError("slurm", item, f"{key.strip()} is given twice")
        params[key.strip()] = int(value) if re.fullmatch(r"-?\d+", value) else value
    return params


def submit_slurm(sweep: Sweep, slurm: Mapping, cwd: Optional[str] = None, cluster: Optional[str] = None):
    """The runs that are not done as one job array through submitit (training and, with a
    metrics block, the orbit render in each task). ``slurm`` holds submitit's AutoExecutor
    parameters: generic ones (``timeout_min``, ``gpus_per_node``, ``cpus_per_task``, ``mem_gb``)
    and SLURM ones with their prefix (``slurm_partition``, ``slurm_array_parallelism``).
    ``cluster`` is passed to AutoExecutor (None: SLURM when available; "local" runs the array as
    local processes, "debug" in this process)."""
    try:
        import submitit  # optional: submitit, for SLURM only
    except ImportError:
        raise ConfigError("slurm", dict(slurm), "needs the `submitit` package (pip install submitit)") from None
    sweep.write_derived_configs()
    todo = [run for run in sweep.runs() if needs_work(sweep, run)]
    executor = submitit.AutoExecutor(folder=os.path.join(sweep.out, sweep.name, "slurm"), cluster=cluster)
    try:
        executor.update_parameters(name=f"antijanus-{sweep.name}", **dict(slurm))
    except (NameError, TypeError, ValueError) as error:  # submitit names unknown parameters in a NameError
        raise ConfigError("slurm", dict(slurm), f"not accepted by submitit: {error}") from None
    if not todo:
        return []
    return executor.map_array(execute_run, [sweep] * len(todo), todo, [cwd] * len(todo))

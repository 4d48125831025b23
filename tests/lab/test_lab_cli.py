"""The lab's command lines (custom/janus_lab/scripts) check every argument before any work: a
value listed twice, a count or number out of range, an output folder that cannot be written, a
report without finished runs are each one line on stderr and a non-zero exit, and no model is
loaded, no image sampled, no run trained. The 3D worker pool (janus_lab.worker_pool) ends
with a failed worker's message, whatever the failure, never with a wait that does not end."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from antijanus.utils.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
LAB_SCRIPTS = os.path.join(REPO, "custom", "janus_lab", "scripts")
HERE = os.path.dirname(os.path.abspath(__file__))

# what each script must not reach when an argument is wrong: the names its module calls for work
WORK = {
    "lab_experiment_3d": ("calibrate", "Experiment.run", "Experiment.report", "Experiment.tasks"),
    "lab_view_experiment_2d": ("load_sampler", "run_lab_view_experiment"),
    "lab_sds_2d": ("worker_models", "Experiment.tasks"),
    "lab_check": ("run_checks", "make_samples"),
    "lab_train": ("train_prior", "train_mlm", "train_judge"),
    "lab_judge_check": ("render_labelled", "load_backbone"),
    "lab_sweep": ("run_sweep", "collect_lab", "launch_runs"),
    "lab_constructed_orbits": ("constructed_orbits_report",),
}
_SCRIPTS = {}


def script(name: str):
    """A script of custom/janus_lab/scripts, imported as a module (scripts are not a package)."""
    if name not in _SCRIPTS:
        spec = importlib.util.spec_from_file_location(name, os.path.join(LAB_SCRIPTS, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _SCRIPTS[name] = module
    return _SCRIPTS[name]


def _no_work(monkeypatch, module, name: str) -> None:
    def started(*args, **kwargs):
        raise AssertionError(f"{name} started its work")

    for target in WORK[name]:
        owner, _, attribute = target.rpartition(".")
        monkeypatch.setattr(getattr(module, owner) if owner else module, attribute, started)


def refused(monkeypatch, capsys, name: str, argv) -> str:
    """Run the script's main on ``argv`` with its work replaced by an assertion; it must exit
    non-zero with one error line on stderr (no traceback), which is returned."""
    module = script(name)
    _no_work(monkeypatch, module, name)
    with pytest.raises(SystemExit) as exited:
        module.main(list(argv))
    assert exited.value.code not in (0, None)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    return errors[0]


def with_out(name: str, argv, out: str):
    """``argv`` with an --out under the test's folder for scripts that write one."""
    if name in ("lab_judge_check", "lab_constructed_orbits") or "--out" in argv:
        return list(argv)
    if name == "lab_train":
        return [argv[0], "--out", out, *argv[1:]]
    return [*argv, "--out", out]


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Work in the test's folder; the sweep script's environment defaults do not leak."""
    monkeypatch.chdir(tmp_path)
    for key in ("JANUS_LAB_MODELS", "ANTIJANUS_CONFIGS", "HF_HUB_OFFLINE"):
        if key in os.environ:
            monkeypatch.setenv(key, os.environ[key])
        else:  # removed again after the test
            monkeypatch.setenv(key, "")
            monkeypatch.delenv(key)
    return tmp_path


# ----------------------------------------------------------------------------- values listed twice

REPEATED = [
    ("lab_experiment_3d", ["--seeds", "0", "0"], "--seeds"),
    ("lab_experiment_3d", ["--variants", "baseline", "baseline"], "--variants"),
    ("lab_experiment_3d", ["--prompts", "a bear", "a frog", "a bear"], "--prompts"),
    ("lab_experiment_3d", ["--calibrate", "--seeds", "1", "1"], "--seeds"),
    ("lab_experiment_3d", ["--calibrate", "--steps-options", "300", "300"], "--steps-options"),
    ("lab_experiment_3d", ["--calibrate", "--lr-options", "0.1", "0.10"], "--lr-options"),
    ("lab_experiment_3d", ["--calibrate", "--volume-options", "grid24", "grid24"], "--volume-options"),
    ("lab_view_experiment_2d", ["--seeds", "3", "3"], "--seeds"),
    ("lab_view_experiment_2d", ["--kinds", "frog", "frog"], "--kinds"),
    ("lab_view_experiment_2d", ["--views", "back", "back"], "--views"),
    ("lab_view_experiment_2d", ["--methods", "cebm", "cebm"], "--methods"),
    ("lab_view_experiment_2d", ["--negative-weights", "1", "2", "1.0"], "--negative-weights"),
    ("lab_sds_2d", ["--prompts", "a frog", "a frog"], "--prompts"),
    ("lab_sds_2d", ["--lrs", "0.1", "0.1"], "--lrs"),
    ("lab_sds_2d", ["--resolutions", "16", "16"], "--resolutions"),
    ("lab_judge_check", ["--sides", "12", "12"], "--sides"),
    ("lab_sweep", ["--seeds", "0", "0"], "--seeds"),
    ("lab_sweep", ["--variants", "dnp", "dnp"], "--variants"),
    ("lab_train", ["judge", "--set", "seed=1", "seed=2"], "--set"),
]


@pytest.mark.parametrize("name, argv, option", REPEATED, ids=[f"{n} {o}" for n, _, o in REPEATED])
def test_a_value_listed_twice_is_refused_in_one_line_before_any_work(name, argv, option, isolated, monkeypatch,
                                                                      capsys):
    line = refused(monkeypatch, capsys, name, with_out(name, argv, str(isolated / "out")))
    assert option in line and "twice" in line


@pytest.mark.parametrize("calibrate", [[], ["--calibrate"]])
def test_prompts_that_would_share_their_runs_folder_are_refused(calibrate, isolated, monkeypatch, capsys):
    """"a bear" and "A bear," have one slug: one run folder, its run counted for both."""
    line = refused(monkeypatch, capsys, "lab_experiment_3d",
                   ["--out", str(isolated / "out"), "--prompts", "a bear", "A bear,", *calibrate])
    assert "prompts" in line and "'a bear'" in line and "folder" in line


def test_a_run_folder_holds_the_result_of_its_own_prompt_and_seed_only(isolated):
    """A result written for another prompt or seed (one of the same slug, a folder copied) is not
    this run's: the table would count it twice."""
    from janus_lab.experiment3d.experiment import Experiment
    from janus_lab.experiment3d.runs import RunSpec
    from janus_lab.experiment3d.settings import FastSettings

    out = str(isolated / "runs")
    _finished_run(out)
    experiment = Experiment(out, ("baseline",), ("a bear,",), (0,), FastSettings(steps=3))
    assert experiment.run_dir(RunSpec("baseline", "a bear,", 0)) == experiment.run_dir(RunSpec("baseline", "a bear", 0))
    assert experiment.finished(RunSpec("baseline", "a bear,", 0)) is None


# ----------------------------------------------------------------------------- counts and numbers

OUT_OF_RANGE = [
    ("lab_experiment_3d", ["--jobs", "0"], "--jobs"),
    ("lab_experiment_3d", ["--steps", "0"], "--steps"),
    ("lab_experiment_3d", ["--orbit-views", "0"], "--orbit-views"),
    ("lab_experiment_3d", ["--orbit-views", "1"], "--orbit-views"),
    ("lab_experiment_3d", ["--lr", "nan"], "--lr"),
    ("lab_experiment_3d", ["--guidance-scale", "0"], "--guidance-scale"),
    ("lab_experiment_3d", ["--seeds", "-1"], "--seeds"),
    ("lab_experiment_3d", ["--calibrate", "--steps-options", "0"], "--steps-options"),
    ("lab_experiment_3d", ["--calibrate", "--lr-options", "-0.1"], "--lr-options"),
    ("lab_experiment_3d", ["--calibrate", "--guidance-scale-options", "inf"], "--guidance-scale-options"),
    ("lab_view_experiment_2d", ["--steps", "0"], "--steps"),
    ("lab_view_experiment_2d", ["--batch-size", "0"], "--batch-size"),
    ("lab_view_experiment_2d", ["--threads", "-3"], "--threads"),
    ("lab_view_experiment_2d", ["--interpolation-steps", "-1"], "--interpolation-steps"),
    ("lab_view_experiment_2d", ["--scale", "0"], "--scale"),
    ("lab_view_experiment_2d", ["--negative-weights", "-1"], "--negative-weights"),
    ("lab_view_experiment_2d", ["--seeds", "-2"], "--seeds"),
    ("lab_sds_2d", ["--steps", "0"], "--steps"),
    ("lab_sds_2d", ["--threads", "0"], "--threads"),
    ("lab_sds_2d", ["--resolutions", "1"], "--resolutions"),
    ("lab_sds_2d", ["--lrs", "0"], "--lrs"),
    ("lab_sds_2d", ["--guidance-scale", "-7.5"], "--guidance-scale"),
    ("lab_check", ["--n", "0"], "--n"),
    ("lab_check", ["--steps", "0"], "--steps"),
    ("lab_check", ["--threads", "-3"], "--threads"),
    ("lab_check", ["--guidance-scale", "0"], "--guidance-scale"),
    ("lab_judge_check", ["--threads", "0"], "--threads"),
    ("lab_sweep", ["--jobs", "0"], "--jobs"),
    ("lab_sweep", ["--n-views", "0"], "--n-views"),
    ("lab_sweep", ["--n-views", "2"], "--n-views"),
    ("lab_constructed_orbits", ["--fovy", "0"], "--fovy"),
    ("lab_constructed_orbits", ["--distance", "-1"], "--distance"),
    ("lab_constructed_orbits", ["--elevation", "100"], "--elevation"),
]


@pytest.mark.parametrize("name, argv, option", OUT_OF_RANGE, ids=[f"{n} {' '.join(a)}" for n, a, _ in OUT_OF_RANGE])
def test_a_count_or_number_out_of_range_is_refused_in_one_line_before_any_work(name, argv, option, isolated,
                                                                                monkeypatch, capsys):
    line = refused(monkeypatch, capsys, name, with_out(name, argv, str(isolated / "out")))
    assert f"argument {option}:" in line


def test_the_3d_experiments_settings_refuse_what_cannot_run():
    """FastSettings itself (the experiment's, the calibration's and the API's): --steps 0 failed
    in every worker, --orbit-views 0 divided by zero after training."""
    from janus_lab.experiment3d.settings import FastSettings

    for bad in (dict(steps=0), dict(orbit_views=1), dict(lr=0.0), dict(lr=float("nan")), dict(threads=0),
                dict(orbit_elevation=float("inf"))):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            FastSettings(**bad)


# ----------------------------------------------------------------------------- output folders

WRITERS = [("lab_experiment_3d", []), ("lab_experiment_3d", ["--calibrate"]), ("lab_view_experiment_2d", []),
           ("lab_sds_2d", []), ("lab_check", []), ("lab_train", ["judge"]), ("lab_sweep", [])]


@pytest.mark.parametrize("name, argv", WRITERS, ids=[f"{n} {' '.join(a)}" for n, a in WRITERS])
def test_an_output_folder_under_a_file_is_refused_before_any_work(name, argv, isolated, monkeypatch, capsys):
    blocker = isolated / "a-file"
    blocker.write_text("not a folder")
    line = refused(monkeypatch, capsys, name, with_out(name, argv, str(blocker / "out")))
    assert "--out" in line and str(blocker / "out") in line


# ----------------------------------------------------------------------------- --report-only

def _finished_run(out: str) -> list:
    """One finished run (a result at the experiment's key) of baseline / "a bear" / seed 0 at 3
    steps in ``out``; the matching command line."""
    from antijanus.utils.cache import write_json
    from janus_lab.experiment3d.experiment import Experiment
    from janus_lab.experiment3d.runs import RESULT, RunSpec
    from janus_lab.experiment3d.settings import FastSettings

    experiment = Experiment(out, ("baseline",), ("a bear",), (0,), FastSettings(steps=3))
    spec = RunSpec("baseline", "a bear", 0)
    write_json(os.path.join(experiment.run_dir(spec), RESULT),
               {"variant": "baseline", "prompt": "a bear", "seed": 0, "key": experiment.run_key("baseline")})
    return ["--out", out, "--variants", "baseline", "--prompts", "a bear", "--seeds", "0", "--steps", "3"]


def test_report_only_without_finished_runs_says_so_and_fails(isolated, monkeypatch, capsys):
    for out in (isolated / "empty", isolated / "missing"):
        if out.name == "empty":
            out.mkdir()
        line = refused(monkeypatch, capsys, "lab_experiment_3d", ["--out", str(out), "--report-only"])
        assert "--report-only" in line and "no finished runs" in line
    # runs finished at other settings are not these
    argv = _finished_run(str(isolated / "other"))
    line = refused(monkeypatch, capsys, "lab_experiment_3d", argv[:-1] + ["4", "--report-only"])
    assert "no finished runs" in line


def test_report_only_with_finished_runs_reports_and_checks_its_report_folder(isolated, monkeypatch, capsys):
    argv = _finished_run(str(isolated / "runs")) + ["--report-only"]
    blocker = isolated / "a-file"
    blocker.write_text("not a folder")
    line = refused(monkeypatch, capsys, "lab_experiment_3d", argv + ["--report-dir", str(blocker / "report")])
    assert "--report-dir" in line
    module = script("lab_experiment_3d")
    table = isolated / "table.md"
    table.write_text("| the table |\n")
    reported = []
    monkeypatch.setattr(module.Experiment, "report",
                        lambda self, tables=True, out=None: reported.append(out) or {"markdown": str(table)})
    assert module.main(argv + ["--report-dir", str(isolated / "report")]) == 0
    assert reported == [str(isolated / "report")] and "| the table |" in capsys.readouterr().out


def test_failed_runs_end_the_command_with_their_messages_and_no_traceback(isolated, monkeypatch, capsys):
    from janus_lab.experiment3d.runs import RunsFailed

    module = script("lab_experiment_3d")

    def fail(self, jobs=1, log=print, verdicts=True):
        raise RunsFailed("1 run(s) failed:\nbaseline/a_bear/s0: ConfigError: config key `steps` = 0: bad")

    monkeypatch.setattr(module.Experiment, "run", fail)
    assert module.main(["--out", str(isolated / "out"), "--variants", "baseline", "--prompts", "a bear",
                        "--seeds", "0"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "baseline/a_bear/s0: ConfigError: config key `steps`" in err


# ----------------------------------------------------------------------------- the worker pool

class NotUnpicklable(Exception):
    """Pickles as (class, its message) and cannot be rebuilt from that: the ConfigError of before
    (``__init__() missing 2 required positional arguments``), which hung the pool."""

    def __init__(self, key, problem):
        super().__init__(f"{key}: {problem}")


def work(task):
    """A tiny stand-in for ``run_one``: what ``task.action`` says."""
    if task.action == "finish":
        return {"metrics": {"janus": 0.0, "view_accuracy": 1.0}, "train_s": 0.0}
    if task.action == "config-error":
        raise ConfigError("steps", 0, "an integer >= 1")
    if task.action == "not-unpicklable":
        raise NotUnpicklable("steps", "cannot come back")
    if task.action == "not-picklable":
        error = RuntimeError("holds a lambda")
        error.hook = lambda: None
        raise error
    if task.action == "killed":
        os._exit(3)
    raise AssertionError(task.action)


def pool_outcomes(jobs: int) -> dict:
    """Each failure among finished runs, through ``run_tasks`` with ``work`` as the run: the
    error's text and the seconds it took (run in a subprocess: a hang must not hang the tests)."""
    from janus_lab.experiment3d import runs

    runs.run_one = work  # in the subprocess (or monkeypatched by the caller)
    found = {}
    for action in ("config-error", "not-unpicklable", "not-picklable", "killed"):
        tasks = [SimpleNamespace(spec=SimpleNamespace(tag=f"{action}/{i}"), settings=SimpleNamespace(threads=1),
                                 action=action if i == 1 else "finish") for i in range(3)]
        if action == "killed" and jobs == 1:
            continue  # in this process: it would end the test's process
        start = time.time()
        try:
            runs.run_tasks(tasks, jobs=jobs, log=lambda message: None)
            found[action] = {"error": None}
        except Exception as error:  # noqa: BLE001 - reported to the test
            found[action] = {"error": f"{type(error).__name__}: {error}"}
        found[action]["seconds"] = time.time() - start
    return found


def run_pool_in_a_subprocess(jobs: int, timeout: float = 240.0) -> dict:
    code = (f"import json, sys; sys.path[:0] = {[HERE]!r}; import test_lab_cli; "
            f"print('RESULT ' + json.dumps(test_lab_cli.pool_outcomes({jobs})))")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True, cwd=REPO)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the pool's workers with it
        process.communicate()
        pytest.fail(f"the worker pool did not end within {timeout:.0f} s (a failed worker hung it)")
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert process.returncode == 0 and lines, err[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


EXPECTED = {"config-error": "ConfigError: config key `steps` = 0: an integer >= 1",
            "not-unpicklable": "NotUnpicklable: steps: cannot come back",
            "not-picklable": "RuntimeError: holds a lambda",
            "killed": "terminated abruptly"}


def check_outcomes(found: dict, actions) -> None:
    assert set(found) == set(actions)
    for action, outcome in found.items():
        assert outcome["error"] is not None, action
        assert outcome["error"].startswith("RunsFailed: "), outcome
        assert f"{action}/1: " in outcome["error"] and EXPECTED[action] in outcome["error"], outcome
        if action != "killed":  # the other runs finished
            assert "1 run(s) failed" in outcome["error"], outcome


def test_a_failed_worker_ends_the_pool_with_its_message():
    """--jobs 2: a worker's ConfigError, an exception that cannot be unpickled (the pool's result
    thread died on it: the command waited for ever), one that cannot be pickled, a worker killed."""
    check_outcomes(run_pool_in_a_subprocess(2), EXPECTED)


def test_a_failed_run_in_this_process_reports_the_same_message(monkeypatch):
    """--jobs 1: the same messages (a killed process would be this one: not tried)."""
    from janus_lab.experiment3d import runs

    monkeypatch.setattr(runs, "run_one", work)
    check_outcomes(pool_outcomes(1), set(EXPECTED) - {"killed"})


def test_compare_fast_refuses_other_settings_and_no_common_runs(tmp_path, monkeypatch):
    """lab_sweep.py --compare-fast: a fast-path folder run at other settings, or with no run that
    has a launcher counterpart, is one clear message, never an empty transfer table."""
    import types

    from antijanus.utils.cache import write_json
    from janus_lab.experiment3d.settings import FastSettings

    module = script("lab_sweep")
    fast = tmp_path / "fast"
    fast.mkdir()
    write_json(str(fast / "experiment.json"), {"settings": FastSettings(cameras="prior", guidance_scale=7.5).to_dict()})
    monkeypatch.setattr(module, "launcher_results", lambda sweep: [])
    sweep = types.SimpleNamespace(variants={"baseline": None}, prompts=["a bear"], seeds=[0], out=str(tmp_path), name="s")
    args = types.SimpleNamespace(cameras="prior", guidance_scale=100.0, compare_fast=str(fast))
    with pytest.raises(SystemExit, match=r"differ .* in \['guidance_scale'\]"):
        module.compare_fast(sweep, args)
    args.guidance_scale = 7.5  # the same settings (experiment.json holds lists where settings hold tuples)
    with pytest.raises(SystemExit, match="no finished run there has a launcher counterpart"):
        module.compare_fast(sweep, args)

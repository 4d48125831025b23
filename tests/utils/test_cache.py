"""The atomic cache files (antijanus.utils.cache): mode under the umask, stale temporary files
of killed writers, unreadable cache files as a cache miss with one warning naming the file."""

import logging
import os
import stat
import subprocess
import sys
import time

import pytest
import torch

from antijanus.utils import cache
from antijanus.utils.cache import read_json, save_tensor, write_json
from helpers import REPO  # noqa: E402


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002], ids=oct)
def test_written_files_get_the_mode_open_gives_under_the_umask(tmp_path, umask, mask):
    umask(mask)
    with open(tmp_path / "plain.txt", "w") as f:  # what threestudio's own cache files get
        f.write("x")
    write_json(str(tmp_path / "a.json"), {"a": 1})
    save_tensor(str(tmp_path / "t.pt"), torch.zeros(2))
    assert mode(tmp_path / "a.json") == mode(tmp_path / "t.pt") == mode(tmp_path / "plain.txt") == 0o666 & ~mask


def test_a_killed_writer_leaves_a_temporary_file_that_a_later_write_removes(tmp_path):
    """A real writer process killed mid-write: its temporary file stays; once stale (an hour
    untouched), the next write into the folder removes it, and nothing else."""
    script = (
        "import sys, os, time; sys.path.insert(0, sys.argv[2]);"
        "from antijanus.utils.cache import atomic_write;"
        "atomic_write(os.path.join(sys.argv[1], 'slow.json'), lambda f: (f.write('{'), f.flush(), print('writing', flush=True), time.sleep(60)))"
    )
    custom = os.path.join(REPO, "custom")
    writer = subprocess.Popen([sys.executable, "-c", script, str(tmp_path), custom], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        (temp,) = [p for p in tmp_path.iterdir() if p.name.startswith(cache.TEMP_PREFIX)]
        # a live writer's file is fresh: another process's write into the folder leaves it alone
        write_json(str(tmp_path / "other.json"), {"ok": True})
        assert temp.exists()
    finally:
        writer.kill()
        writer.wait()
    assert temp.exists()  # killed mid-write: left behind
    assert cache.remove_stale_temporaries(str(tmp_path)) == [] and temp.exists()  # still recent
    old = time.time() - 2 * 3600
    os.utime(temp, (old, old))
    # other tools' files in a shared folder (e.g. a trial folder) are never touched, whatever
    # their age, also those that look like temporary names
    others = {".tmp-notes.txt": "another tool's", "data.json": "{}", ".tmp-abcd1234": "no target name",
              ".tmp-k3j_9x0qa.json": "mkstemp's default form", "tmpk3j_9x0q": "tempfile's"}
    for name, text in others.items():
        (tmp_path / name).write_text(text)
        os.utime(tmp_path / name, (old, old))
    write_json(str(tmp_path / "next.json"), {"ok": True})  # the next write cleans the folder
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*others, "other.json", "next.json"])


def test_only_old_temporary_files_of_ours_are_removed(tmp_path):
    fresh, stale = (tmp_path / f"{cache.TEMP_PREFIX}{n}-x.json" for n in ("fresh", "stale"))
    fresh.write_text("{")
    stale.write_text("{")
    os.utime(stale, (time.time() - cache.STALE_TEMP_AGE_S - 1,) * 2)
    assert cache.remove_stale_temporaries(str(tmp_path)) == [str(stale)]
    assert fresh.exists() and not stale.exists()
    assert cache.remove_stale_temporaries(str(tmp_path / "missing")) == []


@pytest.mark.parametrize("content", [b"{\"prompt\": \"a co", b"\xff\xfe garbage", b"[1, 2]", b""])
def test_an_unreadable_json_cache_file_is_a_miss_with_one_warning_naming_it(tmp_path, caplog, content):
    path = tmp_path / "key.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="antijanus.utils.cache"):
        assert read_json(str(path)) is None
    (record,) = caplog.records
    assert str(path) in record.getMessage() and "computing it again" in record.getMessage()
    write_json(str(path), {"prompt": "a corgi"})  # the caller's recomputed value replaces it
    assert read_json(str(path)) == {"prompt": "a corgi"}
    assert read_json(str(tmp_path / "missing.json")) is None


@pytest.mark.parametrize("content", [b"PK\x03\x04 truncated", b"not a tensor file", "dict"])
def test_an_unreadable_tensor_cache_file_is_a_miss_removed_with_one_warning(tmp_path, caplog, content):
    path = tmp_path / "hash.pt"
    if content == "dict":
        torch.save({"a": torch.zeros(1)}, path)
    else:
        path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="antijanus.utils.cache"):
        assert cache.load_tensor(str(path)) is None
    (record,) = caplog.records
    assert str(path) in record.getMessage()
    assert not path.exists()  # threestudio's processors recompute a file that does not exist
    save_tensor(str(path), torch.arange(3.0))
    assert torch.equal(cache.load_tensor(str(path)), torch.arange(3.0))


def test_a_corrupt_debiasing_cache_is_recomputed(tmp_path, caplog, monkeypatch):
    """The prompting caller needs no change: a None read is a miss, the value is computed again
    and the file rewritten."""
    from antijanus.prompting import debias

    computed = []

    def fake_debias(prompt, settings, scorer):  # stands in for the BERT scoring
        computed.append(prompt)
        return debias.DebiasResult(prompt, {v: prompt for v in settings.views}, {v: [] for v in settings.views}, None)

    monkeypatch.setattr(debias, "debias_prompt", fake_debias)
    settings = debias.DebiasSettings()
    result, path, hit = debias.cached_debias("a corgi", settings, "bert", str(tmp_path), lambda: None)
    assert not hit and computed == ["a corgi"]
    with open(path, "w") as f:
        f.write('{"prompt": "a co')  # e.g. a disk that filled up under an older, non-atomic writer
    with caplog.at_level(logging.WARNING, logger="antijanus.utils.cache"):
        result, path2, hit = debias.cached_debias("a corgi", settings, "bert", str(tmp_path), lambda: None)
    assert path2 == path and not hit and computed == ["a corgi"] * 2
    assert result.view_prompts == {v: "a corgi" for v in settings.views}
    assert len(caplog.records) == 1 and path in caplog.text
    assert debias.cached_debias("a corgi", settings, "bert", str(tmp_path), lambda: None)[2]  # rewritten: a hit


def test_saved_safetensors_are_atomic_and_follow_the_umask(tmp_path):
    """Model weights (the lab's judge, prior, masked LM) are written with the umask's mode, not
    safetensors' own 0600, and read back equal."""
    import os

    import torch
    from safetensors.torch import load_file

    from antijanus.utils.cache import save_safetensors

    old = os.umask(0o022)
    try:
        path = tmp_path / "w.safetensors"
        save_safetensors({"a": torch.arange(6.0).reshape(2, 3)}, str(path), metadata={"format": "pt"})
        assert os.stat(path).st_mode & 0o777 == 0o644
        assert torch.equal(load_file(str(path))["a"], torch.arange(6.0).reshape(2, 3))
        assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary left
    finally:
        os.umask(old)

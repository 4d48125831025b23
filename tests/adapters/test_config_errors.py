"""Configuration errors of the registered modules name the key's full path in the run's config,
and ConfigErrors cross process boundaries intact."""

import pickle

import pytest
import threestudio

import antijanus.adapters  # noqa: F401  (registers the modules)
from antijanus.utils.errors import ConfigError


def test_a_guidance_error_names_the_full_key(tiny_sd):
    with pytest.raises(ConfigError, match=r"config key `system.guidance.clip_start` = 9.0"):
        threestudio.find("dsds-guidance")({"pretrained_model_name_or_path": tiny_sd,
                                           "clip_start": 9.0, "clip_end": 1.0})


def test_a_missing_model_folder_names_the_full_key(tmp_path):
    missing = str(tmp_path / "no-such-sd")
    with pytest.raises(ConfigError, match=r"`system.guidance.pretrained_model_name_or_path` = .*no-such-sd"):
        threestudio.find("perp-neg-sds-guidance")({"pretrained_model_name_or_path": missing})


def test_a_prompt_processor_error_names_the_full_key(tiny_sd):
    with pytest.raises(ConfigError, match=r"`system.prompt_processor.back_threshold` = 200.0"):
        threestudio.find("bert-pmi-prompt-processor")({"pretrained_model_name_or_path": tiny_sd,
                                                       "prompt": "a corgi", "back_threshold": 200.0})


def test_a_full_key_is_kept_and_errors_pickle():
    error = ConfigError("system.guidance.guidance_scale", float("inf"), "must be finite", allowed=None)
    assert error.within("system.guidance") is error
    again = pickle.loads(pickle.dumps(ConfigError("clip_start", 9.0, "must be <= clip_end", ["<= 8"])))
    assert type(again) is ConfigError and str(again) == str(ConfigError("clip_start", 9.0, "must be <= clip_end", ["<= 8"]))
    assert (again.key, again.value, again.allowed) == ("clip_start", 9.0, ("<= 8",))

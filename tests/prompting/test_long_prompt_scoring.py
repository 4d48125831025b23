"""A prompt longer than the masked LM's 512 tokens: the default template ([MASK] first) scores it
(the words past the window cannot change a score), a template with [MASK] after {prompt} is a
ConfigError naming debias_template (a bare ValueError before)."""

import pytest

from antijanus.prompting.debias import DEFAULT_VIEWS
from antijanus.prompting.mlm import MaskedLMViewScorer
from antijanus.testing.tiny_models import make_bert
from antijanus.utils.errors import ConfigError

WORDS = "a smiling corgi wearing very tall red hat this image is depicting view of".split()
LONG = " ".join(["a smiling corgi wearing a very tall red hat"] * 70)  # 630 words, one token each


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return make_bert(str(tmp_path_factory.mktemp("bert")), WORDS)


def test_the_default_template_scores_a_prompt_longer_than_the_window(bert):
    probabilities = MaskedLMViewScorer(bert).view_probabilities([LONG, "a corgi"], DEFAULT_VIEWS)
    assert probabilities.shape == (2, 4) and abs(float(probabilities[0].sum()) - 1) < 1e-5


def test_a_template_with_the_mask_after_a_long_prompt_is_a_config_error(bert):
    scorer = MaskedLMViewScorer(bert, template="{prompt}, this image is depicting a [MASK] view")
    with pytest.raises(ConfigError, match="debias_template.*before the \\[MASK\\]") as caught:
        scorer.view_probabilities([LONG], DEFAULT_VIEWS)
    assert caught.value.key == "debias_template"

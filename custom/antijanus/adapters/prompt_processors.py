"""The registered antijanus prompt processors (threestudio's ``models/prompt_processors``):

- ``bert-pmi-prompt-processor`` / ``bert-pmi-deep-floyd-prompt-processor``: D-SDS prompt
  debiasing for Stable Diffusion (CLIP) and DeepFloyd IF (T5), in ``bert_pmi``;
- ``dnp-prompt-processor``: diffusion-negative prompting, in ``dnp_processor``;
- what they share (atomic embeddings, the "" embedding, view phrases that survive long prompts,
  outputs in the trial folder), in ``prompt_base``.
"""

from .bert_pmi import (  # noqa: F401
    DEFAULT_PMI_VIEW_WORDS,
    DEFAULT_VIEW_PHRASES,
    BertPMIDeepFloydPromptProcessor,
    BertPMIPromptProcessor,
    DebiasingKeys,
    DebiasingPromptProcessorMixin,
)
from .dnp_processor import DNPPromptProcessor  # noqa: F401
from .prompt_base import DIRECTION_ORDER, AntijanusPromptProcessorMixin  # noqa: F401

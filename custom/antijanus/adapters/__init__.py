"""threestudio adapters: the registered modules (thin shells over the pure-PyTorch parts).

Importing this package imports threestudio and registers ``perp-neg-sds-guidance``,
``dsds-guidance``, ``perp-neg-vsd-guidance``, ``bert-pmi-prompt-processor``, ``bert-pmi-deep-floyd-prompt-processor`` and
``dnp-prompt-processor`` (idempotent).
Like threestudio's ``models/guidance`` and ``models/prompt_processors``, one module per kind.
"""

from .guidance import DSDSGuidance, PerpNegSDSGuidance, PerpNegVSDGuidance  # noqa: F401  (registration)
from .prompt_processors import (  # noqa: F401
    BertPMIDeepFloydPromptProcessor,
    BertPMIPromptProcessor,
    DNPPromptProcessor,
)
from . import model_keys  # noqa: F401  (the model checks before training)
from .registry import core_config, register  # noqa: F401

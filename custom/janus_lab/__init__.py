"""The Janus lab: a small world where the Janus problem can be reproduced and measured.

    world    procedural creatures with a known front, an analytic ray caster (threestudio's
             camera convention), ground truth per image (view region, visible attributes)
    data     the biased captioned data set (one dataclass of bias parameters, statistics)
    prior    a small text-to-image latent diffusion model in the Stable Diffusion folder layout
    mlm      a small BertForMaskedLM trained on the world's captions in the D-SDS sentence
    judge    a small CNN that tells an image's view region, kind and visible attributes
    checks   the prior's bias and quality figures
    vocab    the real CLIP BPE and uncased WordPiece vocabularies, read from PyPI wheels
    models   where the committed models live (custom/janus_lab/models) and their checksums

The lab sits at the end of the import order: it may import every other part, nothing imports it.
"""

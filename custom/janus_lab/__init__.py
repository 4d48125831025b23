"""The Janus lab: a small world where the Janus problem can be reproduced and measured.

Modules, bottom of the import order first (a module imports only modules above it in this list):

    world             procedural creatures with a known front, an analytic ray caster (threestudio's
                      camera convention), ground truth per image (view region, visible attributes)
    data              the biased captioned data set (one dataclass of bias parameters, statistics)
    orbits            orbit azimuths, and orbits of the world's creatures (ground truth, two-faced)
    images            image operations: the object mask, pixel and patch scrambles, a per-image blur
    stats             Wilson intervals and the exact McNemar test
    training          helpers the training loops share (a throttled progress log)
    locations         where the lab finds its files (models, sweep files, the plugin's configs)
    cli_args          the command lines' argument checks (counts, numbers, repeats, output folders)
    worker_pool       runs in worker processes; a worker's failure ends the pool with its message
    model_files       the committed models' folders and their checksums
    vocab             the real CLIP BPE and uncased WordPiece vocabularies, read from PyPI wheels
    prior             the prior's settings and model definitions (a small text-to-image latent
                      diffusion model in the Stable Diffusion folder layout)
    prior_folder      writing the prior's Stable Diffusion folder
    prior_training    training the prior (VAE, then UNet and text encoder)
    mlm               a small BertForMaskedLM trained on the world's captions in the D-SDS sentence
    judge             the judge: a small CNN that tells an image's view region, kind and visible
                      attributes; its folder (load, save)
    judge_settings    the judge's training recipe
    judge_data        the judge's training images (labelled renders, augmentations, scrambled negatives)
    judge_evaluation  the judge's held-out figures
    judge_training    training the judge
    janus             the Janus metric of an orbit
    checks            the prior's bias and quality figures
    classifier        the judge as the research tools' view classifier
    captioner         a captioner plugin that writes the world's captions from the judge
    experiment2d      Perp-Neg's Table 1 on the lab prior, judged by the judge
    sds2d             2D score distillation: one image optimised with the guidance from one camera
    prompt_output     prompt-processor outputs for the 3D fast path, built without threestudio
    fast3d/           the 3D fast path: a small differentiable volume trained with the real guidance
    volume_orbits     a trained volume's orbit as the 3D experiment keeps and judges it
    reconstruction    the reconstruction control: known creatures fitted into the fast path's volume
    experiment3d/     the 3D experiment: every method on the same prompts and seeds, orbits judged

Scripts (``custom/janus_lab/scripts``, each answers ``--help``) train the models, run the checks
and experiments and print the constructed-orbits table. Model versions and the settings each
used: ``docs/model-history.md``.

The lab imports the plugin (antijanus); the plugin never imports the lab.
"""

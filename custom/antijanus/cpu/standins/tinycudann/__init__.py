"""Import-only stand-in for tiny-cuda-nn (CUDA-only); see ../README.md."""


def free_temporary_memory():
    pass


def __getattr__(name):
    raise RuntimeError(
        f"tinycudann.{name}: tiny-cuda-nn is not installed (CPU stand-in). Override hash-grid / "
        "SphericalHarmonics encodings and FullyFusedMLP networks with pure-PyTorch ones "
        "(ProgressiveBandFrequency, VanillaMLP)."
    )

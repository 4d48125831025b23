"""Import-only stand-in for nvdiffrast.torch (CUDA/OpenGL-only); see ../README.md."""


class _Unavailable:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("nvdiffrast is not installed (CPU stand-in): mesh rasterisation "
                           "(nvdiff-rasterizer, Magic3D refinement) needs a GPU with nvdiffrast")


RasterizeCudaContext = RasterizeGLContext = _Unavailable


def __getattr__(name):
    raise RuntimeError(f"nvdiffrast.torch.{name}: nvdiffrast is not installed (CPU stand-in)")

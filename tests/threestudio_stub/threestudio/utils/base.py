from dataclasses import dataclass
from typing import Optional

import torch

from .config import parse_structured


def get_device():
    return torch.device("cpu")  # threestudio returns cuda:<rank>; the stub runs on CPU


class Updateable:
    def do_update_step(self, epoch, global_step, on_load_weights=False):
        for attr in self.__dir__():
            if attr.startswith("_"):
                continue
            try:
                module = getattr(self, attr)
            except Exception:
                continue
            if isinstance(module, Updateable):
                module.do_update_step(epoch, global_step, on_load_weights=on_load_weights)
        self.update_step(epoch, global_step, on_load_weights=on_load_weights)

    def update_step(self, epoch, global_step, on_load_weights=False):
        pass


class BaseObject(Updateable):
    @dataclass
    class Config:
        pass

    def __init__(self, cfg=None, *args, **kwargs):
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg)
        self.device = get_device()
        self.configure(*args, **kwargs)

    def configure(self, *args, **kwargs):
        pass


class BaseModule(torch.nn.Module, Updateable):
    """threestudio's BaseModule without its ``weights`` loading: an nn.Module with a cfg."""

    @dataclass
    class Config:
        weights: Optional[str] = None

    def __init__(self, cfg=None, *args, **kwargs):
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg)
        self.device = get_device()
        self.configure(*args, **kwargs)
        self.register_buffer("_dummy", torch.zeros(0).float(), persistent=False)

    def configure(self, *args, **kwargs):
        pass

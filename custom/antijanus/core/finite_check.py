"""A guidance step whose loss or gradient norm is not finite stops the run, naming the step and
the keys most likely at fault, without a device sync.

threestudio's guidances pass ``nan_to_num`` over the gradient and go on: an infinite or
overflowing gradient becomes +-3.4e38, every later step logs ``loss_sds = inf`` and the run
still exits 0. Here each step records whether its renders and logged values (``loss_sds``,
``grad_norm``, ``loss_sds_img``) are finite as a small flag on the device; on a GPU the flag is copied to
pinned host memory asynchronously and read once the GPU has finished that step (usually at the
next step), so no step waits for the GPU; on a CPU it is read at once. The first non-finite step
raises ``NonFiniteStepError``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor


class NonFiniteStepError(FloatingPointError):
    """A guidance step produced an infinite or NaN render, loss or gradient norm (a
    FloatingPointError, as the lab's own loss check raises)."""

    def __init__(self, step: int, names: Sequence[str], suspects: Sequence[str]) -> None:
        self.step, self.names, self.suspects = step, tuple(names), tuple(suspects)
        super().__init__(
            f"antijanus: the guidance step at global step {step} gave a non-finite {', '.join(names)} "
            f"(inf or nan): training on it would go on silently with infinite losses. Likely cause: "
            + "; ".join(suspects))


@dataclass
class _Pending:
    step: int
    names: Tuple[str, ...]
    flags: Tensor  # bool [len(names)]: on the host (pinned) for a GPU step, else the CPU tensor
    event: Any = None  # the CUDA event recorded after the copy (None on a CPU)


class FiniteWatch:
    """Flags of recorded steps, read without a device sync (see the module docstring)."""

    def __init__(self) -> None:
        self._pending: Deque[_Pending] = deque()
        self._free: List[Tensor] = []  # pinned host buffers for reuse

    def record(self, step: int, values: Dict[str, Tensor]) -> None:
        names = tuple(values)
        device = list(values.values())[-1].device  # the loss's: where the step ran
        flags = torch.stack([torch.isfinite(v.detach()).all().to(device) for v in values.values()])
        if device.type != "cuda":
            self._pending.append(_Pending(step, names, flags))
            return
        host = self._buffer(len(names))
        host.copy_(flags, non_blocking=True)  # on the device's current stream
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(device))
        self._pending.append(_Pending(step, names, host, event))

    def _buffer(self, size: int) -> Tensor:
        for i, buffer in enumerate(self._free):
            if buffer.numel() == size:
                return self._free.pop(i)
        return torch.empty(size, dtype=torch.bool, pin_memory=True)

    def first_bad(self) -> Optional[Tuple[int, Tuple[str, ...]]]:
        """(step, non-finite names) of the earliest recorded step the device has finished whose
        values were not all finite; finished steps are released. None when there is none yet."""
        while self._pending and (self._pending[0].event is None or self._pending[0].event.query()):
            done = self._pending.popleft()
            finite = done.flags.tolist()
            if done.event is not None:
                self._free.append(done.flags)
            bad = tuple(name for name, ok in zip(done.names, finite) if not ok)
            if bad:
                return done.step, bad
        return None


def likely_suspects(bad: Sequence[str], guidance_scale: float, half_precision: bool,
                    unusual_keys: Sequence[str]) -> List[str]:
    """What most likely made a step non-finite: the renders themselves, else the keys said to be
    outside their sensible range when configured, the guidance scale, fp16 weights."""
    if "rgb" in bad:
        return ["the renders passed to the guidance are not finite, before any guidance: the geometry or "
                "material diverged (e.g. its learning rate), not a guidance key"]
    suspects = [f"{key} (outside its sensible range, said when the guidance was configured)" for key in unusual_keys]
    if "guidance_scale" not in unusual_keys:
        suspects.append(f"guidance_scale = {guidance_scale:g} (the gradient grows linearly with it)")
    if half_precision:
        suspects.append("half_precision_weights: true (an fp16 UNet can overflow: try false)")
    return suspects

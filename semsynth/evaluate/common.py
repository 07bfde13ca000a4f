"""What every part of the evaluation shares: its error type and the one image resize."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError


class EvaluationError(InputError):
    """Inputs that cannot be evaluated (missing pairs, empty folders, mismatched spaces)."""


def _resize(x: torch.Tensor, size: tuple[int, int], antialias: bool = True) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=antialias).clamp_(0, 1)

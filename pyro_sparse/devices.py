"""The one check of a device argument (``device=`` in the API, ``--device`` on the command line)."""

from __future__ import annotations

import torch

from .errors import InvalidInputError


def resolve_device(device: str | torch.device, flag: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` of type cpu or cuda that torch can use here.

    :param flag: how the argument is named in messages (``--device`` on the command line).
    :raises InvalidInputError: an unknown or unsupported device, or cuda without a CUDA device.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidInputError(f"unknown {flag} {device!r}; expected cpu or cuda (cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise InvalidInputError(f"unsupported {flag} {device!r}; expected cpu or cuda (cuda:N)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"{flag} {device!r} was asked for, but torch sees no CUDA device")
    return dev

"""Devices: the one place a ``--device`` value becomes a torch device.

Every command that runs the network (process, evaluate, bench, train) resolves its device
here, so the accepted values and the errors are the same everywhere.
"""

from __future__ import annotations

import torch

from m2a_pipe.errors import UsageError
from m2a_pipe.settings import DEVICE_HELP


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cpu``; ``cuda`` / ``cuda:N`` (must exist).

    Raises UsageError (one line naming the value) for anything else.
    """
    if isinstance(device, torch.device):
        spec = str(device)
    else:
        spec = str(device).strip()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {spec!r}: not a device ({DEVICE_HELP})") from None
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {spec!r}: not a device ({DEVICE_HELP})")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {spec}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)")
    return dev

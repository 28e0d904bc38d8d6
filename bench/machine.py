"""One line naming the machine a benchmark ran on."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def describe(device: torch.device | str = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        cpuinfo = Path("/proc/cpuinfo")
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")] if cpuinfo.exists() else []
        where = names[0] if names else (platform.processor() or platform.machine())
    return f"{where}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}"

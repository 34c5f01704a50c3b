"""A complete checkpoint folder in the Trainer's real file formats, written without training.

For bookkeeping tests (which checkpoint a resume picks) that need a checkpoint the resume
rule accepts, in milliseconds. Tests that need one a real Trainer wrote train a tiny model.
"""

from __future__ import annotations

import json
from pathlib import Path


def write_checkpoint(folder: Path, step: int) -> Path:
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    save_file({"lora_A.weight": torch.zeros(2, 4)}, str(folder / "adapter_model.safetensors"))
    torch.save({"state": {}, "param_groups": []}, folder / "optimizer.pt")
    torch.save({"last_epoch": step}, folder / "scheduler.pt")
    torch.save({"python": None, "cpu": torch.get_rng_state()}, folder / "rng_state.pth")
    return folder

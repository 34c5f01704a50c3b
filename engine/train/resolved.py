"""What a job resolved from its plan: the one record of what ran.

A plan says `dtype: auto`, `attention: auto`, `eval_split: 0.1`, `targets: attention`; the
job turns each into a concrete value on the machine it runs on (bf16 where the CPU runs it
natively, eager or sdpa once the rows are tokenized, the indices of the held-out rows, the
module names). The job writes those values once, as `resolved.json` beside its plan, and
everything that describes the run afterwards — the exported script, the YAML and CLI
exports' comments — reads them instead of deriving them a second time (as transformers'
Trainer keeps its `training_args.bin` beside a checkpoint).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

FILE = "resolved.json"
LIBRARIES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate")


@dataclass
class Resolved:
    device: str  # cpu | cuda
    precision: str  # fp32 | bf16 | fp16: the compute precision of the base's forward pass
    attention: str  # the attention kernel the training steps ran with (eager | sdpa | ...)
    seed: int
    # Which rows were held out: "split" (the indices below, into the data's usable examples),
    # "demo" (a demo skill's own test file), or "none".
    eval_source: str
    eval_rows: list[int] = field(default_factory=list)
    lora: dict | None = None  # the keyword arguments of peft.LoraConfig (None: a full fine-tune)
    sft: dict = field(default_factory=dict)  # the keyword arguments of trl.SFTConfig, output_dir left out
    early_stopping: dict | None = None  # patience and the gain that counts as an improvement
    # Numerically equivalent replacements the job made on the CPU (named so a user comparing
    # with a plain script knows where the random draws differ).
    cpu_replacements: list[str] = field(default_factory=list)
    versions: dict = field(default_factory=dict)

    def write(self, folder: Path) -> Path:
        path = Path(folder) / FILE
        tmp = path.with_suffix(".json.part")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=False) + "\n", encoding="utf-8")
        tmp.replace(path)  # a reader never sees half a record
        return path

    def summary(self) -> str:
        """One line for a comment: the values a plan's `auto`s became."""
        held = {
            "split": f"{len(self.eval_rows)} held-out rows",
            "demo": "the demo's own test rows",
            "none": "no held-out rows",
        }[self.eval_source]
        stop = (
            f", early stopping after {self.early_stopping['patience']} flat evaluations" if self.early_stopping else ""
        )
        return f"ran on {self.device} in {self.precision}, {self.attention} attention, {held}, seed {self.seed}{stop}"


def read(folder: Path) -> Resolved | None:
    """The record a job wrote, or None when it has not resolved its plan yet (queued, or failed early)."""
    path = Path(folder) / FILE
    if not path.is_file():
        return None
    return Resolved(**json.loads(path.read_text(encoding="utf-8")))


def versions() -> dict:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found

"""What a plan's `dataset` string names: a built-in demo skill, a local file, or a hub dataset id.

`demo:NAME` is parsed here once; everything else asks a `DatasetRef` instead of
looking at the prefix itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEMO_PREFIX = "demo:"


@dataclass(frozen=True)
class DatasetRef:
    source: str  # the plan's text, stripped
    skill: str | None = None  # the demo skill's name for demo:NAME, else None

    @classmethod
    def parse(cls, source: str) -> DatasetRef:
        text = str(source).strip()
        if text.startswith(DEMO_PREFIX):
            return cls(text, text.removeprefix(DEMO_PREFIX))
        return cls(text)

    @classmethod
    def demo(cls, skill: str) -> DatasetRef:
        return cls(DEMO_PREFIX + skill, skill)

    @property
    def is_demo(self) -> bool:
        return self.skill is not None

    @property
    def label(self) -> str:
        """How messages name it: demo:NAME as is, a file by its name only."""
        return self.source if self.is_demo else Path(self.source).name

    @property
    def stem(self) -> str:
        """A short name for job titles: demo:NAME, or the file name without its extension."""
        return self.source if self.is_demo else Path(self.source).stem

    def __str__(self) -> str:
        return self.source

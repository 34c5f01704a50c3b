"""Compose skills: several adapters of one base combined into one, with PEFT's add_weighted_adapter.

- linear: a weighted sum of the A matrices and of the B matrices (PEFT's caveat: a rough
  approximation of the weighted sum of updates; it keeps the rank).
- cat: A and B stacked, so the update is exactly the weighted sum; rank = sum of ranks.
- svd: the exact weighted sum of updates, truncated back to a rank by SVD (the largest
  source rank unless given).
- ties / dare_ties: per-matrix pruning to `density` then sign election (TIES), or random
  drop-and-rescale before it (DARE); meant to reduce interference between skills.

linear, ties and dare_ties need every source at the same rank; cat and svd take any ranks.

The combination is made on the process's AdapterHost (engine.adapters.host): the sources are
attached to the base it already holds (most often they are, from the playground), the new
adapter is added beside them and saved, and it stays loaded there, ready to answer or be scored.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from engine.adapters import folder
from engine.adapters.host import AdapterHost, peft_name
from engine.errors import UserError, one_of

COMBINATIONS = ("linear", "cat", "svd", "ties", "dare_ties")
SAME_RANK = ("linear", "ties", "dare_ties")
ANY_RANK = ("cat", "svd")
DENSITY = ("ties", "dare_ties")
DEFAULT_DENSITY = 0.5


def check(ranks: list[int], weights: list[float], combination: str, density: float | None) -> float | None:
    """Refuse what PEFT would refuse, in the user's words; returns the density to use."""
    if combination not in COMBINATIONS:
        raise UserError("combination", f"got {combination!r}; accepted: {one_of(COMBINATIONS)}")
    if len(ranks) < 2:
        raise UserError("adapters", "give at least two adapters to compose")
    if len(weights) != len(ranks):
        raise UserError(
            "weights",
            f"got {len(weights)} weights for {len(ranks)} adapters; give one per adapter (e.g. --weights 0.5,0.5)",
        )
    if combination in SAME_RANK and len(set(ranks)) > 1:
        raise UserError(
            "combination",
            f"{combination} needs adapters of one rank, these have ranks "
            f"{', '.join(map(str, ranks))}; {one_of(ANY_RANK)} accept different ranks",
        )
    if combination in DENSITY:
        density = DEFAULT_DENSITY if density is None else density
        if not 0 < density <= 1:
            raise UserError("density", f"got {density}; give a share of weights to keep, above 0 and at most 1")
        return density
    if density is not None:
        raise UserError("density", f"applies to {one_of(DENSITY)} only, not {combination}")
    return None


def compose(
    host: AdapterHost,
    sources: list[tuple[str, str]],
    weights: list[float],
    combination: str,
    out_dir,
    name: str,
    density: float | None = None,
    seed: int = 0,
) -> Path:
    """Combine the adapter folders `sources` [(name, path), ...] into a new adapter folder `out_dir`, loaded on
    `host` as `name`."""
    configs = [folder.read_config(Path(p)) for _, p in sources]
    density = check([int(c.get("r") or 0) for c in configs], weights, combination, density)
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise UserError("name", f"{out_dir} exists; pick another name")
    for source, path in sources:
        host.load(source, path)  # checks that it fits the base; a loaded one costs nothing

    def make(peft, new: str) -> None:
        import torch
        from peft.tuners.tuners_utils import cast_adapter_dtype

        torch.manual_seed(seed)  # DARE drops at random: same inputs, same result
        try:
            peft.add_weighted_adapter(
                [peft_name(n) for n, _ in sources], list(weights), new, combination_type=combination, density=density
            )
        except (ValueError, TypeError) as exc:
            raise UserError("combination", f"PEFT cannot combine these with {combination}: {exc}") from None
        tmp = out_dir.parent / f".{out_dir.name}.composing-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            peft.save_pretrained(str(tmp), selected_adapters=[new])
            os.replace(tmp / new, out_dir)  # PEFT writes a non-default adapter into a subfolder named after it
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        # add_weighted_adapter makes the new weights in the base's dtype (bf16 on a bf16 base) and saves them so;
        # a load from disk upcasts them to fp32 (autocast_adapter_dtype), so do the same here: the composition
        # answers on this host exactly as it will after any reload
        cast_adapter_dtype(peft, new)

    host.create(name, out_dir, make, keep=[n for n, _ in sources])
    return out_dir

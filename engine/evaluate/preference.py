"""Held-out preference pairs: does the model prefer the chosen answer, and by how much more than the base?

engine.evaluate.heldout's `Judge` scores every job; for a dpo/orpo job it asks a `PairScorer`
for the figures pairs allow, beside the greedy answers it scores against the chosen answer:

- `preference_accuracy` (percent): the share of pairs where the model gives the chosen answer a
  higher log-probability (summed over its tokens) than the rejected one;
- `reward_margin`: DPO's implicit reward margin against the base, beta * mean of
  (log p(chosen) - log p_base(chosen)) - (log p(rejected) - log p_base(rejected)); 0 for the base
  itself, and what DPO's `rewards/margins` curve shows, measured here on held-out pairs;
- `logp_margin`: mean log p(chosen) - log p(rejected) in nats, the raw gap;
- `loss`/`perplexity`: the mean NLL per token of the chosen answers (what ORPO also trains down).

Scoring tokenizes each side as TRL does (the prompt rendered with the generation prompt, the
answer where prompt and prompt + answer part), independent of the trainer's own columns, so
DPO and ORPO jobs are scored alike. `curve` condenses the trainer's logged rewards for the
diagnosis (engine.advice.diagnose).
"""

from __future__ import annotations

import math
import time

from engine.data.pairs import texts

BATCH_PAIRS = 4  # pairs per forward pass (8 sequences)


class PairScorer:
    def __init__(self, plan, eval_ds, tokenizer):
        self.beta, self.seq_len, self.tokenizer = plan.beta, plan.seq_len, tokenizer
        self.rows = [eval_ds[i] for i in range(len(eval_ds))] if eval_ds is not None else []
        self._encoded = None

    def _encode(self) -> list[tuple[list[int], int, list[int], int]]:
        """Per pair: (prompt + chosen ids, answer start, prompt + rejected ids, answer start), cut to seq_len."""
        if self._encoded is None:
            tok, out = self.tokenizer, []
            for row in self.rows:
                prompt, chosen, rejected = texts(tok, row)
                special = isinstance(row["prompt"], str)  # string form: the tokenizer adds what it adds
                ids = [tok(t, add_special_tokens=special)["input_ids"] for t in (prompt, chosen, rejected)]
                pair = []
                for full in ids[1:]:
                    start = _common_prefix(ids[0], full)
                    pair += [full[: self.seq_len], min(start, self.seq_len - 1)]
                out.append(tuple(pair))
            self._encoded = out
        return self._encoded

    def score(self, model, count: int | None, deadline: float | None) -> dict:
        """{'pairs': [[logp chosen, logp rejected], ...], 'nll', 'tokens'} on the first `count` pairs (all),
        stopping after the batch that passes `deadline`."""
        import torch

        encoded = self._encode()[:count] if count is not None else self._encode()
        pairs: list[list[float]] = []
        nll, tokens = 0.0, 0
        device = next(model.parameters()).device
        pad = self.tokenizer.pad_token_id or 0
        was_training = model.training
        model.eval()
        try:
            for i in range(0, len(encoded), BATCH_PAIRS):
                if deadline is not None and pairs and time.monotonic() > deadline:
                    break
                chunk = encoded[i : i + BATCH_PAIRS]
                seqs = [(c, cs) for c, cs, _, _ in chunk] + [(r, rs) for _, _, r, rs in chunk]
                width = max(len(s) for s, _ in seqs)
                ids = torch.tensor([s + [pad] * (width - len(s)) for s, _ in seqs], device=device)
                mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s, _ in seqs], device=device)
                # labelled positions: the answer tokens of each sequence (predicted from the position before)
                answer = torch.tensor(
                    [[start <= j < len(s) for j in range(width)] for s, start in seqs], device=device
                )[:, 1:]
                with torch.no_grad():
                    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1) * answer
                sums = logp.sum(-1).tolist()
                n = len(chunk)
                pairs += [[round(c, 4), round(r, 4)] for c, r in zip(sums[:n], sums[n:])]
                nll -= float(logp[:n].sum())
                tokens += int(answer[:n].sum())
        finally:
            model.train(was_training)
        return {"pairs": pairs, "nll": nll, "tokens": tokens}

    def metrics(self, scored: dict, base_pairs: list | None) -> dict:
        """The figures one model adds to its column (base_pairs: the base's log-probs, for the reward margin)."""
        pairs = scored["pairs"]
        loss = scored["nll"] / scored["tokens"] if scored["tokens"] else None
        if not pairs:
            return {"loss": loss, "preference_accuracy": None, "reward_margin": None, "logp_margin": None}
        base = base_pairs[: len(pairs)] if base_pairs else [(c, r) for c, r in pairs]
        margin = [(c - cb) - (r - rb) for (c, r), (cb, rb) in zip(pairs, base)]
        return {
            "loss": loss,
            "preference_accuracy": round(100.0 * sum(c > r for c, r in pairs) / len(pairs), 1),
            "reward_margin": round(self.beta * sum(margin) / len(margin), 4),
            "logp_margin": round(sum(c - r for c, r in pairs) / len(pairs), 4),
        }


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# --- the training curve, for the diagnosis ---------------------------------------------------
CURVE_KEYS = {
    "margin": "rewards/margins",
    "chosen": "rewards/chosen",
    "rejected": "rewards/rejected",
    "accuracy": "rewards/accuracies",
}


def curve(log_history: list[dict]) -> list[dict]:
    """The trainer's logged preference rewards per train step: step, margin, chosen, rejected, accuracy.

    DPO's rewards are beta * (log p - log p_ref); ORPO (no reference) logs beta * mean log p per side."""
    rows = []
    for entry in log_history:
        if "loss" not in entry or CURVE_KEYS["margin"] not in entry:
            continue
        row: dict[str, float | int | None] = {"step": int(entry.get("step", 0))}
        for key, name in CURVE_KEYS.items():
            value = entry.get(name)
            row[key] = round(float(value), 4) if value is not None and math.isfinite(float(value)) else None
        rows.append(row)
    return rows

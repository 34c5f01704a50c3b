"""Score the base and the adapter on the same held-out rows.

`Judge` is created once the trainer exists. `score_base` runs before training, so a user
sees the base's numbers early; it is bounded by the plan's `eval_seconds` and
`eval_generations`, and `score_adapter` then repeats exactly the rows the base pass got
through, so the two columns compare like with like. Per model it measures:

- loss and perplexity on the completions (the tokens the trainer learns from), through the
  trainer's own eval data loader, so it is the measure the eval-loss curve shows. The
  adapter's is read from the trainer's own evaluation at the final step when that ran on the
  final weights (`remembering_evaluations`), rather than running the same rows again;
- by greedy generation: exact match, token F1 and ROUGE-L (engine.evaluate.textmetrics);
- K samples side by side (prompt, reference, base answer, adapter answer), rows where the
  two answers differ first.

Demo skills are scored on their own test split with the skill's answer length, so their
exact match is the number the demo has always reported. A dpo/orpo job's rows are preference
pairs: engine.evaluate.preference scores them (preference accuracy, reward margin, the chosen
answers' loss) in place of the SFT loss pass, and the chosen answer is the generation's reference.
The result is reported as an
`evaluation` event and written to evaluation.json in the job folder, which also lets a
resumed run keep the base numbers instead of paying for them twice.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from engine.data import demo
from engine.evaluate import preference, split, textmetrics
from engine.train import events

SAMPLES = 5  # rows shown side by side
MAX_NEW_TOKENS = split.MAX_NEW_TOKENS
LOSS_SHARE = 0.5  # the loss pass may use up to this share of the base pass's time
PROMPT_CHARS = 600  # samples show at most this much of a prompt


class Judge:
    def __init__(
        self,
        plan,
        eval_ds,
        tokenizer,
        out_dir: Path,
        report: Callable[[events.Event], None],
        train_rows: int = 0,
        t0: float | None = None,
    ):
        self.plan, self.eval_ds, self.tokenizer, self.report = plan, eval_ds, tokenizer, report
        self.path = Path(out_dir) / "evaluation.json"
        self.t0 = t0 if t0 is not None else time.time()
        self.skill = demo.skill_of(plan)
        self.result: dict = {"rows": len(eval_ds) if eval_ds is not None else 0}
        if eval_ds is None:
            self.result["note"] = split.why_none(train_rows, plan.eval_split)
        self.rows = self._generation_rows()
        self.base_answers: list[str] = []
        # preference pairs (dpo/orpo): scored by engine.evaluate.preference instead of the SFT loss
        self.pairs = (
            preference.PairScorer(plan, eval_ds, tokenizer)
            if getattr(plan, "objective", "sft") != "sft" and eval_ds is not None
            else None
        )

    # --- the two passes ------------------------------------------------------------------
    def score_base(self, trainer) -> dict | None:
        if self.eval_ds is None:
            self.report(events.Evaluation(dict(self.result)))
            return None
        saved = self._saved_base()
        if saved is not None:  # a resumed run: the base has not changed since
            self.result, self.base_answers = saved
            self.report(events.Evaluation(self.public()))
            return self.result["base"]
        self.report(events.Phase("scoring base"))
        start = time.monotonic()
        deadline = start + self.plan.eval_seconds
        # A new adapter is a no-op (B = 0), so the base's figures are exact with its layers switched
        # off, and a LoRA forward costs a third more on a CPU (its own casts and matmuls).
        with _adapters_off(trainer.model):
            if self.pairs is not None:
                scored = self.pairs.score(trainer.model, None, start + LOSS_SHARE * self.plan.eval_seconds)
                extra = self.pairs.metrics(scored, None)
                loss, tokens, batches = extra.pop("loss"), scored["tokens"], len(scored["pairs"])  # batches: pairs
                self.result["_base_pairs"] = scored["pairs"]
            else:
                loss, tokens, batches = self._loss(trainer, None, start + LOSS_SHARE * self.plan.eval_seconds)
            answers = self._generate(trainer.model, None, deadline)
        self.base_answers = answers
        self.result.update(loss_batches=batches, loss_tokens=tokens, generated_rows=len(answers))
        self.result["base"] = self._metrics(loss, answers, time.monotonic() - start)
        if self.pairs is not None:
            self.result["base"].update(extra)
        self.result["note"] = self._note()
        self._save()
        self.report(events.Evaluation(self.public()))
        return self.result["base"]

    def score_adapter(self, trainer) -> dict | None:
        if self.eval_ds is None or "base" not in self.result:
            return None
        self.report(events.Phase("scoring adapter"))
        start = time.monotonic()
        if self.pairs is not None:
            scored = self.pairs.score(trainer.model, self.result["loss_batches"], None)
            extra = self.pairs.metrics(scored, self.result.get("_base_pairs"))
            loss = extra.pop("loss")
            self.result["curve"] = preference.curve(trainer.state.log_history)
        else:
            loss = self._evaluated_loss(trainer)
            if loss is None:
                loss, _, _ = self._loss(trainer, self.result["loss_batches"], None)
        answers = self._generate(trainer.model, len(self.base_answers), None)
        self.result["adapter"] = self._metrics(loss, answers, time.monotonic() - start)
        if self.pairs is not None:
            self.result["adapter"].update(extra)
        self.result["samples"] = self._samples(answers)
        self.result["note"] = self._note()
        self._save()
        self.report(events.Evaluation(self.public()))
        return self.result["adapter"]

    def public(self) -> dict:
        """The evaluation as `show --json` gives it (keys starting with _ are kept for a resume only)."""
        return {k: v for k, v in self.result.items() if not k.startswith("_")}

    # --- loss on the completions ------------------------------------------------------
    def _loss(self, trainer, max_batches: int | None, deadline: float | None):
        """Token-weighted mean loss over the first batches of the eval loader (all, or up to the deadline)."""
        import torch

        model = trainer.model
        total, tokens, batches = 0.0, 0, 0
        with _inference(model):
            device = next(model.parameters()).device
            for batch in trainer.get_eval_dataloader():
                if max_batches is not None and batches >= max_batches:
                    break
                if deadline is not None and batches and time.monotonic() > deadline:
                    break
                batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
                with torch.no_grad():
                    # SFTTrainer's own head (TRL's fused one; engine.train.lm_head on a CPU): it projects only the
                    # labelled positions, where the model's full logits measured 15-30% slower on the demo
                    out = model(**batch, fused_lm_head=True)
                total -= float(out.log_probs.sum())
                tokens += int(out.label_mask.sum())
                batches += 1
        return (total / tokens if tokens else None), tokens, batches

    def _evaluated_loss(self, trainer) -> float | None:
        """The adapter's loss from the trainer's evaluation at the final step, over the batches the base
        pass scored; None where that evaluation did not see the final weights, or saw other batches."""
        step, tally = getattr(trainer, "last_evaluation", None) or (None, [])
        state, n = trainer.state, self.result["loss_batches"]
        best = state.best_model_checkpoint if trainer.args.load_best_model_at_end else None
        reloaded = best is not None and Path(best).name != f"checkpoint-{step}"  # an earlier step's weights
        if step != state.global_step or reloaded or len(tally) < n or trainer.accelerator.num_processes != 1:
            return None
        tokens = sum(count for _, count in tally[:n])
        return sum(total for total, _ in tally[:n]) / tokens if tokens else None

    # --- greedy answers ------------------------------------------------------------------
    def _generation_rows(self) -> list[dict]:
        """[{prompt_text, add_special, shown, reference}] for the first eval_generations rows that have an answer."""
        if self.eval_ds is None or self.plan.eval_generations == 0 or "prompt" not in self.eval_ds.column_names:
            return []
        tok, rows = self.tokenizer, []
        for row in self.eval_ds.select(range(min(len(self.eval_ds), self.plan.eval_generations))):
            if isinstance(row["prompt"], str):  # string form: the template was rendered already
                prompt, add_special, shown = row["prompt"], True, row["prompt"]
                ids = tok(row.get("completion", row.get("chosen")), add_special_tokens=False)["input_ids"]
                reference = tok.decode(ids, skip_special_tokens=True).strip()
            else:
                prompt = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
                add_special, shown = False, row["prompt"][-1]["content"]
                reference = row.get("completion", row.get("chosen"))[-1]["content"].strip()
            rows.append({"prompt": prompt, "add_special": add_special, "shown": shown, "reference": reference})
            if "rejected" in row:  # a preference pair: its samples show both answers
                rejected = row["rejected"]
                rows[-1]["rejected"] = (rejected if isinstance(rejected, str) else rejected[-1]["content"]).strip()
        return rows

    def _max_new_tokens(self) -> int:
        if self.skill is not None:
            return self.skill.max_new_tokens
        longest = max(
            (len(self.tokenizer(r["reference"], add_special_tokens=False)["input_ids"]) for r in self.rows), default=0
        )
        return max(1, min(longest + 16, MAX_NEW_TOKENS, self.plan.seq_len))

    def _generate(self, model, count: int | None, deadline: float | None) -> list[str]:
        import torch

        rows = self.rows if count is None else self.rows[:count]
        if not rows:
            return []
        tok, answers = self.tokenizer, []
        batch_size = split.DEMO_GENERATE_BATCH if self.skill is not None else split.GENERATE_BATCH
        side = tok.padding_side
        tok.padding_side = "left"  # generation continues from the right edge of every row
        try:
            with _inference(model):
                device = next(model.parameters()).device
                for i in range(0, len(rows), batch_size):
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    chunk = rows[i : i + batch_size]
                    batch = tok(
                        [r["prompt"] for r in chunk],
                        return_tensors="pt",
                        padding=True,
                        add_special_tokens=chunk[0]["add_special"],
                    ).to(device)
                    with torch.no_grad():  # max_time: generate stops itself when the time is up
                        out = model.generate(
                            **batch,
                            max_new_tokens=self._max_new_tokens(),
                            do_sample=False,
                            pad_token_id=tok.pad_token_id,
                            eos_token_id=tok.eos_token_id,
                            max_time=left,
                        )
                    if deadline is not None and time.monotonic() >= deadline:
                        break  # this batch may have been cut short: its answers would not be fair to score
                    answers += [
                        a.strip()
                        for a in tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
                    ]
        finally:
            tok.padding_side = side
        return answers

    # --- results ------------------------------------------------------------------------
    def _metrics(self, loss: float | None, answers: list[str], seconds: float) -> dict:
        finite = loss if loss is not None and math.isfinite(loss) else None
        refs = [r["reference"] for r in self.rows[: len(answers)]]
        return {
            "loss": round(finite, 4) if finite is not None else loss,
            "perplexity": round(math.exp(min(finite, 50)), 3) if finite is not None else None,
            **textmetrics.scores(answers, refs),
            "seconds": round(seconds, 1),
        }

    def _samples(self, adapter_answers: list[str]) -> list[dict]:
        pairs = list(zip(self.rows, self.base_answers, adapter_answers))
        differ = [p for p in pairs if p[1] != p[2]]
        chosen = (differ + [p for p in pairs if p[1] == p[2]])[:SAMPLES]
        return [
            {"prompt": r["shown"][:PROMPT_CHARS], "reference": r["reference"], "base": b, "adapter": a}
            | ({"chosen": r["reference"], "rejected": r["rejected"]} if "rejected" in r else {})
            for r, b, a in chosen
        ]

    def _note(self) -> str:
        base = self.result["base"]
        job_s = max(time.time() - self.t0, 1e-9)
        tokens = self.result["loss_tokens"]
        what = (
            f"preference on {self.result['loss_batches']} pairs, loss on {tokens} chosen-answer tokens"
            if self.pairs is not None
            else f"loss on {tokens} completion tokens"
        )
        text = (
            f"{self.result['rows']} rows held out; {what}, "
            f"greedy answers on {self.result['generated_rows']} rows. Scoring the base took {base['seconds']} s "
            f"before training ({100 * base['seconds'] / job_s:.0f}% of the job's time so far; limit "
            f"{self.plan.eval_seconds:g} s, eval_seconds)."
        )
        if self.rows and self.result["generated_rows"] < len(self.rows):
            text += (
                f" The time limit stopped generation after {self.result['generated_rows']} of {len(self.rows)} "
                "rows (raise eval_seconds for more)."
            )
        if self.eval_ds is not None and "prompt" not in self.eval_ds.column_names:
            text += " Plain-text data has no reference answers, so only the loss is measured."
        return text

    def _save(self) -> None:
        data = {**self.result, "base_answers": self.base_answers}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        tmp.replace(self.path)

    def _saved_base(self):
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if "base" not in data or data.get("rows") != self.result["rows"]:
            return None
        answers = data.pop("base_answers", [])
        data.pop("adapter", None), data.pop("samples", None)
        return data, answers


def remembering_evaluations(trainer_cls):
    """`trainer_cls` (an SFT trainer) whose evaluations also keep each batch's summed completion loss
    and token count, as `last_evaluation` = (step, [(loss sum, tokens), ...]): the Judge's loss pass
    over the same loader, so the final step's evaluation also gives the adapter's held-out loss."""

    class RememberingEvaluations(trainer_cls):
        last_evaluation: tuple[int, list[tuple[float, int]]] | None = None
        _tally: list[tuple[float, int]] | None = None

        def evaluate(self, *args, **kwargs):
            self._tally = []
            try:
                metrics = super().evaluate(*args, **kwargs)
                self.last_evaluation = (self.state.global_step, self._tally)
                return metrics
            finally:
                self._tally = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # not return_outputs=True for the token count: TRL then runs a second forward for the logits
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self._tally is not None:
                tokens = int((inputs["labels"][:, 1:] != -100).sum())  # the batch's loss is the mean over these
                self._tally.append((float(result[0] if return_outputs else result) * tokens, tokens))
            return result

    return RememberingEvaluations


def _adapters_off(model):
    """PEFT's disable_adapter() for a PeftModel; nothing to switch off for a full fine-tune."""

    return model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()


class _inference:
    """Eval mode with the KV cache on, then back to how the trainer left the model."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        config = getattr(self.model, "config", None)
        self.was_training, self.use_cache = self.model.training, getattr(config, "use_cache", None)
        self.model.eval()
        if config is not None:
            config.use_cache = True

    def __exit__(self, *exc):
        if self.use_cache is not None:
            self.model.config.use_cache = self.use_cache
        self.model.train(self.was_training)
        return False

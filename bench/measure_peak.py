"""Measure peak live tensor bytes of a training step on the CPU, to check engine.memory.

`PeakMemory` is a TorchDispatchMode: every tensor an op returns has its storage
recorded once (keyed by the storage itself) and released through `weakref.finalize`
when PyTorch frees that storage, so `peak` is the largest sum of live storages, the CPU
analogue of `torch.cuda.max_memory_allocated()`. Tensors made before the mode started
(weights, the batch) are added with `track(...)`.

    python bench/measure_peak.py                       # tiny Llama, LoRA all-linear
    python bench/measure_peak.py --model smollm2-135m --batch-size 2 --seq-len 128
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class PeakMemory(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def track(self, *tensors) -> None:
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = storage._cdata
                if key in self.live:
                    continue
                n = storage.nbytes()
                self.live[key] = n
                self.current += n
                self.peak = max(self.peak, self.current)
                weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def reset_peak(self) -> None:
        self.peak = self.current

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.track(*[t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)])
        return out


def tiny_llama_config(hidden=64, layers=2, vocab=512, heads=4, kv_heads=2, inter=128):
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        vocab_size=vocab,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=inter,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )


def measure(
    config,
    method="lora",
    r=8,
    targets="all-linear",
    dropout=0.05,
    batch_size=4,
    seq_len=64,
    steps=2,
    grad_ckpt=False,
    attention="sdpa",
    seed=0,
) -> dict:
    """Peak live bytes over `steps` steps of forward + backward + AdamW (fp32, CPU)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config._attn_implementation = attention
    # fp32 as the recipe uses on the CPU (catalog configs say bf16, which from_config would honour)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attention, dtype=torch.float32)
    if method == "full":
        params = [p for p in model.parameters()]
    else:
        tl = targets if targets == "all-linear" else targets.split(",")
        model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=dropout, target_modules=tl))
        params = [p for p in model.parameters() if p.requires_grad]
    if grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if method != "full":
            model.enable_input_require_grads()
    model.train()
    opt = torch.optim.AdamW(params, lr=1e-4)
    vocab = config.vocab_size
    ids = torch.randint(0, vocab, (batch_size, seq_len))
    mask = torch.ones_like(ids)
    mask[0, seq_len // 2 :] = 0  # one padded row: the recipe pads, so the mask reaches attention
    labels = ids.masked_fill(mask == 0, -100)
    mode = PeakMemory()
    mode.track(*model.parameters(), *model.buffers(), ids, mask, labels)
    weights = mode.current
    with mode:
        for _ in range(steps):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            del loss
    return {
        "peak_bytes": mode.peak,
        "weights_bytes": weights,
        "dtype": str(next(model.parameters()).dtype),
        "params": sum(p.numel() for p in model.parameters()),
    }


def estimate_for(config, **kw) -> dict:
    """The estimator's figures for the same setting (config written to a temporary folder)."""
    from engine.estimate.combined import estimate
    from engine.plan import TrainingPlan

    folder = Path(tempfile.mkdtemp(prefix="lp-measure-"))
    (folder / "config.json").write_text(config.to_json_string())
    plan = TrainingPlan.build(
        model=str(folder),
        method=kw.get("method", "lora"),
        r=kw.get("r", 8),
        targets=kw.get("targets", "all-linear"),
        dropout=kw.get("dropout", 0.05),
        batch_size=kw.get("batch_size", 4),
        seq_len=kw.get("seq_len", 64),
        grad_ckpt=kw.get("grad_ckpt", False),
        attention=kw.get("attention", "sdpa"),
        gpu="cpu",
    )
    return estimate(plan).memory.model_dump()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--model", default=None, help="catalog name; default: a tiny Llama (hidden 64, 2 layers, vocab 512)"
    )
    ap.add_argument("--layers", type=int, default=None, help="override the number of layers")
    ap.add_argument("--method", default="lora")
    ap.add_argument("--targets", default="all-linear")
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--grad-ckpt", action="store_true")
    ap.add_argument("--attention", default="sdpa")
    ap.add_argument("--steps", type=int, default=2)
    ns = ap.parse_args(argv)
    if ns.model:
        from transformers import AutoConfig

        from engine.model.catalog import find_model

        config = AutoConfig.for_model(**find_model(ns.model).config_dict())
    else:
        config = tiny_llama_config()
    if ns.layers:
        config.num_hidden_layers = ns.layers
    kw = dict(
        method=ns.method,
        r=ns.r,
        targets=ns.targets,
        dropout=ns.dropout,
        batch_size=ns.batch_size,
        seq_len=ns.seq_len,
        grad_ckpt=ns.grad_ckpt,
        attention=ns.attention,
    )
    got = measure(config, steps=ns.steps, **kw)
    est = estimate_for(config, **kw)
    ratio = est["allocated_bytes"] / got["peak_bytes"]
    print(
        json.dumps(
            {
                "setting": kw,
                "measured_peak_bytes": got["peak_bytes"],
                "estimated_allocated_bytes": est["allocated_bytes"],
                "ratio_est_over_measured": round(ratio, 3),
                "terms": est["terms"],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()

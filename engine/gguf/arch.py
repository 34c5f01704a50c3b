"""The architectures LoRA Pilot writes as GGUF: hyper-parameters and tensor names.

llama.cpp reads a model by its `general.architecture` and a fixed set of `{arch}.*` keys,
and finds tensors by its own names (`blk.3.attn_q.weight`); the `gguf` package's
TensorNameMap translates Hugging Face names to those. One layout fact is not a name: for
the llama architecture llama.cpp expects the rows of the Q and K projections in the
interleaved RoPE order of Meta's original checkpoints, which Hugging Face permuted away,
so they are permuted back here (llama.cpp's convert_hf_to_gguf.py, `LlamaModel.permute`).
The same permutation applies to the rows of a LoRA B matrix that adapts Q or K, since
permuting the rows of B·A is permuting the rows of B. Qwen2/Qwen3 use the Hugging Face
(NeoX) RoPE order and need no permutation.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import UserError

# Hugging Face `model_type` -> GGUF architecture name; Mistral is the llama architecture in llama.cpp.
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
FAMILIES = "Llama (SmolLM2, Llama 3.x), Mistral, Qwen2 and Qwen3"


@dataclass
class Arch:
    model_type: str
    name: str  # general.architecture
    config: dict
    tensor_map: Any  # gguf.TensorNameMap (gguf loads lazily: a heavy import)

    @property
    def n_layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    @property
    def n_head(self) -> int:
        return int(self.config["num_attention_heads"])

    @property
    def n_head_kv(self) -> int:
        return int(self.config.get("num_key_value_heads") or self.n_head)

    @property
    def head_dim(self) -> int:
        return int(self.config.get("head_dim") or self.config["hidden_size"] // self.n_head)

    @property
    def tied(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", False))

    def gguf_name(self, hf_name: str) -> str | None:
        """llama.cpp's name for a Hugging Face tensor name (weight or bias), or None if it has none."""
        return self.tensor_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))

    def permute_rows(self, gguf_name: str, rows):
        """Q/K rows in llama.cpp's RoPE order for the llama architecture (numpy or torch, rows first)."""
        if self.name != "llama":
            return rows
        if ".attn_q." in gguf_name:
            heads = self.n_head
        elif ".attn_k." in gguf_name:
            heads = self.n_head_kv
        else:
            return rows
        shape = rows.shape
        return rows.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)

    def rope(self) -> dict:
        """RoPE settings: transformers 5 keeps them in `rope_parameters`, older configs at the top level."""
        params = dict(self.config.get("rope_parameters") or {})
        if "rope_theta" not in params and "rope_theta" in self.config:
            params["rope_theta"] = self.config["rope_theta"]
        if self.config.get("rope_scaling"):
            params.update(self.config["rope_scaling"])
        params.setdefault("rope_type", params.get("type", "default"))
        return params

    def write_hparams(self, writer) -> None:
        """The `{arch}.*` keys llama.cpp reads (what convert_hf_to_gguf.py's TextModel writes)."""
        import gguf

        c = self.config
        writer.add_block_count(self.n_layers)
        writer.add_context_length(int(c.get("max_position_embeddings") or 2048))
        writer.add_embedding_length(int(c["hidden_size"]))
        writer.add_feed_forward_length(int(c["intermediate_size"]))
        writer.add_head_count(self.n_head)
        writer.add_head_count_kv(self.n_head_kv)
        writer.add_layer_norm_rms_eps(float(c.get("rms_norm_eps", 1e-6)))
        rope = self.rope()
        writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
        if self.name == "llama":
            writer.add_vocab_size(int(c["vocab_size"]))
            writer.add_rope_dimension_count(self.head_dim)
        if c.get("head_dim"):
            writer.add_key_length(self.head_dim)
            writer.add_value_length(self.head_dim)
        kind, factor = rope["rope_type"], rope.get("factor")
        if kind == "linear" and factor:
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(factor))
        elif kind == "yarn" and factor:
            writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            writer.add_rope_scaling_factor(float(factor))
            writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))

    def extra_tensors(self):
        """Llama 3.1+'s `llama3` RoPE scaling is a per-frequency factor tensor in GGUF (rope_freqs)."""
        rope = self.rope()
        if rope["rope_type"] != "llama3":
            return []
        base, dim = float(rope.get("rope_theta", 10000.0)), self.head_dim
        factor = rope.get("factor", 8.0)
        low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
        old_ctx = rope.get("original_max_position_embeddings", 8192)
        factors = []
        for i in range(0, dim, 2):
            wavelen = 2 * math.pi * base ** (i / dim)
            if wavelen < old_ctx / high:
                factors.append(1.0)
            elif wavelen > old_ctx / low:
                factors.append(factor)
            else:
                smooth = (old_ctx / wavelen - low) / (high - low)
                factors.append(1 / ((1 - smooth) / factor + smooth))
        return [("rope_freqs.weight", np.array(factors, dtype=np.float32))]


def load(model_dir) -> Arch:
    """The architecture of a Hugging Face model folder; an unsupported one is refused in one line."""
    import gguf

    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(
            "model", f"{path} is missing or not JSON; a GGUF export needs the model's config.json"
        ) from None
    config = {**config.get("text_config", {}), **config}
    model_type = config.get("model_type", "?")
    if model_type not in ARCHITECTURES:
        raise UserError("model", f"GGUF export does not cover the '{model_type}' architecture; it covers {FAMILIES}")
    name = ARCHITECTURES[model_type]
    arch_enum = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == name)
    tensor_map = gguf.get_tensor_name_map(arch_enum, int(config["num_hidden_layers"]))
    return Arch(model_type, name, config, tensor_map)

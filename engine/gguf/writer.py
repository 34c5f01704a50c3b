"""A Hugging Face model folder as one standalone GGUF file, at the precision asked for.

Every tensor gets llama.cpp's name (engine.gguf.arch), Q/K rows in llama.cpp's order for
the llama architecture, and the requested type: vectors (norms, biases) stay F32 as
llama.cpp's converter keeps them; matrices become F16, BF16, Q8_0 or a 4/5-bit type through
the `gguf` package's own quantizers, or F16 when their rows do not divide into the type's
blocks. The tokenizer and chat template travel in the metadata (engine.gguf.vocab).

The file is written under a temporary name beside the target and renamed when complete,
so a failed or interrupted export never leaves a half-written .gguf behind.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from engine.errors import UserError, one_of
from engine.gguf import arch as archs
from engine.gguf import vocab

# --quant value -> (ggml tensor type name, llama.cpp file type name)
QUANTS = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
    "q5_1": ("Q5_1", "MOSTLY_Q5_1"),
    "q5_0": ("Q5_0", "MOSTLY_Q5_0"),
    "q4_1": ("Q4_1", "MOSTLY_Q4_1"),
    "q4_0": ("Q4_0", "MOSTLY_Q4_0"),
}


def check_quant(quant: str) -> str:
    quant = (quant or "").strip().lower()
    if quant not in QUANTS:
        raise UserError("quant", f"unknown quantization '{quant}'; accepted: {one_of(QUANTS)}")
    return quant


def write_model(model_dir, out_file, quant: str = "f16", name: str | None = None) -> Path:
    """Write the model in `model_dir` to `out_file` as GGUF at `quant`; return the path."""
    import gguf

    quant = check_quant(quant)
    model_dir, out_file = Path(model_dir), Path(out_file)
    arch = archs.load(model_dir)
    qtype = gguf.GGMLQuantizationType[QUANTS[quant][0]]
    with atomic_path(out_file) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch.name)
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or model_dir.name)
        arch.write_hparams(writer)
        writer.add_file_type(gguf.LlamaFileType[QUANTS[quant][1]])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        vocab.write(writer, model_dir, arch.model_type)
        for gguf_name, data in arch.extra_tensors():
            writer.add_tensor(gguf_name, data)
        for gguf_name, data in model_tensors(model_dir, arch):
            add_tensor(writer, gguf_name, data, qtype)
        finish(writer)
    return out_file


def model_tensors(model_dir: Path, arch: archs.Arch):
    """(llama.cpp name, float32 numpy array) for every weight of the folder, Q/K rows permuted."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("model*.safetensors"))
    if not files:
        raise UserError("model", f"{model_dir} has no model*.safetensors weights to convert")
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for hf_name in f.keys():  # noqa: SIM118 - safe_open has keys(), it is not iterable
                if hf_name == "lm_head.weight" and arch.tied:
                    continue  # llama.cpp reuses token_embd when the file has no output tensor
                gguf_name = arch.gguf_name(hf_name)
                if gguf_name is None:
                    if hf_name.endswith("rotary_emb.inv_freq"):
                        continue  # recomputed by llama.cpp from rope.freq_base
                    raise UserError(
                        "model",
                        f"tensor {hf_name} of {model_dir} has no GGUF name for the "
                        f"{arch.name} architecture; GGUF export covers {archs.FAMILIES}",
                    )
                data = f.get_tensor(hf_name).float().numpy()
                yield gguf_name, arch.permute_rows(gguf_name, data)


def add_tensor(writer, name: str, data, qtype) -> None:
    import gguf

    if data.ndim < 2:
        qtype = gguf.GGMLQuantizationType.F32  # norms and biases: llama.cpp keeps them in F32
    elif qtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        block = gguf.GGML_QUANT_SIZES[qtype][0]
        if data.shape[-1] % block:
            qtype = gguf.GGMLQuantizationType.F16  # rows that do not split into blocks stay 16-bit
    data = np.ascontiguousarray(data, dtype=np.float32)
    if qtype == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(name, data)
    elif qtype == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(name, data.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)


def finish(writer) -> None:
    """Header, metadata and tensors to the writer's file (shared with engine.gguf.lora)."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@contextmanager
def atomic_path(target: Path):
    """A temporary sibling path to write to; renamed onto `target` only when the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.part-{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)

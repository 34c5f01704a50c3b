"""The tokenizer inside a GGUF file: vocabulary, merges, special ids, chat template.

llama.cpp tokenizes by itself from this metadata, so it must be the model's own: tokens
in id order with their types (a CONTROL token such as `<|im_end|>` is never split), the
BPE merges, the special ids, whether a BOS is prepended, and the Jinja chat template that
llama.cpp (and llama-cpp-python, LM Studio) apply. Two tokenizer kinds cover the supported
families: byte-level BPE (`gpt2` in llama.cpp: SmolLM2, Llama 3, Qwen2/3, Mistral's Tekken)
and SentencePiece-style BPE with byte fallback (`llama`: Mistral 7B's).

A byte-level BPE also needs its pre-tokenizer, which llama.cpp knows by name. Like
llama.cpp's converter, we recognise it by hashing the token ids of a fixed probe text
(convert_hf_to_gguf.py, `get_vocab_base_pre`); the hashes below are copied from there for
the families we cover, and the model family decides when a tokenizer's hash is not listed.
"""

from __future__ import annotations

import json
from hashlib import sha256
from pathlib import Path

PROBE = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis "
    "concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
PRE_BY_HASH = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",
}
PRE_BY_FAMILY = {"qwen2": "qwen2", "qwen3": "qwen2", "mistral": "tekken"}

# llama.cpp's token types (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6


def write(writer, model_dir, model_type: str) -> None:
    """Add the tokenizer of the Hugging Face folder `model_dir` to a GGUFWriter."""
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model = spec.get("model", {})
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    size = max(int(config.get("vocab_size") or 0), len(tok))
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        _write_spm(writer, tok, size)
    else:
        _write_bpe(writer, tok, model, size, model_type)
    for key, token in (("bos", tok.bos_token), ("eos", tok.eos_token), ("unk", tok.unk_token), ("pad", tok.pad_token)):
        if token is not None:
            getattr(writer, f"add_{key}_token_id")(tok.convert_tokens_to_ids(token))
    writer.add_add_bos_token(adds_bos(tok))
    if tok.chat_template:
        writer.add_chat_template(tok.chat_template)


def adds_bos(tok) -> bool:
    """Whether the tokenizer itself prepends BOS (what llama.cpp must do when it tokenizes a prompt)."""
    ids = tok("a")["input_ids"]
    return bool(ids) and tok.bos_token_id is not None and ids[0] == tok.bos_token_id


def _tokens_and_types(tok, size: int):
    reverse = {i: t for t, i in tok.get_vocab().items()}
    added = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(5)  # UNUSED
        elif i in added:
            tokens.append(reverse[i])
            types.append(CONTROL if added[i].special else USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(NORMAL)
    return tokens, types


def _write_bpe(writer, tok, model: dict, size: int, model_type: str) -> None:
    tokens, types = _tokens_and_types(tok, size)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer(tok, model_type))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_add_space_prefix(False)


def pre_tokenizer(tok, model_type: str) -> str:
    digest = sha256(str(tok.encode(PROBE)).encode()).hexdigest()
    if digest in PRE_BY_HASH:
        return PRE_BY_HASH[digest]
    if model_type in PRE_BY_FAMILY:
        return PRE_BY_FAMILY[model_type]
    return "llama-bpe" if len(tok) > 100_000 else "default"


def _write_spm(writer, tok, size: int) -> None:
    # A SentencePiece BPE model merges the pair whose result scores highest, and its pieces'
    # scores fall with their id; tokenizer.json keeps the ids, so the score is minus the id.
    tokens, types = _tokens_and_types(tok, size)
    scores = []
    for i, token in enumerate(tokens):
        if token == tok.unk_token:
            types[i] = UNKNOWN
        elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            types[i] = BYTE
        scores.append(0.0 if types[i] != NORMAL else -float(i))
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_add_space_prefix(True)

"""A tiny causal LM with a real tokenizer, built inside a test in a few seconds.

Tests that train, estimate or check data need a model that `from_pretrained` loads
offline. No hub download is allowed, so we make one: a randomly initialised model of
a few hundred thousand parameters and a byte-level BPE tokenizer trained here on the
given texts, with ChatML special tokens and template, the same layout as the
embedded SmolLM2 default (eos and pad = <|im_end|>).
"""

from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Enough varied text that common English merges exist; the rest is bytes.
DEFAULT_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "user assistant system: answer the question in one word.",
    "Translate to French: hello world. Bonjour le monde.",
    "What is 2 + 2? The answer is 4. What is the capital of France? Paris.",
    '{"name": "Alice", "age": 30, "city": "London"}',
    "Instruction: summarise the text. Input: a long story. Output: a short story.",
    "0 1 2 3 4 5 6 7 8 9 ten eleven twelve, yes no maybe. ABCDEFGHIJKLMNOPQRSTUVWXYZ",
]


def _train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is encodable
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.model_max_length = 2048
    return fast


def make_tiny_model(
    path, arch: str = "llama", vocab_texts: list[str] | None = None, texts: list[str] | None = None, seed: int = 0
) -> Path:
    """Write a tiny model + fast tokenizer to `path` and return it as a Path.

    arch: 'llama' (q/k/v/o + gate/up/down, GQA 4/2 heads) or 'gpt2' (fused c_attn, Conv1D).
    vocab_texts (alias texts): extra text the tokenizer is trained on, e.g. the test's data.
    """
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    corpus = list(DEFAULT_TEXTS) + list(vocab_texts or []) + list(texts or [])
    tokenizer = _train_tokenizer(corpus * 2, vocab_size=400)
    vocab = len(tokenizer)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    bos = tokenizer.convert_tokens_to_ids("<|im_start|>")

    if arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    elif arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=2048,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    else:
        raise ValueError(f"arch must be 'llama' or 'gpt2', got {arch!r}")

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = eos
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path

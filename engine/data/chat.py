"""Chat templates and the end-of-sequence token.

A tuned model that never stops talking is the failure users report most. It happens
when training examples do not end with the token generation stops on. Here we make
sure a tokenizer has a chat template (ChatML when it has none, with <|im_end|> as
EOS) and offer the check that an example's assistant turn really ends with EOS.
"""

from __future__ import annotations

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_EOS = "<|im_end|>"


def ensure_chat_template(tokenizer):
    """Give `tokenizer` a ChatML template and EOS/pad when it has no template; return it.

    A tokenizer that already has a template keeps it (the model was trained on it);
    only a missing pad token is filled in, with EOS, which is what causal-LM padding uses.
    """
    if not getattr(tokenizer, "chat_template", None):
        vocab = tokenizer.get_vocab()
        missing = [t for t in ("<|im_start|>", CHATML_EOS) if t not in vocab]
        if missing:
            # The new tokens get fresh embeddings; the trainer resizes the model to len(tokenizer).
            tokenizer.add_special_tokens({"additional_special_tokens": missing})
        tokenizer.chat_template = CHATML_TEMPLATE
        tokenizer.eos_token = CHATML_EOS
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The text the model sees for `messages`, through its own template."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def ends_with_eos(tokenizer, text: str) -> bool:
    """True when the tokenized `text` ends with EOS (ignoring trailing whitespace tokens).

    Templates such as ChatML put a newline after <|im_end|>; what matters is that the
    model is trained to emit EOS at the end of its answer.
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    while ids and ids[-1] != eos and not tokenizer.decode([ids[-1]]).strip():
        ids = ids[:-1]
    return bool(ids) and ids[-1] == eos

"""The Ollama Modelfile of an export, and the card section that says how to run it.

Ollama does not run Jinja chat templates: its TEMPLATE is a Go template over `.System`,
`.Prompt` and `.Response`. A wrong one is the classic cause of an exported model that
babbles or never stops, so the template is not written by hand per family: it is derived
from the tokenizer's own chat template by rendering it around marker strings and cutting
the text at the markers. What lies between them is the literal text Ollama must put
around the system prompt, the user's prompt and the answer. The stop parameters are the
special tokens that end an answer in that rendering, plus the tokenizer's EOS. A BOS
token that the template writes and the tokenizer also adds by itself (Llama 3) is left out
of TEMPLATE, since llama.cpp adds it as the tokenizer does: written twice, it would be there twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError
from engine.gguf.vocab import adds_bos

_S, _U, _A = "LPSYSTEMMARK", "LPUSERMARK", "LPANSWERMARK"


@dataclass
class ChatPieces:
    """The literal text around each part of one exchange in the model's chat template."""

    system_prefix: str  # before the system prompt
    system_suffix: str  # between the system prompt and the user's prompt
    no_system: str  # before the user's prompt when there is no system prompt (may hold a default one)
    answer_prefix: str  # between the user's prompt and the answer: the generation prompt
    answer_suffix: str  # after the answer: the end of the turn
    stops: list[str]

    def go_template(self) -> str:
        return (
            f"{{{{ if .System }}}}{_go(self.system_prefix)}{{{{ .System }}}}{_go(self.system_suffix)}"
            f"{{{{ else }}}}{_go(self.no_system)}{{{{ end }}}}"
            f"{{{{ .Prompt }}}}{_go(self.answer_prefix)}{{{{ .Response }}}}{_go(self.answer_suffix)}"
        )


def chat_pieces(tokenizer) -> ChatPieces:
    """Cut the tokenizer's chat template into the pieces around system, prompt and answer."""

    def render(messages, generation):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    system, user, answer = (
        {"role": "system", "content": _S},
        {"role": "user", "content": _U},
        {"role": "assistant", "content": _A},
    )
    with_system, without = render([system, user], True), render([user], True)
    full = render([system, user, answer], False)
    try:
        before_s, rest = with_system.split(_S)
        between, generation = rest.split(_U)
        no_system, _ = without.split(_U)
        head, tail = full.split(_A)
    except ValueError:
        raise UserError(
            "chat_template",
            "the chat template does not place the system prompt, the prompt and "
            "the answer once each, so no Ollama TEMPLATE can be derived from it",
        ) from None
    if not head.startswith(before_s + _S + between + _U):
        raise UserError(
            "chat_template",
            "the chat template renders a conversation differently from its "
            "generation prompt, so no Ollama TEMPLATE can be derived from it",
        )
    bos = tokenizer.bos_token if adds_bos(tokenizer) else None
    if bos and before_s.startswith(bos) and no_system.startswith(bos):
        before_s, no_system = before_s[len(bos) :], no_system[len(bos) :]
    return ChatPieces(before_s, between, no_system, generation, tail, _stops(tokenizer, tail))


def _stops(tokenizer, end_of_turn: str) -> list[str]:
    """Special tokens in the text after an answer (e.g. <|im_end|>, <|eot_id|>), and the EOS token."""
    special = set(tokenizer.all_special_tokens) | {
        t.content for t in tokenizer.added_tokens_decoder.values() if t.special
    }
    stops = [t for t in sorted(special, key=end_of_turn.find) if t and t in end_of_turn]
    if tokenizer.eos_token and tokenizer.eos_token not in stops:
        stops.append(tokenizer.eos_token)
    return stops


def _go(text: str) -> str:
    """Literal text inside a Go template: only `{{` would be read as an action."""
    return text.replace("{{", '{{ "{{" }}')


def _quote(text: str) -> str:
    if '"""' in text:
        raise UserError("system", 'the system prompt contains """, which a Modelfile cannot quote')
    return f'"""{text}"""'


def render(
    pieces: ChatPieces, model_from: str, adapter: str | None = None, system: str | None = None, comment: str = ""
) -> str:
    """The Modelfile text: FROM, ADAPTER, TEMPLATE, SYSTEM and the stop parameters."""
    lines = [f"# {line}" for line in comment.splitlines()] + [f"FROM {model_from}"]
    if adapter:
        lines.append(f"ADAPTER {adapter}")
    lines.append(f"TEMPLATE {_quote(pieces.go_template())}")
    if system:
        lines.append(f"SYSTEM {_quote(system)}")
    lines += [f'PARAMETER stop "{stop}"' for stop in pieces.stops]
    lines.append("PARAMETER temperature 0")  # greedy, as LoRA Pilot's check answered
    return "\n".join(lines) + "\n"


def write(path, text: str) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def card_section(
    model_name: str, merged: Path, adapter: Path | None, base_gguf: Path | None, check_line: str
) -> list[str]:
    """'Run it with Ollama / llama.cpp' for the model card, with the files' real names."""
    lines = [
        "## Run it with Ollama / llama.cpp",
        "",
        "Exported by `python app.py export ID --as gguf` into the `gguf/` folder beside this card.",
        "",
        "```sh",
        "cd gguf",
        f"ollama create {model_name} -f Modelfile      # the merged model, template and stop tokens included",
        f'ollama run {model_name} "your prompt"',
        f"llama-cli -m {merged.name} -cnv             # llama.cpp applies the chat template in the file",
        f"llama-server -m {merged.name} --port 8080   # OpenAI-compatible server",
    ]
    if adapter is not None and base_gguf is not None:
        lines += [
            f"llama-cli -m {base_gguf} --lora {adapter.name} -cnv   # the base GGUF plus the small adapter",
            f"ollama create {model_name}-adapter -f Modelfile.adapter",
        ]
    lines += [
        "```",
        "",
        f"LM Studio: `lms import gguf/{merged.name}` (or copy the file into its models folder).",
        "",
        check_line,
        "",
    ]
    return lines

"""A plan as code: its YAML, the equivalent `python app.py train` command, a standalone script.

The script is for people who leave the app: plain transformers + PEFT + TRL + datasets,
no LoRA Pilot import. It trains what the job trained: the base from the folder the job
loads it from, the job's own data file, the rows converted as engine.data does (chat
layouts to prompt/completion pairs through the model's template, ChatML when it has
none; plain text with EOS), and — read from the job's `resolved.json`, never derived a
second time — the device, precision, attention kernel, held-out rows, early stopping and
the exact LoraConfig / SFTConfig keywords, printed as literals.
"""

from __future__ import annotations

import pprint
import shlex
from pathlib import Path

from engine.data import demo, formats
from engine.data.chat import CHATML_EOS, CHATML_TEMPLATE
from engine.data.ref import DatasetRef
from engine.errors import UserError
from engine.plan import TrainingPlan
from engine.train import preference, run
from engine.train.resolved import Resolved

FORMATS = ("python", "yaml", "cli")


def plan_yaml(plan: TrainingPlan, record: Resolved | None = None) -> str:
    return _comment(record) + plan.to_yaml()


def _comment(record: Resolved | None) -> str:
    return f"# the job resolved this plan as: {record.summary()}\n" if record else ""


def cli_command(plan: TrainingPlan, record: Resolved | None = None) -> str:
    """One flag per line, shell-continued, so a long plan stays readable and copy-pasteable."""
    parts: list[str] = []
    for arg in plan.to_cli_args():
        if arg.startswith("--") or not parts:
            parts.append(shlex.quote(arg))
        else:
            parts[-1] += " " + shlex.quote(arg)
    return _comment(record) + " \\\n  ".join(["python app.py train", *parts])


def render(plan: TrainingPlan, kind: str, record: Resolved | None = None) -> str:
    """The plan as `kind` (python | yaml | cli); `record`: what the job resolved, once it has run."""
    if kind == "yaml":
        return plan_yaml(plan, record)
    if kind == "cli":
        return cli_command(plan, record)
    if kind == "python":
        return python_script(plan, record)
    raise UserError("as", f"got {kind!r}; accepted: {', '.join(FORMATS)}")


# --- the standalone script ---------------------------------------------------------------
def data_files(plan: TrainingPlan) -> tuple[str, str | None]:
    """(training data, held-out data or None): the files (or hub id) the job reads."""
    ref = DatasetRef.parse(formats.dataset_of(plan))
    if ref.skill is not None:  # demo:NAME
        return str(demo.dataset_path(ref.skill, "train")), str(demo.dataset_path(ref.skill, "test"))
    path = Path(ref.source).expanduser()
    return (str(path.resolve()) if path.exists() else ref.source), None


def python_script(plan: TrainingPlan, record: Resolved | None = None) -> str:
    """The standalone script; without a record (the job has not run yet) it states what a job of
    this plan resolves to on this machine now."""

    record = record or run.provisional_record(plan)
    train_file, demo_eval = data_files(plan)
    eval_file = demo_eval if record.eval_source == "demo" else None
    title = " ".join((plan.name or f"{plan.method} on {DatasetRef.parse(formats.dataset_of(plan)).stem}").split())
    parts = [
        _HEADER.format(
            title=title, needs=", bitsandbytes" if plan.method == "qlora" else "", resolved=_resolved_note(record)
        ),
        _imports(plan, train_file),
        _SETTINGS.format(
            base=run.model_source(plan.model),
            train=train_file,
            eval=eval_file,
            fmt=plan.data_format,
            columns=dict(plan.columns),
            eval_rows=record.eval_rows if record.eval_source == "split" else [],
            seed=record.seed,
            device=record.device,
            dtype=record.precision,
        ),
        _tokenizer_block(),
        _reader(train_file),
        _CONVERT,
        _model_block(plan, record.attention),
        _SPLIT,
        ("peft_config = LoraConfig(\n" + _kwargs(record.lora) + ")\n\n") if record.lora else "",
        'args = SFTConfig(\n    output_dir=str(Path(OUT) / "checkpoints"),\n' + _kwargs(record.sft) + ")\n",
        _EARLY_STOP.format(**record.early_stopping) if record.early_stopping else "",
        _RUN.format(
            peft=", peft_config=peft_config" if record.lora else "",
            callbacks=", callbacks=[EarlyStop()]" if record.early_stopping else "",
        ),
    ]
    if plan.objective != "sft":  # dpo/orpo: pairs, and TRL's pair trainer on the record's keywords
        parts.insert(parts.index(_SPLIT), preference.SCRIPT_PAIRS)
        parts[-3:] = [preference.script_trainer(plan.objective, part) for part in parts[-3:]]
    return "".join(parts)


def _resolved_note(record: Resolved) -> str:
    lines = [f"# What the job resolved (its resolved.json): {record.summary()}."]
    if record.versions:
        lines.append(
            "# Library versions it ran with: "
            + ", ".join(f"{k} {v}" for k, v in sorted(record.versions.items()))
            + "."
        )
    if "dropout" in record.cpu_replacements:
        lines.append("# On the CPU the job drew its LoRA dropout masks with a faster sampler of the same drop")
        lines.append("# rate: with dropout above 0 this script's adapter matches the job's in distribution, not")
        lines.append("# bit for bit.")
    return "\n".join(lines) + "\n"


def _kwargs(values: dict, indent: str = "    ") -> str:
    return "".join(f"{indent}{k}={pprint.pformat(v, width=100, compact=True)},\n" for k, v in values.items())


def _imports(plan: TrainingPlan, train_file: str) -> str:
    csv = ["import csv", "import io"] if Path(train_file).suffix.lower() == ".csv" else []
    std = [*csv, "import json", "import sys", "from pathlib import Path"]
    peft = {
        "qlora": "from peft import LoraConfig, prepare_model_for_kbit_training",
        "lora": "from peft import LoraConfig",
    }.get(plan.method)
    third = [
        "import torch",
        "from datasets import Dataset, load_dataset",
        *([peft] if peft else []),
        "from transformers import AutoModelForCausalLM, AutoTokenizer"
        + (", BitsAndBytesConfig" if plan.method == "qlora" else "")
        + ", TrainerCallback, set_seed",
        "from trl import SFTConfig, SFTTrainer",
    ]
    return "\n".join(std) + "\n\n" + "\n".join(third) + "\n\n"


def _tokenizer_block() -> str:
    return _TOKENIZER.format(template=repr(CHATML_TEMPLATE), eos=CHATML_EOS)


def _reader(train_file: str) -> str:
    ext = Path(train_file).suffix.lower()
    body = {
        ".jsonl": '    with open(path, encoding="utf-8-sig") as fh:\n'
        "        return [json.loads(line) for line in fh if line.strip()]\n",
        ".json": '    value = json.loads(Path(path).read_text(encoding="utf-8-sig"))\n'
        '    if isinstance(value, dict):  # a {"data": [...]} wrapper\n'
        "        value = next(v for v in value.values() if isinstance(v, list))\n"
        "    return value\n",
        ".csv": '    text = Path(path).read_text(encoding="utf-8-sig")\n'
        "    try:\n"
        '        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\\t")\n'
        "    except csv.Error:\n"
        "        dialect = csv.excel\n"
        "    return list(csv.DictReader(io.StringIO(text), dialect=dialect))\n",
        ".parquet": '    return load_dataset("parquet", data_files=path, split="train").to_list()\n',
        ".txt": "    # blocks separated by blank lines are one example each\n"
        "    blocks, block = [], []\n"
        '    for line in Path(path).read_text(encoding="utf-8-sig").splitlines() + [""]:\n'
        "        if line.strip():\n"
        "            block.append(line)\n"
        "        elif block:\n"
        '            blocks.append("\\n".join(block))\n'
        "            block = []\n"
        '    return [{"text": b} for b in blocks]\n',
    }.get(ext, '    return load_dataset(path, split="train").to_list()  # a hub dataset\n')
    return "\ndef read_rows(path):\n" + body + "\n"


_HEADER = """# {title}: a LoRA Pilot job as a standalone transformers + PEFT + TRL script.
#
# The same base model, data, conversion and settings the job trained with.
# Needs torch, transformers, peft, trl, datasets{needs}.
# Run: python this_file.py [OUTPUT_FOLDER]   (default: ./out)
{resolved}
"""

_SETTINGS = """BASE = {base!r}  # where the job loads the base model from
DATA = {train!r}  # the training data the job reads
EVAL_DATA = {eval!r}  # held-out rows, when the data comes with them
DATA_FORMAT = {fmt!r}  # auto | messages | alpaca | prompt_completion | text
COLUMNS = {columns!r}  # plan field -> your column name
EVAL_ROWS = {eval_rows!r}  # the rows of DATA (0-based, usable rows) the job held out
SEED = {seed!r}
OUT = sys.argv[1] if len(sys.argv) > 1 else "out"

DEVICE = {device!r}  # where the job ran
DTYPE = {dtype!r}  # the precision the job's `dtype` resolved to there
TORCH_DTYPE = {{"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}}[DTYPE]

"""

_TOKENIZER = """tokenizer = AutoTokenizer.from_pretrained(BASE)
if not tokenizer.chat_template:  # no template: ChatML, with its end-of-turn token as EOS
    missing = [t for t in ("<|im_start|>", "{eos}") if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({{"additional_special_tokens": missing}})
    tokenizer.chat_template = {template}
    tokenizer.eos_token = "{eos}"
if tokenizer.pad_token is None:
    tokenizer.pad_token = tokenizer.eos_token

"""

_CONVERT = '''
def field(row, name):
    return row.get(COLUMNS.get(name, name))


def layout(rows):
    """The data layout, voted on the first 20 rows."""
    votes = {}
    for row in rows[:20]:
        has = lambda name: COLUMNS.get(name, name) in row  # noqa: E731
        fmt = ("messages" if has("messages") or "conversations" in row else
               "alpaca" if has("instruction") and has("output") else
               "prompt_completion" if has("prompt") and has("completion") else "text" if has("text") else None)
        if fmt:
            votes[fmt] = votes.get(fmt, 0) + 1
    return max(votes, key=votes.get)


def to_messages(row, fmt):
    if fmt == "messages":
        raw = field(row, "messages") if field(row, "messages") is not None else row.get("conversations")
        raw = json.loads(raw) if isinstance(raw, str) else raw
        roles = {"human": "user", "gpt": "assistant", "model": "assistant"}
        return [{"role": m.get("role") or roles.get(str(m.get("from", "")).lower(), m.get("from")),
                 "content": m.get("content", m.get("value"))} for m in raw]
    if fmt == "alpaca":
        extra = str(field(row, "input") or "")
        prompt = str(field(row, "instruction")) + ("\\n\\n" + extra if extra.strip() else "")
        answer = str(field(row, "output"))
    else:
        prompt, answer = str(field(row, "prompt")), str(field(row, "completion"))
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    system = field(row, "system")
    if isinstance(system, str) and system.strip():
        messages.insert(0, {"role": "system", "content": system})
    return messages


def ends_with_eos(text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    while ids and ids[-1] != tokenizer.eos_token_id and not tokenizer.decode([ids[-1]]).strip():
        ids = ids[:-1]
    return bool(ids) and ids[-1] == tokenizer.eos_token_id


def render(messages, add_generation_prompt=False):
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


# A template that ends answers with EOS trains on the messages themselves (TRL applies it and
# takes the loss on the answer); otherwise the strings are rendered here with EOS appended.
AS_STRINGS = not ends_with_eos(render([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]))


def to_example(row, fmt):
    if fmt == "text":
        text = str(field(row, "text"))
        return {"text": text if text.endswith(tokenizer.eos_token) else text + tokenizer.eos_token}
    messages = to_messages(row, fmt)
    if not AS_STRINGS:
        return {"prompt": messages[:-1], "completion": messages[-1:]}
    prompt = render(messages[:-1], add_generation_prompt=True)
    full = render(messages)
    completion = full[len(prompt):].rstrip() if full.startswith(prompt) else messages[-1]["content"]
    if not completion.endswith(tokenizer.eos_token):
        completion += tokenizer.eos_token
    ids = tokenizer("a")["input_ids"]
    if tokenizer.bos_token and prompt.startswith(tokenizer.bos_token) and ids and ids[0] == tokenizer.bos_token_id:
        prompt = prompt[len(tokenizer.bos_token):]  # the tokenizer adds it again
    return {"prompt": prompt, "completion": completion}

'''

_SPLIT = """rows = read_rows(DATA)
fmt = layout(rows) if DATA_FORMAT == "auto" else DATA_FORMAT
examples = [to_example(row, fmt) for row in rows]
if EVAL_DATA:
    train_rows, eval_rows = examples, [to_example(row, "messages") for row in read_rows(EVAL_DATA)]
else:
    eval_rows = [examples[i] for i in EVAL_ROWS]
    train_rows = [e for i, e in enumerate(examples) if i not in set(EVAL_ROWS)]
train_data = Dataset.from_list(train_rows)
eval_data = Dataset.from_list(eval_rows) if eval_rows else None

"""

_EARLY_STOP = '''

class EarlyStop(TrainerCallback):
    """Stop after {patience} evaluations in a row that do not beat the best held-out loss by
    {min_gain:.0%} of it (at least {min_gain_abs}); the trainer then loads the best checkpoint."""

    best, flat = None, 0

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        loss = (metrics or {{}}).get("eval_loss")
        if loss is None:
            return
        if self.best is None or loss < self.best - max({min_gain_abs}, {min_gain} * self.best):
            self.best, self.flat = loss, 0
        else:
            self.flat += 1
        if self.flat >= {patience} and state.global_step < state.max_steps:
            control.should_training_stop = True

'''

_RUN = """
set_seed(SEED)  # the adapters' initial weights: the job seeds here too
trainer = SFTTrainer(model=model, args=args, train_dataset=train_data, eval_dataset=eval_data,
                     processing_class=tokenizer{peft}{callbacks})
trainer.train()
trainer.save_model(OUT)
tokenizer.save_pretrained(OUT)
print(f"saved to {{OUT}}")
"""


def _model_block(plan: TrainingPlan, attention: str) -> str:
    # engine.train.run.load_base, spelled out for this plan's method
    if plan.method == "qlora":
        nf4 = dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)
        dtype = (
            "dtype=TORCH_DTYPE,\n    quantization_config=BitsAndBytesConfig(\n"
            + _kwargs(nf4, " " * 8)
            + "        bnb_4bit_compute_dtype=TORCH_DTYPE),\n"
            + '    device_map={"": 0 if DEVICE == "cuda" else "cpu"},'
        )
    elif plan.method == "full":  # fp16 gradients cannot be unscaled: fp32 master weights, autocast to fp16
        dtype = 'dtype=torch.float32 if DTYPE == "fp16" else TORCH_DTYPE,'
    else:
        dtype = "dtype=TORCH_DTYPE,"
    out = (
        f"model = AutoModelForCausalLM.from_pretrained(\n    BASE, attn_implementation={attention!r},\n"
        f"    {dtype}\n)\nmodel.config.use_cache = False\n"
    )
    if plan.method == "qlora":
        out += (
            f"model = prepare_model_for_kbit_training(model, use_gradient_checkpointing={plan.grad_ckpt},\n"
            '                                        gradient_checkpointing_kwargs={"use_reentrant": False})\n'
        )
    return out + "\n"

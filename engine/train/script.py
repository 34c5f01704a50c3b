"""A plan as code: its YAML, the equivalent `python app.py train` command, a standalone script.

The script is for people who leave the app: plain transformers + PEFT + TRL + datasets,
no LoRA Pilot import. It trains what the app trains: the base from the folder the job
loads it from, the job's own data file, the rows converted as engine.data does (chat
layouts to prompt/completion pairs through the model's template, ChatML when it has
none; plain text with EOS), the same held-out split, and the LoraConfig / SFTConfig
keywords of engine.train.config printed as literals.
"""

from __future__ import annotations

import pprint
import shlex
from pathlib import Path

from engine.data.chat import CHATML_EOS, CHATML_TEMPLATE
from engine.data.ref import DatasetRef
from engine.errors import UserError
from engine.estimate import hardware
from engine.plan import TrainingPlan
from engine.train import config, preference

FORMATS = ("python", "yaml", "cli")


def plan_yaml(plan: TrainingPlan) -> str:
    return plan.to_yaml()


def cli_command(plan: TrainingPlan) -> str:
    """One flag per line, shell-continued, so a long plan stays readable and copy-pasteable."""
    parts: list[str] = []
    for arg in plan.to_cli_args():
        if arg.startswith("--") or not parts:
            parts.append(shlex.quote(arg))
        else:
            parts[-1] += " " + shlex.quote(arg)
    return " \\\n  ".join(["python app.py train", *parts])


def render(plan: TrainingPlan, kind: str) -> str:
    """The plan as `kind` (python | yaml | cli)."""
    if kind == "yaml":
        return plan_yaml(plan)
    if kind == "cli":
        return cli_command(plan)
    if kind == "python":
        return python_script(plan)
    raise UserError("as", f"got {kind!r}; accepted: {', '.join(FORMATS)}")


# --- the standalone script ---------------------------------------------------------------
def data_files(plan: TrainingPlan) -> tuple[str, str | None]:
    """(training data, held-out data or None): the files (or hub id) the job reads."""
    if not plan.dataset:
        raise UserError("dataset", "the plan names no training data; give a file, a hub dataset id or demo:NAME")
    ref = DatasetRef.parse(plan.dataset)
    if ref.is_demo:
        from engine.data import demo

        return str(demo.dataset_path(ref.skill, "train")), str(demo.dataset_path(ref.skill, "test"))
    path = Path(ref.source).expanduser()
    return (str(path.resolve()) if path.exists() else ref.source), None


def python_script(plan: TrainingPlan) -> str:
    from engine.train.run import model_source

    train_file, eval_file = data_files(plan)
    has_eval = plan.eval_split > 0
    eval_file = eval_file if has_eval else None
    eval_split = plan.eval_split if eval_file is None else 0.0
    lora = config.lora_kwargs(plan) if plan.method != "full" else None
    sft = config.sft_kwargs(plan, "OUT", has_eval)
    del sft["output_dir"]  # the script's own argument
    title = " ".join((plan.name or f"{plan.method} on {DatasetRef.parse(plan.dataset).stem}").split())
    parts = [
        _HEADER.format(title=title, needs=", bitsandbytes" if plan.method == "qlora" else ""),
        _imports(plan, train_file),
        _SETTINGS.format(base=model_source(plan.model), train=train_file, eval=eval_file,
                         fmt=plan.data_format, columns=dict(plan.columns), eval_split=eval_split, seed=plan.seed,
                         device=_device_line(plan), dtype=_dtype_lines(plan)),
        _tokenizer_block(),
        _reader(train_file),
        _CONVERT,
        _model_block(plan),
        _SPLIT,
        ("peft_config = LoraConfig(\n" + _kwargs(lora) + ")\n\n") if lora else "",
        "args = SFTConfig(\n    output_dir=str(Path(OUT) / \"checkpoints\"),\n" + _kwargs(sft)
        + "    bf16=DTYPE == \"bf16\", fp16=DTYPE == \"fp16\", use_cpu=DEVICE == \"cpu\",\n)\n",
        _RUN.format(peft=", peft_config=peft_config" if lora else ""),
    ]
    if plan.objective != "sft":  # dpo/orpo: pairs and TRL's pair trainer (engine.train.preference)
        parts.insert(parts.index(_SPLIT), preference.SCRIPT_PAIRS)
        parts[-2:] = [preference.script_run(plan, has_eval, peft=lora is not None)]
    return "".join(parts)


def _kwargs(values: dict, indent: str = "    ") -> str:
    return "".join(f"{indent}{k}={pprint.pformat(v, width=100, compact=True)},\n" for k, v in values.items())


def _device_line(plan: TrainingPlan) -> str:
    if (plan.gpu or "").strip().lower() == "cpu":
        return 'DEVICE = "cpu"  # the plan asks for the CPU'
    return 'DEVICE = "cuda" if torch.cuda.is_available() else "cpu"'


def _dtype_lines(plan: TrainingPlan) -> str:
    # engine.plan.resolve_dtype, spelled out
    if plan.dtype != "auto":
        return f"DTYPE = {plan.dtype!r}"
    return 'DTYPE = "fp32" if DEVICE == "cpu" else "bf16" if torch.cuda.is_bf16_supported() else "fp16"'


def _imports(plan: TrainingPlan, train_file: str) -> str:
    csv = ["import csv", "import io"] if Path(train_file).suffix.lower() == ".csv" else []
    std = [*csv, "import json", "import random", "import sys", "from pathlib import Path"]
    peft = {"qlora": "from peft import LoraConfig, prepare_model_for_kbit_training",
            "lora": "from peft import LoraConfig"}.get(plan.method)
    third = ["import torch", "from datasets import Dataset, load_dataset", *([peft] if peft else []),
             "from transformers import AutoModelForCausalLM, AutoTokenizer"
             + (", BitsAndBytesConfig" if plan.method == "qlora" else ""),
             "from trl import SFTConfig, SFTTrainer"]
    return "\n".join(std) + "\n\n" + "\n".join(third) + "\n\n"


def _tokenizer_block() -> str:
    return _TOKENIZER.format(template=repr(CHATML_TEMPLATE), eos=CHATML_EOS)


def _reader(train_file: str) -> str:
    ext = Path(train_file).suffix.lower()
    body = {
        ".jsonl": '    with open(path, encoding="utf-8-sig") as fh:\n'
                  "        return [json.loads(line) for line in fh if line.strip()]\n",
        ".json": '    value = json.loads(Path(path).read_text(encoding="utf-8-sig"))\n'
                 "    if isinstance(value, dict):  # a {\"data\": [...]} wrapper\n"
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


_HEADER = '''# {title}: a LoRA Pilot plan as a standalone transformers + PEFT + TRL script.
#
# The same base model, data, conversion and settings the app trains with.
# Needs torch, transformers, peft, trl, datasets{needs}.
# Run: python this_file.py [OUTPUT_FOLDER]   (default: ./out)

'''

_SETTINGS = '''BASE = {base!r}  # where the job loads the base model from
DATA = {train!r}  # the training data the job reads
EVAL_DATA = {eval!r}  # held-out rows, when the data comes with them
DATA_FORMAT = {fmt!r}  # auto | messages | alpaca | prompt_completion | text
COLUMNS = {columns!r}  # plan field -> your column name
EVAL_SPLIT = {eval_split!r}  # share of DATA held out for eval loss
SEED = {seed!r}
OUT = sys.argv[1] if len(sys.argv) > 1 else "out"

{device}
{dtype}
TORCH_DTYPE = {{"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}}[DTYPE]

'''

_TOKENIZER = '''tokenizer = AutoTokenizer.from_pretrained(BASE)
if not tokenizer.chat_template:  # no template: ChatML, with its end-of-turn token as EOS
    missing = [t for t in ("<|im_start|>", "{eos}") if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({{"additional_special_tokens": missing}})
    tokenizer.chat_template = {template}
    tokenizer.eos_token = "{eos}"
if tokenizer.pad_token is None:
    tokenizer.pad_token = tokenizer.eos_token

'''

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

_SPLIT = '''rows = read_rows(DATA)
fmt = layout(rows) if DATA_FORMAT == "auto" else DATA_FORMAT
examples = [to_example(row, fmt) for row in rows]
if EVAL_DATA:
    train_rows, eval_rows = examples, [to_example(row, "messages") for row in read_rows(EVAL_DATA)]
elif EVAL_SPLIT > 0:  # the same rows as the app holds out: shuffled with the plan's seed
    order = list(range(len(examples)))
    random.Random(SEED).shuffle(order)
    n_eval = min(len(examples) - 1, max(1, round(len(examples) * EVAL_SPLIT)))
    eval_rows = [examples[i] for i in sorted(order[:n_eval])]
    train_rows = [examples[i] for i in sorted(order[n_eval:])]
else:
    train_rows, eval_rows = examples, []
train_data = Dataset.from_list(train_rows)
eval_data = Dataset.from_list(eval_rows) if eval_rows else None

'''

_RUN = '''trainer = SFTTrainer(model=model, args=args, train_dataset=train_data, eval_dataset=eval_data,
                     processing_class=tokenizer{peft})
trainer.train()
trainer.save_model(OUT)
tokenizer.save_pretrained(OUT)
print(f"saved to {{OUT}}")
'''


def _model_block(plan: TrainingPlan) -> str:
    # engine.train.run.load_base, spelled out for this plan's method
    if plan.method == "qlora":
        nf4 = dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)
        dtype = ("dtype=TORCH_DTYPE,\n    quantization_config=BitsAndBytesConfig(\n" + _kwargs(nf4, " " * 8)
                 + "        bnb_4bit_compute_dtype=TORCH_DTYPE),\n"
                 + '    device_map={"": 0 if DEVICE == "cuda" else "cpu"},')
    elif plan.method == "full":  # fp16 gradients cannot be unscaled: fp32 master weights, autocast to fp16
        dtype = 'dtype=torch.float32 if DTYPE == "fp16" else TORCH_DTYPE,'
    else:
        dtype = "dtype=TORCH_DTYPE,"
    attention = hardware.attention_to_load(plan.attention)
    out = (f"model = AutoModelForCausalLM.from_pretrained(\n    BASE, attn_implementation={attention!r},\n"
           f"    {dtype}\n)\nmodel.config.use_cache = False\n")
    if plan.method == "qlora":
        out += (f"model = prepare_model_for_kbit_training(model, use_gradient_checkpointing={plan.grad_ckpt},\n"
                '                                        gradient_checkpointing_kwargs={"use_reentrant": False})\n')
    return out + "\n"

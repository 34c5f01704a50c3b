"""Export a plan as code: YAML, the equivalent CLI command, and a transformers + PEFT + TRL script.

YAML and flags come from the plan itself (`to_yaml`, `to_cli_args`); the script is a
readable template of the same recipe the trainer runs, for people who leave the app.
"""

from __future__ import annotations

import shlex

from engine.plan import TrainingPlan

_TARGETS = {"all-linear": '"all-linear"',
            "attention": '["q_proj", "k_proj", "v_proj", "o_proj"]',
            "mlp": '["gate_proj", "up_proj", "down_proj"]'}


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


def python_snippet(plan: TrainingPlan) -> str:
    model = "HuggingFaceTB/SmolLM2-135M-Instruct" if plan.model == "default" else plan.model
    targets = _TARGETS.get(plan.targets, repr(plan.target_list))
    data = plan.dataset or "data.jsonl"
    if data.startswith("demo:"):
        data_line = f'# {data} is built in; `python app.py demo` writes it as JSONL\ndata = load_dataset("json", data_files="train.jsonl")["train"]'
    elif data.endswith((".jsonl", ".json")):
        data_line = f'data = load_dataset("json", data_files={data!r})["train"]'
    elif data.endswith((".csv", ".parquet")):
        data_line = f'data = load_dataset({data.rsplit(".", 1)[1]!r}, data_files={data!r})["train"]'
    else:
        data_line = f'data = load_dataset({data!r})["train"]'
    quant = ""
    load_kw = ""
    if plan.method == "qlora":
        quant = ("bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=\"nf4\",\n"
                 "                         bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)\n")
        load_kw = ", quantization_config=bnb"
    peft = "" if plan.method == "full" else (
        f"peft_config = LoraConfig(r={plan.r}, lora_alpha={plan.alpha:g}, lora_dropout={plan.dropout:g},\n"
        f"                         target_modules={targets}, bias={plan.bias!r}, use_dora={plan.use_dora},\n"
        f"                         use_rslora={plan.use_rslora}, task_type=\"CAUSAL_LM\")\n")
    steps = f"max_steps={plan.max_steps}" if plan.max_steps else f"num_train_epochs={plan.epochs:g}"
    return f'''import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer{", BitsAndBytesConfig" if quant else ""}
from trl import SFTConfig, SFTTrainer

{quant}tokenizer = AutoTokenizer.from_pretrained({model!r})
model = AutoModelForCausalLM.from_pretrained({model!r}{load_kw})
{data_line}

{peft}args = SFTConfig(
    output_dir="out", {steps}, per_device_train_batch_size={plan.batch_size},
    gradient_accumulation_steps={plan.grad_accum}, learning_rate={plan.learning_rate:g},
    lr_scheduler_type={plan.lr_scheduler!r}, warmup_ratio={plan.warmup_ratio:g},
    max_length={plan.seq_len}, gradient_checkpointing={plan.grad_ckpt}, optim={plan.optimizer!r},
    logging_steps={plan.logging_steps}, save_steps={plan.save_steps}, seed={plan.seed},
)
trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer{", peft_config=peft_config" if peft else ""})
trainer.train()
trainer.save_model("out/adapter")
'''

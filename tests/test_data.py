"""Data loading, format detection, check_data, build_datasets and the check-data CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.data import dataset, formats
from engine.errors import UserError
from engine.plan import TrainingPlan
from tests.tiny import make_tiny_model

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tok(tiny):
    return dataset.load_tokenizer(str(tiny))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ALPACA = [{"instruction": f"Say {i}", "input": "", "output": f"number {i}"} for i in range(10)]


# --- reading files ----------------------------------------------------------------------------
def test_reads_every_file_type_to_the_same_records(tmp_path):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(4)]
    write_jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "d.csv").write_text("prompt,completion\n" + "".join(f"q{i},a{i}\n" for i in range(4)))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for ext in ("jsonl", "json", "csv", "parquet"):
        assert dataset.load_records(str(tmp_path / f"d.{ext}")) == rows, ext
        assert formats.detect_format(rows) == "prompt_completion"


def test_txt_is_one_example_per_block(tmp_path):
    (tmp_path / "t.txt").write_text("first doc\nstill first\n\nsecond doc\n")
    assert dataset.load_records(str(tmp_path / "t.txt")) == [
        {"text": "first doc\nstill first"},
        {"text": "second doc"},
    ]


@pytest.mark.parametrize(
    "content, expected",
    [
        (b'{"prompt": "a", "completion": "b"}\n{"prompt": "a" "completion": "b"}\n', ["bad.jsonl", "line 2", "JSON"]),
        (b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9"}\n', ["bad.jsonl", "line 2", "UTF-8"]),
        (b"\x00\x01\x02binary\x00", ["bad.jsonl", "binary"]),
        (b"  \n\n", ["bad.jsonl", "empty"]),
        (b"[1, 2]\n", ["bad.jsonl", "line 1", "object"]),
    ],
)
def test_unreadable_files_name_file_and_line(tmp_path, content, expected):
    (tmp_path / "bad.jsonl").write_bytes(content)
    with pytest.raises(UserError) as err:
        dataset.load_records(str(tmp_path / "bad.jsonl"))
    for word in expected:
        assert word in str(err.value)


def test_missing_file_unknown_type_and_offline_hub(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        dataset.load_records(str(tmp_path / "nope.jsonl"))
    (tmp_path / "x.xlsx").write_text("a")
    with pytest.raises(UserError, match="accepted"):
        dataset.load_records(str(tmp_path / "x.xlsx"))
    with pytest.raises(UserError, match="could not load hub dataset 'someone/not-here'"):
        dataset.load_records("someone/not-here")


# --- formats -----------------------------------------------------------------------------------
def test_detects_formats_and_honours_column_mapping():
    assert formats.detect_format([{"messages": [{"role": "user", "content": "x"}]}]) == "messages"
    assert formats.detect_format([{"conversations": [{"from": "human", "value": "x"}]}]) == "messages"
    assert formats.detect_format(ALPACA) == "alpaca"
    assert formats.detect_format([{"text": "x"}]) == "text"
    mapped = [{"question": "q", "answer": "a"}]
    assert formats.detect_format(mapped, {"instruction": "question", "output": "answer"}) == "alpaca"
    assert formats.to_messages(mapped[0], "alpaca", {"instruction": "question", "output": "answer"}) == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]
    with pytest.raises(UserError, match="question, answer.*accepted"):
        formats.detect_format(mapped)


def test_alpaca_input_and_sharegpt_roles_convert():
    msgs = formats.to_messages({"instruction": "Translate", "input": "hello", "output": "bonjour"}, "alpaca")
    assert msgs[0]["content"] == "Translate\n\nhello" and msgs[1] == {"role": "assistant", "content": "bonjour"}
    conv = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    assert formats.to_messages(conv, "messages") == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
    ]


# --- check_data ----------------------------------------------------------------------------------
def test_check_data_reports_rows_stats_and_eos(tmp_path, tiny):
    path = write_jsonl(tmp_path / "a.jsonl", ALPACA + [ALPACA[3]])
    report = dataset.check_data(str(path), model=str(tiny), seq_len=64)
    assert report.ok and report.format == "alpaca" and report.rows == 11
    assert report.duplicate_rows == 1
    assert any(p.row == 11 and p.level == "warning" and "line 4" in p.message for p in report.problems)
    assert len(report.token_lengths) == 11 and report.stats["max"] >= report.stats["min"] > 0
    assert sum(report.histogram["counts"]) == 11
    assert report.truncated_share == 0
    assert report.eos_ok and "<|im_end|>" in report.eos_message
    assert report.examples[0].startswith("<|im_start|>user\nSay 0")
    # the loss is on the answers only: their tokens (and end of turn) over all tokens
    tok = __import__("transformers").AutoTokenizer.from_pretrained(str(tiny))
    answers = sum(len(tok(r["output"], add_special_tokens=False)["input_ids"]) + 1 for r in ALPACA + [ALPACA[3]])
    assert report.label_share == round(answers / sum(report.token_lengths), 4) and 0 < report.label_share < 1


def test_check_data_row_problems_name_row_and_field(tmp_path, tiny):
    rows = ALPACA[:3] + [{"instruction": "x", "input": ""}, {"instruction": "y", "output": "   "}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(UserError):
        dataset.check_data(str(path), model=str(tiny), data_format="prompt_completion").raise_if_bad()
    report = dataset.check_data(str(path), model=str(tiny), data_format="alpaca")
    assert not report.ok and report.empty_rows == 1
    errors = {(p.row, p.field) for p in report.errors()}
    assert (4, "output") in errors and (5, "output") in errors
    with pytest.raises(UserError, match=r"p.jsonl line 4: output: is missing.*instruction, output"):
        report.raise_if_bad()


def test_check_data_truncation_and_too_few_rows(tmp_path, tiny):
    path = write_jsonl(tmp_path / "a.jsonl", ALPACA)
    report = dataset.check_data(str(path), model=str(tiny), seq_len=4)
    assert report.truncated_share == 1.0 and not report.ok
    assert report.errors()[0].field == "seq_len" and "every example is longer" in report.errors()[0].message
    one = write_jsonl(tmp_path / "one.jsonl", ALPACA[:1])
    with pytest.raises(UserError, match="at least 2"):
        dataset.check_data(str(one), model=str(tiny)).raise_if_bad()


def test_text_format_gets_eos_appended(tmp_path, tiny):
    (tmp_path / "t.txt").write_text("one story\n\nanother story\n")
    report = dataset.check_data(str(tmp_path / "t.txt"), model=str(tiny))
    assert report.ok and report.format == "text" and report.examples[0].endswith("<|im_end|>")


def test_template_without_eos_gets_string_pairs_ending_in_eos(tmp_path, tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    # A template whose turns end with a newline only: the tuned model would never stop.
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    path = write_jsonl(tmp_path / "a.jsonl", ALPACA)
    report = dataset.check_data(str(path), tokenizer=tok)
    assert report.eos_ok and "appended" in report.eos_message
    train, _ = dataset.build_datasets(TrainingPlan.build(dataset=str(path), eval_split=0), tok)
    assert train[0] == {"prompt": "user: Say 0\nassistant: ", "completion": "number 0<|im_end|>"}


# --- build_datasets ------------------------------------------------------------------------------
def test_build_datasets_split_and_trl_accepts_them(tmp_path, tiny, tok):
    path = write_jsonl(tmp_path / "a.jsonl", ALPACA)
    plan = TrainingPlan.build(model=str(tiny), dataset=str(path), eval_split=0.2, seq_len=64)
    train, ev = dataset.build_datasets(plan, tok)
    assert len(train) == 8 and len(ev) == 2
    assert train[0]["prompt"][-1]["role"] == "user" and train[0]["completion"][0]["role"] == "assistant"
    again, _ = dataset.build_datasets(plan, tok)
    assert again.to_list() == train.to_list()  # the split is seeded

    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    model = AutoModelForCausalLM.from_pretrained(tiny)
    args = SFTConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=1,
        per_device_train_batch_size=2,
        max_length=64,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=ev, processing_class=tok)
    row = trainer.train_dataset[0]
    answer = [t for t, lab in zip(row["input_ids"], row["labels"]) if lab != -100]
    # Loss on the answer only, and the answer includes EOS: the model learns to stop.
    assert tok.decode(answer).startswith("number 0<|im_end|>")
    assert tok.eos_token_id in answer
    trainer.train()


def test_build_datasets_rejects_bad_rows_and_no_dataset(tmp_path, tok):
    path = write_jsonl(tmp_path / "a.jsonl", ALPACA[:3] + [{"instruction": "x"}])
    with pytest.raises(UserError, match="a.jsonl line 4: output"):
        dataset.build_datasets(TrainingPlan.build(dataset=str(path)), tok)
    with pytest.raises(UserError, match="no training data"):
        dataset.build_datasets(TrainingPlan.build(), tok)


def test_build_datasets_demo_uses_its_own_test_split(tok):
    from engine.data import demo

    train, ev = dataset.build_datasets(TrainingPlan.build(dataset="demo:isodate"), tok)
    assert len(train) == demo.TRAIN_ROWS and len(ev) == demo.TEST_ROWS


# --- CLI ------------------------------------------------------------------------------------------
def run_cli(*args):
    return subprocess.run(
        [sys.executable, "app.py", "check-data", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_cli_check_data_human_json_and_errors(tmp_path, tiny):
    good = write_jsonl(tmp_path / "good.jsonl", ALPACA)
    out = run_cli(str(good), "--model", str(tiny), "--seq-len", "64")
    assert out.returncode == 0, out.stderr
    assert "format:     alpaca" in out.stdout and "histogram" in out.stdout and "#" in out.stdout

    out = run_cli(str(good), "--model", str(tiny), "--json")
    report = json.loads(out.stdout)
    assert out.returncode == 0 and report["ok"] and report["rows"] == 10 and report["format"] == "alpaca"
    assert {"problems", "truncated_share", "histogram", "stats", "eos_ok", "examples"} <= set(report)

    bad = write_jsonl(tmp_path / "bad.jsonl", ALPACA[:3] + [{"instruction": "x"}])
    out = run_cli(str(bad), "--model", str(tiny))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "error: dataset: bad.jsonl line 4: output" in out.stderr

    mapped = write_jsonl(tmp_path / "m.jsonl", [{"q": f"q{i}", "a": f"a{i}"} for i in range(3)])
    out = run_cli(str(mapped), "--model", str(tiny), "--columns", "prompt=q,completion=a", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["format"] == "prompt_completion"

    (tmp_path / "bin.csv").write_bytes(b"\x00\xff\x00")
    out = run_cli(str(tmp_path / "bin.csv"), "--model", str(tiny))
    assert out.returncode == 2 and "binary" in out.stderr and "Traceback" not in out.stderr
    out = run_cli(str(tmp_path / "bin.csv"), "--json")
    assert out.returncode == 2 and json.loads(out.stdout)["error"]["field"] == "dataset"

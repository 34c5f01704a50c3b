"""A data check that fails stops the wizard at step 2, naming the row; nothing downstream reasons
about data that cannot train (issue 21, section 2). The browser half is in test_browser_data_gate.py."""

from __future__ import annotations

import pytest

from engine.data.dataset import check_data
from engine.errors import UserError
from tests.tiny import make_tiny_model
from ui.web import steps, wizard


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(make_tiny_model(tmp_path_factory.mktemp("gate") / "tiny"))


def test_too_few_rows_names_the_rows_there_are_not_row_none(tiny, tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("Just one line of text.\n")
    report = check_data(str(one), model=tiny)
    problem = report.errors()[0]
    assert problem.where(report.row_unit) == "the whole file"
    assert problem.message.startswith("has 1 example (line 1); at least 2 are needed")
    with pytest.raises(UserError, match=r"^dataset: one.txt: rows: has 1 example \(line 1\)"):
        report.raise_if_bad()


def test_a_failed_check_leaves_no_data_for_the_later_steps(tiny, tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("Just one line of text.\n")
    view = steps.check_data_view("upload", None, str(one), tiny)
    assert (view["dataset"], view["rows"], view["ok"]) == (None, None, False)
    assert "First: the whole file, rows: has 1 example (line 1)" in view["summary"]
    assert "None" not in view["summary"]
    # Review, reached by its tab, says what is missing instead of reasoning about 1 example
    with pytest.raises(UserError, match="no data has passed its check yet"):
        wizard.context_from(tiny, "simple", view["dataset"], view["rows"], "cpu", None, None, None)


def test_a_row_problem_is_named_by_its_line(tiny, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"text": ""}\n{"text": "c"}\n')
    view = steps.check_data_view("upload", None, str(bad), tiny)
    assert view["dataset"] is None and "First: line 2, text: is empty" in view["summary"]

"""The README's "What happens on bad input" table is the sweep's own list (tests/bad_inputs.py)."""

from bad_inputs import BAD_INPUTS, CASES, TABLE_END, TABLE_START, readme_table
from markdown_blocks import REPO


def test_readme_table_is_generated_from_the_sweep():
    text = (REPO / "README.md").read_text()
    assert TABLE_START in text and TABLE_END in text, "README lacks the bad-input table"
    table = text[text.index(TABLE_START) : text.index(TABLE_END) + len(TABLE_END)]
    assert table == readme_table(), "out of date: regenerate with python tests/bad_inputs.py"


def test_every_case_names_a_listed_bad_input_and_no_case_is_repeated():
    assert {c.bad_input for c in CASES} == set(BAD_INPUTS)
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))

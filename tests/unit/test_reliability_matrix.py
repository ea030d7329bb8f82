"""The reliability matrix (docs/reliability.md) and the tests marked as its rows stay in step."""

from __future__ import annotations

from tests import reliability_matrix as matrix


def test_the_doc_lists_exactly_the_marked_tests() -> None:
    """Every test marked `reliability` has its row in the doc, and every row there a test."""
    rows = matrix.scan()
    assert rows, "no test is marked reliability"
    listed = matrix.documented(matrix.DOC.read_text(encoding="utf-8"))
    assert listed == rows, "run `python -m tests.reliability_matrix --write` after a test run"


def test_rows_render_their_figures_and_outcome() -> None:
    """A row shows its figures with bounds, and a test that did not run says so."""
    rows = [
        matrix.Row("1.1", "router killed", "tests/e2e/test_a.py::test_a"),
        matrix.Row("4.2", "slow body", "tests/e2e/test_b.py::test_b"),
    ]
    found = {
        "tests/e2e/test_a.py::test_a": [
            {
                "outcome": "passed",
                "figures": [
                    {"name": "lost", "value": 0, "unit": "", "bound": 0},
                    {"name": "p99", "value": 12.5, "unit": "ms", "bound": None},
                ],
            }
        ]
    }
    text = matrix.render(rows, found, "run line")
    assert "| 1.1 | router killed | lost 0 (bound 0); p99 12.5 ms | passed |" in text
    assert "| 4.2 | slow body | — | not run |" in text
    assert "### 2. Backends failing\n\nNo test yet." in text
    assert matrix.documented(text) == rows

"""tools/compare_runs.py: the record-by-record comparison that checks a refactoring keeps every logged number."""

import os
import sys

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "tools"))
import compare_runs  # noqa: E402


def test_only_identical_numbers_pass():
    base = [{"step": 101, "critic_loss": 0.25, "q_data": 1.0}, {"step": 202, "critic_loss": 0.125, "eval/score": 3.5}]
    assert compare_runs.differences(base, [dict(r) for r in base]) == []
    changed = [dict(r) for r in base]
    changed[1]["eval/score"] = 3.5 + 2**-40  # one bit in the last places of a float64
    assert compare_runs.differences(base, changed) == ["step 202 eval/score: 3.5 (base) vs 3.5000000000009095 (this)"]
    missing = [base[0], {"step": 202, "critic_loss": 0.125}]
    assert compare_runs.differences(base, missing) == ["step 202 eval/score: 3.5 (base) vs None (this)"]
    assert compare_runs.differences(base, base[:1])[0].startswith("logged steps differ")

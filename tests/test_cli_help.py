"""Every command line of the project (the scripts, sweep.py, the toy study, benchmark/ and tools/) prints each flag's
help as one paragraph that the terminal wraps: no line ends before the width does. tyro keeps a docstring's source
line break when the next line is indented, so a field docstring spread over two source lines breaks the help there."""

import glob
import importlib
import os
import sys

import pytest
import tyro

from conftest import ROOT

sys.path[:0] = [os.path.join(ROOT, "benchmark"), os.path.join(ROOT, "tools")]
CLIS = ["ofql", "dql", "fql", "sweep", "toy_meanflow"]
for path in sorted(glob.glob(os.path.join(ROOT, "benchmark", "*.py")) + glob.glob(os.path.join(ROOT, "tools", "*.py"))):
    with open(path) as file:
        if "tyro.cli(Args" in file.read():
            CLIS.append(os.path.relpath(path, ROOT)[:-3])


def help_rows(cli, capsys, monkeypatch, columns):
    """The lines of `cli --help` printed `columns` wide, from the -h flag's on, without a box's borders (on a
    terminal; the captured output has none)."""
    monkeypatch.setenv("COLUMNS", str(columns))
    module = importlib.import_module(cli.split("/")[-1])
    with pytest.raises(SystemExit):
        tyro.cli(module.Args, args=["--help"], description=module.__doc__)
    rows = [line.removeprefix("│").removesuffix("│") for line in capsys.readouterr().out.splitlines()]
    return rows[next(i for i, row in enumerate(rows) if "-h, --help" in row) :]


def early_breaks(rows):
    """Pairs of help lines of one flag where the first ended although the second's first word fitted after it."""
    column = rows[0].index("show this help")
    width = len(rows[0]) - column  # every row is padded to the help's width
    breaks = []
    for above, below in zip(rows, rows[1:]):
        continues = below[column:].strip() and not below[:column].strip()  # not a new flag, not blank
        spills = above[:column].strip() and above[column - 2 : column] != "  "  # a flag wider than its column
        end = above[column:].rstrip()
        if continues and end and not spills and len(end) + 1 + len(below.split()[0]) <= width:
            breaks.append((end, below.strip()))
    return breaks


def test_the_break_detector_tells_a_wrap_from_a_source_line_break():
    def box(*rows):  # a help column 16 wide, from column 12
        return [row.ljust(28) for row in rows]

    assert early_breaks(box("-h, --help  show this help", "--seed INT  one two three", "            four")) == []
    broken = box("-h, --help  show this help", "--seed INT  one two three", "            to")
    assert early_breaks(broken) == [("one two three", "to")]
    assert early_breaks(box("-h, --help  show this help", "--a-long-flag {None}|STR", "            to")) == []
    assert early_breaks(box("-h, --help  show this help", "--flag, --no-flag", "            to")) == []


@pytest.mark.parametrize("columns", [100, 160])
@pytest.mark.parametrize("cli", CLIS)
def test_each_flags_help_is_one_paragraph(cli, columns, capsys, monkeypatch):
    rows = help_rows(cli, capsys, monkeypatch, columns)
    assert len(rows) > 5
    assert early_breaks(rows) == []

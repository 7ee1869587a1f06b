"""README stays true: the main job's command, as README gives it, prints the lines README quotes (issue 24, item 7)."""

import re
import shlex

from conftest import REPO

from pyro_sparse.cli import main

README = (REPO / "README.md").read_text()


def _main_job() -> list[str]:
    """The arguments of the ``pyro-sparse train`` command in README's set-up line."""
    line = next(ln for ln in README.splitlines() if "pip install" in ln and "pyro-sparse train" in ln)
    return shlex.split(line[line.index("pyro-sparse train"):])[2:]


def _quoted() -> list[str]:
    """The lines README quotes below "The main job prints"."""
    text = README[README.index("The main job prints"):]
    block = text[text.index("```\n") + 4:]
    return block[:block.index("```")].strip().splitlines()


def _timeless(line: str) -> str:
    return re.sub(r", \d+ s\]$", ", N s]", line)


def test_main_job_prints_what_readme_quotes(tmp_path, capsys):
    args = _main_job()
    assert args[:2] == ["--method", "svd"] and "--out" in args
    args[args.index("--out") + 1] = str(tmp_path / "run")
    assert main(["train", *args, "--no-latency"]) == 0  # (the latency measurement changes no printed number)
    printed = capsys.readouterr().out.strip().splitlines()
    quoted = _quoted()
    assert len(quoted) == 3 and quoted[-1].startswith("svd logreg on noise-digits:")
    assert printed[-3:-1] == quoted[:2]
    assert _timeless(printed[-1]) == _timeless(quoted[-1])

"""The README opens with the install+run command and the test command; .ci/run runs the latter."""

from __future__ import annotations

import re

from conftest import REPO


def _commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text, flags=re.S)


def test_readme_has_two_commands_and_ci_runs_the_test_one() -> None:
    cmds = _commands()
    assert len(cmds) >= 2
    install_run, test = cmds[0].strip(), cmds[1].strip()
    assert "pip install" in install_run and "ctdl" in install_run
    script = REPO / test.split()[-1]  # the command, or a script of the repository that runs it
    assert "pytest" in test or (script.is_file() and "pytest" in script.read_text())
    ci = (REPO / ".ci" / "run").read_text()
    assert test in ci

"""The README's "Try it" and docs/quickstart.md, pasted in order into a shell against a running gateway.

Each document gets its own ``python -m sluicegate serve`` of ``examples/config.yaml`` in a folder of its own (the
README's walk-through disables team-1's logging, which the quick start then relies on); the shell runs in that folder
as a user would in the repository, with ``localhost:4000`` pointed at the gateway's port.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SH_BLOCK = re.compile(r"```sh\n(.*?)```", re.S)


def shell_blocks(document: Path, section: str | None = None) -> str:
    """The ``sh`` blocks of ``document`` (of its ``## section`` only, when given), minus the ``make`` lines."""
    text = document.read_text()
    if section is not None:
        start = text.index(f"## {section}")
        end = text.find("\n## ", start + 1)
        text = text[start:end if end != -1 else None]
    lines = [line for block in SH_BLOCK.findall(text) for line in block.splitlines()
             if not line.lstrip().startswith("make ")]
    return "\n".join(lines) + "\n"


def run_walkthrough(script: str, gateway: Any) -> subprocess.CompletedProcess[str]:
    script = script.replace("localhost:4000", f"localhost:{gateway.port}")
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=gateway.config.parent.parent,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def gateways(module_gateway_process: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    started = {}
    for name in ("readme", "quickstart"):
        folder = tmp_path_factory.mktemp(name)
        (folder / "examples").mkdir()
        config = folder / "examples" / "config.yaml"
        shutil.copy(ROOT / "examples" / "config.yaml", config)
        started[name] = module_gateway_process(config, wait=False, cwd=folder)
    return {name: process.wait_ready(timeout=120) for name, process in started.items()}


def test_readme_try_it_works_pasted_in_order(gateways: dict[str, Any]) -> None:
    script = shell_blocks(ROOT / "README.md", "Try it")
    assert "cloud.langfuse.com" not in script  # the walk-through never reaches outside this machine
    result = run_walkthrough(script, gateways["readme"])
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "Hello from Sluicegate's offline model." in result.stdout
    event_line = next(line for line in result.stdout.splitlines() if '"team_id"' in line and '"status"' in line)
    assert '"team-1"' in event_line and "success" in event_line
    assert '"callback_name":"file"' in result.stdout.replace(" ", "") or '"file"' in result.stdout
    assert '"key":"healthy"' in result.stdout.replace(" ", "")
    assert "Logging disabled for team team-1" in result.stdout


def test_quickstart_works_pasted_in_order(gateways: dict[str, Any]) -> None:
    result = run_walkthrough(shell_blocks(ROOT / "docs" / "quickstart.md"), gateways["quickstart"])
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "Hello from Sluicegate's offline model." in result.stdout
    assert any('"team-1"' in line and '"status"' in line for line in result.stdout.splitlines()), result.stdout
    assert "Logging disabled for team team-1" in result.stdout
    assert '"logging_callbacks":null' in result.stdout.replace(" ", "")  # step 5, after step 3


def test_a_walkthrough_that_fails_is_reported(gateways: dict[str, Any]) -> None:
    """Negative control: a pasted command that fails makes the run fail, so the two tests above can fail."""
    result = run_walkthrough("curl -sf localhost:4000/no-such-route\n", gateways["quickstart"])
    assert result.returncode != 0

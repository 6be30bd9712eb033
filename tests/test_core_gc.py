"""Server processes tune the cyclic GC at start-up (freeze the long-lived heap, rarer full passes); an app
embedded elsewhere does not touch process-wide GC state unless asked. Run in subprocesses: GC state is global."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

CHECK = textwrap.dedent("""
    import asyncio, gc, json, sys
    from sluicegate.config import parse_settings
    from sluicegate.gateway import Gateway

    async def main(tune):
        gateway = Gateway(parse_settings({"general_settings": {"database_url": sys.argv[2]}}), tune_gc=tune)
        before = gc.get_threshold()
        await gateway.start()
        try:
            print(json.dumps([list(before), list(gc.get_threshold()), gc.get_freeze_count() > 0]))
        finally:
            await gateway.stop()

    asyncio.run(main(sys.argv[1] == "tune"))
""")


def run(mode: str, tmp_path) -> list:
    result = subprocess.run([sys.executable, "-c", CHECK, mode, f"sqlite+aiosqlite:///{tmp_path}/{mode}.db"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_serve_tunes_the_collector_and_embedding_does_not(tmp_path):
    before, after, frozen = run("tune", tmp_path)
    assert after == [10_000, 50, 100] and frozen
    before, after, frozen = run("plain", tmp_path)  # control: untouched
    assert after == before and not frozen

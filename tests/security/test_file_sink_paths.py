"""Finding #4: file sink paths written through the admin API must stay under ``file_sink_root``.

Relative paths join the root, absolute ones must already be inside it; ``..``, symlinks below the root, /proc
and /dev are refused (422 naming ``callback_vars.path``). Files are created 0600, directories 0700. ``{team_id}``
is percent-encoded, so ``acme:eu``, ``acme_eu`` and ``acme@eu`` get three files. config.yaml paths stay as
written (the config author is trusted).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from sluicegate.auth import hash_key
from sluicegate.default_plugins.file_sink import FileSink, FileVars, decode_team_id, encode_team_id
from sluicegate.sinks.destinations import DestinationPolicy
from sluicegate.testing.events import make_event
from sluicegate.testing.waiting import wait_until_async

pytestmark = pytest.mark.usefixtures("clean_env")


async def eventually(condition, *, timeout: float = 10.0, what: str = "condition"):
    """Poll ``condition`` on the loop until it is truthy, with a deadline (the gateway shares this loop)."""
    return await wait_until_async(condition, timeout=timeout, what=what)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "sink-root"


@pytest.fixture
def cfg(make_config, root: Path):
    config = make_config()
    config["sluicegate_settings"]["file_sink_root"] = str(root)
    return config


async def _team_file(gw, team_id: str, path: str):
    await gw.admin("POST", "/team/new", json={"team_id": team_id})
    return await gw.admin("POST", f"/team/{team_id}/callback",
                          json={"callback_name": "file", "callback_vars": {"path": path}})


@pytest.mark.parametrize("path", [
    "/etc/cron.d/sluicegate",
    "../../escape.jsonl",
    "team/../../escape.jsonl",
    "/proc/self/fd/1",
    "/dev/null",
    "",
])
async def test_an_api_path_escaping_the_root_is_refused(cfg, start, root, tmp_path, path):
    async with start(cfg) as gw:
        response = await _team_file(gw, "t", path)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["param"] == "callback_vars.path"
        key = await gw.admin("POST", "/key/generate", json={"metadata": {"logging": [
            {"callback_name": "file", "callback_vars": {"path": path}}]}})
        assert key.status_code == 422
        assert key.json()["error"]["param"] == "metadata.logging[0].callback_vars.path"
        # Negative control: a relative path, and an absolute one inside the root, are taken.
        assert (await _team_file(gw, "t2", "teams/{team_id}.jsonl")).status_code == 200
        assert (await _team_file(gw, "t3", str(root / "abs.jsonl"))).status_code == 200
    assert not (tmp_path / "escape.jsonl").exists()


async def test_an_absolute_path_outside_the_root_is_refused_but_config_yaml_may_use_it(make_config, start, root,
                                                                                      tmp_path):
    outside = tmp_path / "elsewhere" / "{team_id}.jsonl"
    cfg = make_config(litellm={"default_team_settings": [
        {"team_id": "ops", "success_callback": ["file"], "callback_vars": {"path": str(outside)}}]})
    cfg["sluicegate_settings"]["file_sink_root"] = str(root)
    async with start(cfg) as gw:
        refused = await _team_file(gw, "t", str(outside))
        assert refused.status_code == 422 and refused.json()["error"]["param"] == "callback_vars.path"
        assert "file_sink_root" in refused.json()["error"]["message"]
        key = await gw.new_key(team_id="ops")
        assert (await gw.chat(key)).status_code == 200
        await eventually(lambda: (tmp_path / "elsewhere" / "ops.jsonl").exists(), what="the config.yaml file")


async def test_a_symlink_below_the_root_is_never_followed(cfg, start, root, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root.mkdir(mode=0o700)
    (root / "link").symlink_to(outside)
    async with start(cfg) as gw:
        response = await _team_file(gw, "t", "link/{team_id}.jsonl")
        assert response.status_code == 422 and response.json()["error"]["param"] == "callback_vars.path"
        assert "symlink" in response.json()["error"]["message"]
        # Negative control: a real directory of that name is taken.
        (root / "link").unlink()
        (root / "link").mkdir()
        assert (await _team_file(gw, "t2", "link/{team_id}.jsonl")).status_code == 200


async def test_a_symlink_swapped_in_after_the_check_is_not_followed_when_writing(root, tmp_path):
    """Between the write-time check and a send, a directory below the root becomes a symlink to elsewhere: the
    write fails (each component is opened with O_NOFOLLOW) and nothing lands outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    sink = FileSink(FileVars(path="later/{team_id}.jsonl"))
    sink.destination_policy = DestinationPolicy(file_root=root)
    await sink.send([make_event(team_id="t")])
    assert (root / "later" / "t.jsonl").exists()
    (root / "later" / "t.jsonl").unlink()
    (root / "later").rmdir()
    (root / "later").symlink_to(outside)
    with pytest.raises(OSError):
        await sink.send([make_event(team_id="t")])
    assert list(outside.iterdir()) == []
    (root / "later").unlink()
    (root / "later").mkdir()
    (outside / "t.jsonl").symlink_to(tmp_path / "target.jsonl")
    (root / "later" / "t.jsonl").symlink_to(outside / "t.jsonl")  # the file itself a symlink
    with pytest.raises(OSError):
        await sink.send([make_event(team_id="t")])
    assert not (tmp_path / "target.jsonl").exists()
    # Negative control: config.yaml's (trusted) sink follows the same symlink, as it always did.
    trusted = FileSink(FileVars(path=str(root / "later" / "{team_id}.jsonl")))
    await trusted.send([make_event(team_id="t")])
    assert (tmp_path / "target.jsonl").stat().st_size > 0


async def test_files_are_0600_and_directories_0700(cfg, start, root):
    async with start(cfg) as gw:
        assert (await _team_file(gw, "t", "deep/er/{team_id}.jsonl")).status_code == 200
        key = await gw.new_key(team_id="t")
        assert (await gw.chat(key)).status_code == 200
        target = root / "deep" / "er" / "t.jsonl"
        await eventually(lambda: target.exists() and target.stat().st_size > 0, what="the team's file")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    for directory in (root, root / "deep", root / "deep" / "er"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


async def test_team_ids_that_differ_only_in_punctuation_get_their_own_files(cfg, start, root):
    teams = ["acme:eu", "acme_eu", "acme@eu"]
    async with start(cfg) as gw:
        for team in teams:
            assert (await _team_file(gw, team, "teams/{team_id}.jsonl")).status_code == 200
            assert (await gw.chat(await gw.new_key(team_id=team), content=team)).status_code == 200
        await eventually(lambda: len(list((root / "teams").glob("*.jsonl"))) == 3
                         if (root / "teams").exists() else False, what="three files")
    by_team = {}
    for file in (root / "teams").iterdir():
        lines = [json.loads(line) for line in file.read_text().splitlines()]
        by_team[decode_team_id(file.name.removesuffix(".jsonl"))] = lines
    assert sorted(by_team) == sorted(teams)
    for team, lines in by_team.items():
        assert [line["metadata"]["user_api_key_team_id"] for line in lines] == [team]


@pytest.mark.parametrize("team_id", ["acme:eu", "acme_eu", "acme@eu", ".", "..", ".hidden", "a/b", "no-team",
                                     "no%2Dteam", "%41", "ü-team", "a b", "CamelCase-1_2"])
def test_team_id_encoding_round_trips_and_stays_one_plain_name(team_id):
    encoded = encode_team_id(team_id)
    assert decode_team_id(encoded) == team_id
    assert "/" not in encoded and "." not in encoded and encoded not in ("", ".", "..")
    assert encoded != encode_team_id(None)
    assert decode_team_id(encode_team_id(None)) is None


def test_distinct_team_ids_never_share_a_name():
    ids = ["acme:eu", "acme_eu", "acme@eu", "acme%3Aeu", "no-team", "no%2Dteam", "acme.eu", "acme%2Eeu"]
    assert len({encode_team_id(t) for t in ids} | {encode_team_id(None)}) == len(ids) + 1


async def test_the_health_check_honours_the_root(cfg, start, root, tmp_path):
    async with start(cfg) as gw:
        assert (await _team_file(gw, "t", "ok/{team_id}.jsonl")).status_code == 200
        key = await gw.new_key(team_id="t")
        healthy = await gw.client.post("/key/health", headers={"Authorization": f"Bearer {key}"})
        assert healthy.status_code == 200, healthy.text
        assert healthy.json()["logging_callbacks"]["status"] == "healthy", healthy.text
        # the key's route as resolved now (the cache may be dropped any time by the change poll)
        (route,) = (await gw.gateway._load(hash_key(key))).callbacks.routes
        root.mkdir(exist_ok=True, mode=0o700)
        (tmp_path / "outside").mkdir()
        (root / "ok").symlink_to(tmp_path / "outside")
        # The instance already built reports the escape ...
        result = await gw.gateway.dispatcher.slot_for(route).sink.health_check()
        assert not result.healthy, result
        # ... and once the key's routes are resolved again (any change does that), the entry is switched off.
        gw.gateway.invalidate()
        switched_off = await gw.client.post("/key/health", headers={"Authorization": f"Bearer {key}"})
        assert switched_off.status_code == 200 and switched_off.json()["logging_callbacks"] is None, switched_off.text


def test_os_open_modes_hold_under_a_permissive_umask(tmp_path):
    """The modes come from the open call, not the process umask (0 here: nothing masked)."""
    policy = DestinationPolicy(file_root=tmp_path / "r")
    old = os.umask(0)
    try:
        os.close(policy.open_append("a/b.jsonl"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r" / "a" / "b.jsonl").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "r" / "a").stat().st_mode) == 0o700

"""``/metrics``: LiteLLM's request metrics (names, labels, values) from a real gateway, parsed with
``prometheus_client``'s own parser; the label allow-list and the series cap; ``require_auth_for_metrics_endpoint``;
and the Grafana dashboard in docs/ querying only metrics a scrape has."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sluicegate.config import ConfigError, parse_settings
from sluicegate.metrics import DEFAULT_LABELS, RequestMetrics

pytestmark = pytest.mark.usefixtures("acme", "clean_env")
ROOT = Path(__file__).resolve().parents[2]
PRICED = [
    {"model_name": "mock", "litellm_params": {"model": "openai/mock-1", "mock_response": "The answer is 42.",
                                              "input_cost_per_token": 0.001, "output_cost_per_token": 0.002}},
    {"model_name": "down", "litellm_params": {"model": "openai/down", "api_base": "http://127.0.0.1:9/v1",
                                              "timeout": 5}},
]


def samples(text: str) -> list[Any]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(text: str, name: str, **labels: str) -> float:
    found = [s.value for s in samples(text) if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return sum(found)


async def team_key(gw: Any, team_id: str, alias: str) -> str:
    assert (await gw.admin("POST", "/team/new", json={"team_id": team_id, "team_alias": alias})).status_code == 200
    return await gw.new_key(team_id=team_id, key_alias=f"{alias}-key")


async def test_request_metrics_carry_litellms_names_labels_and_values(receiver, make_config, start, vars_for):
    async with start(make_config(models=PRICED)) as gw:
        red = await team_key(gw, "t-red", "red")
        blue = await team_key(gw, "t-blue", "blue")
        assert (await gw.admin("POST", "/team/t-red/callback", json={
            "callback_name": "acme", "callback_vars": vars_for("red")})).status_code == 200
        for _ in range(3):
            assert (await gw.chat(red, "hello there", user="alice")).status_code == 200
        assert (await gw.chat(red, "streamed", stream=True)).status_code == 200
        assert (await gw.chat(blue, "to a dead upstream", model="down")).status_code >= 500
        assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/red")) == 4)
        text = (await gw.admin("GET", "/metrics")).text

    sent_cost = sum(e["response_cost"] for e in receiver.events_at("/dest/red"))
    assert sent_cost > 0
    total = "litellm_proxy_total_requests_metric_total"
    assert value(text, total, team="t-red", team_alias="red", api_key_alias="red-key", requested_model="mock",
                 status_code="200") == 4
    assert value(text, total, team="t-blue", status_code="200") == 0
    blue_failures = value(text, "litellm_proxy_failed_requests_metric_total", team="t-blue", requested_model="down")
    assert blue_failures == 1
    failed = [s for s in samples(text) if s.name == "litellm_proxy_failed_requests_metric_total"][0]
    assert failed.labels["exception_status"].startswith("5") and failed.labels["exception_class"]
    assert value(text, "litellm_spend_metric_total", team="t-red") == pytest.approx(sent_cost)
    assert value(text, "litellm_input_tokens_metric_total", team="t-red") == sum(
        e["prompt_tokens"] for e in receiver.events_at("/dest/red"))
    # histograms carry the model labels only by default (their size follows the model list, not the teams)
    assert value(text, "litellm_request_total_latency_metric_count", requested_model="mock", team="") == 4
    assert value(text, "litellm_llm_api_latency_metric_count", model="mock-1") == 4
    assert value(text, "litellm_llm_api_time_to_first_token_metric_count", model="mock-1") == 1  # the streamed one
    assert value(text, "litellm_request_total_latency_metric_count", team="t-red") == 0
    # end_user (chosen by clients) carries no value unless the allow-list names it
    assert {s.labels["end_user"] for s in samples(text) if s.name == total} == {""}
    # the key itself never appears, only its hash
    assert red not in text and blue not in text


async def test_end_user_label_when_allowed_and_the_series_cap(make_config, start):
    cfg = make_config()
    cfg["sluicegate_settings"]["metrics"] = {"labels": ["end_user", "team"], "max_series": 2,
                                             "histogram_labels": ["team"]}
    async with start(cfg) as gw:
        keys = [await team_key(gw, f"t{i}", f"a{i}") for i in range(3)]
        for i, key in enumerate(keys):
            assert (await gw.chat(key, "hi", user=f"user-{i}")).status_code == 200
        text = (await gw.admin("GET", "/metrics")).text
    total = [s for s in samples(text) if s.name == "litellm_proxy_total_requests_metric_total"]
    assert sum(s.value for s in total) == 3  # totals stay exact past the cap
    assert {s.labels["end_user"] for s in total} == {"user-0", "user-1", "__other__"}
    assert {s.labels["team_alias"] for s in total} == {""}  # not in the allow-list
    assert value(text, "sluicegate_metrics_series_overflow_total") == 1
    latency = [s for s in samples(text) if s.name == "litellm_request_total_latency_metric_count"]
    assert {s.labels["team"]: s.value for s in latency} == {"t0": 1, "t1": 1, "__other__": 1}


async def test_remaining_budget_and_rate_limit_gauges_after_spending(make_config, start):
    """LiteLLM's remaining-budget and remaining-rate-limit gauges, read from the budget counters and the rate-limit
    window at scrape time: they move with what was spent, and only entities with a budget or limit have them."""
    async with start(make_config(models=PRICED)) as gw:
        assert (await gw.admin("POST", "/team/new", json={"team_id": "t-b", "team_alias": "budgeted",
                                                          "max_budget": 2.0})).status_code == 200
        key = await gw.new_key(team_id="t-b", key_alias="b-key", max_budget=1.5, model_rpm_limit={"mock": 5},
                               model_tpm_limit={"mock": 1000})
        free = await team_key(gw, "t-free", "free")  # no budget, no limit: no gauge
        info = (await gw.admin("GET", "/key/info", params={"key": key})).json()
        hashed = info.get("token") or info["info"]["token"]
        before = (await gw.admin("GET", "/metrics")).text
        for _ in range(2):
            assert (await gw.chat(key, "hello there")).status_code == 200
        assert (await gw.chat(free, "hi")).status_code == 200
        text = (await gw.admin("GET", "/metrics")).text

    spent = value(text, "litellm_spend_metric_total", team="t-b")
    tokens = value(text, "litellm_total_tokens_metric_total", team="t-b")
    assert spent > 0 and tokens > 0
    assert "litellm_remaining_team_budget_metric{" not in before  # nothing known before a request
    assert value(text, "litellm_remaining_team_budget_metric", team="t-b", team_alias="budgeted") == pytest.approx(
        2.0 - spent)
    assert value(text, "litellm_team_max_budget_metric", team="t-b", team_alias="budgeted") == 2.0
    assert value(text, "litellm_remaining_api_key_budget_metric", hashed_api_key=hashed,
                 api_key_alias="b-key") == pytest.approx(1.5 - spent)
    assert value(text, "litellm_api_key_max_budget_metric", hashed_api_key=hashed) == 1.5
    assert value(text, "litellm_remaining_api_key_requests_for_model", hashed_api_key=hashed, api_key_alias="b-key",
                 model="mock") == 3
    assert value(text, "litellm_remaining_api_key_tokens_for_model", hashed_api_key=hashed,
                 model="mock") == 1000 - tokens
    gauges = {s.labels.get("team") or s.labels.get("api_key_alias") for s in samples(text)
              if s.name.startswith("litellm_remaining_") or s.name.endswith("_max_budget_metric")}
    assert gauges == {"t-b", "b-key"}  # the team and key without budget or limit have none


async def test_budget_gauges_follow_the_label_allow_list(make_config, start):
    cfg = make_config(models=PRICED)
    cfg["sluicegate_settings"]["metrics"] = {"labels": ["hashed_api_key", "requested_model"]}
    async with start(cfg) as gw:
        assert (await gw.admin("POST", "/team/new", json={"team_id": "t-b", "team_alias": "budgeted",
                                                          "max_budget": 2.0})).status_code == 200
        key = await gw.new_key(team_id="t-b", key_alias="b-key", max_budget=1.5)
        assert (await gw.chat(key, "hello there")).status_code == 200
        text = (await gw.admin("GET", "/metrics")).text
    names = {s.name for s in samples(text)}
    assert "litellm_remaining_team_budget_metric" not in names  # neither team nor team_alias is allowed
    (remaining,) = [s for s in samples(text) if s.name == "litellm_remaining_api_key_budget_metric"]
    assert remaining.labels["api_key_alias"] == "" and remaining.labels["hashed_api_key"]
    assert 0 < remaining.value < 1.5


async def test_metrics_need_the_master_key_unless_the_setting_opens_them(make_config, start):
    async with start(make_config()) as gw:
        assert (await gw.client.get("/metrics")).status_code == 401
    async with start(make_config(litellm={"require_auth_for_metrics_endpoint": False})) as gw:
        response = await gw.client.get("/metrics")
        assert response.status_code == 200
        assert "litellm_proxy_total_requests_metric_total" in response.text


def test_an_unknown_metric_label_is_a_start_up_error_with_a_suggestion(tmp_path):
    with pytest.raises(ConfigError) as caught:
        parse_settings({"sluicegate_settings": {"metrics": {"labels": ["team_alais"], "max_series": 0}}},
                                source=str(tmp_path / "config.yaml"))
    text = "\n".join(caught.value.problems)
    assert "metrics.labels[0]: unknown label 'team_alais'; did you mean 'team_alias'?" in text
    assert "metrics.max_series: must be at least 1" in text


def test_scrape_cost_is_bounded_by_the_series_cap():
    """10,000 teams against the default cap: the scrape renders at most max_series combinations (plus
    ``__other__``), whatever the number of teams."""
    from sluicegate.events import LogEvent, LogMetadata

    metrics = RequestMetrics(max_series=2000)
    for i in range(10_000):
        metrics.observe(LogEvent(id=str(i), trace_id=str(i), model="m", model_group="g", response_time=0.2,
                                 metadata=LogMetadata(user_api_key_team_id=f"team-{i}", user_api_key_hash=f"h{i}"),
                                 attempts=[{"duration": 0.1}]))
    assert len(metrics.series) == 2001
    lines = metrics.render()
    assert sum(1 for line in lines if line.startswith("litellm_proxy_total_requests_metric_total{")) == 2001
    assert sum(float(line.rsplit(" ", 1)[1]) for line in lines
               if line.startswith("litellm_proxy_total_requests_metric_total{")) == 10_000


def test_budget_gauges_at_10_000_teams_are_bounded_by_the_series_cap():
    """10,000 teams with budgets (each with a counter, as after a request): each gauge family carries max_series
    samples, the rest are counted, not computed."""
    from sluicegate.limits.budgets import BudgetCounter
    from sluicegate.limits.spend import SpendLedger

    ledger = SpendLedger(None, parse_settings({}))  # type: ignore[arg-type]  # gauges() reads no database
    metrics = RequestMetrics(max_series=2000)
    metrics.gauge_sources.append(ledger.gauges)
    for i in range(10_000):
        counter = ledger.counters[("team", f"team-{i}")] = BudgetCounter("team", f"team-{i}", 1.5, None)
        counter.max_budget, counter.alias = 10.0, f"alias-{i}"
    text = "\n".join(metrics.render()) + "\n"
    remaining = [s for s in samples(text) if s.name == "litellm_remaining_team_budget_metric"]
    assert len(remaining) == 2000 and {s.value for s in remaining} == {8.5}
    assert remaining[0].labels == {"team": "team-0", "team_alias": "alias-0"}
    assert len([s for s in samples(text) if s.name == "litellm_team_max_budget_metric"]) == 2000
    assert value(text, "sluicegate_metrics_gauge_samples_omitted") == 2 * 8000


def test_gauge_samples_are_kept_once_cut_at_the_cap_and_projected_onto_the_allow_list():
    """Every way a source's samples reach a scrape: as given (all labels allowed, distinct, within the cap), with
    duplicates kept once, cut at ``max_series`` (the rest counted), merged with another source's samples of the
    same family, and with a label left out (emptied, then kept once)."""
    budget = "litellm_remaining_team_budget_metric"
    ceiling = "litellm_team_max_budget_metric"
    as_given = [(("t1", "a"), 1.0), (("t2", "b"), 2.0)]
    metrics = RequestMetrics(max_series=3)
    metrics.gauge_sources.append(lambda cap: ({budget: as_given, ceiling: [(("t1", "a"), 5.0), (("t1", "a"), 5.0)]},
                                              0))
    metrics.gauge_sources.append(lambda cap: ({budget: [(("t2", "b"), 9.0), (("t3", "c"), 3.0), (("t4", "d"), 4.0)],
                                               ceiling: [(("t5", "e"), 1.0)] * 2 + [(("t6", "f"), 2.0)]}, 1))
    found = metrics.gauges()
    assert found[budget] == [(("t1", "a"), 1.0), (("t2", "b"), 2.0), (("t3", "c"), 3.0)]  # first source's t2 kept
    assert len(as_given) == 2  # a copy was kept: merging the second source did not grow the source's list
    assert found[ceiling] == [(("t1", "a"), 5.0), (("t5", "e"), 1.0), (("t6", "f"), 2.0)]
    assert metrics.gauges_omitted == 1 + 1  # the source's own, and t4 past the cap

    narrowed = RequestMetrics(labels=[label for label in DEFAULT_LABELS if label != "team_alias"], max_series=10)
    narrowed.gauge_sources.append(lambda cap: ({budget: [(("t1", "a"), 1.0), (("t1", "b"), 1.0)]}, 0))
    assert narrowed.gauges()[budget] == [(("t1", ""), 1.0)]


async def test_the_grafana_dashboard_queries_only_metrics_a_scrape_has(receiver, make_config, start, vars_for):
    dashboard = json.loads((ROOT / "docs" / "grafana" / "sluicegate-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs.append(dashboard["templating"]["list"][1]["query"])
    wanted = {m for e in exprs for m in re.findall(r"\b((?:litellm|sluicegate)_[a-z_]+)", e)}
    assert len(wanted) >= 10
    async with start(make_config(models=PRICED)) as gw:
        assert (await gw.admin("POST", "/team/new", json={"team_id": "t-g", "team_alias": "g",
                                                          "max_budget": 100.0})).status_code == 200
        key = await gw.new_key(team_id="t-g", key_alias="g-key")
        assert (await gw.admin("POST", "/team/t-g/callback", json={
            "callback_name": "acme", "callback_vars": vars_for("g")})).status_code == 200
        assert (await gw.chat(key, "hi", stream=True)).status_code == 200
        assert (await gw.chat(key, "hi", model="down")).status_code >= 500
        assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/g")) >= 1)
        text = (await gw.admin("GET", "/metrics")).text
    names = {s.name for s in samples(text)}
    missing = sorted(m for m in wanted if m not in names)
    assert not missing, f"dashboard queries metrics no scrape has: {missing}"

"""CPU of the routing decision in-process (python -m bench.router): 1 deployment vs 8 (simple-shuffle, latency-based, least-busy)."""
import random, time, sys
from sluicegate.config import parse_settings
from sluicegate.plugins import get_plugin_manager
from sluicegate.providers.models import ModelRouter
from sluicegate.providers.registry import ProviderRegistry
from sluicegate.router import Router

def build(n, strategy):
    models = [{"model_name": "g", "model_info": {"id": f"d{i}"}, "litellm_params": {"model": f"openai/m{i}", "mock_response": "x"}} for i in range(n)]
    s = parse_settings({"model_list": models, "router_settings": {"routing_strategy": strategy}})
    return Router(ModelRouter.from_settings(s, ProviderRegistry.from_plugin_manager(get_plugin_manager({})), {}), s)

N = 200_000
for n, strategy in ((1, "simple-shuffle"), (8, "simple-shuffle"), (8, "latency-based-routing"), (8, "least-busy")):
    r = build(n, strategy)
    if strategy == "latency-based-routing":
        for d in r.resolve("g").deployments:
            for _ in range(10): r.strategy.ended(d, random.uniform(0.1, 0.2), True)
    best = 1e9
    for _ in range(3):
        t = time.process_time()
        for _ in range(N):
            g = r.resolve("g"); d = r.pick(g); r.strategy.started(d); r.strategy.ended(d, 0.15, True)
        best = min(best, (time.process_time() - t) / N)
    print(f"{n} deployment(s), {strategy}: {best*1e6:.2f} us CPU per routing decision (resolve + pick + bookkeeping)")

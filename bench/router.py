"""CPU of the routing decision in-process (python -m bench.router): 1 deployment vs 8 (simple-shuffle, latency-based, least-busy).

Each decision ends with a 0.15 s sample; the `varying` latency-based rows end with a random 0.1-0.2 s sample instead
(the cost of drawing it included), with and without a lowest_latency_buffer, so the kept ranking is exercised
where samples keep changing it rather than in the steady state where every mean has settled at 0.15."""
import random, time, sys
from sluicegate.config import parse_settings
from sluicegate.plugins import get_plugin_manager
from sluicegate.providers.models import ModelRouter
from sluicegate.providers.registry import ProviderRegistry
from sluicegate.router import Router

def build(n, strategy, buffer=0.0):
    models = [{"model_name": "g", "model_info": {"id": f"d{i}"}, "litellm_params": {"model": f"openai/m{i}", "mock_response": "x"}} for i in range(n)]
    args = {"routing_strategy_args": {"lowest_latency_buffer": buffer}} if strategy == "latency-based-routing" else {}
    s = parse_settings({"model_list": models, "router_settings": {"routing_strategy": strategy, **args}})
    return Router(ModelRouter.from_settings(s, ProviderRegistry.from_plugin_manager(get_plugin_manager({})), {}), s)

N = 200_000
rows = ((1, "simple-shuffle", 0.0, False), (8, "simple-shuffle", 0.0, False), (8, "latency-based-routing", 0.0, False),
        (8, "latency-based-routing", 0.0, True), (8, "latency-based-routing", 0.2, True), (8, "least-busy", 0.0, False))
for n, strategy, buffer, varying in rows:
    r = build(n, strategy, buffer)
    draw = random.Random(1).uniform
    if strategy == "latency-based-routing":
        for d in r.resolve("g").deployments:
            for _ in range(10): r.strategy.ended(d, random.uniform(0.1, 0.2), True)
    best = 1e9
    for _ in range(3):
        t = time.process_time()
        for _ in range(N):
            g = r.resolve("g"); d = r.pick(g); r.strategy.started(d); r.strategy.ended(d, draw(0.1, 0.2) if varying else 0.15, True)
        best = min(best, (time.process_time() - t) / N)
    label = strategy + (f", varying samples, buffer {buffer:g}" if varying else "")
    print(f"{n} deployment(s), {label}: {best*1e6:.2f} us CPU per routing decision (resolve + pick + bookkeeping)")

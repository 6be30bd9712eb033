"""The security tests run on the pipeline tests' fixtures (a real gateway app, the acme sink really installed,
loopback receivers, and the session-wide scan of log lines for registered secrets)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("_pipeline_fixtures",
                                               Path(__file__).resolve().parents[1] / "pipeline" / "conftest.py")
assert _spec is not None and _spec.loader is not None
_pipeline = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_pipeline)

# Re-exported by name: pytest finds fixtures among a conftest's attributes.
acme = _pipeline.acme
acme_path = _pipeline.acme_path
clean_env = _pipeline.clean_env
make_config = _pipeline.make_config
receiver = _pipeline.receiver
register_secret = _pipeline.register_secret
secret_log_scan = _pipeline.secret_log_scan
start = _pipeline.start
vars_for = _pipeline.vars_for
MASTER = _pipeline.MASTER
acme_vars = _pipeline.acme_vars
running = _pipeline.running

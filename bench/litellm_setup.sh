#!/usr/bin/env bash
# Install LiteLLM's proxy into bench/.litellm-venv for the `litellm` row of `make bench` (issue 8).
# Never a project dependency: its own venv (gitignored), removed with `rm -rf bench/.litellm-venv`.
#
# `pip install 'litellm[proxy]==X'` fails: that extra pins `litellm-proxy==X`, which the index does not serve.
# So: litellm==X itself, plus every requirement of its `proxy` and `proxy-runtime` extras read from the wheel's
# METADATA (markers, python version and platform included, evaluated for this interpreter), minus litellm-proxy, with litellm-proxy-extras and
# litellm-enterprise at the newest versions available. Without proxy-runtime (OpenTelemetry, langfuse, ...)
# the proxy retries a failing import on every request and looks slower than it is.
#
#   bench/litellm_setup.sh                       # LITELLM_VERSION=1.110.2, python3 from PATH
#   LITELLM_VERSION=1.110.2 PYTHON=python3.11 bench/litellm_setup.sh
set -euo pipefail

VERSION="${LITELLM_VERSION:-1.110.2}"
PYTHON="${PYTHON:-python3}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.litellm-venv"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

echo "litellm_setup: creating $VENV with $("$PYTHON" --version)"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip packaging

echo "litellm_setup: reading the requirements of litellm==$VERSION [proxy, proxy-runtime]"
"${PIP[@]}" download -q --no-deps "litellm==$VERSION" -d "$WORK"
"$VENV/bin/python" - "$WORK" "$VERSION" >"$WORK/requirements.txt" <<'PY'
import sys, zipfile
from pathlib import Path
from packaging.requirements import Requirement

work, version = Path(sys.argv[1]), sys.argv[2]
wheel = next(work.glob(f"litellm-{version}-*.whl"))
with zipfile.ZipFile(wheel) as zf:
    meta = zf.read(f"litellm-{version}.dist-info/METADATA").decode()
unpinned = {"litellm-proxy-extras", "litellm-enterprise"}  # newest available, not the wheel's pins
skipped = {"litellm-proxy"}  # not served by the index
out = {f"litellm=={version}"}
for line in meta.splitlines():
    if not line.startswith("Requires-Dist:"):
        continue
    req = Requirement(line.split(":", 1)[1].strip())
    if req.marker is None or not any(req.marker.evaluate({"extra": e}) for e in ("proxy", "proxy-runtime")):
        continue
    name = req.name.lower().replace("_", "-")
    if name in skipped:
        continue
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    out.add(f"{req.name}{extras}" if name in unpinned else f"{req.name}{extras}{req.specifier}")
print("\n".join(sorted(out)))
PY
sed 's/^/  /' "$WORK/requirements.txt"

echo "litellm_setup: installing (a few minutes)"
"${PIP[@]}" install -q -r "$WORK/requirements.txt"
LITELLM_OFFLINE_MODE=true LITELLM_LOCAL_MODEL_COST_MAP=True "$VENV/bin/python" -c "import litellm, litellm.proxy.proxy_server; from importlib.metadata import version; \
print('litellm_setup: litellm', version('litellm'), 'langfuse', version('langfuse'), \
'litellm-proxy-extras', version('litellm-proxy-extras'), 'litellm-enterprise', version('litellm-enterprise'))"
echo "litellm_setup: done; \`make bench\` now runs the litellm row"

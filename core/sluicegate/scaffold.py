"""``sluicegate new-sink NAME``: write a complete, separately installable sink package to start from.

The package is shaped like the bundled ones (``plugins/<x>_sink``): ``pyproject.toml`` with the ``sluicegate``
entry point, ``src/sluicegate_<x>_sink/{__init__,plugin,sink}.py``, a ``Vars`` struct with one required and one
secret field, ``tests/`` (the conformance suite, an installed-plugin test, wire tests through the real dispatcher
against a loopback receiver) and a README with the callback_vars table. The templates ship inside
``sluicegate`` (``sluicegate/templates/sink``) and are filled with :class:`string.Template`: nothing is
downloaded.
"""

from __future__ import annotations

import fnmatch
import keyword
import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from string import Template

__all__ = ("ScaffoldError", "package_names", "validate_sink_name", "write_sink_package")

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_MAX_NAME = 40
_SUFFIX = ".tmpl"


class ScaffoldError(ValueError):
    """The package cannot be written (a bad name, a folder already there); the message says what to do."""


def validate_sink_name(name: str) -> str:
    """Return ``name`` if it can be a ``callback_name`` (and part of package names), else raise ScaffoldError."""
    if not isinstance(name, str) or not name:
        raise ScaffoldError("NAME: required, e.g. 'webhook'")
    if not _NAME.match(name):
        raise ScaffoldError(f"NAME: {name!r} is not a lower-case identifier (letters a-z, digits, '_', starting "
                            f"with a letter), e.g. 'webhook' or 'click_house'")
    if name.endswith("_sink") or name == "sink":
        raise ScaffoldError(f"NAME: {name!r} should not end in 'sink' (the package is named "
                            f"sluicegate_<NAME>_sink already); try {name.removesuffix('_sink') or 'webhook'!r}")
    if keyword.iskeyword(name) or name.endswith("__"):
        raise ScaffoldError(f"NAME: {name!r} is a reserved word in Python")
    if len(name) > _MAX_NAME:
        raise ScaffoldError(f"NAME: at most {_MAX_NAME} characters, got {len(name)}")
    return name


def package_names(name: str) -> dict[str, str]:
    """Every name derived from ``name``, by the one rule of the bundled sinks (folder ⇄ dist ⇄ import ⇄ entry)."""
    validate_sink_name(name)
    return {
        "name": name,
        "folder": f"{name}_sink",
        "dist": f"sluicegate-{name.replace('_', '-')}-sink",
        "package": f"sluicegate_{name}_sink",
        "entry_point": f"{name}_sink",
        "cls": "".join(part.capitalize() for part in name.split("_") if part),
        "upper": name.upper(),
    }


def _templates() -> Traversable:
    return resources.files("sluicegate").joinpath("templates", "sink")


def _walk(node: Traversable, parts: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Traversable]]:
    found: list[tuple[tuple[str, ...], Traversable]] = []
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        if child.is_dir():
            if child.name != "__pycache__":
                found.extend(_walk(child, (*parts, child.name)))
        elif child.name.endswith(_SUFFIX):
            found.append(((*parts, child.name.removesuffix(_SUFFIX)), child))
    return found


def render_sink_package(name: str) -> dict[str, str]:
    """The generated files as ``{relative path: text}`` (no disk writes)."""
    names = package_names(name)
    files: dict[str, str] = {}
    for parts, template in _walk(_templates()):
        path = "/".join(names["package"] if part == "PACKAGE" else part for part in parts)
        files[path] = Template(template.read_text(encoding="utf-8")).substitute(names)
    return files


_WORKSPACE_SOURCE = "\n[tool.uv.sources]\nsluicegate = { workspace = true }\n"


def _in_sluicegate_workspace(directory: Path) -> bool:
    """True when ``directory`` is a folder of members of the sluicegate repository's uv workspace."""
    root = directory.resolve().parent / "pyproject.toml"
    try:
        text = root.read_text(encoding="utf-8")
    except OSError:
        return False
    return 'name = "sluicegate"' in text and "[tool.uv.workspace]" in text and directory.resolve().name == "plugins"


def write_sink_package(name: str, directory: str | Path = ".") -> Path:
    """Write the package for sink ``name`` to ``directory/<name>_sink`` and return that folder.

    Raises:
        ScaffoldError: ``name`` is not a usable callback_name, ``directory`` does not exist, or the target
            folder already exists (nothing is overwritten).
    """
    names = package_names(name)
    base = Path(directory)
    if not base.is_dir():
        raise ScaffoldError(f"--directory: {str(base)!r} is not an existing folder")
    target = base / names["folder"]
    if target.exists():
        raise ScaffoldError(f"{target}: already exists; remove it or choose another --directory (nothing was "
                            f"overwritten)")
    files = render_sink_package(name)
    if _in_sluicegate_workspace(base):
        # A member of this repository's uv workspace (plugins/): `sluicegate` must come from the workspace, or
        # `uv lock` looks it up on the index. A package written anywhere else depends on the published one.
        files["pyproject.toml"] += _WORKSPACE_SOURCE
    for relative, text in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return target


"""The docs cannot drift: generated pages match the code, every config key and sink variable is documented,
every hook and testing helper is in the plugin guide, and the README links every page."""

from __future__ import annotations

import re
import subprocess
import sys
import typing
from pathlib import Path

import msgspec

from sluicegate import config, docs_gen, hookspecs, testing

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _config_structs() -> list[type[msgspec.Struct]]:
    found: list[type[msgspec.Struct]] = []

    def visit(struct: type[msgspec.Struct]) -> None:
        if struct in found:
            return
        found.append(struct)
        for tp in typing.get_type_hints(struct).values():
            for candidate in (tp, *typing.get_args(tp)):
                if isinstance(candidate, type) and issubclass(candidate, msgspec.Struct):
                    visit(candidate)

    visit(config.Settings)
    return found


def test_generated_docs_match_the_code() -> None:
    for relative, text in docs_gen.render_docs(ROOT).items():
        path = ROOT / relative
        assert path.exists(), f"{relative} is missing: run python -m sluicegate.docs_gen"
        assert path.read_text() == text, f"{relative} is out of date: run python -m sluicegate.docs_gen"


def test_check_mode_passes_on_the_tree_and_fails_on_a_stale_copy(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "sluicegate.docs_gen", "--check", "--root"]
    ok = subprocess.run([*command, str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    # negative control: the same files with one key's line missing
    for relative, text in docs_gen.render_docs(ROOT).items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    (tmp_path / "plugins").symlink_to(ROOT / "plugins")
    reference = tmp_path / docs_gen.OUTPUT
    reference.write_text("\n".join(line for line in reference.read_text().splitlines()
                                   if "delivery.max_retries" not in line) + "\n")
    stale = subprocess.run([*command, str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert stale.returncode == 1 and "docs/config-reference.md" in stale.stderr, stale.stderr


def test_every_config_struct_key_is_in_the_reference_with_a_description() -> None:
    reference = (DOCS / "config-reference.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([^`]+)` \|.*\| ([^|]*) \|$", reference, re.M)}
    structs = _config_structs()
    assert {s.__name__ for s in structs} >= {"Settings", "ModelEntry", "LiteLLMParams", "GeneralSettings",
                                             "LiteLLMSettings", "TeamSettings", "SluicegateSettings",
                                             "DeliverySettings"}
    hidden = docs_gen._HIDDEN
    for struct in structs:
        for field in struct.__struct_fields__:
            if (struct.__name__, field) in hidden:
                continue
            matching = [path for path in rows if path == field or path.endswith(f".{field}")]
            assert matching, f"{struct.__name__}.{field} is not in docs/config-reference.md"
            assert all(rows[p].strip() for p in matching), (
                f"{struct.__name__}.{field} has no description: add a docstring under the field in config.py")


def test_every_bundled_sink_variable_is_on_its_page() -> None:
    sinks = docs_gen._bundled_sinks(ROOT)
    names = {name for name, *_ in sinks}
    assert {"langfuse", "gcs_bucket", "otel", "datadog", "file"} <= names
    for name, sink_class, _distribution, readme in sinks:
        page = (DOCS / "sinks" / f"{name}.md").read_text()
        for field in sink_class.Vars.__struct_fields__:
            assert f"| `{field}` |" in page, f"{name}: {field} missing from docs/sinks/{name}.md"
        if readme:
            assert (ROOT / readme).is_file() and f"../../{readme}" in page


def test_every_hook_and_testing_helper_is_in_the_plugin_guide() -> None:
    guide = (DOCS / "plugins.md").read_text()
    hooks = [n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "sluicegate_spec")]
    assert len(hooks) >= 4
    for hook in hooks:
        assert f"### `{hook}(" in guide, hook
    for helper in testing.__all__:
        assert f"`{helper}" in guide, f"sluicegate.testing.{helper} is not in docs/plugins.md"
    assert "sluicegate new-sink" in guide


def test_readme_links_every_docs_page_and_every_link_resolves() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Documentation", 1)[1].split("\n## ", 1)[0]
    links = re.findall(r"\]\(([^)]+)\)", section)
    for link in links:
        assert (ROOT / link).exists(), link
    for page in sorted(DOCS.glob("*.md")):
        assert f"docs/{page.name}" in links, f"README's Documentation list does not link docs/{page.name}"
    assert "docs/sinks/README.md" in links
    for page in [*DOCS.glob("*.md"), *DOCS.glob("sinks/*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)}: broken link {target}"

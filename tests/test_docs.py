"""The documentation: the README stays a front page whose links resolve, and the configuration
reference (generated from conf/ by the mkdocs hook) shows every config file. `make test`
builds the site itself with `mkdocs build --strict`."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def _config_reference():
    path = REPO / "scripts" / "config_reference.py"
    spec = importlib.util.spec_from_file_location("config_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_a_front_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    for heading in (
        "## Set-up: two commands",
        "## Commands",
        "## Configuration groups",
        "## Results",
        "## Layout",
    ):
        assert heading in text
    for command in ("train", "attack", "certify", "report", "sweep"):
        assert f"\ndsnn {command} " in text, f"no example of dsnn {command}"


def test_readme_links_resolve():
    for target in re.findall(r"\]\(([^)\s]+)\)", README.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path = target.split("#")[0]
        assert (REPO / path).exists(), f"README links to {target}, which does not exist"


def test_readme_lists_every_config_group():
    text = README.read_text()
    for group in sorted(p.name for p in (REPO / "conf").iterdir() if p.is_dir()):
        assert f"| `{group}` |" in text, f"the README's config table has no row for {group}"


def test_config_reference_shows_every_config_file():
    page = _config_reference().render()
    for path in sorted((REPO / "conf").rglob("*.yaml")):
        assert f"`conf/{path.relative_to(REPO / 'conf').as_posix()}`" in page
        assert path.read_text().rstrip("\n") in page


def test_benchmarks_keep_the_peer_section():
    assert "\n## The field's layers\n" in (REPO / "docs" / "benchmarks.md").read_text()

"""The configuration reference, generated from `conf/` so that it cannot drift from it.

A mkdocs hook (`hooks:` in mkdocs.yml): every build of the site adds the page
`reference/config.md`, made from the YAML files under `conf/`, whose comments are the
documentation. Nothing is written to `docs/`. Run as a script, it prints the page:

    .venv/bin/python scripts/config_reference.py > config.md
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
PAGE = "reference/config.md"
# The commands' primary configs, then the groups, in the order the README lists them;
# a file or group not named here is still listed, after these.
COMMANDS = ("train", "attack", "certify", "report", "sweep")
GROUPS = (
    "model",
    "model/integrator",
    "data",
    "optim",
    "scheduler",
    "loss",
    "trainer",
    "logger",
    "attack",
    "sweep",
    "experiment",
    "debug",
    "hydra",
    "hydra/job_logging",
    "hydra/launcher",
)


def _ordered(names: list[str], order: tuple[str, ...]) -> list[str]:
    return [n for n in order if n in names] + sorted(n for n in names if n not in order)


def primary_configs(conf: Path = CONF) -> list[Path]:
    """The top-level YAML files (one per command), in the order of COMMANDS."""
    by_name = {p.stem: p for p in conf.glob("*.yaml")}
    return [by_name[n] for n in _ordered(list(by_name), COMMANDS)]


def config_groups(conf: Path = CONF) -> dict[str, list[Path]]:
    """Every config group (a folder under conf/ holding YAML files) and its option files."""
    found: dict[str, list[Path]] = {}
    for path in sorted(conf.rglob("*.yaml")):
        group = path.parent.relative_to(conf).as_posix()
        if group != ".":
            found.setdefault(group, []).append(path)
    return {g: found[g] for g in _ordered(list(found), GROUPS)}


def defaults(conf: Path = CONF) -> dict[str, list[tuple[str, str]]]:
    """group -> [(who, option)]: the option each defaults list (a command's or an option's) picks."""
    lists = [(f"dsnn {p.stem}", ".", p) for p in primary_configs(conf)]
    for group, paths in config_groups(conf).items():
        lists += [(f"{group}={p.stem}", group, p) for p in paths]
    chosen: dict[str, list[tuple[str, str]]] = {}
    for who, group_of_file, path in lists:
        for entry in (yaml.safe_load(path.read_text()) or {}).get("defaults", []):
            if not isinstance(entry, dict):
                continue
            for key, option in entry.items():
                key = key.removeprefix("override ")
                # Hydra resolves a group relative to the file's own group, or from conf/ with a /.
                absolute = key.startswith("/") or group_of_file == "."
                group = key.lstrip("/") if absolute else f"{group_of_file}/{key}"
                if option is not None:
                    chosen.setdefault(group, []).append((who, str(option)))
    return chosen


def leading_comment(text: str) -> str:
    """The comment lines that open a file (Hydra's `# @package` directive left out), joined."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("# @package"):
            lines.append(line.lstrip("#").strip())
    return " ".join(line for line in lines if line)


def summary(text: str) -> str:
    """The first sentence of the opening comment, escaped for a Markdown table cell."""
    comment = leading_comment(text)
    if not comment:
        return "—"
    first = re.split(r"(?<=[.])\s", comment, maxsplit=1)[0]
    # Markup characters are escaped outside `code spans`; pipes everywhere (table cells).
    parts = first.split("`")
    for i in range(0, len(parts), 2):
        escaped = re.sub(r"([\\*_\[\]])", r"\\\1", parts[i])
        parts[i] = escaped.replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts).replace("|", "\\|")


def _block(path: Path, conf: Path) -> list[str]:
    text = path.read_text().rstrip("\n")
    return [f"`conf/{path.relative_to(conf).as_posix()}`", "", "```yaml", text, "```", ""]


def render(conf: Path = CONF) -> str:
    """The Markdown of the reference page."""
    chosen = defaults(conf)
    out = [
        "# Configuration reference",
        "",
        "Generated from `conf/` every time the site is built (`scripts/config_reference.py`, a",
        "mkdocs hook), so it is the configuration itself: every file below is shown whole, and its",
        "comments are the documentation. Each command composes its primary config with one option",
        "of each group (`group=option` on the command line, the default otherwise) and then",
        "`key=value` overrides; `dsnn <command> --cfg job` prints the composed result. What the",
        "groups are for: [Configuration](../configuration.md).",
        "",
        "## Commands",
        "",
    ]
    for path in primary_configs(conf):
        out += [f"### `dsnn {path.stem}`", ""] + _block(path, conf)
    for group, paths in config_groups(conf).items():
        out += [f"## `{group}`", ""]
        picked = chosen.get(group, [])
        if picked:
            said = "; ".join(f"`{who}` → `{option}`" for who, option in picked)
            out += [f"Chosen in the defaults lists: {said}.", ""]
        out += ["| option | what it is (its opening comment) |", "|---|---|"]
        out += [f"| `{group}={p.stem}` | {summary(p.read_text())} |" for p in paths]
        out.append("")
        for path in paths:
            out += [f"### `{group}={path.stem}`", ""] + _block(path, conf)
    return "\n".join(out).rstrip("\n") + "\n"


def on_files(files, config):
    """mkdocs hook: add the generated page to the site's files."""
    from mkdocs.structure.files import File

    on_disk = files.get_file_from_path(PAGE)
    if on_disk is not None:
        files.remove(on_disk)
    files.append(File.generated(config, PAGE, content=render()))
    return files


if __name__ == "__main__":
    print(render(), end="")

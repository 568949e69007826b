"""The prose keeps up with the code: every setting documented, a short README that starts with the two
set-up commands, no build narrative in any Markdown file, and relative links that resolve."""

from __future__ import annotations

import re
from pathlib import Path

from workers.settings import Settings

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
CONFIGURATION = DOCS / "configuration.md"

# folders that hold no Markdown of ours: tool caches, environments, run outputs
SKIPPED_DIRS = {"node_modules", "runs", "__pycache__"}
NARRATION = re.compile(r"\bsession\b|\bthis\s+(?:2-vcpu\s+)?machine\b", re.IGNORECASE)
FENCED = re.compile(r"^(```|~~~).*?^\1\s*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`]*`")
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def env_names() -> dict[str, str]:
    """Field name -> the environment variable pydantic-settings reads it from."""
    prefix = Settings.model_config.get("env_prefix", "")
    names = {}
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names[name] = (alias if isinstance(alias, str) else f"{prefix}{name}").upper()
    return names


def markdown_files() -> list[Path]:
    found = []
    for path in REPO.rglob("*.md"):
        parts = path.relative_to(REPO).parts[:-1]
        if any(p.startswith(".") or p in SKIPPED_DIRS or p.endswith(".egg-info") for p in parts):
            continue
        if parts[:2] == ("bench", "results"):
            continue
        found.append(path)
    return sorted(found)


def prose(text: str) -> str:
    """The text without fenced code blocks and code spans, where brackets are not links."""
    return CODE_SPAN.sub("", FENCED.sub("", text))


def slugs(text: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown text (duplicates get -1, -2, ...)."""
    seen: dict[str, int] = {}
    result = set()
    for line in FENCED.sub("", text).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def test_every_setting_has_a_row_in_configuration_md() -> None:
    text = CONFIGURATION.read_text()
    missing = [env for env in env_names().values()
               if not re.search(rf"^\|\s*`{re.escape(env)}`\s*\|", text, re.MULTILINE)]
    assert not missing, f"docs/configuration.md has no table row for: {', '.join(missing)}"


def test_readme_opens_with_the_two_setup_commands_and_stays_short() -> None:
    data = README.read_bytes()
    assert len(data) < 16 * 1024, f"README.md is {len(data)} bytes; move detail to docs/"
    text = data.decode()
    assert text.startswith("```\n"), "README.md must open with the set-up code block"
    block = text[4:text.index("```", 4)]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"], commands


def test_no_markdown_file_narrates_how_it_was_built() -> None:
    files = markdown_files()
    assert README in files and CONFIGURATION in files
    hits = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
            for path in files
            for number, line in enumerate(path.read_text().splitlines(), start=1)
            if NARRATION.search(line)]
    assert not hits, "name the CPU and the date instead:\n" + "\n".join(hits)


def test_relative_links_in_readme_and_docs_resolve() -> None:
    broken = []
    for path in [README, *sorted(DOCS.glob("*.md"))]:
        for target in INLINE_LINK.findall(prose(path.read_text())):
            if SCHEME.match(target):
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{path.relative_to(REPO)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in slugs(linked.read_text()):
                broken.append(f"{path.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)

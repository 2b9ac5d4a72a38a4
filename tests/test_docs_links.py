"""Every relative link in the README, docs/ and benchmarks/ reaches a file, and a heading when it names one.

Markdown only (no torch, no package import): the README is a map into docs/, so a page renamed or a heading
reworded must fail here, not leave a reader at a dead link.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "benchmarks").glob("*.md"), *(ROOT / "docs").glob("*.md")])

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target); the target ends at whitespace (an optional "title" follows) or ")"
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def prose(text: str) -> str:
    """The text outside code blocks and code spans, where a bracket is a link and a # line a heading."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors a page's headings get on GitHub, repeats numbered -1, -2, ... as GitHub numbers them."""
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def relative_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(prose(page.read_text(encoding="utf-8"))) if not EXTERNAL.match(t)]


def test_slug_matches_github() -> None:
    assert slug("GPU: H100, first run") == "gpu-h100-first-run"
    assert slug("Faster recipes: time to val loss 1.90 (time_to_loss.py)") == (
        "faster-recipes-time-to-val-loss-190-time_to_losspy")
    assert slug("Weights & Biases") == "weights--biases"
    assert slug("`nanogpt` commands") == "nanogpt-commands"


def test_link_parser_skips_code_and_external() -> None:
    text = "see [a](a.md#x), ![img](p.png) and [web](https://x.org)\n```\n[no](in-code.md)\n```\n`[no](span.md)`"
    links = [t for t in LINK.findall(prose(text)) if not EXTERNAL.match(t)]
    assert links == ["a.md#x", "p.png"]


def test_pages_exist() -> None:
    names = {p.name for p in PAGES if p.parent.name == "docs"}
    assert {"configuration.md", "own-data.md", "distributed.md", "performance.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: broken links:\n" + "\n".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_numbered_issue_references(page: Path) -> None:
    text = prose(page.read_text(encoding="utf-8"))
    found = re.findall(r"(?i)\bissues? #?\d+|(?<![\w/&])#\d+\b", text)
    assert not found, f"{page.relative_to(ROOT)} points to numbered issues a reader cannot see: {found}"


def readme_block(section: str) -> list[str]:
    """The command lines of the first ```bash block under the README's `## section` heading."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    block = body.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_install_and_test_commands() -> None:
    """CI installs and tests exactly as the README tells a new user to: the two must not drift apart."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    install = readme_block("Set up")[0]
    assert install == "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt"
    for command in install.split(" && "):
        assert command.replace("pip install", "pip install -q") in ci or command in ci, command
    tests = readme_block("Tests")
    assert tests == [".venv/bin/python -m pytest -q -n 2 --dist loadfile"]
    assert tests[0] in ci.splitlines()

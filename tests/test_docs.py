"""The documentation runs: every Python code block of README.md and docs/*.md is executed.

The blocks of one page run in order in one fresh Python process (so a later block may use what an
earlier one defined; the process is forked from one that already imported torch and hooktrain,
tests/forkserver.py), inside a temporary directory, with the trackers offline. A block that needs
a multi-process launch or a server is marked by an HTML comment on the line before its fence,
``<!-- no-run -->`` (a reason may follow: ``<!-- no-run: needs torchrun -->``), and is skipped.
Relative links must point at files that exist.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^\s`]*)")
NO_RUN = re.compile(r"<!--\s*no-run\b.*?-->")
PYTHON = {"python", "py", "python3"}
LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the first code line
    info: str
    code: str
    no_run: bool


def code_blocks(page: Path) -> list[Block]:
    """Every fenced code block of a Markdown page, with its language and no-run mark."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, info = match["fence"], match["info"].lower()
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        start, i = i + 1, i + 1
        body = []
        while i < len(lines) and not lines[i].strip().startswith(fence[0] * len(fence)):
            body.append(lines[i][len(match["indent"]):] if lines[i].startswith(match["indent"]) else lines[i])
            i += 1
        i += 1  # the closing fence
        blocks.append(Block(page, start + 1, info, "\n".join(body) + "\n", bool(NO_RUN.search(before))))
    return blocks


def runnable(page: Path) -> list[Block]:
    return [b for b in code_blocks(page) if b.info in PYTHON and not b.no_run]


RUNNER = r"""
import json, sys, traceback
blocks = json.load(open(sys.argv[1], encoding="utf-8"))
namespace = {"__name__": "__main__"}
for block in blocks:
    name = f"{block['page']}:{block['line']}"
    code = "\n" * (block["line"] - 1) + block["code"]  # tracebacks show the page's line numbers
    try:
        exec(compile(code, name, "exec"), namespace)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            raise
    except BaseException:
        print(f"\n=== the code block at {name} failed ===", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
"""


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


PAGES_WITH_CODE = [p for p in PAGES if runnable(p)]


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=_rel)
def test_python_blocks_run(page, tmp_path, fork_servers):
    blocks = runnable(page)
    spec = tmp_path / "blocks.json"
    spec.write_text(json.dumps([{"page": _rel(b.page), "line": b.line, "code": b.code} for b in blocks]))
    runner = tmp_path / "run_blocks.py"
    runner.write_text(RUNNER)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    # a fresh process per page, forked from one that imported torch and hooktrain (tests/forkserver.py)
    proc = fork_servers(env).run(runner, spec, cwd=work, timeout=240)
    assert proc.returncode == 0, (
        f"{_rel(page)}: a code block failed (exit {proc.returncode}). Make it runnable (the page's "
        "blocks run in order in one namespace: define what it uses in an earlier block), or, if it "
        "needs a multi-process launch or a server, put <!-- no-run: why --> on the line before it."
        f"\n--- stdout\n{proc.stdout[-3000:]}"
        f"\n--- stderr\n{proc.stderr[-6000:]}"
    )


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_exist(page):
    text = page.read_text(encoding="utf-8")
    text = "\n".join(b for i, b in enumerate(re.split(r"^```.*$", text, flags=re.M)) if i % 2 == 0)
    missing = []
    for match in LINK.finditer(text):
        target = match["target"].split("#", 1)[0]
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):  # anchors, http:, mailto: ...
            continue
        if not (page.parent / target).exists():
            missing.append(match["target"])
    assert not missing, f"{_rel(page)} links to missing files: {missing}"


def test_docs_tour_links_every_page():
    """docs/index.md and the README point at every page under docs/."""
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"index.md"}
    for start in (ROOT / "docs" / "index.md", ROOT / "README.md"):
        text = start.read_text(encoding="utf-8")
        unlinked = sorted(name for name in pages if f"{name})" not in text)
        assert not unlinked, f"{_rel(start)} does not link to {unlinked}"


def test_field_counts_in_the_prose_are_true():
    """"87 fields" / "87 of them": every count of TrainingArguments fields in the docs is current."""
    from dataclasses import fields

    from hooktrain import TrainingArguments

    count = len(fields(TrainingArguments))
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        stated = [int(n) for n in re.findall(r"\b(\d+) (?:fields\b|of them\b)", text)]
        assert all(n == count for n in stated), f"{_rel(page)} states {stated} fields; there are {count}"


def test_no_run_blocks_are_only_for_launches_or_servers():
    """Skipping is the exception: a no-run block must say why, or launch processes or a server."""
    reasons = ("torchrun", "launch", "server", "mlflow ui", "tensorboard", "multi", "distributed",
               "gpu", "cuda", "network", "account")
    for page in PAGES:
        for block in code_blocks(page):
            if block.no_run and block.info in PYTHON:
                lines = page.read_text(encoding="utf-8").splitlines()
                comment = next(x for x in reversed(lines[: block.line - 2]) if x.strip())
                text = (comment + block.code).lower()
                assert any(r in text for r in reasons), (
                    f"{_rel(page)}:{block.line}: a no-run Python block that neither launches processes nor "
                    "needs a server; make it run, or give the reason in the comment (<!-- no-run: why -->)"
                )


def test_fence_parser_reads_marks_and_languages(tmp_path):
    page = tmp_path / "p.md"
    page.write_text(
        "text\n\n```python\nx = 1\n```\n\n<!-- no-run: needs torchrun -->\n```python\nimport boom\n```\n"
        "```bash\necho hi\n```\n  ```py\n  y = 2\n  ```\n",
        encoding="utf-8",
    )
    blocks = code_blocks(page)
    assert [(b.info, b.no_run, b.code) for b in blocks] == [
        ("python", False, "x = 1\n"), ("python", True, "import boom\n"), ("bash", False, "echo hi\n"),
        ("py", False, "y = 2\n"),
    ]
    assert blocks[0].line == 4

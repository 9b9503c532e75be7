"""The README and docs/: a short README, links that lead somewhere, tables that are the code's."""

from __future__ import annotations

import re
from pathlib import Path

from test_flags import subcommand

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_is_a_page_a_newcomer_reads():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 330


def test_every_relative_link_leads_to_a_file_and_heading_that_exist():
    def anchors(page: Path) -> set[str]:
        headings = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
        return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}

    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            found = (page.parent / path).resolve() if path else page
            assert found.exists(), f"{page.name}: {target}"
            if anchor and found.suffix == ".md":
                assert anchor in anchors(found), f"{page.name}: {target}"


def eval_options_table() -> str:
    """`eval`'s options as docs/evaluation.md shows them: generated from the parser, whose
    flags are EvalSettings' fields."""
    rows = ["| option | meaning |", "|---|---|"]
    for action in subcommand("eval")._actions:
        if action.dest == "help":
            continue
        name = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.metavar}`"
        rows.append(f"| {name} | {action.help.replace('%%', '%').replace('|', '/')} |")
    return "\n".join(rows)


def test_the_eval_options_table_is_the_parsers():
    assert eval_options_table() in (ROOT / "docs" / "evaluation.md").read_text()

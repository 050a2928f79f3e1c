"""The README and docs/ hold together: every relative link and image resolves (file and heading), every docs page is
linked from the README and opens with its title and one line saying what it holds. Pages move; links rot silently."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def prose(path: Path) -> list[str]:
    """The lines of a page outside fenced code blocks."""
    lines, fenced = [], False
    for line in path.read_text().splitlines():
        fenced ^= line.startswith("```")
        if not fenced and not line.startswith("```"):
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in prose(path) if line.startswith("#")}


def test_slug_matches_github():
    assert slug(" Results on the offline default (2 CPU cores)") == "results-on-the-offline-default-2-cpu-cores"
    assert slug(" The classic assignment: IMDB with the hub's models") == "the-classic-assignment-imdb-with-the-hubs-models"
    assert slug(" The figures of `make reproduce` (2 CPU cores)") == "the-figures-of-make-reproduce-2-cpu-cores"


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for line in prose(page):
            for target in LINK.findall(line):
                if re.match(r"[a-z]+:", target):
                    continue
                name, _, anchor = target.partition("#")
                path = (page.parent / name).resolve() if name else page
                if not path.is_file() or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
                    broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_every_docs_page_is_linked_from_the_readme_and_says_what_it_holds():
    readme = (ROOT / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"](docs/{page.name})" in readme, page.name
        title, blank, summary, after = page.read_text().splitlines()[:4]
        assert title.startswith("# ") and blank == "" and summary and not summary.startswith("#") and after == "", page.name

"""Check every internal link of the built HTML site: the target page exists and so does the
anchor. External links (with a scheme) are not followed: the build runs without network.

Usage: ``python docs/check_links.py docs/_build/html``; exits 1 and lists the broken links.
"""

from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

# Pages Sphinx writes from templates with links resolved by JavaScript at view time.
SKIPPED_PAGES = {"search.html", "genindex.html", "py-modindex.html"}


class Page(HTMLParser):
    """The ids and the link targets (href, src) of one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name in ("id", "name"):
                self.ids.add(value)
            elif (name == "href" and tag in ("a", "link")) or (name == "src" and tag == "img"):
                self.links.append(value)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def broken_links(root: Path) -> list[str]:
    """``page: link`` for every internal link whose file or anchor is missing."""
    pages = {
        path.resolve(): parse(path)
        for path in root.rglob("*.html")
        if "_static" not in path.relative_to(root).parts  # the theme's template macros
    }
    broken = []
    for path, page in pages.items():
        if path.name in SKIPPED_PAGES:
            continue
        for link in page.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc:
                continue
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{path.relative_to(root.resolve())}: {link} (no such file)")
            elif parts.fragment and target.suffix == ".html":
                if unquote(parts.fragment) not in pages[target].ids:
                    broken.append(f"{path.relative_to(root.resolve())}: {link} (no such anchor)")
    return broken


def main(root: str) -> int:
    broken = broken_links(Path(root))
    for line in broken:
        print(f"broken link: {line}")
    print(f"internal links: {len(broken)} broken")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

"""The results writer shared by the benchmark jobs: where a run writes, and the RESULTS.md
section it replaces."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

from benchmarks import results_writer
from benchmarks.results_writer import destination, markers, write_section


def test_only_a_publishable_run_without_a_chosen_folder_publishes(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    published = destination("job", publishable=True)
    assert published.published
    assert published.results_md == results_writer.PUBLISHED_MD
    assert published.results_dir == results_writer.PUBLISHED_DIR
    quick = destination("job", publishable=False)
    assert not quick.published
    assert quick.results_md.parent.parent == tmp_path  # a new temporary folder
    assert quick.results_md.parent.name.startswith("job-")
    assert quick.results_dir == quick.results_md.parent / "results"
    chosen = destination("job", publishable=True, out=tmp_path / "mine")
    assert not chosen.published
    assert chosen.results_md == tmp_path / "mine" / "RESULTS.md"
    assert chosen.results_dir == tmp_path / "mine" / "results"
    finer = destination("job", publishable=True, results_md=tmp_path / "R.md")
    assert not finer.published and finer.results_md == tmp_path / "R.md"


def test_write_section_creates_appends_and_replaces(tmp_path):
    path = tmp_path / "new" / "RESULTS.md"
    write_section(path, "speed", "first\n")
    assert path.read_text() == "<!-- speed:begin -->\nfirst\n<!-- speed:end -->\n"
    write_section(path, "reproduce", "other")
    write_section(path, "speed", "second")
    text = path.read_text()
    assert text == (
        "<!-- speed:begin -->\nsecond\n<!-- speed:end -->\n\n"
        "<!-- reproduce:begin -->\nother\n<!-- reproduce:end -->\n"
    )


def test_write_section_keeps_everything_around_its_markers(tmp_path):
    path = tmp_path / "RESULTS.md"
    head = "# Results\n\nintro\n\n"
    tail = "\n\n<!-- other:begin -->\nkept\n<!-- other:end -->\n"
    begin, end = markers("speed")
    path.write_text(f"{head}{begin}\nold\ntext\n{end}{tail}")
    write_section(path, "speed", "new")
    assert path.read_text() == f"{head}{begin}\nnew\n{end}{tail}"


@pytest.mark.parametrize("job", ["speed", "speed-cuda", "reproduce"])
def test_sections_with_a_common_prefix_stay_apart(tmp_path, job):
    path = tmp_path / "RESULTS.md"
    for name in ("speed", "speed-cuda", "reproduce"):
        write_section(path, name, f"{name} body")
    write_section(path, job, "replaced")
    text = path.read_text()
    for name in ("speed", "speed-cuda", "reproduce"):
        begin, end = markers(name)
        assert text.count(begin) == 1 and text.count(end) == 1
        body = text.split(begin + "\n", 1)[1].split("\n" + end, 1)[0]
        assert body == ("replaced" if name == job else f"{name} body")


def test_fingerprint_covers_the_published_files():
    fingerprint = results_writer.published_fingerprint()
    assert "RESULTS.md" in fingerprint
    assert "results/speed.json" in fingerprint and "results/reproduce.json" in fingerprint
    assert all(len(digest) == 64 for digest in fingerprint.values())


def _github_slugs(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of ``markdown``: lower case, punctuation and
    symbols dropped (letters, digits, ``-`` and ``_`` kept), spaces to ``-``, repeats
    numbered."""
    slugs: set[str] = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", markdown, re.M):
        text = re.sub(r"[`*]", "", heading).lower()
        slug = "".join(c for c in text if c.isalpha() or c.isdigit() or c in "-_ ")
        slug = slug.replace(" ", "-")
        unique, n = slug, 0
        while unique in slugs:
            n += 1
            unique = f"{slug}-{n}"
        slugs.add(unique)
    return slugs


def test_links_into_the_published_results_find_their_section():
    """Prose quotes no measured figure but links to its RESULTS.md section: every such link
    must name a heading that the published file has."""
    root = Path(results_writer.BENCHMARKS_DIR).parent
    slugs = _github_slugs(results_writer.PUBLISHED_MD.read_text(encoding="utf-8"))
    pages = [root / "README.md", root / "CHANGELOG.md", *sorted((root / "docs").rglob("*.md"))]
    links = [
        (page.name, anchor)
        for page in pages
        for anchor in re.findall(r"RESULTS\.md#([^)\s]+)", page.read_text(encoding="utf-8"))
    ]
    assert links  # the README links its sections
    assert [link for link in links if link[1] not in slugs] == []

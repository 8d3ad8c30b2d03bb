"""Where a benchmark job writes its results, and the one writer of RESULTS.md sections.

Both jobs (``python -m benchmarks.reproduce`` and ``python -m benchmarks.speed``) publish into
``benchmarks/RESULTS.md`` (one section each, between ``<!-- <job>:begin -->`` and
``<!-- <job>:end -->``) and ``benchmarks/results/`` (JSON and figures), and only from a full
run of their default configuration: :func:`destination` sends every other run (``--quick``,
other seeds, ...) to the folder the user names with ``--out`` or else to a new temporary
folder, laid out like the published one (``RESULTS.md`` beside ``results/``). A smoke run
therefore never overwrites the published evidence.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: the folder of the published results
BENCHMARKS_DIR = Path(__file__).resolve().parent
PUBLISHED_MD = BENCHMARKS_DIR / "RESULTS.md"
PUBLISHED_DIR = BENCHMARKS_DIR / "results"


@dataclass(frozen=True)
class Destination:
    """Where one run writes.

    Attributes
    ----------
    results_dir : Path
        JSON and figures.
    results_md : Path
        The Markdown file whose job section is replaced (other sections are kept).
    published : bool
        Whether these are the repository's published results.
    """

    results_dir: Path
    results_md: Path
    published: bool

    @property
    def kind(self) -> str:
        """What a run reports having written: published results or not."""
        return "published results" if self.published else "results (not published)"


def destination(
    job: str,
    *,
    publishable: bool,
    out: Path | None = None,
    results_dir: Path | None = None,
    results_md: Path | None = None,
) -> Destination:
    """The folder a run of ``job`` writes to.

    Parameters
    ----------
    job : str
        The job's name (prefix of the temporary folder).
    publishable : bool
        The run is the job's full default configuration.
    out : Path, optional
        A folder chosen by the user: ``out/RESULTS.md`` and ``out/results/``.
    results_dir, results_md : Path, optional
        Finer choices by the user, overriding the corresponding part of ``out``.

    Returns
    -------
    Destination
        The published folder when ``publishable`` and the user chose nothing; the user's
        folder when they chose one; otherwise a new temporary folder.
    """
    chosen = out is not None or results_dir is not None or results_md is not None
    if publishable and not chosen:
        return Destination(PUBLISHED_DIR, PUBLISHED_MD, published=True)
    root = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix=f"{job}-"))
    return Destination(
        Path(results_dir) if results_dir is not None else root / "results",
        Path(results_md) if results_md is not None else root / "RESULTS.md",
        published=False,
    )


def add_destination_arguments(parser: argparse.ArgumentParser, files: str) -> None:
    """Add ``--out``, ``--results-dir`` and ``--results-md`` (:func:`chosen_destination`).

    Parameters
    ----------
    parser : argparse.ArgumentParser
    files : str
        What the job writes under ``results/``, for the help of ``--results-dir``.
    """
    parser.add_argument(
        "--out", type=Path, help="write DIR/RESULTS.md and DIR/results/ instead of publishing"
    )
    parser.add_argument("--results-dir", type=Path, help=f"{files} (overrides --out)")
    parser.add_argument("--results-md", type=Path, help="the Markdown file (overrides --out)")


def chosen_destination(job: str, args: argparse.Namespace, *, publishable: bool) -> Destination:
    """:func:`destination` of the folders named by :func:`add_destination_arguments`."""
    return destination(
        job,
        publishable=publishable,
        out=args.out,
        results_dir=args.results_dir,
        results_md=args.results_md,
    )


def markers(job: str) -> tuple[str, str]:
    """The comment lines that delimit ``job``'s section of a RESULTS.md."""
    return f"<!-- {job}:begin -->", f"<!-- {job}:end -->"


def write_section(path: Path, job: str, body: str) -> None:
    """Put ``body`` between ``job``'s markers in ``path``, keeping everything else.

    The section is appended when ``path`` has no markers for ``job`` yet; the file and its
    folder are created when missing.
    """
    begin, end = markers(job)
    block = f"{begin}\n{body.rstrip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    start = text.find(begin)
    stop = text.find(end, start) if start >= 0 else -1
    if stop >= 0:
        text = text[:start] + block + text[stop + len(end) :]
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def relative_link(path: Path, markdown: Path) -> str:
    """``path`` as a Markdown link target relative to the folder of ``markdown``."""
    return Path(os.path.relpath(Path(path).resolve(), Path(markdown).resolve().parent)).as_posix()


def published_fingerprint() -> dict[str, str]:
    """SHA-256 of every published file (RESULTS.md and the files under results/), by path
    relative to the benchmarks folder: equal before and after a run that did not publish."""
    files = [PUBLISHED_MD, *sorted(p for p in PUBLISHED_DIR.rglob("*") if p.is_file())]
    return {
        p.relative_to(BENCHMARKS_DIR).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in files
        if p.exists()
    }

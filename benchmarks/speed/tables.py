"""Markdown tables of the speed benchmark's records: contenders side by side, memory, CG
iterations and residuals, the ``auto`` crossover, the paper's figures and mean field."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ..paper_sizes import PAPER_LABELS, PAPER_MODELS, PAPER_PIXELS, PAPER_SIDE
from .array_contenders import MAX_DENSE_UNKNOWNS
from .contenders import CONTENDER_NAMES
from .records import Record, one, ratio, select, value

MB = 2.0**20
#: the paper's per-image times on a GTX-1080 (ms), where it gives one
PAPER_GPU_MS = {("general", 128): "29", ("potts", 128): "4", ("potts", 1024): "—"}


def format_number(x: float | None) -> str:
    """Three significant digits, "—" for a missing value."""
    return "—" if x is None else f"{x:.3g}"


def format_ms(seconds: float | None) -> str:
    """Seconds as milliseconds, three significant digits below a second."""
    if seconds is None:
        return "—"
    milliseconds = seconds * 1e3
    return f"{milliseconds:.3g}" if milliseconds < 1000 else f"{milliseconds:,.0f}"


def format_times(x: float | None) -> str:
    """A ratio as "1.5×" or "12×"."""
    return "—" if x is None else f"{x:.2g}×" if x < 10 else f"{x:.0f}×"


def _cell(
    record: Record | None,
    auto: Record | None,
    key: str = "time_s",
    scale: Callable[[float], str] = format_ms,
) -> str:
    """``value (×ratio to auto)``, or why there is no value."""
    if record is None:
        return "—"
    if record["status"] == "skipped":
        return "skip"
    if record["status"] == "failed":
        return "fail"
    text = scale(record.get(key))
    relative = ratio(record.get(key), value(auto, key))
    if relative is not None and record["contender"] != "ours-auto":
        text += f" ({format_times(relative)})"
    if _above_tolerance(record):
        text += " ⚠"
    return text


def _above_tolerance(record: Record) -> bool:
    """The solver said it missed the tolerance, or its true residual is above it (SciPy's
    CG stops on its recurrence residual; direct solvers have no tolerance at all)."""
    return record["status"] == "unconverged" or record.get("residual", 0.0) > record["rtol"]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def format_kappa(k: float) -> str:
    """κ as "10" or "1e3"."""
    exponent = round(math.log10(k))
    return "10" if exponent == 1 else f"1e{exponent}"


def _case_label(r: Record, fields: tuple[str, ...]) -> list[str]:
    labels = {
        "model": lambda: r["model"],
        "rank": lambda: str(r["rank"]),
        "pixels": lambda: str(r["pixels"]),
        "labels": lambda: str(r["labels"]),
        "dtype": lambda: r["dtype"].replace("float", "f"),
        "batch": lambda: str(r["batch"]),
        "kappa": lambda: format_kappa(r["kappa"]),
    }
    return [labels[f]() for f in fields]


_FIELD_NAMES = {
    "model": "model",
    "rank": "D",
    "pixels": "P",
    "labels": "L",
    "dtype": "dtype",
    "batch": "B",
    "kappa": "κ",
}


def _cases(records: list[Record], fields: tuple[str, ...]) -> list[tuple]:
    seen: dict[tuple, None] = {}
    for r in records:
        seen[tuple(r[f] for f in fields)] = None
    return list(seen)


def contender_table(
    records: list[Record],
    fields: tuple[str, ...],
    phase: str,
    key: str = "time_s",
    scale: Callable[[float], str] = format_ms,
) -> str:
    """Rows: cases; columns: contenders' ``key`` with the ratio to ours-auto."""
    records = select(records, phase=phase)
    present = [c for c in CONTENDER_NAMES if select(records, contender=c)]
    rows = []
    for case in _cases(records, fields):
        group = select(records, **dict(zip(fields, case, strict=True)))
        auto = one(group, contender="ours-auto")
        first = group[0]
        row = _case_label(first, fields)
        for c in present:
            found = select(group, contender=c)
            row.append(_cell(found[0] if found else None, auto, key, scale))
        rows.append(row)
    return markdown_table([_FIELD_NAMES[f] for f in fields] + present, rows)


def memory_table(records: list[Record], fields: tuple[str, ...]) -> str:
    """Peak forward+backward memory in MB (× ours-auto), and ours-auto's × input bytes."""

    def mb(v: float | None) -> str:
        return "—" if v is None else f"{v / MB:.3g}"

    fb = [
        r
        for r in select(records, phase="forward_backward")
        if r["status"] == "skipped" or r.get("peak_bytes") is not None
    ]
    present = [c for c in CONTENDER_NAMES if select(fb, contender=c)]
    rows = []
    for case in _cases(fb, fields):
        group = select(fb, **dict(zip(fields, case, strict=True)))
        auto = one(group, contender="ours-auto")
        row = _case_label(group[0], fields)
        row.append(mb(group[0]["input_bytes"]))
        row.append(format_times(ratio(value(auto, "peak_bytes"), group[0]["input_bytes"])))
        for c in present:
            found = select(group, contender=c)
            row.append(_cell(found[0] if found else None, auto, "peak_bytes", mb))
        rows.append(row)
    return markdown_table(
        [_FIELD_NAMES[f] for f in fields] + ["inputs MB", "auto/inputs"] + present, rows
    )


def iterations_table(records: list[Record], fields: tuple[str, ...]) -> str:
    """CG iterations (forward/backward) and the largest true residual of each contender."""
    cg_like = ("ours-cg", "scipy-cg", "torch-unrolled-cg")
    fb = select(records, phase="forward_backward")
    fwd = select(records, phase="forward")
    present = [c for c in CONTENDER_NAMES if select(fwd, contender=c)]
    rows = []
    for case in _cases(fwd, fields):
        where = dict(zip(fields, case, strict=True))
        row = _case_label(select(fwd, **where)[0], fields)
        row.append(f"{select(fwd, **where)[0]['rtol']:g}")
        for c in cg_like:
            r = one(select(fb, **where), contender=c)
            its = r.get("iterations") if r else None
            row.append("/".join(str(i) for i in its) if its else "—")
        for c in present:
            r = select(fwd, contender=c, **where)
            if not r or r[0]["status"] in ("skipped", "failed"):
                row.append("—" if not r else r[0]["status"])
                continue
            text = f"{r[0]['residual']:.1e}"
            row.append(text + (" ⚠" if _above_tolerance(r[0]) else ""))
        rows.append(row)
    header = [_FIELD_NAMES[f] for f in fields] + ["rtol"]
    header += [f"{c} its" for c in cg_like] + [f"{c} residual" for c in present]
    return markdown_table(header, rows)


def crossover_table(cross: list[dict[str, Any]]) -> str:
    ranks = sorted({p["rank"] for g in cross for p in g["points"]})
    rows = []
    for g in cross:
        row = [
            g["model"],
            g["dtype"].replace("float", "f"),
            format_kappa(g["kappa"]),
            g["phase"].replace("forward_backward", "fwd+bwd").replace("forward", "fwd"),
        ]
        by_rank = {p["rank"]: p for p in g["points"]}
        for rank in ranks:
            p = by_rank.get(rank)
            if p is None or p["cg_over_direct"] is None:
                row.append("—")
            else:
                mark = " **cg**" if p["cg_over_direct"] < 1 else ""
                row.append(f"{p['cg_over_direct']:.2g}{mark}")
        rows.append(row)
    header = ["model", "dtype", "κ", "phase"] + [f"D={r}" for r in ranks]
    return markdown_table(header, rows)


def skip_notes(records: list[Record]) -> list[str]:
    """Skip reasons and failures, deduplicated."""
    notes: dict[str, None] = {}
    for r in records:
        if r["status"] == "skipped":
            notes[f"{r['contender']} skipped ({r['model']}): {r['note']}"] = None
    for r in records:
        if r["status"] == "failed":
            first_line = r["note"].split(". ")[0]
            notes[
                f"{r['contender']} failed on {r['model']} D={r['rank']} "
                f"P={r['pixels']} L={r['labels']} κ={format_kappa(r['kappa'])} {r['dtype']} "
                f"B={r['batch']} {r['phase']}: {first_line}"
            ] = None
    return list(notes)


def skips_per_kind(notes: list[str], records: list[Record]) -> list[str]:
    """Collapse the per-size dense-Cholesky notes into one line naming where it ran."""
    dense = [n for n in notes if n.startswith("dense-cholesky skipped")]
    rest = [n for n in notes if not n.startswith("dense-cholesky skipped")]
    if dense:
        ran = sorted(
            {
                r["unknowns"]
                for r in select(records, contender="dense-cholesky")
                if r["status"] != "skipped"
            }
        )
        where = f"it ran at N = {', '.join(map(str, ran))}" if ran else "it never ran"
        rest.insert(
            0,
            f"dense-cholesky skipped wherever N > {MAX_DENSE_UNKNOWNS} (the N×N "
            f"matrix is formed and factored); {where}",
        )
    return rest


def paper_comparison(records: list[Record], mean_field: dict[str, Any]) -> str:
    """The paper's per-image times beside ours-auto's forward times and mean field's."""
    fwd = select(
        records, suite="paper", phase="forward", contender="ours-auto", kappa=1e3, dtype="float32"
    )

    def per_image(model: str, rank: int, batch: int) -> str:
        r = one(fwd, model=model, rank=rank, batch=batch)
        return "—" if r is None else format_ms(r["time_s"] / batch)

    rows = [
        [
            f"{'general' if model == 'general' else 'Potts'} G-CRF, D = {rank}",
            PAPER_GPU_MS[model, rank],
            f"{per_image(model, rank, 1)} (B = 1), {per_image(model, rank, 8)} (B = 8)",
        ]
        for model, rank in PAPER_MODELS
    ]
    runs = {(m["side"], m["iterations"]): m for m in mean_field.get("runs", [])}
    for iterations in (5, 10):
        m = runs.get((321, iterations))
        ours = (
            "not measured"
            if m is None
            else (
                f"{format_ms(m['total_s'])} ({format_ms(m['setup_s'])} lattice + "
                f"{format_ms(m['inference_s'])} inference)"
            )
        )
        rows.append([f"dense-CRF mean field, 321×321, {iterations} iterations", "200", ours])
    return markdown_table(
        [
            f"per 321×321 image ({PAPER_SIDE}×{PAPER_SIDE} = {PAPER_PIXELS} pixels, "
            f"L = {PAPER_LABELS})",
            "paper, GTX-1080 (ms)",
            "this CPU, ours-auto forward, κ = 10³, float32 (ms)",
        ],
        rows,
    )


def mean_field_table(mean_field: dict[str, Any]) -> str:
    """pydensecrf2's lattice setup and inference times."""
    if mean_field.get("unavailable"):
        return f"pydensecrf2 was not available: `{mean_field['unavailable']}`"
    rows = [
        [
            f"{m['side']}×{m['side']}",
            str(m["labels"]),
            str(m["iterations"]),
            format_ms(m["setup_s"]),
            format_ms(m["inference_s"]),
            format_ms(m["total_s"]),
            str(m["repeats"]),
        ]
        for m in mean_field["runs"]
    ]
    return markdown_table(
        ["image", "L", "iterations", "lattice setup ms", "inference ms", "total ms", "repeats"],
        rows,
    )

"""The speed benchmark's report: targets, the ``auto`` crossover, Markdown, plots, summary.

Everything here reads the records of :func:`benchmarks.speed.run` (one per case, contender
and phase). The Markdown goes between ``<!-- speed:begin -->`` and ``<!-- speed:end -->`` in
benchmarks/RESULTS.md; :func:`write_section` replaces only that section.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .contenders import MAX_DENSE_UNKNOWNS

BEGIN = "<!-- speed:begin -->"
END = "<!-- speed:end -->"

#: Contender columns, in table order.
CONTENDERS = (
    "ours-auto",
    "ours-direct",
    "ours-cg",
    "scipy-cg",
    "dense-cholesky",
    "linear-operator",
    "torch-unrolled-cg",
)
PAPER_SIZE = {"pixels": 41 * 41, "labels": 21}
TARGET_CASE = {**PAPER_SIZE, "kappa": 1e3, "dtype": "float32", "batch": 1}
MB = 2.0**20

Record = dict[str, Any]


def _select(records: Iterable[Record], **fields: Any) -> list[Record]:
    """The records matching ``fields``; ``suite=`` matches any of a record's suites."""
    suite = fields.pop("suite", None)
    return [
        r
        for r in records
        if (suite is None or suite in r["suites"]) and all(r.get(k) == v for k, v in fields.items())
    ]


def _one(records: Iterable[Record], **fields: Any) -> Record | None:
    found = [r for r in _select(records, **fields) if r["status"] in ("ok", "unconverged")]
    return found[0] if found else None


def _value(record: Record | None, key: str) -> float | None:
    return None if record is None else record.get(key)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


# -- targets ---------------------------------------------------------------------------------


def targets(records: list[Record]) -> list[dict[str, Any]]:
    """The issue's targets at paper size, κ = 10³, float32, forward+backward, batch 1.

    Returns
    -------
    list of dicts: ``target``, ``measured`` (a ratio, ``None`` when not measured),
    ``needed`` (e.g. "≥ 5"), ``pass`` (``None`` when not measured).
    """
    fb = _select(records, suite="paper", phase="forward_backward", **TARGET_CASE)

    def rec(model: str, rank: int, contender: str) -> Record | None:
        return _one(fb, model=model, rank=rank, contender=contender)

    out = []

    def add(
        text: str,
        top: Record | None,
        bottom: Record | None,
        key: str,
        threshold: float,
        at_least: bool,
    ) -> None:
        measured = _ratio(_value(top, key), _value(bottom, key))
        ok = (
            None
            if measured is None
            else (measured >= threshold if at_least else measured <= threshold)
        )
        target = {
            "target": text,
            "measured": measured,
            "needed": f"{'≥' if at_least else '≤'} {threshold:g}",
            "pass": ok,
        }
        if key == "time_s":
            # The same ratio of the fastest samples: robust to foreign load on the machine.
            target["measured_min"] = _ratio(_value(top, "min_s"), _value(bottom, "min_s"))
        out.append(target)

    configs = (("general", 128), ("potts", 128), ("potts", 1024))
    for model, rank in configs:
        add(
            f"{model} D={rank}: time scipy-cg / ours-auto",
            rec(model, rank, "scipy-cg"),
            rec(model, rank, "ours-auto"),
            "time_s",
            5.0,
            True,
        )
    auto, lo = rec("general", 128, "ours-auto"), rec("general", 128, "linear-operator")
    add("general D=128: time linear-operator / ours-auto", lo, auto, "time_s", 1.0, True)
    add("general D=128: peak memory linear-operator / ours-auto", lo, auto, "peak_bytes", 1.0, True)
    add(
        "D=128: time general / Potts (ours-auto)",
        auto,
        rec("potts", 128, "ours-auto"),
        "time_s",
        5.0,
        True,
    )
    for model, rank in configs:
        r = rec(model, rank, "ours-auto")
        measured = _ratio(_value(r, "peak_bytes"), _value(r, "input_bytes"))
        out.append(
            {
                "target": f"{model} D={rank}: peak memory ours-auto / input bytes",
                "measured": measured,
                "needed": "≤ 3",
                "pass": None if measured is None else measured <= 3.0,
            }
        )
    return out


# -- crossover -------------------------------------------------------------------------------


def crossover(records: list[Record]) -> list[dict[str, Any]]:
    """Where ``cg`` beats ``direct``: per (model, dtype, κ, phase) of the ``rank`` suite.

    Returns
    -------
    list of dicts: ``model``, ``dtype``, ``kappa``, ``phase``, ``points`` (a list of
    ``{"rank", "cg_s", "direct_s", "cg_over_direct"}``) and ``cg_faster_ranks``.
    """
    rank_records = _select(records, suite="rank")
    groups = sorted({(r["model"], r["dtype"], r["kappa"], r["phase"]) for r in rank_records})
    out = []
    for model, dtype, kappa, phase in groups:
        group = _select(rank_records, model=model, dtype=dtype, kappa=kappa, phase=phase)
        points = []
        for rank in sorted({r["rank"] for r in group}):
            cg = _value(_one(group, rank=rank, contender="ours-cg"), "time_s")
            direct = _value(_one(group, rank=rank, contender="ours-direct"), "time_s")
            points.append(
                {"rank": rank, "cg_s": cg, "direct_s": direct, "cg_over_direct": _ratio(cg, direct)}
            )
        faster = [
            p["rank"] for p in points if p["cg_over_direct"] is not None and p["cg_over_direct"] < 1
        ]
        out.append(
            {
                "model": model,
                "dtype": dtype,
                "kappa": kappa,
                "phase": phase,
                "points": points,
                "cg_faster_ranks": faster,
            }
        )
    return out


# -- formatting ------------------------------------------------------------------------------


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 1000 else f"{ms:,.0f}"


def _times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2g}×" if value < 10 else f"{value:.0f}×"


def _cell(
    record: Record | None,
    auto: Record | None,
    key: str = "time_s",
    scale: Callable[[float], str] = _ms,
) -> str:
    """``value (×ratio to auto)``, or why there is no value."""
    if record is None:
        return "—"
    if record["status"] == "skipped":
        return "skip"
    if record["status"] == "failed":
        return "fail"
    text = scale(record.get(key))
    ratio = _ratio(record.get(key), _value(auto, key))
    if ratio is not None and record["contender"] != "ours-auto":
        text += f" ({_times(ratio)})"
    if _above_tolerance(record):
        text += " ⚠"
    return text


def _above_tolerance(record: Record) -> bool:
    """The solver said it missed the tolerance, or its true residual is above it (SciPy's
    CG stops on its recurrence residual; direct solvers have no tolerance at all)."""
    return record["status"] == "unconverged" or record.get("residual", 0.0) > record["rtol"]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _kappa(k: float) -> str:
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
        "kappa": lambda: _kappa(r["kappa"]),
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


def _contender_table(
    records: list[Record],
    fields: tuple[str, ...],
    phase: str,
    key: str = "time_s",
    scale: Callable[[float], str] = _ms,
) -> str:
    """Rows: cases; columns: contenders' ``key`` with the ratio to ours-auto."""
    records = _select(records, phase=phase)
    present = [c for c in CONTENDERS if _select(records, contender=c)]
    rows = []
    for case in _cases(records, fields):
        group = _select(records, **dict(zip(fields, case, strict=True)))
        auto = _one(group, contender="ours-auto")
        first = group[0]
        row = _case_label(first, fields)
        for c in present:
            found = _select(group, contender=c)
            row.append(_cell(found[0] if found else None, auto, key, scale))
        rows.append(row)
    return _table([_FIELD_NAMES[f] for f in fields] + present, rows)


def _memory_table(records: list[Record], fields: tuple[str, ...]) -> str:
    """Peak forward+backward memory in MB (× ours-auto), and ours-auto's × input bytes."""

    def mb(v: float | None) -> str:
        return "—" if v is None else f"{v / MB:.3g}"

    fb = [
        r
        for r in _select(records, phase="forward_backward")
        if r["status"] == "skipped" or r.get("peak_bytes") is not None
    ]
    present = [c for c in CONTENDERS if _select(fb, contender=c)]
    rows = []
    for case in _cases(fb, fields):
        group = _select(fb, **dict(zip(fields, case, strict=True)))
        auto = _one(group, contender="ours-auto")
        row = _case_label(group[0], fields)
        row.append(mb(group[0]["input_bytes"]))
        row.append(_times(_ratio(_value(auto, "peak_bytes"), group[0]["input_bytes"])))
        for c in present:
            found = _select(group, contender=c)
            row.append(_cell(found[0] if found else None, auto, "peak_bytes", mb))
        rows.append(row)
    return _table([_FIELD_NAMES[f] for f in fields] + ["inputs MB", "auto/inputs"] + present, rows)


def _iterations_table(records: list[Record], fields: tuple[str, ...]) -> str:
    """CG iterations (forward/backward) and the largest true residual of each contender."""
    cg_like = ("ours-cg", "scipy-cg", "torch-unrolled-cg")
    fb = _select(records, phase="forward_backward")
    fwd = _select(records, phase="forward")
    present = [c for c in CONTENDERS if _select(fwd, contender=c)]
    rows = []
    for case in _cases(fwd, fields):
        where = dict(zip(fields, case, strict=True))
        row = _case_label(_select(fwd, **where)[0], fields)
        row.append(f"{_select(fwd, **where)[0]['rtol']:g}")
        for c in cg_like:
            r = _one(_select(fb, **where), contender=c)
            its = r.get("iterations") if r else None
            row.append("/".join(str(i) for i in its) if its else "—")
        for c in present:
            r = _select(fwd, contender=c, **where)
            if not r or r[0]["status"] in ("skipped", "failed"):
                row.append("—" if not r else r[0]["status"])
                continue
            text = f"{r[0]['residual']:.1e}"
            row.append(text + (" ⚠" if _above_tolerance(r[0]) else ""))
        rows.append(row)
    header = [_FIELD_NAMES[f] for f in fields] + ["rtol"]
    header += [f"{c} its" for c in cg_like] + [f"{c} residual" for c in present]
    return _table(header, rows)


def _crossover_table(cross: list[dict[str, Any]]) -> str:
    ranks = sorted({p["rank"] for g in cross for p in g["points"]})
    rows = []
    for g in cross:
        row = [
            g["model"],
            g["dtype"].replace("float", "f"),
            _kappa(g["kappa"]),
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
    return _table(header, rows)


def _notes(records: list[Record]) -> list[str]:
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
                f"P={r['pixels']} L={r['labels']} κ={_kappa(r['kappa'])} {r['dtype']} "
                f"B={r['batch']} {r['phase']}: {first_line}"
            ] = None
    return list(notes)


def _skips_per_kind(notes: list[str], records: list[Record]) -> list[str]:
    """Collapse the per-size dense-Cholesky notes into one line naming where it ran."""
    dense = [n for n in notes if n.startswith("dense-cholesky skipped")]
    rest = [n for n in notes if not n.startswith("dense-cholesky skipped")]
    if dense:
        ran = sorted(
            {
                r["unknowns"]
                for r in _select(records, contender="dense-cholesky")
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


# -- the paper's figures beside ours -----------------------------------------------------------


def _paper_comparison(records: list[Record], mean_field: dict[str, Any]) -> str:
    fwd = _select(
        records, suite="paper", phase="forward", contender="ours-auto", kappa=1e3, dtype="float32"
    )

    def per_image(model: str, rank: int, batch: int) -> str:
        r = _one(fwd, model=model, rank=rank, batch=batch)
        return "—" if r is None else _ms(r["time_s"] / batch)

    rows = [
        [
            "general G-CRF, D = 128",
            "29",
            f"{per_image('general', 128, 1)} (B = 1), {per_image('general', 128, 8)} (B = 8)",
        ],
        [
            "Potts G-CRF, D = 128",
            "4",
            f"{per_image('potts', 128, 1)} (B = 1), {per_image('potts', 128, 8)} (B = 8)",
        ],
        [
            "Potts G-CRF, D = 1024",
            "—",
            f"{per_image('potts', 1024, 1)} (B = 1), {per_image('potts', 1024, 8)} (B = 8)",
        ],
    ]
    runs = {(m["side"], m["iterations"]): m for m in mean_field.get("runs", [])}
    for iterations in (5, 10):
        m = runs.get((321, iterations))
        ours = (
            "not measured"
            if m is None
            else (
                f"{_ms(m['total_s'])} ({_ms(m['setup_s'])} lattice + {_ms(m['inference_s'])} "
                "inference)"
            )
        )
        rows.append([f"dense-CRF mean field, 321×321, {iterations} iterations", "200", ours])
    return _table(
        [
            "per 321×321 image (41×41 = 1681 pixels, L = 21)",
            "paper, GTX-1080 (ms)",
            "this CPU, ours-auto forward, κ = 10³, float32 (ms)",
        ],
        rows,
    )


def _mean_field_table(mean_field: dict[str, Any]) -> str:
    if mean_field.get("unavailable"):
        return f"pydensecrf2 was not available: `{mean_field['unavailable']}`"
    rows = [
        [
            f"{m['side']}×{m['side']}",
            str(m["labels"]),
            str(m["iterations"]),
            _ms(m["setup_s"]),
            _ms(m["inference_s"]),
            _ms(m["total_s"]),
            str(m["repeats"]),
        ]
        for m in mean_field["runs"]
    ]
    return _table(
        ["image", "L", "iterations", "lattice setup ms", "inference ms", "total ms", "repeats"],
        rows,
    )


# -- the section -----------------------------------------------------------------------------


def _machine(info: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    pools = "; ".join(
        f"{p['internal_api']} {p['version'] or ''} ({p['prefix']}, {p['num_threads']} threads"
        + (f", {p['architecture']})" if p.get("architecture") else ")")
        for p in info["threads"]["pools"]
    )
    env = ", ".join(f"{k}={v}" for k, v in info["threads"]["environment"].items() if v)
    load = "/".join(f"{x:.1f}" for x in info["load_average_start"])
    load_end = "/".join(f"{x:.1f}" for x in info.get("load_average_end", ()))
    threads = info["threads"]["threads"]
    why = ""
    if threads < info["cores"]:
        why = (
            f" — fewer than the {info['cores']} cores because the machine was shared with "
            "other jobs: with 2 OpenBLAS threads and one core busy elsewhere, the workers "
            "stall on every small product (measured on this machine: a Potts CG solve at "
            "P = 441 took 2.9 s with 2 threads, 25 ms with 1)"
        )
    return "\n".join(
        [
            f"* CPU: {info['cpu']}, {info['cores']} cores; {info['platform']}; "
            f"Python {info['python']}; device `{info['device']}`",
            f"* versions: {versions}",
            f"* threads: {threads} for every BLAS/OpenMP pool (threadpoolctl) and torch{why}; "
            f"pools: {pools}; environment: {env or 'none set'}",
            f"* load average (1/5/15 min) at start {load}, at end {load_end} — the machine is "
            "shared; medians resist short bursts of foreign load, not sustained load",
            f"* date {info['date']}, commit {info['commit']}",
        ]
    )


def markdown(results: dict[str, Any], plots: list[Path], md_path: Path) -> str:
    """The RESULTS.md speed section (without the markers)."""
    records = results["records"]
    paper = _select(records, suite="paper")
    paper_fields = ("model", "rank", "dtype", "batch", "kappa")
    sweep_fields = {
        "pixels": ("model", "pixels"),
        "rank": ("model", "rank", "dtype", "kappa"),
        "labels": ("model", "labels"),
    }
    target_rows = [
        [
            t["target"],
            _number(t["measured"]),
            _number(t.get("measured_min")),
            t["needed"],
            {True: "pass", False: "**FAIL**", None: "not measured"}[t["pass"]],
        ]
        for t in results["targets"]
    ]
    parts = [
        "## Speed (`python -m benchmarks.speed`)",
        "",
        (
            "Quick run (`--quick`): a subset with fewer repeats. Run without `--quick` for the "
            "full tables."
            if results.get("quick")
            else "Full run. Regenerate with `python -m benchmarks.speed` (about 15 minutes)."
        ),
        "",
        "### Machine",
        _machine(results["machine"]),
        "",
        "### Method",
        "* Same inputs, same tolerance, one process. Systems have random singular directions "
        "and a log-spaced spectrum so that κ controls CG (benchmarks/problems.py): general "
        "κ = 1 + ‖A‖₂²/λ; Potts κ = (λ + (L−1)μ_max)/(λ − μ_max), "
        "i.e. λ = μ_max(κ + L − 1)/(κ − 1).",
        f"* rtol = {results['config']['rtol']}; residuals are true relative residuals "
        "‖b − Mx‖/‖b‖ recomputed in float64 (largest over the batch).",
        f"* Times: median of at least {results['config']['repeats']} repeats after one warm-up "
        "(millisecond calls repeat for 0.2 s, up to 25 times, since a preempted call costs a "
        "whole scheduler slice; a single sample when the warm-up alone took over "
        f"{results['config']['budget_s']} s); each call builds the operator from the arrays "
        "(no factorization is reused across calls). Ratios are to `ours-auto` on the same case "
        "(> 1: ours is faster / smaller). Where `auto` picks `direct` the two run the same "
        "code, so their ratio shows the noise of the measurement.",
        "* Peak memory: bytes allocated during one call above those live before it, outputs "
        "included — `tracemalloc` for NumPy (ours, scipy-cg, dense-cholesky) and the replayed "
        "allocation events of `torch.profiler(profile_memory=True)` for torch "
        "(linear-operator, torch-unrolled-cg), whose allocator tracemalloc cannot see. "
        "Input bytes = embeddings + b + the cotangent gx.",
        "* `scipy-cg` and `dense-cholesky` solve one system at a time (batch 8 would be 8× "
        "batch 1), so the batch-8 cases run only the batched implementations. "
        "`torch-unrolled-cg` runs exactly as many iterations as `ours-cg` needed. "
        "⚠ marks a result whose true residual is above the tolerance (or whose solver said "
        "so); `fail` a solve that raised (ours: `ConvergenceError` when the true residual "
        "stays above rtol).",
        "",
        "### Targets (paper size, κ = 10³, float32, forward+backward, batch 1)",
        _table(
            [
                "target",
                "measured (medians)",
                "same from the fastest samples",
                "needed",
                "result (medians)",
            ],
            target_rows,
        ),
        "",
        "### The paper's figures beside ours",
        _paper_comparison(records, results["meanfield"]),
        "",
        "The paper's numbers are per image on a GTX-1080 GPU (its CG, unspecified κ); ours "
        "are on the 2-core CPU above. Its 200 ms mean-field figure matches single-threaded CPU "
        "code (DESIGN §5), which pydensecrf2 is.",
        "",
        "### Paper size (P = 41×41, L = 21): forward+backward time, ms (× ours-auto)",
        _contender_table(paper, paper_fields, "forward_backward"),
        "",
        "### Paper size: forward time, ms (× ours-auto)",
        _contender_table(paper, paper_fields, "forward"),
        "",
        "### Paper size: CG iterations (forward/backward) and forward residuals",
        _iterations_table(paper, paper_fields),
        "",
        "### Paper size: peak memory of forward+backward, MB (× ours-auto)",
        _memory_table(paper, paper_fields),
        "",
    ]
    titles = {
        "pixels": "Pixels sweep (D = 128, L = 21, κ = 10³, float32, batch 1)",
        "rank": "Rank sweep (P = 1681, L = 21, batch 1)",
        "labels": "Labels sweep (P = 1681, D = 128, κ = 10³, float32, batch 1)",
    }
    for suite, title in titles.items():
        rows = _select(records, suite=suite)
        if not rows:
            continue
        parts += [
            f"### {title}: forward+backward time, ms (× ours-auto)",
            _contender_table(rows, sweep_fields[suite], "forward_backward"),
            "",
            f"### {title}: forward time, ms (× ours-auto)",
            _contender_table(rows, sweep_fields[suite], "forward"),
            "",
        ]
        if suite != "rank":
            parts += [
                f"### {title}: peak memory of forward+backward, MB (× ours-auto)",
                _memory_table(rows, sweep_fields[suite]),
                "",
            ]
    if results["crossover"]:
        parts += [
            "### `auto` crossover: time of ours-cg / ours-direct (< 1: **cg** is faster)",
            _crossover_table(results["crossover"]),
            "",
        ]
    parts += [
        "### Dense-CRF mean field (pydensecrf2, single-threaded)",
        _mean_field_table(results["meanfield"]),
        "",
        "### GPU (`--device cuda`)",
        "Not measured: no GPU was available."
        if results["machine"]["device"] == "cpu"
        else "Measured on the GPU: the tables above are GPU timings.",
        "",
    ]
    notes = _skips_per_kind(_notes(records), records)
    if notes:
        parts += ["### Skipped and failed measurements", *[f"* {n}" for n in notes], ""]
    if plots:
        parts += ["### Plots"]
        parts += [f"![{p.stem}]({os.path.relpath(p, md_path.parent)})" for p in plots]
        parts += [""]
    return "\n".join(parts)


def write_section(path: Path, body: str) -> None:
    """Put ``body`` between the speed markers of ``path``, keeping everything else.

    The section is appended when the file has no markers yet; the file is created when
    missing.
    """
    section = f"{BEGIN}\n{body.rstrip()}\n{END}"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + section + "\n"
    path.write_text(text, encoding="utf-8")


# -- plots -----------------------------------------------------------------------------------


def plots(results: dict[str, Any], directory: Path) -> list[Path]:
    """Time vs pixels (log-log), CG iterations vs κ, cg/direct time vs D; the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in results["records"] if r["status"] in ("ok", "unconverged")]
    written = []

    def save(fig: Any, name: str) -> None:
        path = directory / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    pixel_records = _select(records, suite="pixels", phase="forward_backward")
    if pixel_records:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        for ax, model in zip(axes, ("general", "potts"), strict=True):
            for c in CONTENDERS:
                pts = sorted(
                    (r["pixels"], r["time_s"])
                    for r in _select(pixel_records, model=model, contender=c)
                )
                if pts:
                    ax.loglog(*zip(*pts, strict=True), marker="o", label=c)
            ax.set(
                title=f"{model} (D = 128, L = 21, κ = 1e3, float32)",
                xlabel="pixels P",
                ylabel="forward+backward time (s)",
            )
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=8)
        save(fig, "speed_pixels.png")

    paper_fwd = _select(records, suite="paper", phase="forward", batch=1)
    if {r["kappa"] for r in paper_fwd} - {1e3}:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        configs = (
            ("general", 128, "tab:blue"),
            ("potts", 128, "tab:orange"),
            ("potts", 1024, "tab:green"),
        )
        for model, rank, color in configs:
            for c, style in (("ours-cg", "-"), ("scipy-cg", "--")):
                for dtype, marker in (("float32", "o"), ("float64", "s")):
                    pts = sorted(
                        (r["kappa"], r["iterations"][0])
                        for r in _select(
                            paper_fwd, model=model, rank=rank, contender=c, dtype=dtype
                        )
                        if r.get("iterations")
                    )
                    if pts:
                        ax.semilogx(
                            *zip(*pts, strict=True),
                            style,
                            marker=marker,
                            color=color,
                            label=f"{model} D={rank} {c} {dtype}",
                        )
        ax.set(
            xlabel="κ",
            ylabel="CG iterations (forward)",
            title="CG iterations vs conditioning (P = 1681, L = 21)",
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
        save(fig, "speed_iterations.png")

    rank_records = _select(records, suite="rank", dtype="float32")
    if rank_records:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        for ax, model in zip(axes, ("general", "potts"), strict=True):
            for c in ("ours-cg", "ours-direct"):
                for kappa, style in ((10.0, ":"), (1e3, "-")):
                    for phase, marker in (("forward", "o"), ("forward_backward", "s")):
                        pts = sorted(
                            (r["rank"], r["time_s"])
                            for r in _select(
                                rank_records, model=model, contender=c, kappa=kappa, phase=phase
                            )
                        )
                        if pts:
                            ax.loglog(
                                *zip(*pts, strict=True),
                                style,
                                marker=marker,
                                label=f"{c} κ={_kappa(kappa)} {phase}",
                            )
            ax.set(
                title=f"{model}: cg vs direct (P = 1681, L = 21, float32)",
                xlabel="embedding dimension D",
                ylabel="time (s)",
            )
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=7)
        save(fig, "speed_rank.png")
    return written


# -- console summary -------------------------------------------------------------------------


def _time_and_ratio(record: Record, auto: Record | None) -> tuple[str, str]:
    if record["status"] in ("skipped", "failed"):
        return record["status"], ""
    ratio = _ratio(record.get("time_s"), _value(auto, "time_s"))
    return _ms(record.get("time_s")), "" if ratio is None else _times(ratio)


def summary(results: dict[str, Any]) -> str:
    """A readable console table: the targets, then the paper-size target case."""
    lines = ["", "Targets (paper size, κ = 1e3, float32, forward+backward, batch 1):"]
    lines.append(f"  {'target':<58} {'median':>8} {'min':>8}  needed result")
    for t in results["targets"]:
        verdict = {True: "pass", False: "FAIL", None: "not measured"}[t["pass"]]
        lines.append(
            f"  {t['target']:<58} {_number(t['measured']):>8} "
            f"{_number(t.get('measured_min')):>8}  {t['needed']:<6} {verdict}"
        )
    records = _select(results["records"], suite="paper", **TARGET_CASE)
    header = (
        f"  {'contender':<19}{'fwd ms':>9}{'×auto':>7}{'fwd+bwd ms':>12}{'×auto':>8}"
        f"{'its':>10}{'residual':>10}{'peak MB':>9}"
    )
    for model, rank in (("general", 128), ("potts", 128), ("potts", 1024)):
        group = _select(records, model=model, rank=rank)
        if not group:
            continue
        lines += ["", f"{model} D={rank}, P=1681, L=21, κ=1e3, float32, batch 1:", header]
        auto = {
            p: _one(group, contender="ours-auto", phase=p) for p in ("forward", "forward_backward")
        }
        for c in CONTENDERS:
            fwd = _select(group, contender=c, phase="forward")
            fb = _select(group, contender=c, phase="forward_backward")
            if not fwd:
                continue
            f, b = fwd[0], fb[0]
            if f["status"] in ("skipped", "failed") and b["status"] in ("skipped", "failed"):
                lines.append(f"  {c:<19}{f['status']}")
                continue

            fm, fr = _time_and_ratio(f, auto["forward"])
            bm, br = _time_and_ratio(b, auto["forward_backward"])
            its = "/".join(str(i) for i in (b.get("iterations") or [])) or "—"
            residual = f"{f['residual']:.1e}" if "residual" in f else "—"
            peak = "—" if b.get("peak_bytes") is None else f"{b['peak_bytes'] / MB:.3g}"
            lines.append(f"  {c:<19}{fm:>9}{fr:>7}{bm:>12}{br:>8}{its:>10}{residual:>10}{peak:>9}")
    return "\n".join(lines)

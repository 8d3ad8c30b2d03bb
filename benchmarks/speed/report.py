"""The speed benchmark's report: the RESULTS.md section, the console summary, the files.

Everything here reads the results of :func:`benchmarks.speed.runner.run` (records, mean
field, the machine) after :func:`write_results` has added the targets and the crossover.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..paper_sizes import PAPER_LABELS, PAPER_MODELS, PAPER_PIXELS, PAPER_SIDE
from ..results_writer import Destination, relative_link, write_section
from .contenders import CONTENDER_NAMES
from .plots import plots
from .records import Record, one, ratio, select, value
from .tables import (
    MB,
    contender_table,
    crossover_table,
    format_ms,
    format_number,
    format_times,
    iterations_table,
    markdown_table,
    mean_field_table,
    memory_table,
    paper_comparison,
    skip_notes,
    skips_per_kind,
)
from .targets import TARGET_CASE, crossover, targets

#: the section of RESULTS.md this job owns
JOB = "speed"


def machine_markdown(info: dict[str, Any]) -> str:
    """The machine of a run (:func:`~benchmarks.speed.runner.machine`) as Markdown bullets."""
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
    paper = select(records, suite="paper")
    paper_fields = ("model", "rank", "dtype", "batch", "kappa")
    sweep_fields = {
        "pixels": ("model", "pixels"),
        "rank": ("model", "rank", "dtype", "kappa"),
        "labels": ("model", "labels"),
    }
    target_rows = [
        [
            t["target"],
            format_number(t["measured"]),
            format_number(t.get("measured_min")),
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
        machine_markdown(results["machine"]),
        "",
        "### Method",
        "* Same inputs, same tolerance, one process. Systems have random singular directions "
        "and a log-spaced spectrum so that κ controls CG (benchmarks/speed/problems.py): general "
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
        "`torch-unrolled-cg` runs exactly as many iterations as `scipy-cg` needed (CG on the "
        "unknowns; `ours-cg` iterates on the smaller capacitance system where that pays). "
        "⚠ marks a result whose true residual is above the tolerance (or whose solver said "
        "so); `fail` a solve that raised (ours: `ConvergenceError` when the true residual "
        "stays above rtol).",
        "",
        "### Targets (paper size, κ = 10³, float32, forward+backward, batch 1)",
        markdown_table(
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
        paper_comparison(records, results["meanfield"]),
        "",
        "The paper's numbers are per image on a GTX-1080 GPU (its CG, unspecified κ); ours "
        "are on the 2-core CPU above. Its 200 ms mean-field figure matches single-threaded CPU "
        "code, which pydensecrf2 is.",
        "",
        f"### Paper size (P = {PAPER_SIDE}×{PAPER_SIDE}, L = {PAPER_LABELS}): "
        "forward+backward time, ms (× ours-auto)",
        contender_table(paper, paper_fields, "forward_backward"),
        "",
        "### Paper size: forward time, ms (× ours-auto)",
        contender_table(paper, paper_fields, "forward"),
        "",
        "### Paper size: CG iterations (forward/backward) and forward residuals",
        iterations_table(paper, paper_fields),
        "",
        "### Paper size: peak memory of forward+backward, MB (× ours-auto)",
        memory_table(paper, paper_fields),
        "",
    ]
    titles = {
        "pixels": f"Pixels sweep (D = 128, L = {PAPER_LABELS}, κ = 10³, float32, batch 1)",
        "rank": f"Rank sweep (P = {PAPER_PIXELS}, L = {PAPER_LABELS}, batch 1)",
        "labels": f"Labels sweep (P = {PAPER_PIXELS}, D = 128, κ = 10³, float32, batch 1)",
    }
    for suite, title in titles.items():
        rows = select(records, suite=suite)
        if not rows:
            continue
        parts += [
            f"### {title}: forward+backward time, ms (× ours-auto)",
            contender_table(rows, sweep_fields[suite], "forward_backward"),
            "",
            f"### {title}: forward time, ms (× ours-auto)",
            contender_table(rows, sweep_fields[suite], "forward"),
            "",
        ]
        if suite != "rank":
            parts += [
                f"### {title}: peak memory of forward+backward, MB (× ours-auto)",
                memory_table(rows, sweep_fields[suite]),
                "",
            ]
    if results["crossover"]:
        parts += [
            "### `auto` crossover: time of ours-cg / ours-direct (< 1: **cg** is faster)",
            crossover_table(results["crossover"]),
            "",
        ]
    parts += [
        "### Dense-CRF mean field (pydensecrf2, single-threaded)",
        mean_field_table(results["meanfield"]),
        "",
        "### GPU (`--device cuda`)",
        "Not measured: no GPU was available."
        if results["machine"]["device"] == "cpu"
        else "Measured on the GPU: the tables above are GPU timings.",
        "",
    ]
    notes = skips_per_kind(skip_notes(records), records)
    if notes:
        parts += ["### Skipped and failed measurements", *[f"* {n}" for n in notes], ""]
    if plots:
        parts += ["### Plots"]
        parts += [f"![{p.stem}]({relative_link(p, md_path)})" for p in plots]
        parts += [""]
    return "\n".join(parts)


def _time_and_ratio(record: Record, auto: Record | None) -> tuple[str, str]:
    if record["status"] in ("skipped", "failed"):
        return record["status"], ""
    relative = ratio(record.get("time_s"), value(auto, "time_s"))
    return format_ms(record.get("time_s")), "" if relative is None else format_times(relative)


def summary(results: dict[str, Any]) -> str:
    """A readable console table: the targets, then the paper-size target case."""
    lines = ["", "Targets (paper size, κ = 1e3, float32, forward+backward, batch 1):"]
    lines.append(f"  {'target':<58} {'median':>8} {'min':>8}  needed result")
    for t in results["targets"]:
        verdict = {True: "pass", False: "FAIL", None: "not measured"}[t["pass"]]
        lines.append(
            f"  {t['target']:<58} {format_number(t['measured']):>8} "
            f"{format_number(t.get('measured_min')):>8}  {t['needed']:<6} {verdict}"
        )
    records = select(results["records"], suite="paper", **TARGET_CASE)
    header = (
        f"  {'contender':<19}{'fwd ms':>9}{'×auto':>7}{'fwd+bwd ms':>12}{'×auto':>8}"
        f"{'its':>10}{'residual':>10}{'peak MB':>9}"
    )
    for model, rank in PAPER_MODELS:
        group = select(records, model=model, rank=rank)
        if not group:
            continue
        lines += [
            "",
            f"{model} D={rank}, P={PAPER_PIXELS}, L={PAPER_LABELS}, κ=1e3, float32, batch 1:",
            header,
        ]
        auto = {
            p: one(group, contender="ours-auto", phase=p) for p in ("forward", "forward_backward")
        }
        for c in CONTENDER_NAMES:
            fwd = select(group, contender=c, phase="forward")
            fb = select(group, contender=c, phase="forward_backward")
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


def rounded(value: Any) -> Any:
    """``value`` with every float cut to 4 significant digits (timings do not carry more),
    so that the JSON stays small and its diffs readable."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v) for v in value]
    return value


def write_results(results: dict[str, Any], where: Destination) -> None:
    """Add the targets and the crossover to ``results``; write ``speed.json``, the plots and
    the RESULTS.md section to ``where``; print the summary and what was written."""
    results["targets"] = targets(results["records"])
    results["crossover"] = crossover(results["records"])
    where.results_dir.mkdir(parents=True, exist_ok=True)
    (where.results_dir / "speed.json").write_text(json.dumps(rounded(results), indent=1) + "\n")
    written = plots(results, where.results_dir)
    write_section(where.results_md, JOB, markdown(results, written, where.results_md))
    print(summary(results))
    print(
        f"wrote the {where.kind}: {where.results_dir / 'speed.json'}, {len(written)} plots and the "
        f"speed section of {where.results_md}"
    )

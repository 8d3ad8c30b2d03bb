"""The refine benchmark's Markdown section and qualitative figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lowrank_gcrf.refine_inputs import RefineParameters
from lowrank_gcrf.refine_passes import (
    APPEARANCE_WEIGHT,
    LATTICE_APPEARANCE_WEIGHT,
    LATTICE_SMOOTH_WEIGHT,
    PASSES_STRENGTH,
    SMOOTH_WEIGHT,
)
from lowrank_gcrf.refine_strength import STEPS_PER_ERROR_ODDS

from ..results_writer import relative_link
from .contenders import MF5, OURS, meanfield, ours, timed
from .lattice_weights import reaches_mf5, weights_lines
from .photograph import photograph_lines
from .quality import TIE
from .summary import fmt, points, verdict, why, wins


def _params(p: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in p.items())


def _test_table(test: dict[str, Any]) -> list[str]:
    lines = [
        "| unary | method | mIoU | gain over unary | wrong pixels | boundary F (2 px) | "
        "s / image |",
        "|---|---|---|---|---|---|---|",
    ]
    for unary, block in test.items():
        base = block["unary"]["miou"]
        for name, r in block.items():
            gain = "—" if name == "unary" else points(r["miou"] - base)
            lines.append(
                f"| {unary} | {name} | {fmt(r['miou'])} | {gain} | {r['wrong']} | "
                f"{fmt(r['boundary_f'])} | {r['seconds']:.3f} |"
            )
    return lines


def _rule_wins(block: dict[str, Any]) -> str:
    """Test images where ours reaches MF-5's mIoU with no more wrong pixels, of all."""
    ours_, mf5 = block[OURS], block[MF5]
    won = reaches_mf5(
        ours_["per_image"], ours_["wrong_per_image"], mf5["per_image"], mf5["wrong_per_image"]
    )
    return f"{int(won.sum())} of {won.size}"


def _per_image_table(test: dict[str, Any]) -> list[str]:
    unaries = list(test)
    head = " | ".join(f"{u}: unary | {u}: MF-5 | {u}: ours" for u in unaries)
    lines = [f"| image | {head} |", "|---|" + "---|" * (3 * len(unaries))]
    count = len(test[unaries[0]]["unary"]["per_image"])
    for i in range(count):
        cells = []
        for u in unaries:
            b = test[u]
            o, m = b[OURS]["per_image"][i], b[MF5]["per_image"][i]
            mark = "**" if o >= m else ""
            cells += [fmt(b["unary"]["per_image"][i]), fmt(m), f"{mark}{fmt(o)}{mark}"]
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    return lines


def _validation_table(validation: dict[str, Any]) -> list[str]:
    unaries = list(validation["mf5"])
    lines = [
        "| setting | "
        + " | ".join(f"{u}: mIoU | {u}: gain | {u}: vs MF-5" for u in unaries)
        + " |",
        "|---|" + "---|" * (3 * len(unaries)),
    ]
    rows = {"unary": validation["unary"], MF5: validation["mf5"], **validation["ours"]}
    for name, scores in rows.items():
        cells = []
        for u in unaries:
            cells += [
                fmt(scores[u]),
                "—" if name == "unary" else points(scores[u] - validation["unary"][u]),
                "—" if name in ("unary", MF5) else points(scores[u] - validation["mf5"][u]),
            ]
        label = f"**{name}**" if name == validation["chosen"] else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _timing_table(timing: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| size | L | method | ms | time / MF-5 (medians) | time / MF-5 (median per round) |",
        "|---|---|---|---|---|---|",
    ]
    for r in timing:
        h, w = r["shape"]
        lines.append(f"| {h}×{w} | {r['labels']} | {MF5} | {1e3 * r[MF5]:.1f} | 1 | 1 |")
        for name in timed(r):
            lines.append(
                f"| {h}×{w} | {r['labels']} | {name} | {1e3 * r[name]:.1f} | "
                f"{r[f'{name} / MF-5']:.2f} | {r[f'{name} / MF-5, median per round']:.2f} |"
            )
    return lines


def _by_rank_table(rows: list[dict[str, Any]], value_keys: tuple[str, ...]) -> list[str]:
    """Rows (approximation, normalisation, m[, unary]) × columns D."""
    ranks = sorted({r["rank"] for r in rows})
    extra = ["unary"] if len(value_keys) > 1 else []
    head = ["approximation", "normalisation", "landmarks", *extra]
    lines = [
        "| " + " | ".join(head) + " | " + " | ".join(f"D={d}" for d in ranks) + " |",
        "|" + "---|" * (len(head) + len(ranks)),
    ]
    keys = list(
        dict.fromkeys((r["approximation"], r["normalization"], r["landmarks"]) for r in rows)
    )
    for a, n, m in keys:
        for key in value_keys:
            cells = []
            for d in ranks:
                match = [
                    r[key]
                    for r in rows
                    if (r["rank"], r["approximation"], r["normalization"], r["landmarks"])
                    == (d, a, n, m)
                ]
                cells.append(fmt(match[0]) if match else "—")
            label = [a, n, m, *([key] if extra else [])]
            lines.append("| " + " | ".join(label) + " | " + " | ".join(cells) + " |")
    return lines


def _memory_lines(memory: dict[str, Any] | None) -> list[str]:
    if memory is None:
        return ["Not measured in this run."]
    mb = 1 << 20
    h, w = memory["shape"]
    lines = [
        f"One call at {h}×{w}, coarse unary (6 labels), each method in a fresh "
        "process after a warm-up on a 24×24 crop: the peak resident set size during the call "
        "above the resident set size before it (Linux `VmHWM`, reset through "
        "`/proc/self/clear_refs`), outputs included. For ours also the peak of NumPy "
        "allocations (`tracemalloc`); pydensecrf2 allocates in C++, invisible to it. Inputs: "
        f"probabilities (6 × {h} × {w} float32, {24 * h * w / 1e6:.1f} MB) and the image.",
        "",
        "| method | peak RSS growth (MB) | tracemalloc peak (MB) |",
        "|---|---|---|",
    ]
    names = {"mf5": MF5, "mf10": "pydensecrf2 MF-10 (DeepLab)", "ours": OURS}
    for m, name in names.items():
        r = memory[m]
        traced = "—" if r["tracemalloc_bytes"] is None else f"{r['tracemalloc_bytes'] / mb:.1f}"
        lines.append(f"| {name} | {r['rss_bytes'] / mb:.1f} | {traced} |")
    return lines


def markdown(results: dict[str, Any], figure: Path, results_md: Path) -> str:
    """The ``refine`` section of RESULTS.md."""
    m = results["machine"]
    cfg = results["config"]
    validation = results["validation"]
    kind = "Smoke run (`--quick`)" if results["quick"] else "Full run"
    h, w = cfg["shape"]
    kh, kw = cfg["kernel_shape"]
    win_line = "; ".join(
        "{}: {} of {}".format(u, *wins(results["test"], u)[:2]) for u in results["test"]
    )
    rule_line = "; ".join(f"{u}: {_rule_wins(b)}" for u, b in results["test"].items())
    out = [
        "## Refine a segmentation (`python -m benchmarks.refine`)",
        "",
        f"{kind}, {results['wall_s'] / 60:.1f} minutes. Regenerate with "
        "`python -m benchmarks.refine`.",
        "",
        "### Machine",
        f"* {m['processor']}, {m['cpus']} cores; {m['platform']}; Python {m['python']}",
        f"* numpy {m['numpy']}, scipy {m['scipy']}, scikit-image {m['scikit-image']}, "
        f"scikit-learn {m['scikit-learn']}, pydensecrf2 {m['pydensecrf2']}, "
        f"lowrank-gcrf {m['lowrank-gcrf']}",
        f"* one thread for every BLAS/OpenMP pool (threadpoolctl): {'; '.join(m['blas'])}; "
        f"pydensecrf2 is single-threaded C++; torch {m['torch']}; tensorflow {m['tensorflow']}",
        f"* {m['date']}, commit {m['commit']}; load average (1/5/15 min) at start "
        f"{'/'.join(f'{x:.1f}' for x in m['load_start'])}, at end "
        f"{'/'.join(f'{x:.1f}' for x in m['load_end'])}: the machine is shared with other "
        "jobs, so absolute times vary between runs; the methods are timed in interleaved "
        "rounds so that their ratios are comparable",
        "",
        "### Method",
        f"* Scenes (`benchmarks/refine/scenes.py`): {h}×{w}, 6 labels (background and 5 object "
        "classes); real shapes filled with tinted real photographs and textures over crops of "
        "real photographs, all shipped with scikit-image and scikit-learn. **Validation and "
        "test share no source**: validation — photographs astronaut, coffee, rocket; fills "
        "brick, grass, camera; shapes the horse silhouette and handwritten digits; test — "
        "photographs chelsea, china, flower; fills gravel, moon, clock; shapes coins, printed "
        f"glyphs (page) and blobs. {cfg['val']} validation and {cfg['test']} test scenes.",
        "* Unaries: `coarse` — a stride-8 network's blurry but correct softmax (ground truth "
        "pooled to stride 8, confident logits 8·fraction + N(0, 0.5²) per cell, bilinear "
        "upsampling); `noisy` — 30 % of the pixels show a wrong label at probability 0.7, the "
        "others the right one at 0.7.",
        f"* pydensecrf2: DeepLab's kernels ({_params(results['deeplab'])}; compat = the "
        "weights), 5 and 10 mean-field iterations, and MF-"
        f"{results['tuned_mf_iterations']} tuned per unary on validation over "
        f"{len(cfg['mf_grid'])} settings ({_grid_axes(cfg['mf_grid'])}).",
        _ours_method(),
        _defaults_method(cfg, validation),
        "* mIoU: over the split's pixels, mean over the classes in the truth or the prediction "
        "(`benchmarks/metrics.py`); per image the same on the image alone; boundary F: per "
        "image, boundary pixels matched within 2 px, averaged. Times: median of "
        f"{cfg['repeats']} interleaved rounds after a warm-up, inputs ready, everything else "
        "(pydensecrf2's lattice; our lattice or features, passes or solve) inside; the test "
        "table's s / image is the mean during evaluation.",
        "",
        "### Target",
        *verdict(results),
        "",
        *why(results),
        "",
        "### Test split (held out)",
        *_test_table(results["test"]),
        "",
        f"Per-image wins of ours (defaults) against MF-5 (mIoU at least MF-5's): {win_line}; "
        f"with no more wrong pixels than MF-5 too (the lattice's weights' rule): {rule_line}. "
        "Pydensecrf2's tuned settings (chosen on validation): "
        + "; ".join(f"{u}: {_params(p)}" for u, p in validation["best_mf"].items())
        + ".",
        "",
        *_per_image_table(results["test"]),
        "",
        f"![image, unary, pydensecrf2 MF-5, ours, ground truth]"
        f"({relative_link(figure, results_md)})",
        "",
        "### Real photographs",
        *photograph_lines(results["photograph"]),
        "",
        "### Validation: choosing the defaults",
        "The candidates on the validation composites; the lattice's weights below.",
        "",
        *_validation_table(validation),
        "",
        f"Chosen (bold): `{validation['chosen']}`; the library's default: "
        f"`{validation['default']}`.",
        "",
        "### Validation: the lattice's weights",
        *weights_lines(results["weights"]),
        "",
        "### Time per image against MF-5 (one thread)",
        "Each size and L: the test scene 0's coarse unary (widened to L labels); MF-5, ours "
        "(defaults), the landmarks' passes, the exact solve, the exact solve with the "
        "exact smoothness kernel, and the PyTorch and TensorFlow adapters' `refine` with "
        "their defaults (the lattice's passes, forward only, on CPU tensors made "
        "beforehand) called in turn.",
        "",
        *_timing_table(results["timing"]),
        "",
        "### Peak memory",
        *_memory_lines(results["memory"]),
        "",
        "### Kernel approximations against the exact kernel",
        f"Relative Frobenius error ‖X − ÂᵀÂ‖_F/‖X‖_F on {cfg['kernel_images']} validation "
        f"images of {kh}×{kw} with the position bandwidths scaled alike (so each kernel covers "
        f"the same fraction of the image as at {h}×{w}), DeepLab's kernels (appearance + "
        "smoothness). X = W for normalisation `none`, Δ^-1/2 W Δ^-1/2 (exact degrees) for "
        "`symmetric`, where Â uses the approximation's own degrees. `m = D`: D landmarks "
        f"(random features); `m = {cfg['landmarks']}`: {cfg['landmarks']} compressed to their "
        "top D eigen-directions.",
        "",
        *_by_rank_table(results["kernels"], ("error",)),
        "",
        f"### Downstream: validation mIoU against D ({cfg['sweep_images']} scenes, the "
        "landmarks' passes, other parameters at their defaults)",
        *_by_rank_table(results["sweep"], ("coarse", "noisy")),
    ]
    return "\n".join(out)


def _ours_method() -> str:
    """The Method bullet on our rows, the weights read from the library."""
    p = RefineParameters()
    return (
        "* Ours (defaults): `lowrank_gcrf.refine` with its defaults, which for NumPy arrays are "
        f"{p.passes} mean-field passes (`passes={p.passes}`, `appearance_kernel="
        f'"{p.appearance_kernel}"` → the lattice) '
        "`x = log p + w_a (N − diag N) q + w_s (G − I) q`, `q ← softmax(x)` from q = p: "
        "N = Δ^-1/2 K Δ^-1/2 with K DeepLab's bilateral kernel "
        f"(sxy = {p.sxy:g}, srgb = {p.srgb:g}) filtered by the permutohedral lattice "
        "(pydensecrf's filter, in NumPy and SciPy) and Δ = K1, symmetrically normalised, "
        "each pixel's own term left out (pydensecrf keeps it); "
        f"w_a = {LATTICE_APPEARANCE_WEIGHT:g}, w_s = {LATTICE_SMOOTH_WEIGHT:g}, G DeepLab's "
        f"smoothness Gaussian (sxy_smooth = {p.sxy_smooth:g}) by exact separable filtering. "
        'The landmarks\' passes (`appearance_kernel="landmarks"`, the previous default) '
        "replace w_a (N − diag N) q by the rank-D resolvent β(1 − α)(I − ÂᵀÂ/λ)⁻¹q: "
        f"rank D = {p.rank} compressed from m = {p.landmarks} Nyström landmarks placed by "
        "k-means, symmetric normalisation, appearance kernel, ‖ÂᵀÂ‖ = αλ, "
        f"α = {PASSES_STRENGTH:g}, β = {APPEARANCE_WEIGHT:g}, w_s = {SMOOTH_WEIGHT:g}. The "
        "exact solve (`passes=0`) finds the Potts G-CRF's MAP with the same embeddings and "
        '`strength="auto"`: per image α = min(1 − 1/(1 + c·e/(1 − e)), 0.95) with e the mean '
        f"of 1 − max_k p_k, c = {STEPS_PER_ERROR_ODDS:g}."
    )


def _defaults_method(cfg: dict[str, Any], validation: dict[str, Any]) -> str:
    """The Method bullet on how the defaults were chosen, the candidates read from ``cfg``."""

    def values(key: str) -> str:
        return "{" + ", ".join(f"{v:g}" for v in cfg[key]) + "}"

    return (
        "* Defaults on validation only: the candidates — the lattice's passes (passes ∈ "
        f"{values('passes')}), the exact solve with the rule's constant c ∈ "
        f"{values('rule_gains')} and with fixed strengths {values('fixed_strengths')}, and the "
        f"landmarks' passes (passes ∈ {values('passes')}) — are scored by their mIoU "
        "difference to MF-5 averaged over the two unaries (one default must serve both), and "
        f"the cheapest setting within {100 * TIE:g} points of the best is chosen, in that "
        "order (the lattice's passes, fewer first, then the exact solve, then the landmarks' "
        "passes); "
        "the library's default is the validation's choice when the bold row below is "
        f"`{validation['default']}`. The lattice's weights are chosen on the validation "
        "composites and the validation photographs by this run (section below); an earlier, "
        "wider search on the composites alone (w_a ∈ {30, …, 60}, w_s ∈ {0.3, …, 0.8}, "
        "passes ∈ {2, 3, 4}) found that with the pixel's own term kept (as pydensecrf does) no "
        "setting served both unaries: single wrong pixels of a colour found nowhere else kept "
        "their label on the noisy unary. β, w_s and α of the landmarks' passes were chosen on "
        "the validation composites (β ∈ {50, 100, 150, 200}, w_s ∈ {0.5, 0.7, 1, 1.5, 3}, "
        "α ∈ {0.7, 0.75, 0.8, 0.85, 0.9, 0.95}, passes ∈ {2, 3, 4, 5}, not every "
        "combination). The exact solve with the exact smoothness kernel "
        '(`passes=0, smooth_kernel="exact", w_smooth=3`: CG on the deviations preconditioned '
        "by the low-rank appearance part) is measured as an option, not a candidate default: "
        "the PyTorch and TensorFlow adapters do not have it (they have the lattice's passes, "
        "their default as the core's, as CuPy arrays' is)."
    )


def _grid_axes(grid: list[dict[str, Any]]) -> str:
    axes: dict[str, list] = {}
    for p in grid:
        for k, v in p.items():
            axes.setdefault(k, [])
            if v not in axes[k]:
                axes[k].append(v)
    return " × ".join(f"{k} ∈ {{{', '.join(f'{v:g}' for v in vs)}}}" for k, vs in axes.items())


def qualitative_figure(scene: Any, validation: dict[str, Any], path: Path) -> None:
    """Rows: unaries; columns: image, unary, pydensecrf2 MF-5, ours (defaults), truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unaries = list(validation["mf5"])
    fig, axes = plt.subplots(len(unaries), 5, figsize=(15, 2.6 * len(unaries)), squeeze=False)
    kw = dict(vmin=0, vmax=5, cmap="tab10", interpolation="nearest")
    for row, unary in zip(axes, unaries, strict=True):
        probs = scene.unaries[unary]
        panels = [
            ("image", scene.image.transpose(1, 2, 0), {}),
            (f"unary ({unary})", probs.argmax(0), kw),
            ("pydensecrf2 MF-5", meanfield(probs, scene.image, iterations=5).argmax(0), kw),
            ("ours (defaults)", ours(probs, scene.image).argmax(0), kw),
            ("ground truth", scene.labels, kw),
        ]
        for ax, (title, img, opts) in zip(row, panels, strict=True):
            ax.imshow(np.asarray(img), **opts)
            ax.set_title(title)
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)

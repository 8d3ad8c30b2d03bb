"""
Scaling with the image size
===========================

Time one forward solve against the number of pixels P, for both methods and both models, at
a fixed embedding dimension. Both methods are linear in P: the direct solve costs one D×D
Gram matrix (2·D²·N flops) and a few matvecs; CG on the unknowns about 4·D·N flops per
iteration, but at this small D it computes the same Gram and iterates on the D×D capacitance
system instead (2·D² flops per iteration, see the maths page), so the two run close.

These are small sizes timed on the machine that built this page, with one thread; the
benchmark ``python -m benchmarks.speed`` measures the paper's sizes with every contender side
by side (see the Benchmarks page).
"""

import time

import matplotlib.pyplot as plt
import numpy as np

import lowrank_gcrf as lg
from lowrank_gcrf import testing

L, D, KAPPA = 5, 32, 1e3
# float32 cannot certify a residual much below ε·κ ≈ 1e-4 at κ = 10³: the float32 evaluation
# of b − Mx is itself that noisy, so a tighter rtol would fail by chance on some sizes.
RTOL = 1e-4
sides = [32, 64, 96, 128, 160]


def best_time(fn, *args, repeats=3, **kwargs):
    """The fastest of a few calls, in milliseconds (the least disturbed by other work)."""
    fn(*args, **kwargs)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


timings = {}
for side in sides:
    P = side * side
    general = testing.make_general_system(0, rank=D, n=L * P, kappa=KAPPA, dtype=np.float32)
    potts = testing.make_potts_system(0, rank=D, pixels=P, labels=L, kappa=KAPPA, dtype=np.float32)
    for method in ("cg", "direct"):
        timings.setdefault(("general", method), []).append(
            best_time(
                lg.solve, general.embeddings, general.b, general.lam, method=method, rtol=RTOL
            )
        )
        timings.setdefault(("potts", method), []).append(
            best_time(
                lg.solve_potts, potts.embeddings, potts.b, potts.lam, method=method, rtol=RTOL
            )
        )

print(f"forward solve, ms (L = {L}, D = {D}, κ = {KAPPA:g}, float32, rtol = {RTOL:g})")
print("pixels  " + "  ".join(f"{m}-{k:6s}" for m, k in timings))
for i, side in enumerate(sides):
    print(f"{side * side:6d}  " + "  ".join(f"{v[i]:12.2f}" for v in timings.values()))

# %%
# Time against pixels
# -------------------
# On log-log axes a slope of one is linear scaling. Timings of a few milliseconds on a shared
# machine are noisy; at the paper's size (41×41 pixels, L = 21, κ = 10³) the speed benchmark
# measures CG slower than the direct solve for the general model at every D up to 1024 (its
# figures: the benchmarks page), which is why ``method="auto"`` picks the direct solve there.

fig, ax = plt.subplots(figsize=(6, 4))
pixels = np.array(sides) ** 2
for (model, method), values in timings.items():
    style = "-" if method == "direct" else "--"
    ax.loglog(pixels, values, style, marker="o", label=f"{model}, {method}")
ax.set_xlabel("pixels P")
ax.set_ylabel("forward solve (ms)")
ax.set_title(f"L = {L}, D = {D}, κ = {KAPPA:g}, float32, one thread")
ax.legend()
fig.tight_layout()

"""
A solve, checked against SciPy
==============================

Solve a general and a Potts G-CRF with both methods and compare them with SciPy's dense
Cholesky solve of the explicitly formed matrix — which only a small problem allows: the
library never forms the N×N matrix.
"""

# %%
# A small general system
# ----------------------
# ``A`` holds one D-dimensional embedding per variable, label-major: variable ``n = l·P + p``.
# :func:`lowrank_gcrf.testing.make_general_system` draws one with a chosen condition number
# κ = 1 + ‖A‖₂²/λ.

import matplotlib.pyplot as plt
import numpy as np

import lowrank_gcrf as lg
from lowrank_gcrf import testing

system = testing.make_general_system(0, rank=16, n=5 * 64, kappa=1e3)
A, b, lam = system.embeddings, system.b, system.lam
M = testing.dense_matrix(A, lam)  # (AᵀA + λI), 320 × 320, float64
reference = testing.reference_solve(M, b)  # scipy.linalg.solve

for method in ("direct", "cg"):
    x, info = lg.solve(A, b, lam, method=method, return_info=True)
    error = np.linalg.norm(x - reference) / np.linalg.norm(reference)
    print(
        f"{method:6s}  iterations {int(info.iterations):3d}  residual {float(info.residual):.1e}"
        f"  error vs scipy {error:.1e}"
    )

# %%
# The Potts model
# ---------------
# One embedding per pixel, shared by the L labels: Â is (D, P), b is (L, P). The matrix is
# positive definite only for λ > ‖Â‖₂², which the generator guarantees (κ is exact).

potts = testing.make_potts_system(1, rank=8, pixels=64, labels=5, kappa=1e2)
M_potts = testing.potts_dense_matrix(potts.embeddings, potts.lam, 5)
x_potts = lg.solve_potts(potts.embeddings, potts.b, potts.lam)
reference_potts = testing.reference_solve(M_potts, potts.b.reshape(-1)).reshape(5, 64)
print(
    "Potts error vs scipy:",
    np.linalg.norm(x_potts - reference_potts) / np.linalg.norm(reference_potts),
)

# %%
# Accuracy in float32 against the condition number
# ------------------------------------------------
# In float32 the direct solve certifies the default ``rtol = 1e-5`` by iterative refinement
# as long as ε·κ is well below it (ε = 1.2e-7); beyond that it raises
# :class:`lowrank_gcrf.ConvergenceError` instead of returning an unverified answer. Here we
# ask for ``on_failure="ignore"`` and look at the true residuals it reaches.

kappas = np.logspace(1, 7, 13)
residuals = {"direct": [], "cg": []}
for kappa in kappas:
    s = testing.make_general_system(2, rank=16, n=320, kappa=kappa, dtype=np.float32)
    M32 = testing.dense_matrix(s.embeddings, s.lam)
    for method in residuals:
        x = lg.solve(s.embeddings, s.b, s.lam, method=method, on_failure="ignore")
        residuals[method].append(float(testing.relative_residual(M32, x, s.b)))

fig, ax = plt.subplots(figsize=(6, 3.5))
for method, values in residuals.items():
    ax.loglog(kappas, values, "o-", label=method)
ax.loglog(kappas, 1.2e-7 * kappas, "k:", label="ε·κ (float32)")
ax.axhline(1e-5, color="grey", lw=0.8, label="rtol = 1e-5")
ax.set_xlabel("κ = 1 + ‖A‖₂²/λ")
ax.set_ylabel("‖b − Mx‖ / ‖b‖")
ax.set_title("float32 solves against the dense float64 matrix")
ax.legend()
fig.tight_layout()

"""lowrank-gcrf: dense, low-rank Gaussian CRFs with exact matrix-free inference.

Implements Chandra, Usunier and Kokkinos, "Dense and Low-Rank Gaussian CRFs Using Deep
Embeddings" (ICCV 2017): the MAP solution of ``M x = b`` for the general model
``M = λI + AᵀA``, the Potts model ``M = λI + (J_L − I_L) ⊗ ÂᵀÂ`` and the signed model
``M = λI + AᵀA − ΓᵀΓ``, by conjugate gradient or by an exact low-rank solve, with analytic
gradients. Arrays in, arrays out: NumPy on CPU, CuPy on GPU. The maths: ``docs/maths.md``.
"""

from .api import (
    solve,
    solve_potts,
    solve_potts_vjp,
    solve_signed,
    solve_signed_vjp,
    solve_vjp,
)
from .errors import (
    ConvergenceError,
    ConvergenceWarning,
    GCRFError,
    GCRFTypeError,
    IndefiniteSystemError,
)
from .factorization import Factorization
from .general import GeneralOperator
from .info import SolveInfo
from .models import MODEL_NAMES, make_operator
from .operators import GCRFOperator
from .options import SolverOptions, solver_options
from .potts import PottsOperator
from .refine import refine
from .signed import SignedOperator
from .threads import get_num_threads, set_num_threads

__all__ = [
    "MODEL_NAMES",
    "ConvergenceError",
    "ConvergenceWarning",
    "Factorization",
    "GCRFError",
    "GCRFOperator",
    "GCRFTypeError",
    "GeneralOperator",
    "IndefiniteSystemError",
    "PottsOperator",
    "SignedOperator",
    "SolveInfo",
    "SolverOptions",
    "get_num_threads",
    "make_operator",
    "refine",
    "set_num_threads",
    "solve",
    "solve_potts",
    "solve_potts_vjp",
    "solve_signed",
    "solve_signed_vjp",
    "solve_vjp",
    "solver_options",
]

__version__ = "0.1.0"

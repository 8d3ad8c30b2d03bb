"""lowrank-gcrf: dense, low-rank Gaussian CRFs with exact matrix-free inference.

Implements Chandra, Usunier and Kokkinos, "Dense and Low-Rank Gaussian CRFs Using Deep
Embeddings" (ICCV 2017): the MAP solution of ``(AᵀA + λI) x = b`` (general) or of its
Potts variant, by conjugate gradient or by an exact low-rank solve, with analytic
gradients. Arrays in, arrays out: NumPy on CPU, CuPy on GPU.
"""

from .api import solve, solve_potts, solve_potts_vjp, solve_vjp
from .errors import ConvergenceError, GCRFError, GCRFTypeError, IndefiniteSystemError
from .info import SolveInfo
from .operators import GCRFOperator, GeneralOperator, PottsOperator

__all__ = [
    "ConvergenceError",
    "GCRFError",
    "GCRFOperator",
    "GCRFTypeError",
    "GeneralOperator",
    "IndefiniteSystemError",
    "PottsOperator",
    "SolveInfo",
    "solve",
    "solve_potts",
    "solve_potts_vjp",
    "solve_vjp",
]

__version__ = "0.1.0"

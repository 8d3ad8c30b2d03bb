"""Sphinx configuration of the lowrank-gcrf documentation site.

Sphinx with numpydoc (the docstrings are numpydoc), sphinx-gallery (executed examples),
myst-parser (the Markdown pages, with ``$`` maths) and pydata-sphinx-theme. Build with
``bash .ci/docs``, which treats every warning as an error.
"""

from __future__ import annotations

import os
import pathlib
import re
import sys
from typing import Any

# The gallery runs in this process (torch and TensorFlow are imported below, after these are
# set, so their pools follow them too): one thread per BLAS/OpenMP pool keeps the examples' timings
# honest on a shared machine and avoids busy-waiting pools competing with torch's.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

DOCS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS))

import sphinx.ext.autosummary  # noqa: E402
from api_pages import write_api_pages  # noqa: E402

import lowrank_gcrf  # noqa: E402

project = "lowrank-gcrf"
author = "The lowrank-gcrf developers"
copyright = "the lowrank-gcrf developers, MIT licence"
release = lowrank_gcrf.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "examples/README.txt", "auto_examples/*.ipynb"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"

# Every cross-reference must resolve: a broken internal link fails the build.
nitpicky = True
# There is no network at build time, hence no intersphinx inventories: names from other
# libraries that appear in the docstrings are written as plain text, not resolved.
nitpick_ignore_regex = [
    ("py:.*", r"(numpy|np|torch|tf|keras|cupy|hypothesis|scipy|dataclasses)(\..*)?"),
    ("py:.*", r"(Tensor|nn\.Module|nn\.Parameter|Any|Callable|Sequence|ValueError|TypeError)"),
    ("py:.*", r"(RuntimeWarning|Exception|object)"),
    # Internal modules the docstrings name for readers of the source; the reference documents
    # the public modules only, so these render as code rather than links.
    (
        "py:.*",
        r"lowrank_gcrf\.(method|image_kernels|adapters\.bridge|adapters\.layer_plan|errors|operators|capacitance"
        r"|adapters\.layer_shapes|adapters\.head_plan|adapters\.traceable_plan"
        r"|refine_inputs|refine_strength|refine_passes|smooth_refine|kernel_approximation|operator_inputs"
        r"|permutohedral|lattice_vertices|lattice_appearance"
        r"|embedding_gradients|signed_inverse|threads"
        r"|adapters\.torch\.(autograd|functional|modules|heads|image_refine|traceable_solve|custom_op)"
        r"|adapters\.tensorflow\.(op|functional|layers|layout_ops|heads|image_refine|traceable_solve))"
        r"(\.[\s\S]*)?",
    ),
]

# -- Markdown --------------------------------------------------------------------------------

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
# Heading anchors make the Markdown pages' links to sections (maths.md#the-potts-condition)
# checkable: a link to a missing anchor is a warning, hence an error.
myst_heading_anchors = 4
# Links between repository files, written for GitHub, point at the pages of this site.
REPOSITORY_LINKS = {
    "../benchmarks/RESULTS.md": "benchmarks.md",
    "../CHANGELOG.md": "changelog.md",
    "../CITATION.cff": "citing.md",
}

# -- API reference ---------------------------------------------------------------------------

PUBLIC_MODULES = (
    "lowrank_gcrf",
    "lowrank_gcrf.testing",
    "lowrank_gcrf.adapters.torch",
    "lowrank_gcrf.adapters.tensorflow",
)
write_api_pages(DOCS / "api", PUBLIC_MODULES)

# The summary tables cut a docstring's first sentence at ". "; the docstrings cite the paper
# ("Eq. 4–5"), which must not end a sentence.
sphinx.ext.autosummary.WELL_KNOWN_ABBREVIATIONS += ("Eq.", "Eqs.", "Sec.", "Fig.", "Figs.")
autosummary_generate = True
autosummary_imported_members = True
autodoc_typehints = "none"  # the numpydoc sections state the types
autodoc_default_options = {"member-order": "bysource"}
# Members are documented by the class template (templates/autosummary/class.rst), not listed.
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
numpydoc_validation_checks: set[str] = set()

# -- Gallery ---------------------------------------------------------------------------------


sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "show_memory": False,
    "min_reported_time": 1,
    "within_subsection_order": "FileNameSortKey",
}

# A starred name inside a shape tuple, "(B, L, *spatial)", outside inline code.
STAR_SHAPE = re.compile(r"(?<=[(,] )\*(?=[A-Za-z_])|(?<=\()\*(?=[A-Za-z_])")

# -- HTML ------------------------------------------------------------------------------------

html_theme = "pydata_sphinx_theme"
html_title = f"lowrank-gcrf {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
html_show_sourcelink = False


def _repository_links(app: Any, docname: str, source: list[str]) -> None:
    """Rewrite repository-relative Markdown links to the site's pages before parsing."""
    text = source[0]
    for target, page in REPOSITORY_LINKS.items():
        text = text.replace(f"]({target})", f"]({page})")
    source[0] = text


def _escape_star_shapes(
    app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """Shapes such as ``(B, L, *spatial)`` in the docstrings are not reST emphasis."""
    for i, line in enumerate(lines):
        parts = line.split("``")  # odd parts are inline code, where a star is literal
        parts[::2] = [STAR_SHAPE.sub(r"\\*", part) for part in parts[::2]]
        lines[i] = "``".join(parts)


def setup(app: Any) -> None:
    app.connect("source-read", _repository_links)
    app.connect("autodoc-process-docstring", _escape_star_shapes, priority=400)

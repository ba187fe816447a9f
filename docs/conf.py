"""Sphinx configuration of the sctraj documentation.

Build: ``make docs`` (``python -m sphinx -W -b html docs docs/_build/html``). Offline machines set
``SCTRAJ_DOCS_OFFLINE=1``: intersphinx inventories are then not fetched (and cross-references to other projects are
not checked), so the build needs no network. Tutorials are the executed notebooks of ``../tutorials`` (copied here at
build time, never re-executed: ``nb_execution_mode = "off"``).
"""

from __future__ import annotations

import os
import shutil
import sys
from datetime import date
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import sctraj  # noqa: E402

project = "sctraj"
author = "sctraj developers"
copyright = f"{date.today().year}, {author}"
version = release = sctraj.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx_autodoc_typehints",
    "sphinx_copybutton",
    "sphinxcontrib.bibtex",
]

# --- tutorials: copy the committed, executed notebooks next to the docs sources --------------------------------
_tut_src, _tut_dst = ROOT / "tutorials", HERE / "tutorials"
if _tut_src.is_dir():
    _tut_dst.mkdir(exist_ok=True)
    for nb in sorted(_tut_src.glob("*.ipynb")):
        shutil.copy2(nb, _tut_dst / nb.name)

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
templates_path = ["_templates"]
html_static_path = ["_static"]

# --- autodoc / napoleon / typehints -----------------------------------------------------------------------------
autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": False}
autodoc_mock_imports: list[str] = []
default_role = "literal"
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = True
napoleon_use_param = True
napoleon_use_ivar = True  # "Attributes" as fields: dataclass configs document their fields without duplicate objects
typehints_defaults = "braces"
always_document_param_types = False

# --- myst ---------------------------------------------------------------------------------------------------------
myst_enable_extensions = ["amsmath", "colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3
nb_execution_mode = "off"
nb_merge_streams = True
nb_output_stderr = "remove"
suppress_warnings = ["mystnb.unknown_mime_type"]

# --- bibliography -------------------------------------------------------------------------------------------------
bibtex_bibfiles = ["references.bib"]
bibtex_reference_style = "author_year"

# --- cross-references ---------------------------------------------------------------------------------------------
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
    "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
    "numpy": ("https://numpy.org/doc/stable/", None),
    "pandas": ("https://pandas.pydata.org/pandas-docs/stable/", None),
    "matplotlib": ("https://matplotlib.org/stable/", None),
    "torch": ("https://docs.pytorch.org/docs/stable/", None),
    "ot": ("https://pythonot.github.io/", None),
}
nitpicky = False
if os.environ.get("SCTRAJ_DOCS_OFFLINE", "0") not in ("", "0"):
    intersphinx_mapping = {}

# --- HTML -----------------------------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "sctraj"
html_theme_options = {
    "repository_url": "https://github.com/sctraj/sctraj",
    "use_repository_button": True,
    "path_to_docs": "docs/",
    "navigation_with_keys": False,
}

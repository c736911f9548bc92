"""Where the project's own files are: the checkout the deploys run from.

backupmx is the library of a checkout: ``deploys/``, ``inventory/``, ``operations/``,
``facts/`` and ``templates/`` are not installed; pyinfra runs them from the checkout.
So the library must be that checkout's own (``pip install -e .``, as ``make setup``
does): a copy installed with a plain ``pip install .`` finds no templates and, once the
checkout moves on, would not match its operations. ``checkout_problem`` says so in one
line, at the start of a run (``config.py``) and before a template is rendered.
"""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Jinja2 templates of every file pushed to a host (the top-level templates/ folder).
TEMPLATES = PROJECT_ROOT / "templates"
INSTALL_IN_PLACE = "pip install --no-deps -e . from the checkout (make setup does)"


def checkout_problem(run_from: Path | None = None) -> str | None:
    """Why this backupmx cannot serve the deploys of the checkout ``run_from`` (None: it can).

    ``run_from``: the checkout the deploys run from, when known (``config.py``'s directory).
    """
    package = PROJECT_ROOT / "backupmx"
    if not TEMPLATES.is_dir():
        where = f" (the deploys run from {run_from})" if run_from else ""
        return (f"backupmx is installed as a copy, in {package}, without the checkout's templates/{where}: "
                f"install it in place: {INSTALL_IN_PLACE}")
    if run_from is not None and run_from.resolve() != PROJECT_ROOT:
        return (f"backupmx is imported from {package}, but the deploys run from another checkout, {run_from}: "
                f"use that checkout's own virtualenv, or install it in place there: {INSTALL_IN_PLACE}")
    return None

"""Where the project's own files are: the checkout the deploys run from."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Jinja2 templates of every file pushed to a host (the top-level templates/ folder).
TEMPLATES = PROJECT_ROOT / "templates"

"""The core is importable and usable without the TUI: nothing below ui/ imports Textual."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tui" / "socktop"
LAYERS = ("collect", "model", "analyze", "ui")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            prefix = "." * node.level + (node.module or "")
            found.add(prefix)
    return found


def test_only_ui_imports_textual() -> None:
    offenders = [
        str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
        if "ui" not in path.relative_to(PACKAGE).parts[:1]
        and any(name.split(".")[0] == "textual" for name in imported_modules(path))
    ]
    assert offenders == []


def test_layers_import_one_way() -> None:
    """collect → model → analyze → ui: a layer never imports one above it."""
    violations = []
    for rank, layer in enumerate(LAYERS):
        above = LAYERS[rank + 1:]
        for path in (PACKAGE / layer).rglob("*.py"):
            for name in imported_modules(path):
                stripped = name.lstrip(".").removeprefix("socktop.")
                if stripped.split(".")[0] in above:
                    violations.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert violations == []


def test_json_mode_never_loads_textual_or_rich() -> None:
    probe = (
        "import sys\n"
        "from socktop.cli import main\n"
        "import io, contextlib\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--json'])\n"
        "import socktop.analyze\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich')))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]"

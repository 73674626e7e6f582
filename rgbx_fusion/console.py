"""The toolkit's one rich console: tables, rules and progress messages.

Rich assumes 80 columns when the output is a pipe or a file; tables of class paths
and per-class scores need more, so the width is only taken from a real terminal.
"""

from __future__ import annotations

from rich.console import Console

console = Console(width=None if Console().is_terminal else 160)

"""Flag spelling shared by every subcommand.

The toolkit's own commands spell flags with dashes (``--num-train``); Lightning's
stages take config keys, spelled with underscores (``--trainer.max_epochs``). Each
accepts the other spelling, so a flag is never rejected for its separator alone.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any


def _flag(token: str) -> tuple[str, str] | None:
    """``("--name", "=value" or "")`` of a long option token, else ``None``."""
    if not token.startswith("--") or token == "--":
        return None
    name, eq, value = token.partition("=")
    return name, eq + value


def with_config_spelling(argv: Sequence[str]) -> list[str]:
    """``--trainer.max-epochs=3`` → ``--trainer.max_epochs=3`` (config keys use ``_``)."""
    out = []
    for token in argv:
        flag = _flag(token)
        out.append(token if flag is None else "--" + flag[0][2:].replace("-", "_") + flag[1])
    return out


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` that also takes ``--num_train`` for ``--num-train`` (subparsers too).

    Descriptions are the commands' docstrings, shown without their reST literal quotes.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("description"):
            kwargs["description"] = str(kwargs["description"]).replace("``", "")
        super().__init__(*args, **kwargs)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if args is not None:
            known = self._option_string_actions
            fixed = []
            for token in args:
                flag = _flag(token)
                if flag is not None and flag[0] not in known:
                    dashed = flag[0].replace("_", "-")
                    token = dashed + flag[1] if dashed in known else token
                fixed.append(token)
            args = fixed
        return super().parse_known_args(args, namespace)

"""Command line: `contrastive <command> ...` (also `python -m contrastive`). A dict of subcommand -> function.

User errors (bad config, bad data, bad checkpoint) print one line to stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

COMMANDS: dict[str, tuple[str, Callable[[list[str]], int]]] = {}


def command(name: str, help: str):
    def wrap(fn: Callable[[list[str]], int]) -> Callable[[list[str]], int]:
        COMMANDS[name] = (help, fn)
        return fn

    return wrap


def user_errors() -> tuple[type[BaseException], ...]:
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data import DataError
    from .train import RunError

    return (ConfigError, DataError, CheckpointError, RunError, OSError)


@command("train", "train a model from a YAML config with key.sub=value overrides")
def train_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="contrastive train", description="Train from a config file.")
    parser.add_argument("--config", "-c", default=None, help="YAML config (defaults when omitted)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=5e-4 train.max_steps=200")
    args = parser.parse_args(argv)
    from .config import load_config
    from .train import train

    cfg = load_config(args.config, args.overrides)
    train(cfg)
    return 0


@command("config", "print the resolved config (YAML) after overrides")
def config_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="contrastive config")
    parser.add_argument("--config", "-c", default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    import yaml

    from .config import config_to_dict, load_config

    print(yaml.safe_dump(config_to_dict(load_config(args.config, args.overrides)), sort_keys=False), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: contrastive <command> [options]\n\ncommands:")
        for name, (help_, _) in COMMANDS.items():
            print(f"  {name:12s} {help_}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        print(f"contrastive: unknown command '{name}'" + (f"; did you mean '{close[0]}'?" if close else ""), file=sys.stderr)
        return 2
    try:
        return COMMANDS[name][1](rest)
    except user_errors() as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"contrastive {name}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # signals.Interrupted carries its message and 128 + signal number
        print(f"contrastive {name}: {str(e) or 'interrupted'}", file=sys.stderr)
        return getattr(e, "exit_code", 130)


if __name__ == "__main__":
    sys.exit(main())

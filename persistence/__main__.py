"""``python -m persistence upgrade|downgrade|current|history|revision``: Alembic without an ini."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys

from alembic import command
from alembic.config import Config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m persistence")
    parser.add_argument("--url", help="database URL (default: $VQ_DATABASE_URL or SQLite)")
    sub = parser.add_subparsers(dest="command", required=True)
    upgrade = sub.add_parser("upgrade", help="upgrade the schema (default: to head)")
    upgrade.add_argument("revision", nargs="?", default="head")
    downgrade = sub.add_parser("downgrade", help="downgrade the schema to REVISION")
    downgrade.add_argument("revision")
    sub.add_parser("current", help="show the revision the database is at")
    sub.add_parser("history", help="list the revisions")
    revision = sub.add_parser("revision", help="write a new revision file")
    revision.add_argument("-m", "--message", required=True)
    revision.add_argument("--autogenerate", action="store_true", help="diff models vs database")
    revision.add_argument("--rev-id", help="revision id (default: random)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from persistence.migrate import alembic_config, upgrade_database
    from visionqueue.core.errors import VQError
    from visionqueue.core.settings import get_settings

    url = args.url or get_settings().database_url
    config = alembic_config(url)
    try:
        if args.command == "upgrade":
            upgrade_database(url, args.revision)
        elif args.command == "downgrade":
            command.downgrade(config, args.revision)
        elif args.command == "current":
            command.current(config, verbose=True)
        elif args.command == "history":
            command.history(config)
        else:
            _format_new_revisions_with_ruff(config)
            command.revision(
                config, message=args.message, autogenerate=args.autogenerate, rev_id=args.rev_id
            )
    except VQError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    return 0


def _format_new_revisions_with_ruff(config: Config) -> None:
    """Make generated revision files lint-clean when ruff is installed."""
    if importlib.util.find_spec("ruff") is None:
        return
    section = "post_write_hooks"
    config.set_section_option(section, "hooks", "ruff_fix, ruff_format")
    for name, options in (
        ("ruff_fix", "check --fix --quiet REVISION_SCRIPT_FILENAME"),
        ("ruff_format", "format --quiet REVISION_SCRIPT_FILENAME"),
    ):
        config.set_section_option(section, f"{name}.type", "module")
        config.set_section_option(section, f"{name}.module", "ruff")
        config.set_section_option(section, f"{name}.options", options)


if __name__ == "__main__":
    sys.exit(main())

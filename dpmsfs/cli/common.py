"""What several commands share: finding a work directory's configuration and store."""

from __future__ import annotations

import argparse
import errno
from pathlib import Path
from typing import TYPE_CHECKING

from dpmsfs import config
from dpmsfs.errors import BusyError, NotFoundError, UnavailableError, UsageError

if TYPE_CHECKING:
    from dpmsfs.store.store import Store


def add_workdir_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "workdir", metavar="WORKDIR", nargs=None if required else "?", help="the work directory"
    )
    parser.add_argument("--config", help="configuration file (default: /etc/dpmsfs/<workdir>.toml)")
    parser.add_argument("--store", help="the store (default: from the configuration)")


def load_config(args: argparse.Namespace) -> config.Config:
    if not args.workdir:
        if not args.store:
            raise UsageError("name a WORKDIR or a --store")
        return config.Config(workdir=Path("/nonexistent"), store=Path(args.store).absolute())
    workdir = Path(args.workdir).absolute()
    try:
        is_dir = workdir.is_dir()
    except OSError as exc:  # ENOTCONN: a mount whose daemon died, not yet unmounted
        hint = " (its dpmsfs daemon died)" if exc.errno == errno.ENOTCONN else ""
        raise UnavailableError(f"{workdir}: {exc.strerror}{hint}") from None
    if not is_dir:
        raise NotFoundError(f"{workdir}: no such directory")
    return config.load(
        workdir.resolve(), Path(args.config) if args.config else None, store=args.store
    )


def open_store_readonly(cfg: config.Config) -> Store:
    from dpmsfs.store.errors import StoreError  # lmdb, zstd: only when a store is opened
    from dpmsfs.store.store import Store

    if not (cfg.store / "index").is_dir():
        raise NotFoundError(f"no store at {cfg.store} (has this work directory been mounted?)")
    try:
        return Store.open(str(cfg.store), readonly=True)
    except StoreError as exc:
        raise UsageError(f"store {cfg.store}: {exc}") from None


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def open_store_writable(cfg: config.Config) -> Store:
    """The store for a command that changes it while no daemon runs (prune, pin)."""
    from dpmsfs.store.errors import StoreError, StoreLockedError
    from dpmsfs.store.store import Store

    if not (cfg.store / "index").is_dir():
        raise NotFoundError(f"no store at {cfg.store} (has this work directory been mounted?)")
    try:
        return Store.open(str(cfg.store))
    except StoreLockedError:
        raise BusyError(
            f"store {cfg.store} is in use by another dpmsfs process (a daemon whose mount is gone?)"
        ) from None
    except StoreError as exc:
        raise UsageError(f"store {cfg.store}: {exc}") from None

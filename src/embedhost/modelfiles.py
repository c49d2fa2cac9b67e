"""Model files on disk: where a model is, what its weights are, and whether they are intact.

One home for the rules every layer asks about a model's files: how a ``path`` resolves
(``pkg:NAME`` means the model bundled in an installed Python package), whether an
engine's path is the right kind (file or directory, as its row in ``catalog`` says),
which files are weights, their sha256 (a single digest, or a sha256sum-format
manifest), and the GGUF file-type names used for quantization.

Used by the config (path checks at start), the preflight of run-time loads, the worker
(checksum verification before a load), the llama.cpp engine and the CLI. Nothing here
knows about the settings schema: functions take paths and strings.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from embedhost import catalog
from embedhost.errors import ChecksumMismatch

WEIGHT_EXTS = (".safetensors", ".bin", ".onnx", ".gguf", ".pt", ".onnx_data")
"""File name endings that hold weights (what a checksum covers, what memory estimates count)."""


def resolve_model_path(path: str) -> Path:
    """The model's path on disk, with ``pkg:NAME`` resolved to the package's model folder.

    Raises :class:`FileNotFoundError` when the named package is not installed.
    """
    if path.startswith("pkg:"):
        pkg = path[4:]
        spec = importlib.util.find_spec(pkg)
        if spec is None or spec.origin is None:
            raise FileNotFoundError(f"Python package {pkg!r} is not installed")
        base = Path(spec.origin).parent
        return base / "model" if (base / "model").is_dir() else base
    return Path(path).expanduser()


def path_problem(engine: str, path: Path) -> str | None:
    """What is wrong with ``path`` for ``engine`` (missing, a file where a directory is
    needed, or the reverse; the engine's catalog row says which), or None. Plugin engines
    get only the existence check."""
    entry = catalog.row(engine)
    if not path.exists():
        return f"{path} does not exist; point it at a model {entry.path_noun}"
    if entry.path is catalog.PathKind.FILE and not path.is_file():
        return f"{path} is not a file; {engine} needs a {entry.path_noun}"
    if entry.path is catalog.PathKind.DIRECTORY and not path.is_dir():
        return f"{path} is not a directory; {engine} needs a model directory"
    return None


def weight_files(path: Path) -> list[Path]:
    """The files a checksum covers: the file itself, or a directory's weight files."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_EXTS))


def weight_bytes(path: Path, depth: int = 3) -> int:
    """Bytes of weight files in a model file or directory. The walk is shallow: a path
    given to the admin API by mistake (``/``) must not start a crawl of the disk."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for d in range(depth):
        for ext in WEIGHT_EXTS:
            total += sum(p.stat().st_size for p in path.glob("*/" * d + "*" + ext) if p.is_file())
    return total


# Files already hashed in this process tree, by path: their identity when hashed and the
# digest. A worker restarting on an unchanged file skips the re-hash (on a busy machine,
# reading and hashing every weight again is most of a restart); any change to the file
# (its size, mtime, ctime, inode or device; ctime cannot be set back by `touch`) means a
# new hash. The supervisor hands the entries to each worker it starts and takes back what
# the worker hashed (see :func:`remember` and :func:`hashed_files`).
FileIdentity = tuple[int, int, int, int, int]
_HASHED: dict[str, tuple[FileIdentity, str]] = {}


@dataclass(slots=True)
class HashStats:
    """What :func:`verify_checksum` did in this process: files hashed or skipped."""

    hashed_files: int = 0
    hashed_bytes: int = 0
    skipped_files: int = 0


HASH_STATS = HashStats()


def _identity(p: Path) -> FileIdentity:
    st = p.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def remember(entries: dict[str, tuple[FileIdentity, str]]) -> None:
    """Take file digests known to this process tree (from :func:`hashed_files`)."""
    for path, (ident, digest) in entries.items():
        _HASHED[path] = (tuple(ident), digest)  # type: ignore[assignment]


def hashed_files() -> dict[str, tuple[FileIdentity, str]]:
    """The file digests this process knows, for :func:`remember` in another."""
    return dict(_HASHED)


def _sha256_file(p: Path, chunk: int = 1 << 22) -> str:
    key = str(p.resolve())
    before = _identity(p)
    known = _HASHED.get(key)
    if known is not None and known[0] == before:
        HASH_STATS.skipped_files += 1
        return known[1]
    h = hashlib.sha256()
    with p.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    digest = h.hexdigest()
    HASH_STATS.hashed_files += 1
    HASH_STATS.hashed_bytes += before[0]
    if _identity(p) == before:  # not changed while it was read
        _HASHED[key] = (before, digest)
    return digest


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, or, for a directory holding several weight files, of their
    sorted (relative name, sha256) lines. A directory with one weight file hashes as that
    file, so the digest printed by ``sha256sum model.safetensors`` matches."""
    files = weight_files(path)
    if not files:
        raise FileNotFoundError(f"no weight files under {path}")
    if len(files) == 1:
        return _sha256_file(files[0])
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(path)} {_sha256_file(p)}\n".encode())
    return h.hexdigest()


class PinnedModel(Protocol):
    """What a checksum check needs of a model (``config.ModelConfig`` is one)."""

    @property
    def checksum(self) -> str | None: ...

    @property
    def ref(self) -> str: ...

    def resolved_path(self) -> Path: ...


def verify_checksum(model: PinnedModel) -> str | None:
    """Hash the model's weights; raise :class:`ChecksumMismatch` if its pinned checksum
    (``sha256:<hex>`` or ``manifest:FILE``) differs.

    Returns the digest (``sha256:...``), or None when none is configured. Blocking: call it
    from a worker process or a thread.
    """
    checksum, ref = model.checksum, model.ref
    if checksum is None:
        return None
    path = model.resolved_path()
    if checksum.startswith("manifest:"):
        return verify_manifest(path, checksum.removeprefix("manifest:"), ref)
    actual = "sha256:" + sha256_of(path)
    if actual != checksum:
        files = ", ".join(str(p) for p in weight_files(path))
        raise ChecksumMismatch(
            f"model {ref}: checksum mismatch for {files}: expected {checksum}, "
            f"actual {actual}. Fix models[].checksum or restore the file."
        )
    return actual


def verify_manifest(path: Path, manifest_name: str, ref: str) -> str:
    """Check every file a sha256sum-format manifest lists, and that it covers every weight
    file. A relative manifest path is taken inside the model directory. Returns the digest
    of the manifest itself (``sha256:...``)."""
    base = path if path.is_dir() else path.parent
    manifest = Path(manifest_name)
    manifest = manifest if manifest.is_absolute() else base / manifest
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ChecksumMismatch(f"model {ref}: cannot read manifest {manifest}: {exc}") from None
    listed: set[Path] = set()
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        digest, _, name = line.strip().partition(" ")
        name = name.strip().lstrip("*")
        if not re.fullmatch(r"[0-9a-fA-F]{64}", digest) or not name:
            raise ChecksumMismatch(f"model {ref}: {manifest}:{n}: not a sha256sum line")
        file = (base / name).resolve()
        listed.add(file)
        if not file.is_file():
            raise ChecksumMismatch(f"model {ref}: {file} is listed in {manifest} but missing")
        actual = sha256_of(file)
        if actual != digest.lower():
            raise ChecksumMismatch(
                f"model {ref}: checksum mismatch for {file}: "
                f"expected sha256:{digest.lower()}, actual sha256:{actual}. "
                "Fix the manifest or restore the file."
            )
    unlisted = [p for p in weight_files(path) if p.resolve() not in listed]
    if unlisted:
        raise ChecksumMismatch(
            f"model {ref}: weight file(s) {', '.join(map(str, unlisted))} not covered by "
            f"{manifest}; add them to the manifest"
        )
    return "sha256:" + sha256_of(manifest)


# --- GGUF file types ---------------------------------------------------------------------------

# general.file_type values (llama_ftype) and their usual names in file names.
FILE_TYPES: dict[int, str] = {
    0: "f32",
    1: "f16",
    2: "q4_0",
    3: "q4_1",
    7: "q8_0",
    8: "q5_0",
    9: "q5_1",
    10: "q2_k",
    11: "q3_k_s",
    12: "q3_k_m",
    13: "q3_k_l",
    14: "q4_k_s",
    15: "q4_k_m",
    16: "q5_k_s",
    17: "q5_k_m",
    18: "q6_k",
    19: "iq2_xxs",
    20: "iq2_xs",
    21: "q2_k_s",
    22: "iq3_xs",
    23: "iq3_xxs",
    24: "iq1_s",
    25: "iq4_nl",
    26: "iq3_s",
    27: "iq3_m",
    28: "iq2_s",
    29: "iq2_m",
    30: "iq4_xs",
    31: "iq1_m",
    32: "bf16",
    36: "tq1_0",
    37: "tq2_0",
}
_QUANT_IN_NAME = re.compile(
    r"(?<![a-z0-9])("
    + "|".join(sorted(set(FILE_TYPES.values()), key=len, reverse=True))
    + r")(?![a-z0-9])",
    re.IGNORECASE,
)


def quantization_in_name(file_name: str) -> str | None:
    """The quantization a GGUF file's name announces (``model-Q4_0.gguf`` -> ``q4_0``)."""
    found = _QUANT_IN_NAME.search(file_name)
    return found.group(1).lower() if found else None


def quantization_of(file_type: int | None) -> str | None:
    """The name of a GGUF ``general.file_type`` value (the guessed-type flag ignored)."""
    if file_type is None:
        return None
    return FILE_TYPES.get(file_type & ~1024, f"type {file_type}")


def quantization_mismatches(path: Path, configured: str | None, file_type: int | None) -> list[str]:
    """Warnings when the config or the file name disagree with the file's general.file_type."""
    actual = quantization_of(file_type)
    if actual is None:
        return []
    out = []
    if configured and configured.lower() != actual:
        out.append(
            f"{path.name}: quantization is configured as {configured!r} but the file's "
            f"general.file_type says {actual!r}"
        )
    named = quantization_in_name(path.name)
    if named and named != actual:
        out.append(
            f"{path.name}: the file name says {named!r} but the file's "
            f"general.file_type says {actual!r}"
        )
    return out

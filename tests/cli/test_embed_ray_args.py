"""``embedhost embed --ray`` without a cluster: the optional ADDRESS of ``--ray`` and how
INPUT names its shards (the runs themselves are tests/ray/test_ray_data.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedhost.cli.corpus import CorpusError
from embedhost.cli.corpus.raydata import find_shards
from embedhost.cli.embed import _RAY_DEFAULT, optional_ray_address


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        (
            ["embed", "in/", "-o", "out", "--ray"],
            ["embed", "in/", "-o", "out", "--ray", _RAY_DEFAULT],
        ),
        (
            ["embed", "in/", "--ray", "-o", "out"],
            ["embed", "in/", "--ray", _RAY_DEFAULT, "-o", "out"],
        ),
        (
            ["embed", "in/", "--ray", "h:6379", "-o", "o"],
            ["embed", "in/", "--ray", "h:6379", "-o", "o"],
        ),
        (["embed", "in/", "--ray=auto"], ["embed", "in/", "--ray=auto"]),
    ],
)
def test_ray_address_is_optional(argv: list[str], want: list[str]) -> None:
    assert optional_ray_address(argv) == want


def test_shards_from_a_directory_a_glob_or_a_file(tmp_path: Path) -> None:
    for name in ("b.jsonl", "a.jsonl", "notes.md"):
        (tmp_path / name).write_text("{}\n")
    both = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    assert find_shards(str(tmp_path)) == both  # sorted; other files ignored
    assert find_shards(str(tmp_path / "*.jsonl")) == both
    assert find_shards(str(tmp_path / "b.jsonl")) == both[1:]


def test_shards_refused(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="no such file"):
        find_shards(str(tmp_path / "missing"))
    with pytest.raises(CorpusError, match=r"no \.parquet/\.jsonl/\.csv shards"):
        find_shards(str(tmp_path))
    (tmp_path / "a.jsonl").write_text("{}\n")
    (tmp_path / "b.csv").write_text("text\nx\n")
    with pytest.raises(CorpusError, match="must all be one of"):
        find_shards(str(tmp_path))
    for d in ("d1", "d2"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "a.jsonl").write_text("{}\n")
    with pytest.raises(CorpusError, match=r"would both write a\.parquet"):
        find_shards(str(tmp_path / "d*" / "a.jsonl"))

"""Replay data sets are found in the folders the caller names, never next to the package."""

from __future__ import annotations

from pathlib import Path

import pytest

from honed.errors import DataError
from honed.monitor import replay


def test_data_is_read_from_the_given_folders(tmp_path: Path) -> None:
    found = tmp_path / "second" / replay.PHRASEBANK
    found.parent.mkdir(parents=True)
    found.write_text("Profit rose .@positive\nno label here\nSales fell .@negative\n", "latin-1")
    dirs = [tmp_path / "first", tmp_path / "second"]
    assert replay.find_data(replay.PHRASEBANK, dirs) == found
    assert replay.load_phrasebank(data_dirs=dirs) == (
        ["Profit rose .", "Sales fell ."],
        ["positive", "negative"],
    )


def test_missing_data_names_the_folders_tried(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no data folder given"):
        replay.load_alpaca()
    with pytest.raises(DataError, match=f"not found under {tmp_path}.*--data-dir"):
        replay.find_data(replay.ALPACA, [tmp_path])

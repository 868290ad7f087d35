"""bench.make_up_load refuses idle windows it cannot measure, before touching the stack."""

from __future__ import annotations

import pytest

from bench import make_up_load


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--idle-seconds", "0"], "more than 0"),
        (["--settle", "-1"], "0 or more"),
        (["--settle", "nan"], "0 or more"),
        (["--idle-seconds", "x"], "not a number"),
    ],
)
def test_bad_windows_are_refused_with_a_clear_error(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        make_up_load.main(args)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err

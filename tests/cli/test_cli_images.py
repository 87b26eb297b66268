"""Huge or transparent image files through `rrm trace`: one error line and exit 2, no traceback."""

import subprocess
import sys

import pytest
from PIL import Image

from tests.cli.conftest import expect_user_error
from tests.data.pngs import write_blank_png


def test_trace_refuses_huge_and_empty_images_in_one_line(tmp_path, capsys):
    big = write_blank_png(tmp_path / "big.png", width=12000, height=12000)
    out = ["--out", str(tmp_path / "t")]
    expect_user_error(capsys, ["trace", str(big), *out],
                      r"big.png is 12000x12000 pixels, model expects 24x24$")
    clear = tmp_path / "clear.png"
    Image.new("RGBA", (24, 24), (0, 0, 0, 0)).save(clear)
    expect_user_error(capsys, ["trace", str(clear), *out], r"clear.png is fully transparent")
    assert not (tmp_path / "t").exists()


@pytest.mark.slow
def test_a_decompression_bomb_is_one_stderr_line_in_a_fresh_process(tmp_path):
    bomb = write_blank_png(tmp_path / "bomb.png", width=30000, height=30000)
    done = subprocess.run([sys.executable, "-m", "rrm_plugin.cli.main", "trace", str(bomb),
                           "--out", str(tmp_path / "t")], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith(f"rrm trace: error: {bomb} is too large to read ("), lines[0]
    assert "DecompressionBombError" not in done.stderr and done.stdout == ""

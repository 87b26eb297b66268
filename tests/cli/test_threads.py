"""`--threads N` sets torch's thread count for the run; without it no command changes it."""

import pytest
import torch

from rrm_plugin.cli.main import main
from tests.cli.conftest import expect_user_error


@pytest.fixture
def three_threads():
    """The process starts the test at 3 threads (no command's old fixed count) and gets its own
    count back afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield
    torch.set_num_threads(before)


def test_threads_option_sets_the_count_for_the_run(three_threads, capsys):
    assert main(["list", "--threads", "1"]) == 0
    assert torch.get_num_threads() == 1
    assert main(["list", "--threads", "4"]) == 0
    assert torch.get_num_threads() == 4


def test_a_command_without_threads_leaves_the_count_alone(three_threads, tmp_path, capsys):
    assert main(["eval-saes", "--out", str(tmp_path / "eval.json")]) == 0
    assert torch.get_num_threads() == 3


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_threads_must_be_a_whole_number_of_at_least_one(three_threads, capsys, value):
    expect_user_error(capsys, ["trace", "x.png", "--threads", value],
                      rf"argument --threads: must be a whole number >= 1, got '?{value}'?")
    assert torch.get_num_threads() == 3

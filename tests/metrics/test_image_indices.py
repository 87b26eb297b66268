"""The one check of a run's image choice: the library config and `rrm faithfulness` refuse the
same inputs with the same message, spelled in each one's names."""

import pytest

from rrm_plugin.errors import RRMUserError
from rrm_plugin.metrics.faithfulness import FaithfulnessConfig
from rrm_plugin.metrics.image_indices import CLI, PYTHON, check_image_indices
from tests.cli.conftest import expect_user_error


@pytest.mark.parametrize(("n_images", "indices", "message"), [
    (3, [1], "image_indices: give n_images or image_indices, not both"),
    (None, [4, 4], "image_indices: expected distinct indices >= 0, got [4, 4]"),
    (None, [5, 1, 5], "image_indices: expected distinct indices >= 0, got [5, 1, 5]"),
    (None, [-1], "image_indices: expected distinct indices >= 0, got [-1]"),
    (None, [0, 2, -3], "image_indices: expected distinct indices >= 0, got [0, 2, -3]"),
])
def test_config_and_cli_refuse_the_same_indices_with_the_same_message(
        n_images, indices, message, tmp_path, capsys):
    with pytest.raises(RRMUserError) as err:
        FaithfulnessConfig(n_images=n_images, image_indices=tuple(indices))
    assert str(err.value) == message  # a tuple given, quoted as a list like the CLI's
    argv = ["faithfulness", "--image-indices", *map(str, indices), "--out", str(tmp_path / "f")]
    if n_images is not None:
        argv += ["--n-images", str(n_images)]
    line = expect_user_error(capsys, argv, "")
    cli = message.replace(PYTHON.image_indices, CLI.image_indices).replace(PYTHON.n_images,
                                                                          CLI.n_images)
    assert line == f"rrm faithfulness: error: {cli}"
    assert not (tmp_path / "f").exists()


def test_good_indices_are_sorted_and_none_stays_none():
    assert FaithfulnessConfig(image_indices=(5, 1, 4)).image_indices == (1, 4, 5)
    assert FaithfulnessConfig(image_indices=[0]).image_indices == (0,)
    assert FaithfulnessConfig(n_images=3).image_indices is None
    assert check_image_indices(image_indices=None, n_images=3) is None
    assert check_image_indices(image_indices=[2, 0], n_images=None, spelling=CLI) == (0, 2)


def test_no_index_at_all_is_refused():
    # The CLI's `nargs="+"` never passes an empty list; the library gets its own message.
    with pytest.raises(RRMUserError, match=r"^image_indices: expected at least one index, got "
                                           r"\[\]$"):
        FaithfulnessConfig(image_indices=())

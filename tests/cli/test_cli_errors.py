"""Every command reports a user error as one line `rrm <command>: error: ...`, exit status 2;
`--debug` re-raises with the traceback; internal errors keep theirs (issue 12 section 2)."""

import pytest

from rrm_plugin.cli.main import COMMANDS, main
from tests.cli.conftest import expect_user_error


@pytest.fixture
def not_an_image(tmp_path):
    path = tmp_path / "notanimage.png"
    path.write_text("this is text, not a PNG")
    return path


def cases(tmp_path, not_an_image):
    out_file = tmp_path / "a_file"
    out_file.write_text("x")
    return {
        "demo": (["demo", "--out", str(out_file)], "is a file; expected a folder"),
        "list": (["list", "--bogus"], "unrecognized arguments: --bogus"),
        "train-model": (["train-model", "--steps", "0", "--out", str(tmp_path / "m")],
                        "--steps must be at least 1, got 0"),
        "train-saes": (["train-saes", "--lr", "-1", "--out", str(tmp_path / "r")],
                       "--lr must be positive, got -1.0"),
        "eval-saes": (["eval-saes", "--release", "nope"], "unknown SAE release 'nope'"),
        "baselines": (["baselines", "--release", "nope"], "unknown SAE release 'nope'"),
        "trace": (["trace", str(not_an_image), "--out", str(tmp_path / "t")],
                  "notanimage.png is not a readable image file"),
        "faithfulness": (["faithfulness", "--methods", "rrm", "bogus", "--out",
                          str(tmp_path / "f")], r"--methods: unknown \['bogus'\]"),
        "lens": (["lens", "--batch-size", "0", "--out", str(tmp_path / "l")],
                 "--batch-size must be at least 1, got 0"),
        "features": (["features", "--k", "0", "--out", str(tmp_path / "feats")],
                     "--k must be at least 1, got 0"),
        "view": (["view", str(tmp_path / "no_such_trace")], "no_such_trace"),
        "debias": (["debias", "--random-draws", "0", "--out", str(tmp_path / "d")],
                   "--random-draws must be at least 1, got 0"),
    }


def test_every_command_has_a_user_error_case(tmp_path, not_an_image):
    assert set(cases(tmp_path, not_an_image)) == set(COMMANDS)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_user_error_is_one_line_and_exit_2(tmp_path, capsys, not_an_image, command):
    argv, message = cases(tmp_path, not_an_image)[command]
    expect_user_error(capsys, argv, message)


def test_more_user_errors(tmp_path, capsys):
    expect_user_error(capsys, ["trace", "0"], "the following arguments are required: --out")
    expect_user_error(capsys, ["baselines", "--batch-size", "0", "--n-images", "4"],
                      "--batch-size must be at least 1, got 0")
    expect_user_error(capsys, ["lens", "--release", "nope", "--out", str(tmp_path / "l")],
                      "unknown SAE release 'nope'")
    expect_user_error(capsys, ["lens", "--random-shared-seeds", "0", "--out", str(tmp_path / "l")],
                      "--random-shared-seeds must be at least 1, got 0")
    expect_user_error(capsys, ["trace", str(tmp_path / "missing.png"), "--out",
                               str(tmp_path / "t")], "no image file")


def test_debug_shows_the_traceback(tmp_path, not_an_image):
    from rrm_plugin.data.images import ImageFileError

    with pytest.raises(ImageFileError, match="is not a readable image file"):
        main(["trace", str(not_an_image), "--out", str(tmp_path / "t"), "--debug"])


def test_internal_errors_keep_their_traceback(monkeypatch, capsys):
    import rrm_plugin.cli.listing as listing

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(listing, "run", broken)
    assert main(["list"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: a bug" in err
    assert "rrm list: internal error" in err


def _plant(monkeypatch, error: BaseException) -> None:
    """`error` raised deep in the library: where an embedded model's weights are read."""
    import rrm_plugin.zoo.models as models

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(models, "load_model_from_directory", broken)


@pytest.mark.parametrize("error", [ValueError("x"), KeyError("k"), IndexError("i"),
                                   FileNotFoundError("f")])
def test_a_builtin_error_deep_in_the_library_is_an_internal_error(monkeypatch, capsys, tmp_path,
                                                                 error):
    _plant(monkeypatch, error)
    assert main(["trace", "0", "--out", str(tmp_path / "t")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and f"{type(error).__name__}: " in err
    assert "rrm trace: internal error" in err
    assert not (tmp_path / "t").exists()


def test_a_user_error_deep_in_the_library_is_one_line_exit_2(monkeypatch, capsys, tmp_path):
    from rrm_plugin.errors import MissingFileError

    _plant(monkeypatch, MissingFileError("weights of 'digits-vit' are missing\nat X"))
    expect_user_error(capsys, ["trace", "0", "--out", str(tmp_path / "t")],
                      r"^rrm trace: error: weights of 'digits-vit' are missing at X$")

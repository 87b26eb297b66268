"""The user-error family: every member is a `ValueError` and its builtin kind, and the library
raises no bare builtin error for a user mistake (a source scan, so new code keeps to it)."""

import ast
from pathlib import Path

import pytest

from rrm_plugin import errors

PACKAGE = Path(errors.__file__).parent

MEMBERS = {
    errors.UnknownNameError: KeyError,
    errors.OutOfRangeError: IndexError,
    errors.MissingFileError: FileNotFoundError,
    errors.OutputExistsError: FileExistsError,
    errors.NotAFolderError: NotADirectoryError,
    errors.NotAFileError: IsADirectoryError,
    errors.NotWritableError: PermissionError,
    errors.CorruptFileError: ValueError,
}


@pytest.mark.parametrize(("member", "builtin"), MEMBERS.items())
def test_members_are_user_errors_values_errors_and_their_builtin(member, builtin):
    err = member("what was wrong; what was expected")
    assert isinstance(err, errors.RRMUserError) and isinstance(err, ValueError)
    assert isinstance(err, builtin)
    assert str(err) == "what was wrong; what was expected"  # no KeyError quoting
    with pytest.raises(builtin):
        raise err


def test_the_packages_own_error_classes_are_in_the_family():
    from rrm_plugin.data.images import ImageFileError
    from rrm_plugin.hosts.convert import UnsupportedArchitectureError
    from rrm_plugin.io import CorruptFileError
    from rrm_plugin.provenance import ProvenanceError
    from rrm_plugin.runs.lock import OutputInUseError
    from rrm_plugin.saes.hub import CheckpointNotFoundError

    assert CorruptFileError is errors.CorruptFileError
    for cls in (ImageFileError, UnsupportedArchitectureError, ProvenanceError, OutputInUseError,
                CheckpointNotFoundError):
        assert issubclass(cls, errors.RRMUserError), cls


BUILTINS = {"ValueError", "KeyError", "IndexError", "FileNotFoundError", "FileExistsError",
            "NotADirectoryError", "IsADirectoryError", "PermissionError", "SystemExit"}


def test_no_bare_builtin_user_errors_are_raised():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            made = node.exc if isinstance(node, ast.Raise) else getattr(node, "value", None)
            if isinstance(node, ast.Raise | ast.Return) and isinstance(made, ast.Call):
                name = getattr(made.func, "id", None)
                if name in BUILTINS:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {name}")
    assert found == []

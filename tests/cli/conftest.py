"""CLI test helpers: a user error is one stderr line `rrm <command>: error: ...` and exit 2."""

import re


def expect_user_error(capsys, argv: list[str], pattern: str) -> str:
    """Run `rrm argv`, assert exit status 2 and a single error line matching `pattern`."""
    from rrm_plugin.cli.main import main

    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as err:  # argparse's own errors
        code = err.code
    err_text = capsys.readouterr().err
    lines = [line for line in err_text.splitlines() if line.strip()]
    assert code == 2, (code, err_text)
    assert len(lines) == 1, err_text
    assert lines[0].startswith(f"rrm {argv[0]}: error: "), lines[0]
    assert "Traceback" not in err_text
    assert re.search(pattern, lines[0]), (pattern, lines[0])
    return lines[0]

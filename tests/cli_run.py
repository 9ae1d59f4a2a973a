"""Running the `jaxcnn` command in this process (`cli.main`), as the subprocess tests do, but fast."""

from jaxcnn import cli


def run_cli(capsys, *args):
    """(exit status, stdout, stderr) of `jaxcnn ARGS`."""
    capsys.readouterr()  # drop what earlier steps printed
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(result, *fragments):
    """Exit status 2 and one stderr line holding every fragment."""
    code, _, err = result
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]

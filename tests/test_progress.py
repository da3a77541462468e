"""Progress bars in log files: plain, occasional lines (no carriage-return refreshes); bars on a terminal."""

import io

from ast_ds.progress import bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_file_gets_a_few_plain_lines(monkeypatch):
    monkeypatch.setenv("AST_DS_PROGRESS_SECONDS", "30")
    out = io.StringIO()
    for _ in bar(range(20000), desc="tokenizing", unit="doc", file=out):
        pass
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.strip().splitlines()
    assert 1 <= len(lines) <= 3 and lines[-1].startswith("tokenizing: 100%") and "20000/20000" in lines[-1]


def test_a_bar_that_is_not_left_behind_leaves_no_blank_lines(monkeypatch):
    out = io.StringIO()
    for _ in bar(range(10), desc="perplexity", leave=False, file=out):
        pass
    assert out.getvalue() == ""  # short and transient: not a line (no "0%" line per eval domain in a log)
    monkeypatch.setenv("AST_DS_PROGRESS_SECONDS", "0")
    for _ in bar(range(10), desc="perplexity", leave=False, file=out):
        pass
    assert out.getvalue() and all(line.strip() for line in out.getvalue().splitlines())


def test_a_terminal_gets_the_usual_bar():
    out = Terminal()
    for _ in bar(range(10), desc="x", file=out):
        pass
    assert "\r" in out.getvalue()

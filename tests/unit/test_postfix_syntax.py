"""Postfix's logical lines (postconf(5)): the one parser main.cf and master.cf edits share."""

from __future__ import annotations

from backupmx.postfix.mastercf import set_service_options
from backupmx.postfix.syntax import logical_lines


def spans(text: str) -> list[list[str]]:
    lines = text.splitlines(keepends=True)
    return [[line.rstrip("\n") for line in lines[start:end]] for start, end in logical_lines(lines)]


def test_a_line_at_column_zero_and_its_indented_continuations_are_one_logical_line():
    assert spans("a = 1\n  2\n\t3\nb = 4\n") == [["a = 1", "  2", "\t3"], ["b = 4"]]


def test_comments_and_blank_lines_inside_an_entry_do_not_end_it():
    """Postfix skips them: the -o line after them still belongs to the service."""
    text = "2525 inet n - n - 1 postscreen\n  # a note\n\n  -o x=1\nsmtpd pass - - n - - smtpd\n"
    assert spans(text) == [["2525 inet n - n - 1 postscreen", "  # a note", "", "  -o x=1"],
                           ["smtpd pass - - n - - smtpd"]]


def test_comments_and_blank_lines_after_an_entry_stay_outside_it():
    assert spans("a = 1\n  2\n# next section\n\nb = 3\n") == [["a = 1", "  2"], ["b = 3"]]


def test_a_continuation_with_nothing_before_it_and_comments_are_no_logical_line():
    assert spans("  stray\n# comment\n   # indented comment\n") == []


def test_an_option_after_a_comment_in_the_entry_is_changed_not_added_twice():
    master_cf = "2525 inet n - n - 1 postscreen\n  # the PROXY listener\n  -o postscreen_greet_action=ignore\n"
    changed = set_service_options(master_cf, "2525", "inet", {"postscreen_greet_action": "enforce"})
    assert changed.count("postscreen_greet_action") == 1
    assert "-o postscreen_greet_action=enforce" in changed

"""The content scanner (smtp/parsing.py) against a plain reading of what it must find, fed in
any split of the content."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vsmtp.smtp.parsing import ContentScanner

# Content made of lines around the limit (0 to max_line octets before the end, now and then
# one far longer), ended by CRLF mostly, sometimes by a bare CR or LF, or not at all.
ENDS = st.sampled_from([b"\r\n"] * 4 + [b"\r", b"\n", b""])


def content(max_line: int) -> st.SearchStrategy[bytes]:
    length = st.one_of(st.integers(max(0, max_line - 4), max_line), st.integers(0, max_line), st.just(max_line + 200))
    return st.lists(st.tuples(length, ENDS), max_size=60).map(lambda lines: b"".join(b"x" * n + end for n, end in lines))


def reference(content: bytes, max_line: int) -> tuple[bool, bool]:
    """(bare line endings, long line): every CR and LF in a CRLF pair; no line, CR included,
    longer than max_line - 1 octets before its LF (nor the unfinished last one)."""
    bare = content.count(b"\r") != content.count(b"\r\n") or content.count(b"\n") != content.count(b"\r\n")
    long = bool(max_line) and any(len(line) > max_line - 1 for line in content.split(b"\n"))
    return bare, long


@given(
    st.sampled_from([0, 2, 5, 10, 12, 1000]).flatmap(lambda m: st.tuples(st.just(m), content(m))),
    st.lists(st.integers(0, 10**6), max_size=8),
)
def test_the_scanner_finds_what_a_plain_reading_finds_whatever_the_chunks(case: tuple[int, bytes], cuts: list[int]) -> None:
    max_line, content = case
    scanner = ContentScanner(max_line)
    start = 0
    for cut in sorted(c % (len(content) + 1) for c in cuts):
        scanner.feed(content[start:cut])
        start = cut
    scanner.feed(content[start:])
    assert (scanner.bare_line_endings, scanner.long_line) == reference(content, max_line)


def test_one_long_line_among_many_short_ones_in_one_chunk() -> None:
    line = b"x" * 76 + b"\r\n"
    for where in (1, 500, 1310):  # near the start, in the middle, near the end of 100 KiB
        for length in (998, 999):  # octets before the CRLF: the limit (1000 with it), and one over
            lines = [line] * 1312
            lines[where] = b"y" * length + b"\r\n"
            scanner = ContentScanner(1000)
            scanner.feed(b"".join(lines))
            assert scanner.long_line is (length == 999), (where, length)
            assert not scanner.bare_line_endings


def test_a_bare_cr_and_a_bare_lf_that_balance_each_other_are_both_found() -> None:
    # As many CRs as LFs, but not in pairs: across a chunk's end, and at the very end.
    for chunks in ([b"a\r", b"b\n"], [b"a\n\r"], [b"a\n", b"\r"], [b"\r", b"\n"]):
        scanner = ContentScanner(0)
        for chunk in chunks:
            scanner.feed(chunk)
        assert scanner.bare_line_endings is (chunks != [b"\r", b"\n"]), chunks

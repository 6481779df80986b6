"""Queue and session ids: base 31 without vowels, time first, unique."""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st

from vsmtp import ids


def plain(number: int, width: int) -> str:
    """A digit at a time, least significant first: the reading the fast encoding must match."""
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 31)
        digits.append("0123456789BCDFGHJKLMNPQRSTVWXYZ"[digit])
    return "".join(reversed(digits))


@given(width=st.integers(min_value=1, max_value=20), data=st.data())
def test_the_encoding_is_base_31_in_the_given_width(width: int, data: st.DataObject) -> None:
    number = data.draw(st.integers(min_value=0, max_value=31**width - 1))
    assert ids._encode(number, width) == plain(number, width)


def test_ids_start_with_the_time_and_are_unique() -> None:
    before = ids.time_prefix(time.time() - 0.001)  # a millisecond each side: float rounding
    made = [ids.new_id() for _ in range(2000)]
    after = ids.time_prefix(time.time() + 0.001)
    assert all(len(i) == 19 and set(i) <= set("0123456789BCDFGHJKLMNPQRSTVWXYZ") for i in made)
    assert all(before <= i[:11] <= after for i in made)
    assert len(set(made)) == len(made)  # unique, even within one microsecond
    assert len({i[11:] for i in made}) > 1990  # the random part varies

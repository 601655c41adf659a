"""StopMatcher: stop sequences matched on decoded text, never leaking a partial match."""

from inference.stop import StopMatcher


def feed_all(matcher, pieces):
    return "".join(matcher.feed(piece) for piece in pieces) + matcher.flush()


def test_it_passes_text_through_without_stops():
    assert feed_all(StopMatcher([]), ["a ", "b c"]) == "a b c"


def test_it_cuts_at_a_stop_inside_one_piece():
    matcher = StopMatcher(["END"])
    assert matcher.feed("hello END world") == "hello "
    assert matcher.stopped
    assert matcher.feed("more") == ""
    assert matcher.flush() == ""


def test_it_holds_back_a_partial_match_split_across_pieces():
    matcher = StopMatcher(["<stop>"])
    assert matcher.feed("one <st") == "one "
    assert matcher.feed("op> two") == ""
    assert matcher.stopped


def test_it_releases_held_text_that_turned_out_not_to_stop():
    matcher = StopMatcher(["<stop>"])
    assert matcher.feed("a <s") == "a "
    assert matcher.feed("ky") == "<sky"
    assert matcher.feed(" <") == " "
    assert matcher.flush() == "<"


def test_it_stops_at_the_earliest_of_several_stops():
    matcher = StopMatcher(["zz", " 5", "4"])
    assert feed_all(matcher, ["1 2 3 ", "4 5 6"]) == "1 2 3 "


def test_a_stop_arriving_one_character_at_a_time_never_leaks():
    matcher = StopMatcher(["\n\n"])
    out = [matcher.feed(ch) for ch in "ab\n\ncd"]
    assert "".join(out) == "ab"
    assert matcher.stopped

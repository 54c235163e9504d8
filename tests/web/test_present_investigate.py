"""How completeness and search matches are shown (pure functions of services.web.present)."""
from __future__ import annotations

from services.web.present import VERDICT_SEQ, completeness, highlight, message_link


def run(**values: object) -> dict[str, object]:
    return {"seqs_known": True, "seq_seen": 42, "seq_gap": None, "terminal_seq": 42, **values}


def test_completeness_says_how_many_events_arrived_and_where_the_gap_is() -> None:
    assert completeness(run()) == {"state": "complete", "text": "42 of 42 events", "gap": None}
    assert completeness(run(terminal_seq=None, seq_seen=17)) == {"state": "open", "text": "17 events so far", "gap": None}
    assert completeness(run(seq_gap=17, seq_seen=41))["text"] == "41 events, gap after #17"  # type: ignore[index]
    assert completeness(run(seq_gap=0, seq_seen=40))["text"] == "40 events, the first events are missing"  # type: ignore[index]
    lost = completeness(run(terminal_seq=VERDICT_SEQ + 1, seq_seen=9))
    assert lost == {"state": "complete", "text": "9 of 9 events (then the worker was lost)", "gap": None}
    assert completeness(run(seqs_known=False)) is None  # recorded before the projection kept seqs


def test_a_match_is_cut_out_around_its_first_place_and_marked_in_any_case() -> None:
    assert highlight("Imported order SO-104711 from ERP", "so-104711") == [
        ("Imported order ", False), ("SO-104711", True), (" from ERP", False)]
    parts = highlight("x" * 1000 + "Needle" + "y" * 1000, "needle", width=60)
    assert parts[0] == ("…", False) and parts[-1] == ("…", False) and ("Needle", True) in parts
    assert sum(len(text) for text, _ in parts[1:-1]) == 60
    assert highlight("a-b a-b", "A-B") == [("a-b", True), (" ", False), ("a-b", True)]
    assert message_link("20261201080000", 17) == "/runs/20261201080000?at=17#m17"

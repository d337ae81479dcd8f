import json
import math

from cascade.evaluation.run import format_table, summarize
from cascade.evaluation.store import ResultsStore, row_key


def _row(image, psnr, method="bicubic", scale=2.0):
    return {"method": method, "settings": {}, "dataset": "set5", "scale": scale,
            "image": image, "psnr": psnr}


def test_append_read_round_trip_keeps_inf(tmp_path):
    store = ResultsStore(tmp_path / "results.jsonl")
    store.append(_row("a", math.inf))
    store.append(_row("b", 30.0))
    rows = store.rows()
    assert [r["image"] for r in rows] == ["a", "b"]
    assert rows[0]["psnr"] == math.inf
    assert row_key(rows[1]) in store.keys()


def test_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "results.jsonl"
    store = ResultsStore(path)
    store.append(_row("a", 30.0))
    with open(path, "a") as f:
        f.write('{"method": "bic')  # a writer killed mid-line
    import pytest

    with pytest.warns(UserWarning, match="torn"):
        rows = store.rows()
    assert len(rows) == 1


def test_settings_order_does_not_change_the_key():
    a = {**_row("x", 1.0), "settings": {"steps": 20, "w": 1.0}}
    b = {**_row("x", 1.0), "settings": {"w": 1.0, "steps": 20}}
    assert row_key(a) == row_key(b)


def test_summary_means_skip_nulls_and_inf():
    rows = [_row("a", 30.0), _row("b", 32.0), _row("c", math.inf),
            {**_row("d", None)}, _row("a", 20.0, scale=4.0)]
    summary = summarize(rows)
    by_scale = {e["scale"]: e for e in summary}
    assert by_scale[2.0]["psnr"] == 31.0 and by_scale[2.0]["images"] == 4
    assert by_scale[4.0]["psnr"] == 20.0
    table = format_table(summary, ["psnr"])
    assert "x2" in table and "31.00" in table and json.dumps({}) not in table


def test_summary_joins_the_values_of_a_text_field():
    """``ran`` (the steps a cascade ran for an image) is text: its distinct values, no mean;
    rows without it are skipped, and a field with numbers keeps its mean."""
    rows = [{**_row("a", 30.0), "ran": "sr3_x2"}, {**_row("b", 32.0), "ran": "sr3_x2"},
            {**_row("c", 31.0, scale=3.0), "ran": "lainr -> sr3_x2"},
            {**_row("d", 33.0, scale=3.0), "ran": "sr3_x2"},
            _row("e", 32.0, scale=3.0),  # a row from before rows had ``ran``
            {**_row("f", 30.0, scale=4.0), "x": 1.0}, {**_row("g", 30.0, scale=4.0), "x": "?"},
            {**_row("h", 30.0, scale=4.0), "x": 3.0}]
    by_scale = {e["scale"]: e for e in summarize(rows)}
    assert by_scale[2.0]["ran"] == "sr3_x2" and by_scale[2.0]["psnr"] == 31.0
    assert by_scale[3.0]["ran"] == "lainr -> sr3_x2 | sr3_x2"
    assert by_scale[4.0]["x"] == 2.0

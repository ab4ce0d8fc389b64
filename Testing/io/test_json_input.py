"""JSON a user hands us is read strictly and within bounds, or refused in one sentence naming the file."""
import pytest
from xaiexplain.errors import XAIExplainError
from xaiexplain.io.json_input import MAX_DEPTH, parse_json, read_json


@pytest.mark.parametrize("text, phrase", [
    ("[" * 100_000 + "]" * 100_000, "nested more than"),  # was a RecursionError
    ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "nested more than"),
    ('{"a": NaN}', "NaN is not a JSON value"),
    ('{"a": -Infinity}', "-Infinity is not a JSON value"),
    ('{"a": 1', "is not valid JSON"),
])
def test_what_is_not_strict_bounded_json_is_one_sentence(text, phrase, tmp_path):
    path = tmp_path / "given.json"
    path.write_text(text)
    with pytest.raises(XAIExplainError, match=phrase) as raised:
        read_json(path)
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)


def test_json_within_the_bounds_is_read(tmp_path):
    deepest = "[" * MAX_DEPTH + "1" + "]" * MAX_DEPTH
    assert parse_json(deepest, "text") == eval(deepest)
    assert parse_json('{"a": [1, 2.5, "x", null, true]}', "text") == {"a": [1, 2.5, "x", None, True]}


def test_a_file_over_the_size_bound_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "big.json"
    path.write_text("[" + "0," * 1000 + "0]")
    with pytest.raises(XAIExplainError, match="holds 2003 bytes, more than the 100"):
        read_json(path, max_bytes=100)
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(XAIExplainError, match="not UTF-8"):
        read_json(path)


def test_manifests_read_back_are_bounded_too(tmp_path):
    """An output folder whose manifest is nested 100 000 levels deep: a RecursionError before, where the
    output sets, the archive and the dataset builder read their manifests back; now the set is refused in
    one sentence and the archive and the dataset builder redo what such a manifest stood for."""
    from xaiexplain.io.files import output_set

    (tmp_path / "nodules.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(XAIExplainError, match="that this library did not write"):
        with output_set(tmp_path, "nodules.json"):
            pass
    assert (tmp_path / "nodules.json").stat().st_size == 200_000

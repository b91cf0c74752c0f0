"""Results files: JSONL tolerates only a torn final line; anything else is a one-line error naming file and line."""

import pytest

from spectral_jax.errors import CorruptRecordError, UserError
from spectral_jax.records import append_jsonl, read_jsonl


def test_a_torn_final_line_is_dropped_and_cut_before_the_next_append(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 0}\n{"step": 3}\n{"ste')
    assert read_jsonl(path) == [{"step": 0}, {"step": 3}]
    append_jsonl(path, {"step": 6})
    assert path.read_text() == '{"step": 0}\n{"step": 3}\n{"step": 6}\n'
    # a complete-looking last line without its newline is also a torn append
    path.write_text('{"step": 0}\n{"step": 3}')
    assert read_jsonl(path) == [{"step": 0}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


@pytest.mark.parametrize("bad", ["garbage", "3", "[1, 2]", '{"step": 1'])
def test_a_bad_line_before_the_last_is_an_error_naming_file_and_line(tmp_path, bad):
    path = tmp_path / "probes.jsonl"
    path.write_text(f'{{"step": 0}}\n{bad}\n{{"step": 6}}\n')
    with pytest.raises(CorruptRecordError, match=r"probes\.jsonl:2: .*corrupt") as err:
        read_jsonl(path)
    assert isinstance(err.value, UserError) and isinstance(err.value, ValueError) and "\n" not in str(err.value)

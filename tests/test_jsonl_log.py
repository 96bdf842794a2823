from verl_modality.jsonl_log import complete_lines


def test_half_written_last_line_is_cut_off(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": ')
    assert complete_lines(path) == (['{"a": 1}', '{"b": 2}'], 6)
    assert path.read_bytes() == b'{"a": 1}\n{"b": 2}\n'  # the next append starts on its own line
    assert complete_lines(path) == (['{"a": 1}', '{"b": 2}'], 0)
    path.write_bytes(b"")
    assert complete_lines(path) == ([], 0)

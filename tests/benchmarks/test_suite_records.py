"""JSON-lines records: appends, the last record of a key wins, torn lines are skipped."""

import json

from benchmarks.suite import records


def _rec(seed, value, **kw):
    return {
        "setup": "s",
        "dataset": "checkerboard",
        "method": "meanflow",
        "variant": None,
        "run_steps": 50,
        "train_steps": 50,
        "seed": seed,
        "nfe": 1,
        "metric": "sliced_w2",
        "value": value,
        "commit": "x",
        "device": "cpu",
        "wall_s": 1.0,
        **kw,
    }


def test_append_and_load_keep_the_last_record_of_a_key(tmp_path):
    path = tmp_path / "sub" / "r.jsonl"
    records.append(path, [_rec(0, 0.5), _rec(1, 0.6)])
    records.append(path, [_rec(0, 0.4)])
    with open(path, "a") as f:
        f.write('{"setup": "s", "dataset": "chec')  # a write torn by a crash
    got = records.load([tmp_path / "sub"])
    assert sorted((r["seed"], r["value"]) for r in got) == [(0, 0.4), (1, 0.6)]
    assert all(set(records.REQUIRED) <= set(r) for r in got)
    assert len(path.read_text().splitlines()) == 4
    json.loads(path.read_text().splitlines()[0])


def test_key_separates_variants_and_lengths():
    a, b, c = _rec(0, 1.0), _rec(0, 1.0, variant="ratio0"), _rec(0, 1.0, run_steps=20000)
    assert len({records.key_of(a), records.key_of(b), records.key_of(c)}) == 3


def test_merge_adds_only_the_keys_missing_here(tmp_path):
    here, there = tmp_path / "here", tmp_path / "there"
    records.append(here / "mnist.jsonl", [_rec(0, 0.5)])
    records.append(there / "mnist.jsonl", [_rec(0, 0.9), _rec(1, 0.6)])
    records.append(there / "toy.jsonl", [_rec(2, 0.7)])
    assert records.merge([there], here) == {"mnist.jsonl": (1, 1), "toy.jsonl": (1, 0)}
    got = {(r["seed"], r["value"]) for r in records.load([here])}
    assert got == {(0, 0.5), (1, 0.6), (2, 0.7)}  # the record here stays where both hold a key
    assert records.merge([there], here) == {"mnist.jsonl": (0, 2), "toy.jsonl": (0, 1)}
    assert len((here / "mnist.jsonl").read_text().splitlines()) == 2

import numpy as np
import pytest
import torch

from meanflow.data import BatchLoader, InfiniteSampler, PointData
from meanflow.errors import UserError


def draw(sampler, steps):
    return [next(sampler).tolist() for _ in range(steps)]


@pytest.mark.parametrize("n,bs,world", [(24, 3, 4), (25, 2, 3), (10, 5, 1)])
def test_ranks_are_disjoint_each_step_and_cover_the_epoch(n, bs, world):
    samplers = [InfiniteSampler(n, bs, seed=3, rank=r, world_size=world) for r in range(world)]
    steps = samplers[0].steps_per_epoch
    for epoch in range(2):
        seen = []
        for _ in range(steps):
            batch = [next(s).tolist() for s in samplers]
            flat = [i for b in batch for i in b]
            assert len(set(flat)) == len(flat) == bs * world  # disjoint across ranks
            seen += flat
        assert len(set(seen)) == len(seen) == steps * bs * world  # no repeats within an epoch
        if n % (bs * world) == 0:
            assert sorted(seen) == list(range(n))  # covering
        assert all(s.epoch == epoch for s in samplers)


def test_union_of_ranks_equals_single_process_stream():
    single = InfiniteSampler(12, 6, seed=1)
    ranks = [InfiniteSampler(12, 2, seed=1, rank=r, world_size=3) for r in range(3)]
    for _ in range(5):
        assert next(single).tolist() == sum((next(s).tolist() for s in ranks), [])


def test_epochs_reshuffle_and_seeds_differ():
    s = InfiniteSampler(50, 50, seed=0)
    e0, e1 = next(s).tolist(), next(s).tolist()
    assert sorted(e0) == sorted(e1) == list(range(50)) and e0 != e1
    assert next(InfiniteSampler(50, 50, seed=1)).tolist() != e0
    assert next(InfiniteSampler(50, 50, seed=0, shuffle=False)).tolist() == list(range(50))


@pytest.mark.parametrize("stop", [0, 1, 3, 4, 9])
def test_exact_resume_from_state(stop):
    ref = InfiniteSampler(17, 4, seed=5)
    expected = draw(ref, 12)
    a = InfiniteSampler(17, 4, seed=5)
    draw(a, stop)
    state = a.state_dict()
    b = InfiniteSampler(17, 4, seed=5)
    b.load_state_dict(state)
    assert draw(b, 12 - stop) == expected[stop:]


def test_resume_survives_a_state_dict_round_trip_through_torch_save(tmp_path):
    a = InfiniteSampler(30, 4, seed=2, rank=1, world_size=2)
    draw(a, 5)
    torch.save(a.state_dict(), tmp_path / "s.pt")
    b = InfiniteSampler(30, 4, seed=2, rank=1, world_size=2)
    b.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert draw(a, 8) == draw(b, 8)


def test_resume_rejects_other_dataset_or_seed():
    state = InfiniteSampler(20, 2, seed=0).state_dict()
    with pytest.raises(UserError, match="n=20, seed=0"):
        InfiniteSampler(21, 2, seed=0).load_state_dict(state)
    with pytest.raises(UserError, match="seed"):
        InfiniteSampler(20, 2, seed=1).load_state_dict(state)


@pytest.mark.parametrize(
    "kw,match",
    [(dict(n=0, batch_size=1), "n >= 1"), (dict(n=5, batch_size=2, rank=2, world_size=2), "rank 2"),
     (dict(n=5, batch_size=3, world_size=2), "exceeds the dataset size"),
     (dict(n=5, batch_size=1, seed=-1), "seed")],
)
def test_invalid_arguments(kw, match):
    with pytest.raises(UserError, match=match):
        InfiniteSampler(**kw)


def test_batch_loader_returns_matching_rows_and_resumes():
    x = torch.arange(40, dtype=torch.float32).reshape(20, 2)
    data = PointData(x=x, y=torch.arange(20) % 3, num_classes=3, name="t")
    loader = BatchLoader(data, 4, seed=7)
    xb, yb = next(loader)
    assert xb.shape == (4, 2) and torch.equal(yb, (xb[:, 0] / 2).long() % 3)
    state = loader.state_dict()
    a = [next(loader)[0] for _ in range(6)]
    loader2 = BatchLoader(data, 4, seed=7)
    loader2.load_state_dict(state)
    assert all(torch.equal(u, v) for u, v in zip(a, (next(loader2)[0] for _ in range(6))))
    unlabelled = BatchLoader(PointData(x=x, y=None, num_classes=0, name="u"), 3)
    assert next(unlabelled)[1] is None
    assert np.isfinite(next(unlabelled)[0].numpy()).all()

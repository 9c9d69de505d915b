"""Time and label embeddings."""

from __future__ import annotations

import torch

from meanflow.networks.embeddings import LabelEmbedder, TimestepEmbedder, batch_scalar, sinusoidal


def test_sinusoidal_tangent_and_values():
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    dt = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    for endpoint in (False, True):
        e, de = sinusoidal(t, dt, 16, endpoint=endpoint)
        def plain(s, ep=endpoint):
            return sinusoidal(s, None, 16, endpoint=ep)[0]

        _, de_ref = torch.func.jvp(plain, (t,), (dt,))
        torch.testing.assert_close(de, de_ref)
        assert e.shape == (3, 16)
        # the first frequency is 1: features cos(t), sin(t) of the raw value (no 1000x scaling)
        torch.testing.assert_close(e[:, 0], torch.cos(t))
        torch.testing.assert_close(e[:, 8], torch.sin(t))
    # endpoint=True reaches the lowest frequency 1/max_period at the last feature
    e, _ = sinusoidal(torch.tensor([1.0], dtype=torch.float64), None, 16, endpoint=True)
    torch.testing.assert_close(e[0, 15], torch.sin(torch.tensor(1e-4, dtype=torch.float64)))


def test_timestep_embedder_tangent():
    emb = TimestepEmbedder(8, frequency_dim=16).double()
    for p in emb.parameters():
        torch.nn.init.normal_(p)
    t = torch.rand(4, dtype=torch.float64)
    dt = torch.randn(4, dtype=torch.float64)
    e, de = emb(t, dt)
    e_ref, de_ref = torch.func.jvp(lambda s: emb(s)[0], (t,), (dt,))
    torch.testing.assert_close(e, e_ref)
    torch.testing.assert_close(de, de_ref)
    assert de.grad_fn is None and e.grad_fn is not None


def test_label_embedder_null_class():
    emb = LabelEmbedder(10, 6)
    assert emb.table.num_embeddings == 11
    none = emb(None, 3, torch.device("cpu"))
    null = emb(torch.full((3,), 10), 3, torch.device("cpu"))
    torch.testing.assert_close(none, null)
    assert not torch.equal(emb(torch.tensor([0]), 1, torch.device("cpu")), null[:1])


def test_batch_scalar():
    like = torch.zeros(2, dtype=torch.float64)
    assert torch.equal(batch_scalar(0.5, 3, like), torch.full((3,), 0.5, dtype=torch.float64))
    assert batch_scalar(torch.tensor(1.0), 3, like).shape == (3,)
    assert batch_scalar(torch.ones(3, 1), 3, like).shape == (3,)

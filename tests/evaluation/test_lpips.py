"""LPIPS-VGG: agreement with a plain re-computation on the official key layout, properties, file handling.

No pretrained weights exist here: every test writes random weights in the official layout (the
``lpips.LPIPS(net="vgg")`` state dict), so the checks are of the computation, not of the numbers.
"""

import pickle

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from meanflow.errors import UserError
from meanflow.evaluation import lpips as lp

SIZE = 32  # resize target of most tests: small enough for a fast CPU pass through all of VGG16

# The official wrapper: torchvision's vgg16().features indices, split into five slices.
SLICES = {1: range(0, 4), 2: range(4, 9), 3: range(9, 16), 4: range(16, 23), 5: range(23, 30)}
POOLS = {4, 9, 16, 23}
CONVS = {1: (0, 2), 2: (5, 7), 3: (10, 12, 14), 4: (17, 19, 21), 5: (24, 26, 28)}  # relus in between


def random_official_state(seed=0, scaling=False):
    """Random LPIPS-VGG weights under the official key names (He-scaled convs, non-negative lins)."""
    g = torch.Generator().manual_seed(seed)
    state, c_in = {}, 3
    for k, idx in CONVS.items():
        for i in idx:
            c_out = (64, 128, 256, 512, 512)[k - 1]
            he = (2 / (9 * c_in)) ** 0.5
            state[f"net.slice{k}.{i}.weight"] = torch.randn(c_out, c_in, 3, 3, generator=g) * he
            state[f"net.slice{k}.{i}.bias"] = 0.05 * torch.randn(c_out, generator=g)
            c_in = c_out
    for i, c in enumerate((64, 128, 256, 512, 512)):
        state[f"lin{i}.model.1.weight"] = torch.rand(1, c, 1, 1, generator=g)
    if scaling:
        state["scaling_layer.shift"] = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
        state["scaling_layer.scale"] = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    return state


def reference_lpips(state, a, b, size):
    """Straightforward LPIPS in float64 with functional ops, walking the official slices index by index."""
    def features(x):
        x = x.double()
        if size is not None:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = x.repeat(1, 3 // x.shape[1], 1, 1)
        x = (x - torch.tensor([-0.030, -0.088, -0.188]).double().view(1, 3, 1, 1)) / torch.tensor(
            [0.458, 0.448, 0.450]).double().view(1, 3, 1, 1)
        taps = []
        for k, idx in SLICES.items():
            for i in idx:
                w = state.get(f"net.slice{k}.{i}.weight")
                if i in POOLS:
                    x = F.max_pool2d(x, kernel_size=2, stride=2)
                elif w is not None:
                    x = F.conv2d(x, w.double(), state[f"net.slice{k}.{i}.bias"].double(), padding=1)
                else:
                    x = x.clamp_min(0)
            taps.append(x)
        return [t / (t.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10) for t in taps]

    total = 0
    for i, (fa, fb) in enumerate(zip(features(a), features(b))):
        w = state[f"lin{i}.model.1.weight"].double().view(1, -1, 1, 1)
        total = total + (w * (fa - fb) ** 2).sum(dim=1).mean(dim=(1, 2))
    return total


def images(n, c=3, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def state():
    return random_official_state()


@pytest.fixture(scope="module")
def weights_file(state, tmp_path_factory):
    path = tmp_path_factory.mktemp("lpips") / "lpips_vgg.safetensors"
    save_file(state, str(path))
    return path


@pytest.fixture(autouse=True)
def _fresh_cache_one_thread():
    # Small convolutions: on a shared 2-core machine a second thread makes them several times slower.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    lp.clear_cache()
    yield
    lp.clear_cache()
    torch.set_num_threads(n)


def test_expected_keys_are_the_official_layout(state):
    assert set(lp.expected_shapes()) == set(state)
    assert lp.official_conv_names()[:3] == ["net.slice1.0", "net.slice1.2", "net.slice2.5"]
    assert lp.official_conv_names()[-1] == "net.slice5.28"
    # The docstring recipe's renaming of torchvision's features indices gives the same names.
    part = lambda i: 1 + sum(i >= b for b in (4, 9, 16, 23))  # noqa: E731
    tv_indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert [f"net.slice{part(i)}.{i}" for i in tv_indices] == lp.official_conv_names()
    assert (lp.SHIFT, lp.SCALE, lp.EPS, lp.INPUT_SIZE) == ((-0.030, -0.088, -0.188), (0.458, 0.448, 0.450),
                                                           1e-10, 224)


def test_matches_plain_recomputation(state, weights_file):
    a, b = images(3, seed=1), images(3, seed=2)
    d = lp.lpips_distance(a, b, weights_file, resize=SIZE)
    assert d.shape == (3,) and d.dtype == torch.float32
    torch.testing.assert_close(d.double(), reference_lpips(state, a, b, SIZE), rtol=1e-5, atol=1e-6)
    # Native size (no resize), 16 x 16: relu5_3 is 1 x 1.
    a, b = images(2, size=16, seed=3), images(2, size=16, seed=4)
    torch.testing.assert_close(lp.lpips_distance(a, b, weights_file, resize=None).double(),
                               reference_lpips(state, a, b, None), rtol=1e-5, atol=1e-6)


def test_properties(weights_file):
    a, b = images(3, seed=1), images(3, seed=2)
    d = lp.lpips_distance(a, b, weights_file, resize=SIZE)
    assert bool((d > 0).all())
    assert torch.equal(lp.lpips_distance(a, a, weights_file, resize=SIZE), torch.zeros(3))
    torch.testing.assert_close(lp.lpips_distance(b, a, weights_file, resize=SIZE), d)
    # Per sample: each entry is the distance of its own pair.
    for i in range(3):
        one = lp.lpips_distance(a[i:i + 1], b[i:i + 1], weights_file, resize=SIZE)
        torch.testing.assert_close(one, d[i:i + 1])


def test_grey_images_are_repeated_to_rgb(state, weights_file):
    a, b = images(2, c=1, seed=5), images(2, c=1, seed=6)
    d = lp.lpips_distance(a, b, weights_file, resize=SIZE)
    torch.testing.assert_close(d, lp.lpips_distance(a.repeat(1, 3, 1, 1), b.repeat(1, 3, 1, 1), weights_file,
                                                    resize=SIZE))
    torch.testing.assert_close(d.double(), reference_lpips(state, a, b, SIZE), rtol=1e-5, atol=1e-6)


def test_gradient_reaches_the_input_not_the_weights(weights_file):
    a, b = images(2, seed=1).requires_grad_(True), images(2, seed=2)
    lp.lpips_distance(a, b, weights_file, resize=SIZE).sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    model = lp.get_lpips(weights_file)
    assert not model.training
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    # Float64 inputs are compared in float32; the gradient comes back in the input's dtype.
    a64 = a.detach().double().requires_grad_(True)
    lp.lpips_distance(a64, b.double(), weights_file, resize=SIZE).sum().backward()
    assert a64.grad.dtype == torch.float64 and torch.isfinite(a64.grad).all()


def test_dead_layer_gives_finite_gradients(state):
    # Every relu5_3 unit off: the official sqrt(sum f^2) would return NaN gradients at the zero norm.
    dead = dict(state, **{"net.slice5.28.bias": torch.full((512,), -1e4)})
    model = lp.LPIPS.from_official(dead)
    a = images(2, seed=1).requires_grad_(True)
    d = model(a, images(2, seed=2), resize=SIZE)
    d.sum().backward()
    assert torch.isfinite(d).all() and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_cache_per_path_and_device(weights_file, state, tmp_path):
    assert lp.get_lpips(weights_file) is lp.get_lpips(str(weights_file), torch.device("cpu"))
    other = tmp_path / "same.safetensors"
    save_file(state, str(other))
    assert lp.get_lpips(other) is not lp.get_lpips(weights_file)


def test_pth_with_scaling_layer_is_accepted(tmp_path):
    full = random_official_state(seed=3, scaling=True)
    path = tmp_path / "vgg_full.pth"
    torch.save(full, path)
    loaded = lp.load_state_dict(path)
    assert set(loaded) == set(lp.expected_shapes())
    assert all(torch.equal(loaded[k], full[k]) for k in loaded)


@pytest.mark.parametrize("how", ["torch", "pickle"])
def test_pickled_code_is_refused_not_run(tmp_path, how):
    sentinel = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    path = tmp_path / "evil.pth"
    if how == "torch":
        torch.save({"lin0.model.1.weight": Evil()}, path)
    else:
        path.write_bytes(pickle.dumps({"lin0.model.1.weight": Evil()}))
    with pytest.raises(UserError, match="refused|not a torch.save"):
        lp.load_state_dict(path)
    assert not sentinel.exists()


def test_bad_files_raise_user_errors(tmp_path, state):
    with pytest.raises(UserError, match="not found"):
        lp.load_state_dict(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not weights at all, just some bytes")
    with pytest.raises(UserError):
        lp.load_state_dict(junk)
    # A truncated safetensors file (its header promises more than there is).
    cut = tmp_path / "cut.safetensors"
    save_file({"lin0.model.1.weight": state["lin0.model.1.weight"]}, str(cut))
    cut.write_bytes(cut.read_bytes()[:-40])
    with pytest.raises(UserError, match="safetensors"):
        lp.load_state_dict(cut)
    # The official lin-only vgg.pth (no trunk): missing keys, named.
    lins = tmp_path / "vgg.pth"
    torch.save({k: v for k, v in state.items() if k.startswith("lin")}, lins)
    with pytest.raises(UserError, match="missing keys"):
        lp.load_state_dict(lins)
    negative = tmp_path / "neg.safetensors"
    save_file(dict(state, **{"lin2.model.1.weight": -state["lin2.model.1.weight"]}), str(negative))
    with pytest.raises(UserError, match="negative"):
        lp.load_state_dict(negative)


def test_bad_inputs_raise_user_errors(weights_file):
    with pytest.raises(UserError, match="1 or 3"):
        lp.lpips_distance(torch.zeros(2, 4, 16, 16), torch.zeros(2, 4, 16, 16), weights_file)
    with pytest.raises(UserError, match="one shape"):
        lp.lpips_distance(torch.zeros(2, 3, 16, 16), torch.zeros(1, 3, 16, 16), weights_file)
    with pytest.raises(UserError, match="at least 16"):
        lp.lpips_distance(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), weights_file, resize=None)

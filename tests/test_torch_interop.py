"""Weights move between backprop and PyTorch through safetensors files, for an MLP and LeNet-5."""

import numpy as np
import pytest

import backprop as bp

torch = pytest.importorskip("torch")
st_torch = pytest.importorskip("safetensors.torch")


def torch_lenet5():
    nn = torch.nn
    return nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    ).double()


def torch_mlp():
    nn = torch.nn
    return nn.Sequential(nn.Linear(784, 64), nn.Tanh(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).double()


def ours(kind):
    bp.manual_seed(1)
    if kind == "lenet5":
        return bp.nn.models.lenet5().double()
    return bp.nn.Sequential(bp.nn.Linear(784, 64), bp.nn.Tanh(), bp.nn.Linear(64, 32), bp.nn.ReLU(),
                            bp.nn.Linear(32, 10)).double()


MAKERS = {"mlp": torch_mlp, "lenet5": torch_lenet5}


@pytest.mark.parametrize("kind", ["mlp", "lenet5"])
def test_backprop_to_pytorch(kind, tmp_path):
    model = ours(kind).eval()
    path = tmp_path / "model.safetensors"
    bp.io.save(model, path)
    reference = MAKERS[kind]()
    reference.load_state_dict(st_torch.load_file(str(path)))
    x = np.random.default_rng(0).random((5, 784))
    np.testing.assert_allclose(reference(torch.from_numpy(x)).detach().numpy(), model(bp.tensor(x)).data,
                               rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("kind", ["mlp", "lenet5"])
def test_pytorch_to_backprop(kind, tmp_path):
    torch.manual_seed(0)
    reference = MAKERS[kind]().eval()
    path = tmp_path / "torch.safetensors"
    st_torch.save_file(reference.state_dict(), str(path))
    model = bp.io.load_weights(ours(kind), path).eval()
    x = np.random.default_rng(1).random((5, 784))
    np.testing.assert_allclose(model(bp.tensor(x)).data, reference(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-6, atol=1e-9)

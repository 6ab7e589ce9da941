"""DataLoader: iterations per epoch, every sample once per epoch, reproducible shuffling."""

from __future__ import annotations

import numpy as np
import pytest

from backprop.data.loader import DataLoader


def ids_of_epoch(loader: DataLoader) -> np.ndarray:
    """The sample ids (fed as x) in the order one epoch visits them."""
    return np.concatenate([b[0] if isinstance(b, tuple) else b for b in loader])


def test_textbook_100_samples_batch_10_three_epochs():
    x = np.arange(100)
    y = x % 10
    loader = DataLoader(x, y, batch_size=10, seed=0)
    assert len(loader) == 10  # iterations per epoch

    iterations, seen = 0, []
    for _epoch in range(3):
        for xb, yb in loader:
            assert xb.shape == (10,) and yb.shape == (10,)
            np.testing.assert_array_equal(yb, xb % 10)  # x and y stay paired
            seen.append(xb)
            iterations += 1
    assert iterations == 30
    counts = np.bincount(np.concatenate(seen), minlength=100)
    np.testing.assert_array_equal(counts, np.full(100, 3))


@pytest.mark.parametrize(
    ("n", "batch_size", "drop_last", "n_batches", "last"),
    [
        (105, 10, False, 11, 5),
        (105, 10, True, 10, 10),
        (100, 10, True, 10, 10),
        (7, 32, False, 1, 7),
        (7, 32, True, 0, None),
    ],
)
def test_non_divisible_sizes(n, batch_size, drop_last, n_batches, last):
    loader = DataLoader(np.arange(n), np.arange(n), batch_size=batch_size, drop_last=drop_last, seed=1)
    batches = [xb for xb, _ in loader]
    assert len(loader) == len(batches) == n_batches
    if last is not None:
        assert len(batches[-1]) == last
        assert all(len(b) == batch_size for b in batches[:-1])
    ids = np.concatenate(batches) if batches else np.array([], dtype=int)
    assert len(np.unique(ids)) == len(ids)  # no sample twice within an epoch
    if not drop_last:
        np.testing.assert_array_equal(np.sort(ids), np.arange(n))


def test_fresh_order_each_epoch_and_same_seed_same_orders():
    a = DataLoader(np.arange(50), np.zeros(50), batch_size=8, seed=123)
    b = DataLoader(np.arange(50), np.zeros(50), batch_size=8, seed=123)
    orders_a = [ids_of_epoch(a) for _ in range(3)]
    orders_b = [ids_of_epoch(b) for _ in range(3)]
    for oa, ob in zip(orders_a, orders_b):
        np.testing.assert_array_equal(oa, ob)
        np.testing.assert_array_equal(np.sort(oa), np.arange(50))
    assert not np.array_equal(orders_a[0], orders_a[1])
    assert not np.array_equal(orders_a[1], orders_a[2])
    c = DataLoader(np.arange(50), np.zeros(50), batch_size=8, seed=124)
    assert not np.array_equal(ids_of_epoch(c), orders_a[0])


def test_seed_none_uses_fresh_entropy():
    a = DataLoader(np.arange(200), batch_size=200)
    b = DataLoader(np.arange(200), batch_size=200)
    assert not np.array_equal(next(iter(a)), next(iter(b)))


def test_generator_seed_and_rng_state_restore():
    gen = np.random.default_rng(7)
    loader = DataLoader(np.arange(30), batch_size=4, seed=gen)
    assert loader.rng is gen
    ids_of_epoch(loader)
    state = loader.rng.bit_generator.state  # saved by the fit loop at an epoch boundary
    expected = ids_of_epoch(loader)
    loader.rng.bit_generator.state = state  # resume
    np.testing.assert_array_equal(ids_of_epoch(loader), expected)


def test_permutation_drawn_at_iter_not_at_first_next():
    loader = DataLoader(np.arange(30), batch_size=4, seed=0)
    state = loader.rng.bit_generator.state
    it = iter(loader)
    assert loader.rng.bit_generator.state != state
    loader.rng.bit_generator.state = state
    np.testing.assert_array_equal(np.concatenate(list(it)), ids_of_epoch(loader))


def test_no_shuffle_yields_views_in_order():
    x = np.arange(24, dtype=np.float32).reshape(12, 2)
    y = np.arange(12)
    loader = DataLoader(x, y, batch_size=5, shuffle=False)
    batches = list(loader)
    assert [len(xb) for xb, _ in batches] == [5, 5, 2]
    np.testing.assert_array_equal(np.concatenate([xb for xb, _ in batches]), x)
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in batches]), y)
    assert all(np.shares_memory(xb, x) for xb, _ in batches)  # slices, no copies


def test_x_only_yields_arrays_and_keeps_trailing_dims():
    x = np.random.default_rng(0).random((9, 28, 28), dtype=np.float32)
    batches = list(DataLoader(x, batch_size=4, seed=0))
    assert all(isinstance(b, np.ndarray) for b in batches)
    assert [b.shape for b in batches] == [(4, 28, 28), (4, 28, 28), (1, 28, 28)]
    assert batches[0].dtype == np.float32


def test_shuffle_does_not_touch_the_data():
    x = np.arange(20)
    before = x.copy()
    list(DataLoader(x, x, batch_size=3, seed=0))
    np.testing.assert_array_equal(x, before)


def test_array_likes_and_attributes():
    loader = DataLoader([[1, 2], [3, 4], [5, 6]], [0, 1, 0], batch_size=2, seed=0)
    assert loader.n_samples == 3 and loader.batch_size == 2 and len(loader) == 2
    xb, yb = next(iter(loader))
    assert isinstance(xb, np.ndarray) and xb.shape == (2, 2) and isinstance(yb, np.ndarray)
    assert "batch_size=2" in repr(loader)


def test_length_mismatch_names_both_lengths():
    with pytest.raises(ValueError, match=r"x has 10.*y has 9"):
        DataLoader(np.zeros(10), np.zeros(9))


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8", True, None])
def test_bad_batch_size(bad):
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        DataLoader(np.zeros(10), batch_size=bad)


def test_numpy_integer_batch_size_and_empty_or_scalar_x():
    assert len(DataLoader(np.zeros(10), batch_size=np.int64(3))) == 4
    with pytest.raises(ValueError, match="no samples"):
        DataLoader(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="0-d"):
        DataLoader(np.float32(1.0))

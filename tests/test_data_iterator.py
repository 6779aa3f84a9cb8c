"""The batch iterator and dynamic binarization: coverage, randomness, sharding and exact resume."""

import gzip

import numpy as np
import pytest

from pvpp import data


@pytest.fixture(scope="module")
def mnist_grey(data_dir) -> np.ndarray:
    """The first 512 MNIST training images, uint8 [512, 28, 28, 1], read straight from the IDX file."""
    raw = gzip.open(data_dir / "mnist" / "train-images-idx3-ubyte.gz").read()
    return np.frombuffer(raw, np.uint8, offset=16, count=512 * 784).reshape(512, 28, 28, 1).copy()


def _indexed_images(count: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [count, 2, 2, 1] images holding their own index (little-endian bytes), and the indices."""
    ids = np.arange(count)
    images = np.zeros((count, 2, 2, 1), np.uint8)
    images[:, 0, 0, 0], images[:, 0, 1, 0] = ids % 256, ids // 256
    return images, ids


def test_each_epoch_visits_every_image_once_in_a_new_seeded_order():
    images, ids = _indexed_images(300)
    it = data.BatchIterator(images, 100, seed=3, labels=ids)
    epochs = [np.concatenate([next(it)["label"] for _ in range(3)]) for _ in range(3)]
    for order in epochs:
        np.testing.assert_array_equal(np.sort(order), ids)
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    batch = next(data.BatchIterator(images, 100, seed=3, labels=ids))
    np.testing.assert_array_equal(batch["label"], epochs[0][:100])  # the same seed gives the same order
    np.testing.assert_array_equal(
        batch["image"][:, 0, 0, 0] + 256 * batch["image"][:, 0, 1, 0].astype(int), batch["label"]
    )
    other = next(data.BatchIterator(images, 100, seed=4, labels=ids))
    assert not np.array_equal(other["label"], epochs[0][:100])
    in_order = next(data.BatchIterator(images, 100, seed=3, labels=ids, shuffle=False))
    np.testing.assert_array_equal(in_order["label"], ids[:100])


def test_dynamic_binarization_is_fresh_each_epoch_and_unbiased(mnist_grey):
    num_epochs, count = 100, mnist_grey.shape[0]
    it = data.BatchIterator(mnist_grey, 128, seed=11, labels=np.arange(count), dynamic_binarization=True)
    sums = np.zeros(mnist_grey.shape, np.int64)
    first_two = []
    for _ in range(num_epochs * it.num_batches_per_epoch):
        batch = next(it)
        assert batch["image"].dtype == np.uint8 and set(np.unique(batch["image"])) <= {0, 1}
        sums[batch["label"]] += batch["image"]
        if len(first_two) < 2 and 0 in batch["label"]:
            first_two.append(batch["image"][list(batch["label"]).index(0)])
    assert not np.array_equal(first_two[0], first_two[1])  # image 0 differs between epochs 0 and 1

    p = mnist_grey / 255.0
    np.testing.assert_array_equal(sums[p == 0], 0)  # x = 0 never gives ink, x = 255 always does
    np.testing.assert_array_equal(sums[p == 1], num_epochs)
    grey = (p > 0) & (p < 1)
    n, p, s = num_epochs, p[grey], sums[grey]
    z = (s - n * p) / np.sqrt(
        n * p * (1 - p)
    )  # each pixel's count is Binomial(n, p) if unbiased and independent
    m = z.size
    assert abs(z.mean()) < 5 / np.sqrt(m)
    # E z^2 = 1 and Var z^2 = 1 / (n p q) + 3 (n - 2) / n - 1 for a binomial count (from its fourth central
    # moment).
    var_z2 = 1 / (n * p * (1 - p)) + 3 * (n - 2) / n - 1
    assert abs((z**2).mean() - 1) < 5 * np.sqrt(var_z2.sum()) / m


def test_binarization_depends_only_on_seed_epoch_and_image():
    images = np.random.default_rng(0).integers(0, 256, (6, 4, 4, 1), dtype=np.uint8)
    ids = np.array([10, 11, 12, 13, 14, 15])
    whole = data.binarize_dynamically(images, ids, seed=5, epoch=2)
    part = data.binarize_dynamically(images[[4, 1]], ids[[4, 1]], seed=5, epoch=2)
    np.testing.assert_array_equal(part, whole[[4, 1]])  # independent of the batch it sits in
    assert not np.array_equal(data.binarize_dynamically(images, ids, seed=5, epoch=3), whole)
    assert not np.array_equal(data.binarize_dynamically(images, ids, seed=6, epoch=2), whole)
    with pytest.raises(TypeError, match="uint8"):
        data.binarize_dynamically(images.astype(np.float32), ids, seed=5, epoch=2)


def test_static_and_rgb_sets_are_passed_through_unchanged():
    rng = np.random.default_rng(1)
    binary = data.DataSplit(
        "binarized_mnist", "test", rng.integers(0, 2, (50, 4, 4, 1), dtype=np.uint8), None, "static"
    )
    rgb = data.DataSplit(
        "cifar10", "test", rng.integers(0, 256, (50, 4, 4, 3), dtype=np.uint8), np.arange(50), "none"
    )
    grey = data.DataSplit(
        "mnist", "test", rng.integers(0, 256, (50, 4, 4, 1), dtype=np.uint8), np.arange(50), "dynamic"
    )
    for split in (binary, rgb):
        batch = next(data.batch_iterator(split, 50, seed=0, shuffle=False))
        np.testing.assert_array_equal(batch["image"], split.images)
    batch = next(data.batch_iterator(grey, 50, seed=0, shuffle=False, dtype=np.float32))
    assert batch["image"].dtype == np.float32 and set(np.unique(batch["image"])) == {0.0, 1.0}


@pytest.mark.parametrize("remainder", ["drop", "pad", "keep"])
def test_last_partial_batch_and_device_sharding(remainder):
    images, ids = _indexed_images(100)  # 100 = 3 x 32 + 4
    it = data.BatchIterator(images, 32, seed=0, labels=ids, num_devices=4, remainder=remainder, num_epochs=1)
    batches = list(it)
    assert len(batches) == {"drop": 3, "pad": 4, "keep": 4}[remainder] == it.num_batches_per_epoch
    for batch in batches[:3]:
        assert (
            batch["image"].shape == (4, 8, 2, 2, 1) and batch["mask"].shape == (4, 8) and batch["mask"].all()
        )
    seen = np.concatenate([b["label"][b["mask"]] for b in batches])
    if remainder == "drop":
        assert len(np.unique(seen)) == 96
    else:
        np.testing.assert_array_equal(np.sort(seen), ids)  # every image exactly once
        last = batches[-1]
        if remainder == "pad":
            assert last["image"].shape == (4, 8, 2, 2, 1) and last["mask"].sum() == 4
            assert (last["image"].reshape(32, -1)[~last["mask"].reshape(32)] == 0).all()
        else:
            assert last["image"].shape == (4, 1, 2, 2, 1) and last["mask"].all()
    with pytest.raises(StopIteration):
        next(it)


@pytest.mark.parametrize("num_devices", [None, 2])
def test_state_round_trip_gives_identical_batches(mnist_grey, num_devices):
    def make(seed=7):
        return data.BatchIterator(
            mnist_grey[:100],
            32,
            seed=seed,
            labels=np.arange(100),
            dynamic_binarization=True,
            num_devices=num_devices,
        )

    reference = make()
    expected = [next(reference) for _ in range(12)]  # 3 batches an epoch: 4 epochs
    for k in (0, 2, 3, 4, 7):  # 3 and 7 stop right before an epoch boundary is crossed, 4 just after
        it = make()
        for _ in range(k):
            next(it)
        state = it.get_state()
        assert set(state) == {"seed", "epoch", "batch_index"}
        assert all(
            isinstance(v, np.ndarray) and v.dtype == np.int64 and v.shape == () for v in state.values()
        )
        resumed = make(seed=999)  # the seed comes from the state
        resumed.set_state(state)
        for i in range(k, 12):
            batch = next(resumed)
            for key in ("image", "label", "mask"):
                np.testing.assert_array_equal(batch[key], expected[i][key])


def test_state_survives_an_orbax_checkpoint(tmp_path, mnist_grey):
    ocp = pytest.importorskip("orbax.checkpoint")
    it = data.BatchIterator(mnist_grey[:100], 32, seed=7, dynamic_binarization=True)
    for _ in range(4):
        next(it)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "state", it.get_state())
    checkpointer.wait_until_finished()
    restored = checkpointer.restore(tmp_path / "state")
    resumed = data.BatchIterator(mnist_grey[:100], 32, seed=0, dynamic_binarization=True)
    resumed.set_state(restored)
    np.testing.assert_array_equal(next(resumed)["image"], next(it)["image"])


def test_bad_arguments_and_states_are_rejected():
    images, _ = _indexed_images(10)
    with pytest.raises(ValueError, match="num_devices"):
        data.BatchIterator(images, 6, seed=0, num_devices=4)
    with pytest.raises(ValueError, match="remainder='keep'"):
        data.BatchIterator(images, 8, seed=0, num_devices=4, remainder="keep")  # last batch of 2 on 4 devices
    with pytest.raises(ValueError, match="no batch"):
        data.BatchIterator(images, 16, seed=0)
    with pytest.raises(TypeError, match="uint8"):
        data.BatchIterator(images.astype(np.float32), 2, seed=0)
    with pytest.raises(ValueError, match="seed"):
        data.BatchIterator(images, 2, seed=-1)
    it = data.BatchIterator(images, 2, seed=0)
    with pytest.raises(ValueError, match="batch_index"):
        it.set_state({"seed": 0, "epoch": 0, "batch_index": 5})
    with pytest.raises(ValueError, match="keys"):
        it.set_state({"seed": 0, "epoch": 0})

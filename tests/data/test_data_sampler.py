"""Padded sequence sampler: hand-computed windows, vectorised == literal per-sample original,
split helpers, resumable BatchIterator."""
import json

import numpy as np
import pytest
import torch

from dp_fast.data import BatchIterator, SequenceSampler, create_indices, downsample_mask, get_val_mask
from tests.data.original_ref import SequenceSamplerRef, create_indices_ref


def frames_of(ends, horizon, pad_before, pad_after, mask=None):
    return SequenceSampler(np.array(ends), horizon, pad_before, pad_after, episode_mask=mask).frames.tolist()


def test_hand_case_len3_h4_to2_ta2():
    # episode length 3, horizon 4, To 2 (pad_before 1), Ta 2 (pad_after 1): starts -1 and 0
    s = SequenceSampler(np.array([3]), 4, pad_before=1, pad_after=1)
    assert s.frames.tolist() == [[0, 0, 1, 2], [0, 1, 2, 2]]
    assert s.indices.tolist() == [[0, 3, 1, 4], [0, 3, 0, 3]]


def test_hand_case_two_episodes_and_pad_clamp():
    # lengths 3 and 5, horizon 4, pad_before 1, pad_after 5 -> clamped to 3 (horizon - 1)
    assert frames_of([3, 8], 4, 1, 5) == [
        [0, 0, 1, 2], [0, 1, 2, 2], [1, 2, 2, 2], [2, 2, 2, 2],
        [3, 3, 4, 5], [3, 4, 5, 6], [4, 5, 6, 7], [5, 6, 7, 7], [6, 7, 7, 7], [7, 7, 7, 7]]
    # episode 0 masked out; an episode too short for any window contributes none
    assert frames_of([3, 8], 4, 1, 5, mask=np.array([False, True]))[0] == [3, 3, 4, 5]
    assert frames_of([1, 6], 4, 0, 0) == [[1, 2, 3, 4], [2, 3, 4, 5]]
    assert len(SequenceSampler(np.array([2, 4]), 4, 0, 0)) == 0
    assert create_indices(np.zeros(0, np.int64), 3, np.zeros(0, bool)).shape == (0, 4)


def test_create_indices_matches_original_random():
    rng = np.random.default_rng(0)
    for _ in range(200):
        lengths = rng.integers(1, 14, size=rng.integers(1, 7))
        ends = np.cumsum(lengths)
        L = int(rng.integers(1, 9))
        pb, pa = int(rng.integers(-1, 10)), int(rng.integers(-1, 10))
        mask = rng.random(len(ends)) < 0.7
        ours = create_indices(ends, L, mask, pb, pa)
        ref = create_indices_ref(ends, L, mask, pb, pa)
        np.testing.assert_array_equal(ours, ref)


def test_gather_matches_original_sample_sequence_random():
    rng = np.random.default_rng(1)
    for trial in range(30):
        lengths = rng.integers(1, 12, size=rng.integers(1, 6))
        ends = np.cumsum(lengths)
        n = int(ends[-1])
        L = int(rng.integers(1, 8))
        To = int(rng.integers(1, L + 1))
        Ta = int(rng.integers(1, L + 1))
        mask = rng.random(len(ends)) < 0.8
        data = {"action": rng.standard_normal((n, 3)).astype(np.float32),
                "low": rng.standard_normal((n, 2)).astype(np.float32),
                "img": rng.integers(0, 256, (n, 2, 3, 4), dtype=np.uint8)}
        first_k = {"low": To, "img": To}
        ref = SequenceSamplerRef(data, ends, L, To - 1, Ta - 1, key_first_k=first_k, episode_mask=mask)
        ours = SequenceSampler(ends, L, To - 1, Ta - 1, episode_mask=mask, key_first_k=first_k)
        assert len(ours) == len(ref)
        if len(ours) == 0:
            continue
        idx = rng.permutation(len(ours))
        got = ours.gather({k: torch.from_numpy(v) for k, v in data.items()}, torch.from_numpy(idx))
        for j, i in enumerate(idx):
            want = ref.sample_sequence(i)
            np.testing.assert_array_equal(got["action"][j].numpy(), want["action"])
            assert got["low"].shape[1] == To and got["img"].shape[1] == To
            np.testing.assert_array_equal(got["low"][j].numpy(), want["low"][:To])
            np.testing.assert_array_equal(got["img"][j].numpy(), want["img"][:To])


def test_index_validation():
    s = SequenceSampler(np.array([5]), 3, 1, 1)
    data = {"a": torch.arange(5.0)[:, None]}
    with pytest.raises(IndexError, match=r"out of range \[0, 5\)"):
        s.gather(data, [0, 5])
    with pytest.raises(IndexError):
        s.gather(data, torch.tensor([-1]))
    assert s.gather(data, np.array([4]))["a"].squeeze(-1).tolist() == [[3.0, 4.0, 4.0]]
    assert s.gather(data, 0)["a"].shape == (1, 3, 1)


def test_val_mask_formula():
    # hand-checked: n_val = min(max(1, round(10 * 0.2)), 9) = 2; default_rng(42).choice(10, 2) = [0, 7]
    assert np.nonzero(get_val_mask(10, 0.2, 42))[0].tolist() == [0, 7]
    assert get_val_mask(3, 0.02, 42).sum() == 1           # at least one validation episode
    assert get_val_mask(2, 0.9, 42).sum() == 1            # at least one training episode
    assert get_val_mask(5, 0.5, 0).sum() == 2             # Python round: round(2.5) == 2
    assert get_val_mask(7, 0.0, 42).sum() == 0
    for n, r, seed in [(200, 0.02, 42), (13, 0.3, 5), (1, 0.5, 0)]:
        n_val = min(max(1, round(n * r)), n - 1)
        want = np.zeros(n, bool)
        want[np.random.default_rng(seed).choice(n, n_val, replace=False)] = True
        np.testing.assert_array_equal(get_val_mask(n, r, seed), want)


def test_downsample_mask():
    train = ~get_val_mask(10, 0.2, 42)  # episodes 1..6, 8, 9
    # default_rng(42).choice(8, 5) = [3, 6, 5, 0, 7] -> episodes [4, 8, 6, 1, 9]
    assert np.nonzero(downsample_mask(train, 5, 42))[0].tolist() == [1, 4, 6, 8, 9]
    np.testing.assert_array_equal(downsample_mask(train, None, 42), train)
    np.testing.assert_array_equal(downsample_mask(train, 8, 42), train)


# BatchIterator ---------------------------------------------------------------------------------

def run_epochs(it, n_epochs):
    out = []
    while it.epoch < n_epochs:
        out += [b.tolist() for b in it]
    return out


def test_batch_iterator_epochs():
    it = BatchIterator(23, 5, shuffle=True, seed=7)
    assert len(it) == 5
    e0, e1 = [b.tolist() for b in it], [b.tolist() for b in it]
    assert it.epoch == 2 and it.position == 0
    assert [len(b) for b in e0] == [5, 5, 5, 5, 3]
    assert sorted(sum(e0, [])) == list(range(23)) and sorted(sum(e1, [])) == list(range(23))
    assert e0 != e1
    assert [b.tolist() for b in BatchIterator(23, 5, shuffle=True, seed=7)] == e0
    assert [b.tolist() for b in BatchIterator(23, 5, shuffle=True, seed=8)] != e0
    dl = BatchIterator(23, 5, shuffle=True, seed=7, drop_last=True)
    assert len(dl) == 4 and [b.tolist() for b in dl] == e0[:4]
    assert sum([b.tolist() for b in BatchIterator(7, 3, shuffle=False)], []) == list(range(7))
    assert all(b.dtype == torch.int64 for b in BatchIterator(7, 3, shuffle=True, seed=0))


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("k", [0, 1, 3, 4, 5, 6, 8, 9, 10, 11])
def test_batch_iterator_resume(k, drop_last):
    full = run_epochs(BatchIterator(23, 5, True, seed=3, drop_last=drop_last), 3)
    it = BatchIterator(23, 5, True, seed=3, drop_last=drop_last)
    seen = []
    while len(seen) < k:
        for b in it:
            seen.append(b.tolist())
            if len(seen) == k:
                state = json.loads(json.dumps(it.state_dict()))  # survives a checkpoint round trip
                break
    if k == 0:
        state = it.state_dict()
    del it
    it2 = BatchIterator(23, 5, True, seed=3, drop_last=drop_last)
    it2.load_state_dict(state)
    assert seen + run_epochs(it2, 3) == full


def test_batch_iterator_resume_end_of_epoch_and_mismatch():
    it = BatchIterator(10, 5, True, seed=1)
    st = {"epoch": 0, "position": 2, "seed": 1, "dataset_len": 10, "batch_size": 5, "shuffle": 1, "drop_last": 0}
    it.load_state_dict(st)  # a state saved after the last batch of epoch 0 continues with epoch 1
    assert (it.epoch, it.position) == (1, 0)
    with pytest.raises(ValueError, match="batch_size=4"):
        it.load_state_dict({**st, "batch_size": 4})
    with pytest.raises(ValueError, match="position 3"):
        it.load_state_dict({**st, "position": 3})


@pytest.mark.parametrize("shape,dtype", [((9, 2, 3, 4), torch.uint8), ((9, 3, 5, 5), torch.uint8),
                                         ((9, 6), torch.uint8), ((9, 3), torch.float32), ((9, 2), torch.int16),
                                         ((9,), torch.uint8)])
def test_gather_rows_wide_view(shape, dtype):
    from dp_fast.data.sampler import gather_rows
    base = torch.randint(0, 100, (shape[0] + 1,) + shape[1:]).to(dtype)
    rows = torch.tensor([4, 0, 8, 8, 3])
    for arr in (base[:-1], base[1:]):  # the second has a storage offset of one row
        got = gather_rows(arr, rows)
        assert got.dtype == dtype and got.shape == (5,) + shape[1:]
        torch.testing.assert_close(got, arr[rows], rtol=0, atol=0)

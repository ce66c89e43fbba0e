"""The weight/alpha split of the search data (--alpha-split): the share that trains the alphas, per label,
deterministic for a seed; 0.5 gives the split of earlier versions."""
import pytest

from emodarts.data import EMOTIONS, Utterance
from emodarts.data.splits import search_halves
from emodarts.runtime.errors import DataError


def _utts(n_speakers=7, per_label=20):
    return [Utterance(f"s{s}_{lab}_{k}", f"/x/s{s}_{lab}_{k}.wav", lab, f"s{s}")
            for s in range(n_speakers) for lab in EMOTIONS for k in range(per_label)]


@pytest.mark.parametrize("alpha_split", [0.5, 0.8, 0.2, 0.65])
def test_alpha_share_per_label(alpha_split):
    train = _utts()
    w, a = search_halves(train, seed=4, alpha_split=alpha_split)
    assert not {u.utt_id for u in w} & {u.utt_id for u in a} and len(w) + len(a) == len(train)
    for lab in EMOTIONS:
        n = sum(u.label == lab for u in train)
        assert sum(u.label == lab for u in a) == n - round((1 - alpha_split) * n)
    assert len(a) == pytest.approx(alpha_split * len(train), abs=len(EMOTIONS))
    assert search_halves(list(reversed(train)), seed=4, alpha_split=alpha_split)[1] == list(reversed(a))
    assert search_halves(train, seed=5, alpha_split=alpha_split)[1] != a


def test_published_split_and_the_earlier_one():
    train = _utts()
    w, a = search_halves(train, seed=0, alpha_split=0.8)
    assert len(w) == 4 * 28 and len(a) == 4 * 112  # 20 % of each label's 140 trains w, 80 % the alphas
    odd = _utts(n_speakers=3, per_label=3)  # 9 per label: the rounding of earlier versions is kept
    assert search_halves(odd, seed=2, alpha_split=0.5) == search_halves(odd, seed=2)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.5, 2.0])
def test_bad_alpha_split(bad):
    with pytest.raises(DataError, match="--alpha-split"):
        search_halves(_utts(), seed=0, alpha_split=bad)


def test_a_split_that_would_leave_a_part_empty():
    one_each = [Utterance(f"u{lab}", f"/x/{lab}.wav", lab, "s0") for lab in EMOTIONS]
    with pytest.raises(DataError, match="--alpha-split 0.8 leaves the weight part empty"):
        search_halves(one_each, seed=0, alpha_split=0.8)
    # every label with two or more utterances has one in each part, whatever the fraction
    w, a = search_halves(_utts(n_speakers=1, per_label=2), seed=0, alpha_split=0.99)
    assert {u.label for u in w} == {u.label for u in a} == set(EMOTIONS)

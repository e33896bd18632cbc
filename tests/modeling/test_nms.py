import pytest
import torch
from torchvision.ops import nms

from ssd_d2.modeling import nms as nms_module
from ssd_d2.modeling.nms import grouped_nms


def _random_groups(num_groups, k, seed):
    """Clustered boxes (many overlaps), each group sorted by decreasing, distinct scores."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(num_groups, 1, 2, generator=g) * 200
    xy = centres + torch.randn(num_groups, k, 2, generator=g) * 15
    wh = torch.rand(num_groups, k, 2, generator=g) * 40 + 1
    boxes = torch.cat([xy, xy + wh], dim=-1)
    boxes[:, ::7, 2:] = boxes[:, ::7, :2]  # some empty boxes
    scores = torch.rand(num_groups, k, generator=g).sort(dim=1, descending=True).values
    return boxes, scores


def _batched_pass(boxes, scores, valid, iou_threshold):
    """The GPU's algorithm, run on the CPU."""
    return nms_module._nms_all_groups(boxes, valid, iou_threshold)


def _reference(boxes, scores, score_threshold, iou_threshold):
    """torchvision's nms on each group's candidates above the threshold."""
    kept = set()
    for group in range(len(boxes)):
        valid = (scores[group] > score_threshold).nonzero().flatten()
        keep = nms(boxes[group, valid], scores[group, valid], iou_threshold)
        kept.update((group, int(valid[i])) for i in keep)
    return kept


@pytest.mark.parametrize("iou_threshold", [0.3, 0.45, 0.7])
@pytest.mark.parametrize("batched", [False, True])
def test_grouped_nms_equals_torchvision_nms_per_group(monkeypatch, iou_threshold, batched):
    # The CPU runs torchvision's kernel group by group; a GPU, the batched pass.
    if batched:
        monkeypatch.setattr(nms_module, "_nms_each_group", _batched_pass)
    boxes, scores = _random_groups(num_groups=60, k=50, seed=0)
    scores[::3] *= 0.3  # groups with few or no candidates above the threshold
    group_idx, rank_idx = grouped_nms(boxes, scores, 0.2, iou_threshold)

    expected = _reference(boxes, scores, 0.2, iou_threshold)
    assert set(zip(group_idx.tolist(), rank_idx.tolist())) == expected
    assert len(group_idx) == len(expected) < (scores > 0.2).sum()  # some were suppressed
    kept_scores = scores[group_idx, rank_idx]
    assert (kept_scores[:-1] >= kept_scores[1:]).all()


@pytest.mark.parametrize("batched", [False, True])
def test_grouped_nms_without_candidates(monkeypatch, batched):
    if batched:
        monkeypatch.setattr(nms_module, "_nms_each_group", _batched_pass)
    boxes, scores = _random_groups(num_groups=4, k=10, seed=1)
    for candidates in [(boxes, scores), (boxes[:, :0], scores[:, :0]), (boxes[:0], scores[:0])]:
        group_idx, rank_idx = grouped_nms(*candidates, score_threshold=1.0, iou_threshold=0.5)
        assert group_idx.shape == rank_idx.shape == (0,)


def test_iou_in_chunks_equals_iou_at_once():
    boxes, _ = _random_groups(num_groups=30, k=20, seed=2)
    at_once = nms_module._iou_above(boxes, 0.3)
    assert at_once.any() and not at_once.all()
    torch.testing.assert_close(nms_module._iou_above(boxes, 0.3, chunk_elements=1000), at_once)

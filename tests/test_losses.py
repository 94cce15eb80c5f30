"""CLIP and SigLIP losses: equal to open_clip's on random features, gradients included."""

import math

import pytest
import torch
import torch.nn.functional as F

from pixdex.errors import PixdexError
from pixdex.training.losses import ClipLoss, SigLipLoss, make_loss

open_clip_loss = pytest.importorskip("open_clip.loss")


def _features(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    # make the pairs partly aligned so that the loss is not at its random-feature value only
    txt = F.normalize(txt + 0.7 * img, dim=-1)
    return img, txt


@pytest.mark.parametrize("n,d,seed", [(1, 8, 0), (7, 16, 1), (64, 32, 2)])
def test_clip_loss_matches_open_clip(n, d, seed):
    img, txt = _features(n, d, seed)
    ours = ClipLoss().double()
    assert math.isclose(float(ours.logit_scale.detach()), math.log(1 / 0.07), rel_tol=1e-6)
    ref = open_clip_loss.ClipLoss()(img, txt, ours.logit_scale.detach().exp())
    got = ours(img, txt).detach()
    assert abs(float(got) - float(ref)) < 1e-6
    # and with a given scale
    scale = torch.tensor(37.5, dtype=torch.float64)
    assert (
        abs(float(ours(img, txt, scale).detach()) - float(open_clip_loss.ClipLoss()(img, txt, scale))) < 1e-6
    )


@pytest.mark.parametrize("n,d,seed", [(1, 8, 3), (7, 16, 4), (64, 32, 5)])
def test_siglip_loss_matches_open_clip(n, d, seed):
    img, txt = _features(n, d, seed)
    ours = SigLipLoss().double()
    assert math.isclose(float(ours.logit_scale.detach()), math.log(10), rel_tol=1e-6)
    assert float(ours.logit_bias.detach()) == -10.0
    ref = open_clip_loss.SigLipLoss()(img, txt, ours.logit_scale.detach().exp(), ours.logit_bias.detach())
    assert abs(float(ours(img, txt).detach()) - float(ref)) < 1e-6
    scale, bias = torch.tensor(3.0, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)
    assert (
        abs(
            float(ours(img, txt, scale, bias).detach())
            - float(open_clip_loss.SigLipLoss()(img, txt, scale, bias))
        )
        < 1e-6
    )


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_gradients_match_open_clip(kind):
    img0, txt0 = _features(16, 12, 6)
    ours = make_loss(kind).double()
    img, txt = img0.clone().requires_grad_(), txt0.clone().requires_grad_()
    ours(img, txt).backward()
    img_r, txt_r = img0.clone().requires_grad_(), txt0.clone().requires_grad_()
    scale = ours.logit_scale.detach().clone().requires_grad_()
    if kind == "clip":
        open_clip_loss.ClipLoss()(img_r, txt_r, scale.exp()).backward()
    else:
        bias = ours.logit_bias.detach().clone().requires_grad_()
        open_clip_loss.SigLipLoss()(img_r, txt_r, scale.exp(), bias).backward()
        assert abs(float(ours.logit_bias.grad) - float(bias.grad)) < 1e-6
    assert torch.allclose(img.grad, img_r.grad, atol=1e-9)
    assert torch.allclose(txt.grad, txt_r.grad, atol=1e-9)
    assert abs(float(ours.logit_scale.grad) - float(scale.grad)) < 1e-6


def test_loss_falls_when_pairs_align():
    img, txt = _features(32, 16, 7)
    for kind in ("clip", "siglip"):
        loss = make_loss(kind).double()
        with torch.no_grad():
            assert float(loss(img, img)) < float(loss(img, txt)) < float(loss(img, txt.roll(1, dims=0)))


def test_clamp_keeps_scale_at_most_ln100():
    for kind in ("clip", "siglip"):
        loss = make_loss(kind)
        with torch.no_grad():
            loss.logit_scale.fill_(9.0)
        loss.clamp_()
        assert math.isclose(float(loss.logit_scale.detach()), math.log(100), rel_tol=1e-6)
        assert loss.temperature() == pytest.approx(0.01, rel=1e-5)


def test_bad_input():
    with pytest.raises(PixdexError, match="unknown loss"):
        make_loss("triplet")
    with pytest.raises(ValueError, match="same shape"):
        ClipLoss()(torch.zeros(3, 4), torch.zeros(2, 4))


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_identity_positives_are_the_textbook_loss(kind):
    img, txt = _features(9, 16, 5)
    loss = make_loss(kind).double()
    eye = torch.eye(9, dtype=torch.bool)
    assert float(loss(img, txt, positives=eye).detach()) == pytest.approx(
        float(loss(img, txt).detach()), abs=1e-12
    )
    with pytest.raises(ValueError, match="positives"):
        loss(img, txt, positives=torch.ones(3, 3, dtype=torch.bool))


def test_duplicate_captions_are_not_negatives_of_each_other():
    """Two images captioned identically: with positives marked, InfoNCE spreads each row's target over
    both (the hand-written soft cross-entropy) and the sigmoid loss labels both pairs positive."""
    img, txt = _features(6, 16, 7)
    txt = txt.clone()
    txt[3] = txt[1]  # texts 1 and 3 are the same caption
    same = (txt[:, None, :] == txt[None, :, :]).all(-1)
    assert int(same.sum()) == 8
    from pixdex.training.losses import same_caption_matrix

    ids = torch.tensor([[5, 6, 0], [7, 8, 0], [5, 6, 1], [7, 8, 0]])
    assert same_caption_matrix(ids).tolist() == [
        [True, False, False, False],
        [False, True, False, True],
        [False, False, True, False],
        [False, True, False, True],
    ]

    clip = ClipLoss().double()
    scale = torch.tensor(10.0, dtype=torch.float64)
    logits = scale * img @ txt.T
    target = same.double() / same.double().sum(1, keepdim=True)
    by_hand = (
        -(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.T.log_softmax(1)).sum(1).mean()
    ) / 2
    assert float(clip(img, txt, scale, positives=same)) == pytest.approx(float(by_hand), abs=1e-12)

    sig = SigLipLoss().double()
    s, b = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-5.0, dtype=torch.float64)
    sig_hand = -F.logsigmoid((2 * same.double() - 1) * (s * img @ txt.T + b)).sum() / 6
    assert float(sig(img, txt, s, b, positives=same)) == pytest.approx(float(sig_hand), abs=1e-12)

    # InfoNCE over identical texts already splits evenly: the textbook value is the same; the textbook
    # sigmoid loss instead labels text 3 a negative of image 1 (and text 1 of image 3)
    assert float(clip(img, txt, scale)) == pytest.approx(float(by_hand), abs=1e-12)
    assert float(sig(img, txt, s, b)) != pytest.approx(float(sig_hand), abs=1e-6)

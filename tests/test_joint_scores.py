"""The image x text block of a joint softmax: both normalisations, chunking, kept columns, stability."""

import torch

from explain.joint.scores import text_scores

N_IMAGE, N_TEXT, HEADS, D = 12, 5, 3, 8


def _qk(seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, HEADS, N_IMAGE, D, generator=gen)  # image queries
    k = torch.randn(2, HEADS, N_TEXT + N_IMAGE, D, generator=gen)  # Flux order: [text, image]
    return q, k


def test_both_normalisations_equal_explicit_softmaxes():
    q, k = _qk()
    text, scale = slice(0, N_TEXT), D**-0.5
    scores = q @ k.transpose(-1, -2) * scale  # (B, H, N, L)
    out = text_scores(q, k, text, None, scale, work_bytes=2**20)
    torch.testing.assert_close(out.share, scores.softmax(-1)[..., text])
    torch.testing.assert_close(out.text, scores[..., text].softmax(-1))
    torch.testing.assert_close(out.mass, scores.softmax(-1)[..., text].sum(-1))


def test_chunking_and_kept_columns_do_not_change_values():
    q, k = _qk(1)
    text, scale, columns = slice(0, N_TEXT), D**-0.5, torch.tensor([4, 1])
    whole = text_scores(q, k, text, None, scale, work_bytes=2**20)
    one_query = 4 * (N_TEXT + N_IMAGE) * 2 * HEADS  # bytes of one image query's scores
    chunked = text_scores(q, k, text, columns, scale, work_bytes=one_query * 5)  # chunks of 5, 5 and 2 queries
    torch.testing.assert_close(chunked.share, whole.share[..., columns])
    torch.testing.assert_close(chunked.text, whole.text[..., columns])
    torch.testing.assert_close(chunked.mass, whole.mass)


def test_text_renormalisation_is_stable_where_the_text_mass_underflows():
    q, k = _qk(2)
    k[:, :, :N_TEXT] = -1e3 * q.mean(dim=2, keepdim=True)  # text keys pointing away from the queries
    out = text_scores(q, k, slice(0, N_TEXT), None, D**-0.5, work_bytes=2**20)
    assert (out.mass < 1e-30).any()  # float32 share of text ~ 0 ...
    assert torch.isfinite(out.text).all()  # ... yet the renormalised maps are well defined
    torch.testing.assert_close(out.text.sum(-1), torch.ones_like(out.mass))

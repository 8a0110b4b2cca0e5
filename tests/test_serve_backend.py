"""The encoder backend: a row's outputs equal `model.apply` on that text alone, whatever the
batch and bucket it runs in; no bucket is ever compiled on the request path."""

import numpy as np
import pytest
from serve_util import model_alone, random_text, tiny_backend

from bertjax.serve.backend import InputTooLong


@pytest.fixture(scope="module")
def backend():
    b = tiny_backend(num_labels=3, max_seq_length=64)
    b.compile([(1, 16), (4, 32), (8, 64)])
    return b


def test_outputs_equal_model_apply_on_the_text_alone_in_every_bucket(backend):
    rng = np.random.default_rng(0)
    texts = [random_text(rng, 12) for _ in range(3)]
    pairs = [None, random_text(rng, 10), None]
    rows = backend.featurize(texts, pairs, truncate=False)
    assert rows[1].token_type_ids.max() == 1 and rows[0].token_type_ids.max() == 0
    expected = [model_alone(backend, r) for r in rows]
    for bucket in [(4, 32), (8, 64)]:
        for got, want in zip(backend.run(rows, bucket), expected, strict=True):
            for key in want:
                np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-6, err_msg=key)
    short = [r for r in rows if len(r) <= 16]
    assert short, "the random texts should include one that fits a 16-token bucket"
    for row in short:
        (got,) = backend.run([row], (1, 16))
        want = model_alone(backend, row)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-6, err_msg=key)


def test_running_an_uncompiled_bucket_is_an_error_not_a_compilation(backend):
    rows = backend.featurize(["the movie"], truncate=False)
    with pytest.raises(RuntimeError, match=r"bucket \(2, 16\) was not compiled"):
        backend.run(rows, (2, 16))


def test_long_texts_are_refused_or_truncated_per_request(backend):
    text = " ".join(["good"] * 100)
    with pytest.raises(InputTooLong, match=r"inputs\[1\] has 102 tokens .* limit of 64"):
        backend.featurize(["bad", text], truncate=False)
    rows = backend.featurize(["bad", text], truncate=True)
    assert [len(r) for r in rows] == [3, 64]
    (pair,) = backend.featurize([text], [text], truncate=True)
    assert len(pair) == 64 and pair.token_type_ids.sum() == 31  # 30 of b + its [SEP]

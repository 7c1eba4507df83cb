"""CapsNet: margin loss, shapes and parameter counts, decoder masking, and a tiny run through
the trainer and the evaluator on the built-in digits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_record_holds_the_runs_metrics, load_config

from adjax import evaluate
from adjax.methods import build
from adjax.methods.capsnet import margin_loss
from adjax.models.capsnet import CapsNet, CapsuleDecoder
from adjax.train import train


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_margin_loss_matches_the_formula():
    rng = np.random.default_rng(0)
    lengths = rng.uniform(0, 1, (6, 2)).astype(np.float32)
    labels = np.array([0, 1, 0, 1, 1, 0])
    t = np.eye(2)[labels]
    expected = (t * np.maximum(0, 0.9 - lengths) ** 2
                + 0.5 * (1 - t) * np.maximum(0, lengths - 0.1) ** 2).sum(-1)
    np.testing.assert_allclose(margin_loss(jnp.asarray(lengths), jnp.asarray(labels)), expected,
                               rtol=1e-6)


def test_sabour_mnist_parameter_count():
    """Sabour et al.'s MNIST CapsNet: 8.2M parameters, 6.8M without the decoder."""
    variables = jax.eval_shape(CapsNet(num_capsules=10).init, jax.random.key(0),
                               jnp.zeros((1, 28, 28, 1)))
    params = variables["params"]
    assert _count(params) == 8_215_568
    assert _count(params) - _count(params["decoder"]) == 6_804_224
    # 6 x 6 x 32 = 1,152 primary capsules of 8-D, a 16 x 8 matrix per (input, class) pair.
    assert params["class_capsules"]["weights"].shape == (1152, 10, 16, 8)


def test_thesis_capsnet_shapes():
    net = CapsNet(num_capsules=2)
    x = jnp.zeros((3, 28, 28, 1))
    variables = jax.eval_shape(net.init, jax.random.key(0), x)
    assert _count(variables["params"]) == 6_970_384  # two 16-D class capsules
    out = jax.eval_shape(net.apply, variables, x)
    assert out["capsules"].shape == (3, 2, 16) and out["lengths"].shape == (3, 2)
    assert out["reconstruction"].shape == (3, 28, 28, 1)


def test_decoder_sees_only_the_selected_capsule():
    decoder = CapsuleDecoder((4, 4, 1), (8,))
    caps = jax.random.normal(jax.random.key(0), (2, 2, 16))
    params = decoder.init(jax.random.key(1), caps, jnp.zeros(2, jnp.int32))
    index = jnp.array([0, 1])
    base = decoder.apply(params, caps, index)
    other = caps.at[0, 1].add(1.0).at[1, 0].add(1.0)  # change the masked-out capsules
    np.testing.assert_array_equal(decoder.apply(params, other, index), base)
    chosen = caps.at[0, 0].add(1.0)
    assert not np.allclose(decoder.apply(params, chosen, index)[0], base[0])


def _config(tmp_path):
    cfg = load_config("capsnet", "digits")
    cfg.data.normal_class = 3
    cfg.data.cache_dir = str(tmp_path / "cache")
    cfg.model.update(conv_channels=8, primary_types=2, decoder_widths=(16, 16))
    cfg.train.update(steps=4, batch_size=8, steps_per_call=2, checkpoint_every=4, log_every=2)
    cfg.eval.batch_size = 128
    return cfg


def test_train_and_evaluate_write_a_record(tmp_path):
    cfg = _config(tmp_path)
    state = train(cfg, tmp_path / "work", devices=jax.devices()[:1])
    assert int(state.step) == 4
    method = build(cfg)
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (5, 28, 28, 3), np.uint8))
    out = method.outputs(state, images)
    pred = method.predict(state, images)
    difference = out["lengths"][:, 1] - out["lengths"][:, 0]
    np.testing.assert_allclose(pred.score, difference + out["mse"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred.anomaly_map.mean(axis=(1, 2)), out["mse"], rtol=1e-5)
    assert pred.anomaly_map.shape == (5, 28, 28)
    record, path = evaluate.evaluate(tmp_path / "work", tmp_path / "results")
    assert path.is_file()
    assert (record["method"], record["variant"], record["dataset"], record["category"]) == \
        ("capsnet", "proposed-10pct", "digits", "3")
    assert_record_holds_the_runs_metrics(record, tmp_path / "work")
    assert record["run"]["params"]["capsnet"] == _count(state.params)


def test_variant_must_match_the_protocol():
    cfg = load_config("capsnet", "mnist")
    cfg.data.anomaly_fraction = 0.01
    with pytest.raises(ValueError, match="mnist-1pct"):
        build(cfg)
    assert build(load_config("capsnet", "mnist-1pct")).config.variant == "proposed-1pct"
    assert load_config("capsnet", "fmnist-standard").variant == "standard-10pct"
    one_class = load_config("capsnet", "kmnist-oneclass")
    assert one_class.data.protocol == "one_class" and one_class.variant == "one-class"
